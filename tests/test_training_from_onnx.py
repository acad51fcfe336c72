"""``training/from_onnx.py``: a checkpoint rebuilt from an exported (BatchNorm-folded) detector
computes what the file computes, before and after its BatchNorms are calibrated (torch only)."""
from __future__ import annotations

import pytest


def _trained_like(torch, model):
    """A small detector with BatchNorm statistics and scales away from their defaults, as
    training leaves them (folding must carry them into the convolutions)."""
    torch.manual_seed(0)
    net = model.PlateNet("mobilenetv2", 16)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def test_rebuilt_net_computes_what_the_file_computes():
    torch = pytest.importorskip("torch")
    from training import export, from_onnx, model

    onnx_bytes = export.to_onnx(_trained_like(torch, model))
    net = from_onnx.rebuild(onnx_bytes, "mobilenetv2", 16)
    assert from_onnx.check(net, onnx_bytes) < 1e-4
    # the training-mode BatchNorms get their inputs' statistics; the function stays the same
    images = [torch.rand(2, 3, 64, 96) * 255 for _ in range(3)]
    from_onnx.calibrate(net, images)
    assert from_onnx.check(net, onnx_bytes) < 1e-4
    head_norm = net.lat4[1]
    assert not torch.allclose(head_norm.running_var, torch.ones_like(head_norm.running_var))


def test_another_layout_is_refused():
    torch = pytest.importorskip("torch")
    from training import export, from_onnx, model

    onnx_bytes = export.to_onnx(_trained_like(torch, model))
    with pytest.raises(ValueError, match="another layout"):
        from_onnx.rebuild(onnx_bytes, "mobilenetv2", 32)
    with pytest.raises(ValueError, match="another layout"):
        from_onnx.rebuild(onnx_bytes, "efficientnet_lite0", 16)
