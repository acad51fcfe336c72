"""Training of the plate check (``training/check.py``, ``training/check_data.py``): examples
follow the labels; training reproduces and exports (torch only)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.trainsets import toy_set


def test_check_examples_follow_the_labels():
    """The crop classifier's examples: detector boxes on a labelled plate are plates, boxes
    clear of plates (large enough, not confident) are not, the rest is left out."""
    from training import check_data

    plates = np.array([[100, 100, 160, 120]], np.float32)
    boxes = np.array([[102, 101, 158, 121],      # on the plate
                      [300, 300, 360, 320],      # far away
                      [300, 300, 305, 303],      # far, too small to be sure
                      [170, 100, 230, 120],      # beside the plate: too close to tell
                      [400, 100, 460, 120]],     # far but confident: maybe an unlabelled plate
                     np.float32)
    scores = np.array([0.5, 0.3, 0.3, 0.3, 0.9], np.float32)
    assert check_data.label(boxes, scores, plates).tolist() == [1, 0, -1, -1, -1]
    image = np.zeros((200, 300, 3), np.uint8)
    image[100:120, 100:160] = 255
    patch, inside = check_data.cut_patch(image, plates[0])
    assert patch.shape == (check_data.PATCH_H, check_data.PATCH_W, 3)
    x0, y0, x1, y1 = np.round(inside).astype(int)
    assert (patch[y0 + 1:y1 - 1, x0 + 1:x1 - 1] == 255).all() and patch[y0 - 3, x0].max() < 255


def test_check_training_reproduces_and_exports(tmp_path, monkeypatch):
    """Same command, same classifier weights (seeded batches), also when stopped and resumed;
    --export writes an ONNX file in the registry's contract and records its sha256."""
    torch = pytest.importorskip("torch")
    from training import check, check_data, export, model

    folder = toy_set(tmp_path / "d")
    torch.manual_seed(1)
    detector = tmp_path / "det.onnx"
    detector.write_bytes(export.to_onnx(model.PlateNet("mobilenetv2", 16)))
    monkeypatch.setattr(check_data, "MIN_SCORE", 0.001)    # an untrained detector scores low
    monkeypatch.setattr(check_data, "MIN_SIDE", 2.0)
    common = ["--data", str(folder), "--detector", str(detector), "--width", "8",
              "--batch", "4", "--steps", "2", "--threads", "1"]
    assert check.main(["--out", str(tmp_path / "a"), *common, "--epochs", "2"]) == 0
    assert check.main(["--out", str(tmp_path / "b"), *common, "--epochs", "2",
                       "--stop_after", "1"]) == 0
    assert check.main(["--out", str(tmp_path / "b"), *common, "--epochs", "2", "--resume"]) == 0
    a, b = (torch.load(tmp_path / r / "last.pt", weights_only=False) for r in "ab")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    registry = tmp_path / "registry.json"
    registry.write_text(open(export.REGISTRY, encoding="utf-8").read())
    onnx_out = tmp_path / "check.onnx"
    assert check.main(["--out", str(tmp_path / "a"), *common, "--epochs", "2", "--resume",
                       "--export", "--onnx_out", str(onnx_out), "--registry", str(registry)]) == 0
    import hashlib
    import onnxruntime as ort
    entry = next(e for e in json.loads(registry.read_text())["models"]
                 if e["name"] == "beamplate-check")
    assert entry["files"]["own/beamplate-check.onnx"] == hashlib.sha256(
        onnx_out.read_bytes()).hexdigest()
    import training
    assert entry["lineage"]["cpu_kernels"].startswith(f"oneDNN {training.CPU_KERNELS} ")
    probs = ort.InferenceSession(str(onnx_out), providers=["CPUExecutionProvider"]).run(
        ["prob"], {"crops": np.zeros((3, 3, 48, 96), np.float32)})[0]
    assert probs.shape == (3, 1) and ((probs >= 0) & (probs <= 1)).all()
