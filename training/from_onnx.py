"""A trainable checkpoint rebuilt from an exported detector (``models/own/beamplate.onnx``).

``python -m training.from_onnx --onnx models/own/beamplate.onnx --out RUN/last.pt``

The export folds every BatchNorm into the convolution before it, so the shipped file holds no
BatchNorm parameters. :func:`rebuild` puts the folded weights back into a :class:`PlateNet` of
the same layout: each convolution gets its folded kernel, the BatchNorm after it becomes the
folded bias (scale 1, mean 0, variance 1 - eps). In eval mode the result computes what the file
computes (checked against onnxruntime, see :func:`check`). Training runs the pyramid's and
heads' BatchNorms in train mode (batch statistics), where an identity BatchNorm would rescale
everything at the first step; :func:`calibrate` gives them their inputs' statistics on training
crops and adjusts scale and shift so the eval-mode function stays the same.

So the shipped weights can be fine-tuned or taught from (``training.train --init``,
``training.distill --teacher``) without re-running the recipe that made them.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from torch import nn

from training.model import PlateNet

#: onnxruntime's and torch's float results differ by about 1e-5 on the shipped file
TOLERANCE = 1e-3


def _conv_order(net: PlateNet, sample: torch.Tensor) -> list[nn.Conv2d]:
    """The convolutions of ``net`` in the order a forward pass runs them (the export's order)."""
    order: list[nn.Conv2d] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _: order.append(mod))
             for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            net.eval()(sample)
    finally:
        for h in hooks:
            h.remove()
    return order


def _batchnorm_after(net: PlateNet) -> dict[nn.Conv2d, nn.BatchNorm2d]:
    """Each convolution followed, in the modules' declaration order, by its BatchNorm."""
    modules = list(net.modules())
    return {conv: bn for conv, bn in zip(modules, modules[1:])
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)}


def rebuild(onnx_model: bytes | str, backbone: str = "efficientnet_lite0",
            width: int = 64) -> PlateNet:
    """A :class:`PlateNet` (eval mode) holding the folded weights of ``onnx_model`` (bytes or a
    path) exported by :func:`training.export.to_onnx` from a net of this layout."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_model) if isinstance(onnx_model, bytes) \
        else onnx.load(onnx_model)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "Conv"]
    net = PlateNet(backbone, width)
    convs = _conv_order(net, torch.zeros(1, 3, 64, 64))
    if len(convs) != len(nodes):
        raise ValueError(f"the file has {len(nodes)} convolutions, a {backbone} net of width "
                         f"{width} {len(convs)}: another layout")
    after = _batchnorm_after(net)
    with torch.no_grad():
        for conv, node in zip(convs, nodes):
            kernel = weights[node.input[1]]
            bias = weights[node.input[2]] if len(node.input) > 2 else np.zeros(kernel.shape[0])
            if tuple(conv.weight.shape) != kernel.shape:
                raise ValueError(f"{node.name}: kernel {kernel.shape}, the net's "
                                 f"{tuple(conv.weight.shape)}: another layout")
            conv.weight.copy_(torch.tensor(kernel))
            bn = after.get(conv)
            if bn is None:
                conv.bias.copy_(torch.tensor(bias))
                continue
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.tensor(bias))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
    return net.eval()


def check(net: PlateNet, onnx_model: bytes | str, seed: int = 0) -> float:
    """Largest difference between ``net`` (eval) and ``onnx_model`` on a random image; raises
    above :data:`TOLERANCE`."""
    from training.export import outputs_side_by_side

    rgb = torch.from_numpy(np.random.default_rng(seed).uniform(0, 255, (1, 3, 96, 160))
                           .astype(np.float32))
    diff = max(float(np.abs(a - b).max()) for _, a, b in outputs_side_by_side(net, onnx_model, rgb))
    if diff > TOLERANCE:
        raise ValueError(f"rebuilt net differs from the file by {diff:.2g}")
    return diff


def calibrate(net: PlateNet, images: list[torch.Tensor]) -> PlateNet:
    """Running statistics for the BatchNorms outside the backbone (those training updates) from
    their inputs on ``images`` (RGB 0-255 NCHW batches); scale and shift change with them so
    the eval-mode function does not."""
    norms = {m: [] for n, m in net.named_modules()
             if isinstance(m, nn.BatchNorm2d) and not n.startswith("backbone.")}
    hooks = [m.register_forward_hook(
        lambda mod, inp, _: norms[mod].append((inp[0].mean((0, 2, 3)),
                                               (inp[0] ** 2).mean((0, 2, 3)))))
        for m in norms]
    try:
        with torch.no_grad():
            for rgb in images:
                net.eval()(rgb)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for bn, stats in norms.items():
            mean = torch.stack([s[0] for s in stats]).mean(0)
            var = (torch.stack([s[1] for s in stats]).mean(0) - mean ** 2).clamp(min=1e-6)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias - bn.running_mean * scale
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.weight.copy_(scale * torch.sqrt(var + bn.eps))
            bn.bias.copy_(shift + mean * scale)
    return net.eval()


def main(argv=None) -> int:
    from training import augment, data, train

    p = argparse.ArgumentParser(prog="python -m training.from_onnx", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", default="models/own/beamplate.onnx")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--data", default=train.SHARED + "/trainset_plates",
                   help="training crops for calibrate()")
    p.add_argument("--batches", type=int, default=8)
    args = p.parse_args(argv)
    net = rebuild(args.onnx, args.backbone, args.width)
    print(f"rebuilt {args.onnx}: within {check(net, args.onnx):.2g} of onnxruntime")
    samples, _ = data.training_set(args.data)
    probs = train.source_probs(samples)
    cfg = augment.CropConfig(size=256, plate_sizes=(5.0, 80.0))
    batches = [train.make_batch(samples, probs, np.random.default_rng((0, 1, i)),
                                cfg, 16)["image"] for i in range(args.batches)]
    calibrate(net, batches)
    print(f"calibrated: within {check(net, args.onnx):.2g} of onnxruntime")
    torch.save({"model": net.state_dict(), "epoch": 0,
                "args": {"backbone": args.backbone, "width": args.width, "front": "imagenet",
                         "from_onnx": args.onnx}}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
