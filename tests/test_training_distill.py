"""The lean front and its distillation (``training/distill.py``, ``--front lean``): measured
and not shipped (docs/model_beamplate.md), kept to reproduce that measurement. Torch only."""
from __future__ import annotations

import os

import pytest

from tests.trainsets import toy_set

pytest.importorskip("torch")


def test_lean_front_replaces_the_stride_2_layers(tmp_path):
    """The lean front gives block 2 what the stem and blocks 0-1 gave (same shape, same
    stride, centred on the same pixels), takes the raw image, and everything after it keeps
    the teacher's parameter names, so ImageNet and the teacher's weights load into the rest."""
    torch = pytest.importorskip("torch")
    from training import distill, model

    with pytest.raises(ValueError, match="does not fit"):
        model.PlateNet("mobilenetv2", 16, front="lean")
    torch.manual_seed(0)
    teacher = model.PlateNet("efficientnet_lite0", 16).eval()
    student = distill.student_of(teacher).eval()
    rgb = torch.rand(2, 3, 64, 96) * 255
    want = teacher.backbone.stem(teacher.backbone_input(rgb))
    got = student.backbone.stem(student.backbone_input(rgb))
    assert got.shape == want.shape == (2, 24, 16, 24)
    assert torch.equal(student.backbone_input(rgb), rgb)          # no normalisation layer
    names = set(student.state_dict())
    assert not any(k.startswith(("backbone._conv_stem", "backbone._blocks.0.",
                                 "backbone._blocks.1.")) for k in names)
    for k, v in teacher.state_dict().items():
        if k in names:
            assert torch.equal(v, student.state_dict()[k]), k
    assert names - set(teacher.state_dict()) == {
        k for k in names if k.startswith("backbone.front.")}
    path = str(tmp_path / "imagenet.pth")
    torch.save(model.EfficientNetLite0().state_dict(), path)
    student.load_pretrained(path)          # the front is not ImageNet's: not required
    heat, size, offset = student(rgb)
    assert heat.shape == (2, 1, 16, 24)
    # output cell j is centred on input pixel 4j, as the stride-2 layers' is: the first
    # convolution sees a single pixel at (36, 20) in cell (9, 5) only
    conv = model.LeanFront().layers[0]
    dot = torch.zeros(1, 3, 64, 64)
    dot[..., 36, 20] = 255.0
    seen = conv(dot).abs().sum(1)[0] > 0
    assert seen[9, 5] and int(seen.sum()) == 1


def test_distillation_teaches_the_front(tmp_path):
    """A few distillation steps on the toy set lower the front's relative error, train only
    the front, and leave a checkpoint that training.train fine-tunes and export rebuilds."""
    torch = pytest.importorskip("torch")
    from training import distill, export, model, train

    folder = toy_set(tmp_path / "d")
    torch.manual_seed(0)
    teacher_path = tmp_path / "teacher.pt"
    teacher = model.PlateNet("efficientnet_lite0", 16)
    torch.save({"model": teacher.state_dict(), "epoch": 1,
                "args": {"backbone": "efficientnet_lite0", "width": 16}}, teacher_path)
    common = ["--teacher", str(teacher_path), "--data", str(folder), "--val_street", "",
              "--crop", "64", "--batch", "2", "--steps", "4", "--threads", "1"]
    assert distill.main([*common, "--out", str(tmp_path / "a"), "--epochs", "1", "--lr",
                         "0"]) == 0
    assert distill.main([*common, "--out", str(tmp_path / "b"), "--epochs", "3"]) == 0
    before, after = (torch.load(tmp_path / r / "last.pt", weights_only=False)
                     for r in "ab")
    assert after["log"][-1]["relative_error"] < before["log"][-1]["relative_error"]
    for k, v in before["model"].items():
        if not k.startswith("backbone.front."):
            assert torch.equal(v, after["model"][k]), k
    assert "val" in after["log"][-1] and after["args"]["front"] == "lean"
    net = export.load_checkpoint(str(tmp_path / "b" / "last.pt"))
    assert net.lean
    cache = tmp_path / "cache"
    os.makedirs(cache)
    torch.save(model.EfficientNetLite0().state_dict(),
               cache / os.path.basename(model.PRETRAINED["efficientnet_lite0"][1]))
    tune = ["--out", str(tmp_path / "t"), "--data", str(folder), "--val_street", "",
            "--backbone", "efficientnet_lite0", "--width", "16", "--crop", "64", "--batch",
            "2", "--steps", "1", "--epochs", "1", "--threads", "1", "--pretrained_cache",
            str(cache), "--front", "lean"]
    with pytest.raises(SystemExit, match="distilled checkpoint"):
        train.main(tune)
    assert train.main([*tune, "--init", str(tmp_path / "b" / "last.pt"),
                       "--teacher", str(teacher_path)]) == 0
    ckpt = torch.load(tmp_path / "t" / "last.pt", weights_only=False)
    assert ckpt["log"][-1]["loss"]["teach"] > 0            # taught by the teacher's outputs too
    tuned = ckpt["model"]
    key = "backbone._blocks.2._depthwise_conv.weight"       # frozen: ImageNet's as the teacher's
    assert torch.equal(tuned[key], after["model"][key])
    key = "backbone.front.layers.0.weight"                   # the front trains on
    assert not torch.equal(tuned[key], after["model"][key])
