"""Export a trained checkpoint to ONNX in CenterFace's contract
(``beam_anon.detectors.centerface``):
input ``image`` (1, 3, H, W) RGB float 0-255 (H, W multiples of 32, any size), outputs
``heatmap`` (1, 1, H/4, W/4) probabilities, ``scale`` (1, 2, H/4, W/4) log(h/4), log(w/4),
``offset`` (1, 2, H/4, W/4) y, x. Opset 17 (onnxruntime >= 1.14).

``python -m training.export --checkpoint RUN/last.pt --out models/own/beamplate.onnx --registry``
(``--registry``: also write the file's sha256, the training command and the commit into the
``beamplate`` entry of ``models/registry.json``, editing only those lines).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import torch

import training
from training.model import Exported, PlateNet

INPUT = "image"
OUTPUTS = ("heatmap", "scale", "offset")
OPSET = 17


def load_checkpoint(path: str) -> PlateNet:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    args = ckpt["args"]
    net = PlateNet(args["backbone"], args["width"], args.get("front", "imagenet"))
    net.load_state_dict(ckpt["model"])
    return net.eval()


def to_onnx(net: PlateNet) -> bytes:
    """The serialized ONNX graph of ``net`` (eval mode), dynamic height and width; checked
    against torch on a random image with onnxruntime."""
    import onnx

    net = net.eval()
    wrapped = Exported(net).eval()
    example = torch.rand(1, 3, 96, 128) * 255
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(wrapped, (example,), buf, input_names=[INPUT],
                          output_names=list(OUTPUTS), opset_version=OPSET, dynamo=False,
                          dynamic_axes={INPUT: {2: "H", 3: "W"},
                                        **{o: {2: "h", 3: "w"} for o in OUTPUTS}})
    model = onnx.load_from_string(buf.getvalue())
    model.producer_name = "beam_anon training.export"
    data = model.SerializeToString()
    for name, a, b in outputs_side_by_side(net, data, torch.rand(1, 3, 160, 224) * 255):
        if not np.allclose(a, b, atol=1e-3, rtol=1e-3):
            raise RuntimeError(f"exported {name} differs from torch by {np.abs(a - b).max()}")
    return data


def outputs_side_by_side(net: PlateNet, onnx_model: bytes | str, rgb: torch.Tensor):
    """``(name, torch output, onnxruntime output)`` of each exported output for ``net`` (eval,
    with the export's sigmoid) and ``onnx_model`` (bytes or a path) on ``rgb`` (RGB 0-255
    NCHW)."""
    import onnxruntime as ort

    with torch.no_grad():
        want = [t.numpy() for t in Exported(net.eval()).eval()(rgb)]
    sess = ort.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    got = sess.run(list(OUTPUTS), {INPUT: rgb.numpy()})
    return list(zip(OUTPUTS, want, got))


REGISTRY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models",
                        "registry.json")


def record(onnx_bytes: bytes, command: str, commit: str, path: str = REGISTRY,
           name: str = "beamplate") -> None:
    """Writes the sha256 of ``onnx_bytes``, ``command``, ``commit`` and the oneDNN kernels the
    run was capped at (``training.CPU_KERNELS``) into the registry entry ``name`` (whose file is
    ``own/<name>.onnx``), editing only those lines of that entry so the rest of the file stays
    as it is."""
    text = open(path, encoding="utf-8").read()
    begin = text.index(f'"name": {json.dumps(name)}')
    after = text.find('"name": ', begin + 1)
    end = len(text) if after < 0 else after
    entry = text[begin:end]
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    new, n = re.subn(rf'("own/{re.escape(name)}\.onnx": )"[0-9a-f]{{64}}"', rf'\1"{digest}"',
                     entry)
    kernels = (f"oneDNN {training.CPU_KERNELS} (ONEDNN_MAX_CPU_ISA, set by the training package: "
               "training.SHIPPED_KERNELS); other kernels give other weights")
    for key, value in (("command", command), ("commit", commit), ("cpu_kernels", kernels)):
        new, k = re.subn(rf'^(    "{key}": ).*?(,?)$', lambda m: m.group(1) + json.dumps(value)
                         + m.group(2), new, flags=re.M)
        n += k
    if n != 4:
        raise RuntimeError(f"{path}: the {name} entry's sha256/command/commit/cpu_kernels lines "
                           f"were not found exactly once each")
    new = text[:begin] + new + text[end:]
    json.loads(new)
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)


def write_file(path: str, data: bytes) -> None:
    """``data`` written to ``path`` atomically (a ``.part`` file renamed)."""
    with open(path + ".part", "wb") as f:
        f.write(data)
    os.replace(path + ".part", path)


def head_commit() -> str:
    """The repository's current commit (for the registry's lineage)."""
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(REGISTRY)).stdout.strip()


def training_command(checkpoint: str) -> str:
    """The ``training.train`` command line that made ``checkpoint`` (from its saved args)."""
    import torch

    args = torch.load(checkpoint, map_location="cpu", weights_only=False)["args"]
    opts = " ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                    for k, v in sorted(args.items())
                    if k not in ("resume", "stop_after", "threads", "pretrained_cache", "data",
                                 "val_street") and v not in ("", [], ())
                    and not (k == "front" and v == "imagenet"))
    return f"nice -n 5 python -m training.train {opts}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--registry", action="store_true",
                   help="record sha256, training command and commit in models/registry.json")
    p.add_argument("--command", default="",
                   help="the training command to record (default: the checkpoint's own "
                        "training.train command)")
    args = p.parse_args(argv)
    data = to_onnx(load_checkpoint(args.checkpoint))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_file(args.out, data)
    print(f"{args.out}: {len(data)} bytes")
    if args.registry:
        commit = head_commit()
        record(data, args.command or training_command(args.checkpoint), commit)
        print(f"{REGISTRY}: beamplate entry updated (commit {commit[:10]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
