"""Detectors of the user's own (``--model_spec``): tiny SavedModel, TFLite and ONNX models with
known outputs (tests/tiny_detectors.py) through the real CLI, and every clear failure at start."""
from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest

from beam_anon import cli, models
from beam_anon.models import user_models
from beam_anon.detectors.user_spec import SpecError, parse
from beam_anon.options import settings_from
from beam_anon.settings import Settings
from tests import tiny_detectors as tiny
from tests.fakefs import mapped_filesystem

W, H = 320, 240
QUIET = ["--runner=FnApiRunner", "--direct_num_workers=1", "--quiet", "--stage1_model", "none",
         "--verify", "false"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny models and their specs (built once: importing TensorFlow takes seconds)."""
    d = tmp_path_factory.mktemp("own")
    tiny.saved_model(str(d / "faces_sm"))
    tiny.tflite(str(d / "plates.tflite"))
    tiny.onnx_model(str(d / "faces.onnx"))
    specs = {
        "sm": tiny.write_spec(str(d / "sm.json"), name="nightfaces", role="face",
                              format="tf_saved_model", path="faces_sm", class_ids=[1],
                              threshold=0.5, licence="Apache-2.0"),
        "tfl": tiny.write_spec(str(d / "tfl.json"), name="myplates", role="plate",
                               format="tflite", path=str(d / "plates.tflite"), class_ids=[1],
                               threshold=0.5),
        "onnx": tiny.write_spec(str(d / "onnx.json"), name="onnxfaces", role="face",
                                format="onnx", path="faces.onnx", class_ids=[1]),
    }
    return d, specs


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    """A noisy PNG (lossless output: untouched pixels stay equal, blurred ones do not)."""
    d = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(7)
    cv2.imwrite(str(d / "street.png"), rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    return str(d)


def _changed(a: np.ndarray, b: np.ndarray, box) -> float:
    """Mean absolute change in the middle half of a normalized ymin, xmin, ymax, xmax box."""
    y0, x0, y1, x1 = box
    cy, cx, hh, hw = (y0 + y1) / 2 * H, (x0 + x1) / 2 * W, (y1 - y0) * H / 4, (x1 - x0) * W / 4
    sl = np.s_[int(cy - hh):int(cy + hh), int(cx - hw):int(cx + hw)]
    return float(np.abs(a[sl].astype(int) - b[sl].astype(int)).mean())


def test_savedmodel_and_tflite_through_the_cli(built, photo, tmp_path, capsys):
    d, specs = built
    out = tmp_path / "out"
    cli.main(["--input", f"{photo}/*.png", "--output", str(out), *QUIET,
              "--model_spec", specs["sm"], "--model_spec", specs["tfl"],
              "--face_models", "nightfaces", "--plate_models", "myplates", "--report",
              "--allow_licences", "unknown"])   # myplates' spec states no licence
    assert "1 images, 1 ok" in capsys.readouterr().out
    assert "your own (tf_saved_model)" in (out / "report.html").read_text()
    before, after = cv2.imread(f"{photo}/street.png"), cv2.imread(str(out / "street.png"))
    for row in (tiny.FACE_SURE, tiny.PLATE_SURE):
        assert _changed(before, after, row[0]) > 20, row
    for row in (tiny.FACE_LOW, tiny.OTHER_CLASS, tiny.PAST_COUNT, tiny.PLATE_LOW):
        assert _changed(before, after, row[0]) == 0, row
    record = json.loads((out / "manifest.jsonl").read_text())
    used = {m["name"]: m for m in record["models"]}
    # beamplate-check is loaded but asked only about beamplate's boxes (its "checks")
    assert set(used) == {"nightfaces", "myplates", "beamplate-check"}
    sm_files = {rel: models.sha256_file(str(d / "faces_sm" / rel))
                for rel in user_models._files_under(str(d / "faces_sm"))}
    assert used["nightfaces"]["sha256"] == user_models.digest(sm_files, True)
    assert used["myplates"]["sha256"] == models.sha256_file(str(d / "plates.tflite"))
    assert (used["nightfaces"]["licence"], used["myplates"]["licence"]) == ("Apache-2.0",
                                                                             "unknown")
    assert sorted((b["label"], b["models"][0]) for b in record["boxes"]) == [
        ("face", "nightfaces"), ("plate", "myplates")]
    assert (models.licence_class("nightfaces"), models.licence_class("myplates")) == (
        "permissive", "unknown")


def test_onnx_face_and_stage1_labels(built, tmp_path):
    d, specs = built
    settings = settings_from({"model_spec": [specs["onnx"]], "face_models": "onnxfaces"})
    user_models.register_all(settings)
    det = models.get_detector("onnxfaces")
    found = det.detect(np.zeros((H, W, 3), np.uint8), 0.5)
    y0, x0, y1, x1 = tiny.FACE_SURE[0]
    assert np.allclose(found.xyxy, [[x0 * W, y0 * H, x1 * W, y1 * H]], atol=0.01)
    assert list(found.labels) == ["face"] and settings.threshold("onnxfaces", "face") == 0.5
    path = tiny.write_spec(str(tmp_path / "s1.json"), name="mystage1", role="stage1",
                           format="onnx", path=str(d / "faces.onnx"),
                           labels={"1": "person", "2": "car"}, threshold=0.4)
    settings = settings_from({"model_spec": [path], "stage1_model": "mystage1"})
    assert settings.stage1_threshold == 0.4
    user_models.check_start(settings, None)
    found = models.get_detector("mystage1").detect(np.zeros((H, W, 3), np.uint8), 0.5)
    assert sorted(found.labels) == ["car", "person"]


def _fails(specs: list[str], photo, tmp_path, capsys, *extra) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(["--input", f"{photo}/*.png", "--output", str(tmp_path / "o"), *QUIET,
                  *[a for s in specs for a in ("--model_spec", s)], *extra])
    assert not (tmp_path / "o").exists()  # stopped before any image
    return str(e.value)


@pytest.mark.parametrize("fields, message", [
    ({"path": "nowhere/faces_sm"}, "does not exist"),
    ({"role": "person"}, "role 'person'"),
    ({"class_ids": [0]}, "class_ids: expected an integer >= 1"),
    ({"class_ids": []}, "class_ids: a non-empty list"),
    ({"labels": {"1": "face"}}, "only stage1 models have labels"),
    ({"format": "tflite"}, "wants a file"),
    ({"name": "centerface"}, "already a model's name"),
    ({"treshold": 0.5}, "unknown keys ['treshold']"),
    ({"sha256": "0" * 64}, "has sha256"),
])
def test_bad_spec_stops_at_start(built, photo, tmp_path, capsys, fields, message):
    d, specs = built
    spec = {**json.loads(open(specs["sm"]).read()), "path": str(d / "faces_sm"), **fields}
    path = tiny.write_spec(str(tmp_path / "bad.json"), **spec)
    assert message in _fails([path], photo, tmp_path, capsys, "--face_models", spec["name"])


def test_model_in_wrong_role_or_unnamed(built, photo, tmp_path, capsys):
    _, specs = built
    assert "is a face model, named in --plate_models" in _fails(
        [specs["sm"]], photo, tmp_path, capsys, "--plate_models", "nightfaces")
    assert "unknown model 'nosuch'" in _fails([], photo, tmp_path, capsys,
                                              "--face_models", "nosuch")
    assert "two --model_spec files name one model" in _fails(
        [specs["sm"], specs["sm"]], photo, tmp_path, capsys, "--face_models", "nightfaces")


def test_signature_without_outputs_and_failing_probe(built, photo, tmp_path, capsys):
    d, _ = built
    other = tiny.saved_model(str(tmp_path / "other"), outputs=["b", "s", "c", "n"])
    failing = tiny.saved_model(str(tmp_path / "failing"), fail=True)
    for path, message in ((other, "has no output ['detection_boxes'"),
                          (failing, "fails on a probe image")):
        spec = tiny.write_spec(str(tmp_path / "s.json"), name="broken", role="face",
                               format="tf_saved_model", path=path, class_ids=[1])
        user_models.read_spec.cache_clear()
        assert message in _fails([spec], photo, tmp_path, capsys, "--face_models", "broken")
    remapped = tiny.write_spec(str(tmp_path / "ok.json"), name="remapped", role="face",
                               format="tf_saved_model", path=other, class_ids=[1],
                               outputs={"boxes": "b", "scores": "s", "classes": "c",
                                        "count": "n"})
    user_models.check_start(settings_from({"model_spec": [remapped],
                                               "face_models": "remapped"}), None)


OwnBucketFileSystem = mapped_filesystem("ownbucket", "OWN_BUCKET_ROOT")


def test_staged_to_remote_models_dir_for_workers(built, tmp_path, monkeypatch):
    d, specs = built
    monkeypatch.setenv("OWN_BUCKET_ROOT", str(tmp_path / "bucket"))
    monkeypatch.setattr(user_models, "_cache", lambda name, key: str(tmp_path / "cache" / key))
    entry = json.loads(user_models.read_spec(specs["sm"]))
    user_models.stage(entry, "ownbucket://models")
    staged = tmp_path / "bucket" / "models" / "user" / f"nightfaces-{entry['sha256'][:16]}"
    assert (staged / "saved_model.pb").is_file()
    worker = dict(entry, root=str(tmp_path / "not-on-this-worker"))
    root = user_models.ensure(worker, "ownbucket://models")
    assert user_models._verified(worker, root) and root.startswith(str(tmp_path / "cache"))
    shutil.rmtree(root)
    with open(staged / "saved_model.pb", "ab") as f:
        f.write(b"x")
    with pytest.raises(models.ModelError, match="sha256"):
        user_models.ensure(worker, "ownbucket://models")
    with pytest.raises(models.ModelError, match="--models_dir gs://"):
        user_models.ensure(worker, None)


def test_spec_parse_defaults():
    entry = parse({"name": "a", "role": "plate", "format": "tflite", "path": "x.tflite",
                   "class_ids": [1]})
    assert (entry["class_base"], entry["input_range"], entry["outputs"]) == (0, [-1.0, 1.0], {})
    assert (entry["licence"], entry["licence_class"]) == ("unknown", "unknown")
    for licence, klass in (("MIT", "permissive"), ("AGPL-3.0", "agpl"), ("GPL-3.0", "unknown")):
        assert parse({"name": "a", "role": "plate", "format": "onnx", "path": "x",
                      "class_ids": [1], "licence": licence})["licence_class"] == klass
    entry = parse({"name": "b", "role": "face", "format": "onnx", "path": "x.onnx",
                   "class_ids": [2], "outputs": {"count": "n"}})
    assert entry["outputs"]["count"] == "n" and entry["outputs"]["boxes"] == "detection_boxes"
    with pytest.raises(SpecError, match="names one output twice"):
        parse({"name": "c", "role": "face", "format": "tflite", "path": "x", "class_ids": [1],
               "outputs": {"boxes": 1, "scores": 1}})
    assert Settings().model_specs == ()
