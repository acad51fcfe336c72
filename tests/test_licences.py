"""The licence guard: every model's licence stated truly, a run naming a non-permissive model
stops at start unless the user opted in, and the manifest records each model's licence."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from beam_anon.models import licences
from beam_anon import models
from beam_anon.detection.anonymize import AnonymizeResult
from beam_anon.boxes import Detections
from beam_anon.settings import Settings
from beam_anon import cli

#: the models the default set used before it was permissive (AGPL and unknown)
OLD_DEFAULTS = dict(stage1_model="yolov8n-coco", plate_models=("platedet-yolov8s", "clpdet"))


def test_registry_states_licence_classes():
    for e in models.registry()["models"] + models.registry()["samples"]:
        assert e["licence_class"] in licences.CLASSES and e["licence"], e["name"]
        assert "permissive" not in e    # the old bool is gone: one source of truth
    got = {n: licences.licence_of(n)["class"] for n in models.model_names()}
    assert got["yolov8n-coco"] == got["platedet-yolov8s"] == "agpl"
    assert got["clpdet"] == "unknown" and "zeusees" in licences.licence_of("clpdet")["licence"]
    assert got["centerface"] == got["yunet"] == got["retinaface-mnv2"] == "permissive"
    assert got["nanodet-g-coco"] == got["beamplate"] == "permissive"
    assert set(models.PERMISSIVE) == {n for n, c in got.items() if c == "permissive"}


def test_models_list_shows_the_licence_class(capsys):
    assert models.main(["list"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.strip() and not line.startswith(" ")}
    assert rows["clpdet"][2] == "unknown" and rows["yolov8n-coco"][2] == "agpl"
    assert rows["centerface"][2] == "permissive"


def test_guard_refuses_non_permissive_models_without_opt_in():
    settings = Settings(**OLD_DEFAULTS)         # AGPL and unknown, no opt-in
    with pytest.raises(licences.LicenceError) as err:
        licences.check(settings)
    text = str(err.value)
    for needle in ("yolov8n-coco (agpl: AGPL-3.0", "platedet-yolov8s (agpl", "clpdet (unknown",
                   "--allow_licences agpl,unknown"):
        assert needle in text
    with pytest.raises(licences.LicenceError) as err:   # agpl allowed: only clpdet remains
        licences.check(settings.replace(allow_licences=("agpl",)))
    assert "clpdet (unknown" in str(err.value) and "yolov8n" not in str(err.value)
    assert "--allow_licences unknown to run" in str(err.value)
    with pytest.raises(SystemExit, match="yolov8n-coco"):   # the CLI's error type
        licences.check(settings, error=SystemExit)


def test_defaults_and_every_preset_are_permissive():
    from beam_anon.detection.presets import PRESETS

    assert Settings().allow_licences == ()
    for name, changes in PRESETS.items():
        settings = Settings(**changes)
        licences.check(settings)                  # no opt-in needed
        assert all(licences.licence_of(m)["class"] == "permissive"
                   for m in settings.model_names()), name


def test_guard_passes_opted_in_and_permissive_runs():
    licences.check(Settings(allow_licences=("agpl", "unknown"), **OLD_DEFAULTS))
    licences.check(Settings())
    with pytest.raises(licences.LicenceError, match="expected a comma list of agpl, unknown"):
        licences.check(Settings(allow_licences=("gpl",)))
    with pytest.raises(models.ModelError, match="unknown model"):   # a typo is no loophole
        licences.check(Settings(allow_licences=(), stage1_model="yolov9-nope"))


def test_record_names_each_model_licence():
    rec = licences.record(Settings(**OLD_DEFAULTS))
    assert list(rec) == list(dict.fromkeys(Settings(**OLD_DEFAULTS).model_names()))
    assert rec["clpdet"]["class"] == "unknown" and rec["centerface"]["class"] == "permissive"
    assert licences.record(Settings(face_models=("stand-in",)))["stand-in"]["class"] == "unknown"


class _Blank:
    def run(self, image, keep_debug=False):
        return AnonymizeResult(image.copy(), Detections.empty(), None, {})

    def models(self):
        return [{"name": "centerface", "sha256": "0" * 64}]


def _input(tmp_path) -> str:
    src = tmp_path / "in"
    src.mkdir()
    buf = io.BytesIO()
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(buf, "JPEG")
    (src / "a.jpg").write_bytes(buf.getvalue())
    return f"{src}/*.jpg"


def test_cli_stops_at_start_and_records_licences(tmp_path):
    glob, out = _input(tmp_path), tmp_path / "out"
    factory_calls = []

    def factory(settings, models_dir):
        factory_calls.append(settings)
        return _Blank()

    def run(*extra):
        return cli.main(["--input", glob, "--output", str(out), "--runner=FnApiRunner",
                         *extra], anonymizer_factory=factory)

    with pytest.raises(SystemExit) as err:          # an AGPL stage 1, no opt-in
        run("--stage1_model", "yolov8n-coco")
    assert "yolov8n-coco" in str(err.value.code) and "--allow_licences" in str(err.value.code)
    with pytest.raises(SystemExit, match="platedet-yolov8s"):   # named by an option
        run("--preset", "thorough", "--plate_models", "platedet-yolov8s")
    assert not out.exists() and not factory_calls   # nothing started, nothing written
    run("--stage1_model", "none", "--plate_models=", "--face_models", "centerface")
    with open(os.path.join(out, "manifest.jsonl")) as f:
        record = json.loads(f.readline())
    assert record["status"] == "ok"
    assert record["settings"]["licences"] == {"centerface": licences.licence_of("centerface")}
