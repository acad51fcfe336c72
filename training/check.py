"""Train ``beamplate-check``, the plate crop classifier, on CPU (about 13 min on 2 cores):

    nice -n 5 python -m training.check --export

1. Examples (:mod:`training.check_data`): the shipped ``beamplate`` run over the training
   images; its boxes on labelled plates and the labelled plates are positives, its boxes clear
   of them negatives. Cached in ``<out>/examples.npz``.
2. A small CNN (:class:`CheckNet`) on the classifier's input (``beam_anon.detectors.crop_check``:
   the box with context, 96 x 48 pixels), half positives and half negatives per batch, each
   box jittered in place and size, flipped, sometimes seen at low resolution, colour-jittered.
   Batches are drawn from ``numpy.random.default_rng((seed, epoch, step))``: fixed seeds, so the
   command reproduces its weights. Every epoch: ``<out>/log.jsonl`` (loss, and on the held-out
   video's examples the share of plates kept and of negatives turned down at several
   thresholds), ``<out>/last.pt`` (``--resume`` continues from it).
3. ``--export``: ``models/own/beamplate-check.onnx`` and its sha256, command and commit in the
   registry (``training.export.record``).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import training
from beam_anon.detectors import crop_check
from training import augment, check_data, data, export
from training.model import conv_bn
from training.train import SHARED, predictor, restore

THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5)
DETECTOR = os.path.join(os.path.dirname(export.REGISTRY), "own", "beamplate.onnx")
OUT_FILE = os.path.join(os.path.dirname(export.REGISTRY), "own", "beamplate-check.onnx")


class CheckNet(nn.Module):
    """RGB 0-255 (N, 3, 48, 96) -> logit (N, 1): five 3x3 conv layers to stride 8, mean and
    max pooled, one linear layer."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.register_buffer("mean", torch.tensor([123.7, 116.3, 103.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([58.4, 57.1, 57.4]).view(1, 3, 1, 1))
        w = width
        self.features = nn.Sequential(conv_bn(3, w // 2, 3, 2), conv_bn(w // 2, w, 3),
                                      conv_bn(w, w, 3, 2), conv_bn(w, 2 * w, 3),
                                      conv_bn(2 * w, 2 * w, 3, 2), conv_bn(2 * w, 4 * w, 3))
        self.head = nn.Linear(8 * w, 1)

    def forward(self, rgb):
        x = self.features((rgb - self.mean) / self.std)
        return self.head(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1))


class Exported(nn.Module):
    def __init__(self, net: CheckNet):
        super().__init__()
        self.net = net

    def forward(self, crops):
        return torch.sigmoid(self.net(crops))


def jitter(box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``box`` moved by up to 15 % of its size and each side scaled 0.75-1.33 (the detector's
    boxes of one plate differ that much: characters only, frame, a look at another scale)."""
    wh = box[2:] - box[:2]
    centre = (box[:2] + box[2:]) / 2 + rng.uniform(-0.15, 0.15, 2) * wh
    half = wh * np.exp(rng.uniform(np.log(0.75), np.log(1.33), 2)) / 2
    return np.concatenate([centre - half, centre + half]).astype(np.float32)


def example(patch: np.ndarray, box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One augmented classifier input (3, 48, 96) float32 RGB from a stored patch."""
    crop = crop_check.cut(patch, crop_check.regions(jitter(box, rng)[None])[0],
                          crop_check.INPUT_W, crop_check.INPUT_H)
    if rng.random() < 0.5:
        crop = np.ascontiguousarray(crop[:, ::-1])
    if rng.random() < 0.3:   # a distant box: seen at 1/2 - 1/5 of the input's resolution
        f = rng.uniform(0.2, 0.5)
        small = cv2.resize(crop, (max(2, round(crop.shape[1] * f)), max(2, round(crop.shape[0] * f))),
                           interpolation=cv2.INTER_AREA)
        crop = cv2.resize(small, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR)
    crop = augment.photometric(crop, rng)
    return crop[..., ::-1].transpose(2, 0, 1).astype(np.float32)


def batch(ex: dict, pos: np.ndarray, neg: np.ndarray, rng: np.random.Generator, size: int):
    """(images (size, 3, 48, 96), targets (size, 1)): half positives, half negatives."""
    picks = np.concatenate([rng.choice(pos, size // 2), rng.choice(neg, size - size // 2)])
    images = np.stack([example(ex["patches"][i], ex["boxes"][i], rng) for i in picks])
    targets = ex["labels"][picks].astype(np.float32)[:, None]
    return torch.from_numpy(images), torch.from_numpy(targets)


def evaluate(net: CheckNet, ex: dict, index: np.ndarray) -> dict:
    """Share of positives kept and of negatives turned down at :data:`THRESHOLDS` (the boxes
    as the detector drew them: centred patches, no jitter)."""
    if not len(index):
        return {}
    crops = np.concatenate([crop_check.crops(ex["patches"][i], ex["boxes"][i][None])
                            for i in index])
    with torch.no_grad():
        probs = torch.sigmoid(net(torch.from_numpy(crops))).numpy().reshape(-1)
    y = ex["labels"][index]
    return {f"t{t}": {"plates_kept": round(float((probs[y == 1] >= t).mean()), 4),
                      "negatives_refused": round(float((probs[y == 0] < t).mean()), 4)}
            for t in THRESHOLDS} | {"plates": int((y == 1).sum()), "negatives": int((y == 0).sum())}


def to_onnx(net: CheckNet) -> bytes:
    """Serialized ONNX (input ``crops`` [N, 3, 48, 96], output ``prob`` [N, 1]), checked against
    torch with onnxruntime."""
    import io
    import onnxruntime as ort

    wrapped = Exported(net.eval()).eval()
    buf = io.BytesIO()
    shape = (3, crop_check.INPUT_H, crop_check.INPUT_W)
    with torch.no_grad():
        torch.onnx.export(wrapped, (torch.rand(2, *shape) * 255,), buf, input_names=["crops"],
                          output_names=["prob"], opset_version=export.OPSET, dynamo=False,
                          dynamic_axes={"crops": {0: "N"}, "prob": {0: "N"}})
    check = torch.rand(5, *shape) * 255
    with torch.no_grad():
        want = wrapped(check).numpy()
    got = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"]).run(
        ["prob"], {"crops": check.numpy()})[0]
    if not np.allclose(want, got, atol=1e-4):
        raise RuntimeError(f"exported classifier differs from torch by {np.abs(want - got).max()}")
    return buf.getvalue()


def load_examples(args, train: list, val: list) -> tuple[dict, np.ndarray, np.ndarray]:
    """(examples of train + val, indices of the training ones, of the validation ones)."""
    path = os.path.join(args.out, "examples.npz")
    if not os.path.isfile(path):
        t0 = time.time()
        with open(args.detector, "rb") as f:
            predict = predictor(f.read(), args.threads)
        built = check_data.build(predict, train + val)
        np.savez(path + ".part.npz", **built)
        os.replace(path + ".part.npz", path)
        print(f"examples: {len(built['labels'])} ({int(built['labels'].sum())} plates) in "
              f"{time.time() - t0:.0f} s", flush=True)
    ex = dict(np.load(path))
    is_val = ex["image"] >= len(train)
    return ex, np.flatnonzero(~is_val), np.flatnonzero(is_val)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join("training", "runs", "check"))
    p.add_argument("--data", default=os.path.join(SHARED, "trainset_plates"))
    p.add_argument("--detector", default=DETECTOR, help="the plate detector whose boxes it checks")
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=48)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument("--stop_after", type=int, default=0,
                   help="stop after this epoch (same schedule; --resume continues later)")
    p.add_argument("--export", action="store_true",
                   help="write the ONNX file (--onnx_out) and its registry entry")
    p.add_argument("--onnx_out", default=OUT_FILE)
    p.add_argument("--registry", default=export.REGISTRY)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    training.start_run(args.out, args.threads, args.seed)
    train_set, val_set = data.training_set(args.data)
    ex, train_idx, val_idx = load_examples(args, train_set, val_set)
    pos, neg = (train_idx[ex["labels"][train_idx] == y] for y in (1, 0))
    if not len(pos) or not len(neg):
        raise data.DataError(f"{args.data}: no {'plates' if not len(pos) else 'negatives'} "
                             f"to train the classifier on")
    print(f"train {len(pos)} plates, {len(neg)} negatives; validate {len(val_idx)}", flush=True)
    net = CheckNet(args.width)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    total = args.epochs * args.steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=total, pct_start=0.1)
    start, last = 0, os.path.join(args.out, "last.pt")
    if args.resume and os.path.isfile(last):
        start = restore(last, net, opt, sched)["epoch"]
    for epoch in range(start, args.epochs):
        t0, loss_sum = time.time(), 0.0
        net.train()
        for step in range(args.steps):
            images, targets = batch(ex, pos, neg, np.random.default_rng((args.seed, epoch, step)),
                                    args.batch)
            loss = F.binary_cross_entropy_with_logits(net(images), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach())
        net.eval()
        entry = {"epoch": epoch + 1, "loss": round(loss_sum / args.steps, 4),
                 "wall_s": round(time.time() - t0), "val": evaluate(net, ex, val_idx)}
        print(json.dumps(entry), flush=True)
        with open(os.path.join(args.out, "log.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "epoch": epoch + 1, "args": vars(args)},
                   last + ".part")
        os.replace(last + ".part", last)
        if args.stop_after and epoch + 1 >= args.stop_after:
            return 0
    if args.export:
        onnx_bytes = to_onnx(net)
        export.write_file(args.onnx_out, onnx_bytes)
        defaults = vars(parse_args([]))
        changed = [f"--{k}={v}" for k, v in vars(args).items()
                   if k not in ("out", "resume", "stop_after", "threads", "export", "onnx_out",
                                "registry", "data") and v != defaults[k]]
        command = "nice -n 5 python -m training.check " + shlex.join([*changed, "--export"])
        export.record(onnx_bytes, command, export.head_commit(), args.registry,
                      name="beamplate-check")
        print(f"{args.onnx_out}: {len(onnx_bytes)} bytes, registry updated", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
