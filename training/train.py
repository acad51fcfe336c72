"""Train the plate detector on CPU, in the background, resumable.

``nice -n 5 python -m training.train --out training/runs/beamplate`` (options: ``--help``).
Every epoch: ``<out>/last.pt`` (model, optimiser, epoch, log; ``--resume`` continues from it),
a line in ``<out>/log.jsonl`` (loss parts, validation recall on the held-out video and on
``devset_streetplates`` at 1x, wall and CPU seconds) and ``<out>/epoch<N>.pt``. Crops are drawn
from ``numpy.random.default_rng((seed, epoch, step))``, so a resumed run draws what an
uninterrupted one would. Training data: ``--data`` only (the dev sets only validate).

Hard negatives (``--mine_at``): before each listed epoch the model as it stands is exported and
run over the training images (:mod:`training.mining`); ``--negative_share`` of the later crops
are centred on the plate-like places it found where the labels have no plate. ``--init`` starts
from another run's weights (fine-tuning) instead of ImageNet's.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import resource
import sys
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F

import training
from training import augment, data, mining, targets, validate
from training.export import INPUT, OUTPUTS, load_checkpoint, to_onnx
from training.model import FRONTS, PRETRAINED, PlateNet, pretrained_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
#: share of crops drawn from each source (the dashcam frames are near-duplicates of each other)
SOURCE_WEIGHTS = {"openimages_plates": 0.55, "dashcam_ro": 0.25, "kaggle_carplates": 0.2}
#: backbone layers kept frozen (with their BatchNorm statistics): the stride-2/4 layers, where
#: the backward pass costs most on a CPU and ImageNet's edge filters serve plates as they are
FROZEN = {"mobilenetv2": ("backbone.features.0.", "backbone.features.1.", "backbone.features.2.",
                          "backbone.features.3."),
          "efficientnet_lite0": ("backbone._conv_stem", "backbone._bn0", "backbone._blocks.0.",
                                 "backbone._blocks.1.", "backbone._blocks.2.")}
#: with the lean front (training.distill), which trains, the first ImageNet block left frozen
FROZEN_LEAN = ("backbone._blocks.2.",)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder (checkpoints, log.jsonl)")
    p.add_argument("--data", default=os.path.join(SHARED, "trainset_plates"))
    p.add_argument("--val_street", default=os.path.join(SHARED, "devset_streetplates"),
                   help="validation only; '' to skip")
    p.add_argument("--val_street_every", type=int, default=1,
                   help="validate on every N-th street photo (1 = all 150)")
    p.add_argument("--backbone", default="mobilenetv2", choices=sorted(PRETRAINED))
    p.add_argument("--width", type=int, default=64, help="pyramid and head channels")
    p.add_argument("--front", default="imagenet", choices=FRONTS,
                   help="what reaches stride 4: the backbone's ImageNet layers, or the lean "
                        "front of training.distill (--init a distilled checkpoint)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--steps", type=int, default=120, help="steps per epoch")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--plate_sizes", type=float, nargs=2, default=(5.0, 48.0),
                   metavar=("MIN", "MAX"),
                   help="short side in pixels plates are scaled to in crops (log-uniform)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument("--init", default="",
                   help="start from this checkpoint's weights (a .pt of an earlier run)")
    p.add_argument("--mine_at", type=int, nargs="*", default=[], metavar="EPOCH",
                   help="mine hard negatives before these epochs (0 = before the first)")
    p.add_argument("--negative_share", type=float, default=0.3,
                   help="share of crops centred on a mined negative, once mined")
    p.add_argument("--square_share", type=float, default=0.0,
                   help="share of crops centred on a square or two-row plate")
    p.add_argument("--oblique", type=float, default=0.0,
                   help="share of crops squeezed across and turned (plates seen at an angle)")
    p.add_argument("--teacher", default="",
                   help="a trained detector's checkpoint whose heatmap and sizes the model "
                        "is also taught to match (after training.distill)")
    p.add_argument("--teacher_weight", type=float, default=1.0)
    p.add_argument("--stop_after", type=int, default=0,
                   help="stop after this epoch (same schedule; --resume continues later)")
    p.add_argument("--pretrained_cache",
                   default=os.path.join(os.path.expanduser("~"), ".cache", "beam_anon",
                                        "pretrained"))
    return p.parse_args(argv)


def focal_loss(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed and divided by the number of peaks."""
    pos = gt.eq(1).float()
    logp, log1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    pos_loss = (pos * (1 - p) ** 2 * logp).sum()
    neg_loss = ((1 - pos) * (1 - gt) ** 4 * p ** 2 * log1mp).sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp(min=1)


def losses(net: PlateNet, batch: dict, teacher: PlateNet | None = None,
           teacher_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """The CenterNet losses on ``batch``; with ``teacher``, also ``teach``: the squared
    difference of the two heatmaps' probabilities, summed and divided by the number of
    labelled peaks (as the focal loss), plus the L1 difference of their log-sizes where the
    teacher is sure (probability over 0.3), times ``teacher_weight``."""
    heat, size, offset = net(batch["image"])
    w = batch["weight"]
    norm = w.sum().clamp(min=1e-3)
    parts = {"heat": focal_loss(heat, batch["heat"]),
             "size": (F.l1_loss(size, batch["scale"], reduction="none") * w).sum() / norm,
             "offset": (F.l1_loss(offset, batch["offset"], reduction="none") * w).sum() / norm}
    if teacher is not None:
        with torch.no_grad():
            t_heat, t_size, _ = teacher(batch["image"])
            t_prob = torch.sigmoid(t_heat)
        sure = (t_prob > 0.3).float()
        peaks = batch["heat"].eq(1).float().sum().clamp(min=1)
        parts["teach"] = teacher_weight * (
            ((torch.sigmoid(heat) - t_prob) ** 2).sum() / peaks
            + (F.l1_loss(size, t_size, reduction="none") * sure).sum() / sure.sum().clamp(min=1))
    return parts


def read_for_view(sample: data.Sample, scale: float) -> tuple[np.ndarray, float]:
    """The image decoded at 1/2, 1/4 or 1/8 size when the crop shrinks it that much anyway
    (JPEG's fast reduced decoding), and the factor it was reduced by."""
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                         (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if scale * factor <= 1.0:
            image = cv2.imread(sample.path, flag)
            if image is not None:
                return image, sample.width / image.shape[1]
    return data.read_image(sample), 1.0


def make_batch(samples: list[data.Sample], probs: np.ndarray, rng: np.random.Generator,
               cfg: augment.CropConfig, count: int,
               negatives: dict[str, np.ndarray] | None = None,
               square_probs: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """``count`` training crops by ``probs`` over ``samples`` (``square_probs``: the same over
    the images with a square plate, for ``cfg.square_share``; :func:`square_weights`)."""
    size = cfg.size
    images, parts = [], []
    around_square = dataclasses.replace(cfg, around_plate=1.0, around_negative=0.0)
    for _ in range(count):
        i, square = augment.pick(probs, square_probs, rng, cfg)
        s = samples[i]
        if square:
            scale, x0, y0 = augment.choose_view(s.boxes[augment.is_square(s.boxes)], s.width,
                                                s.height, rng, around_square)
        else:
            scale, x0, y0 = augment.choose_view(s.boxes, s.width, s.height, rng, cfg,
                                                (negatives or {}).get(s.path))
        squeeze, turn, shift = augment.oblique_view(rng, cfg, scale)
        image, f = read_for_view(s, scale)
        crop, boxes = augment.crop(image, s.boxes / f, scale * f, (x0 - shift) / f, y0 / f,
                                   size, cfg.min_box, squeeze, turn)
        if rng.random() < 0.5:
            crop, boxes = augment.flip(crop, boxes)
        crop = augment.photometric(crop, rng)
        images.append(crop[..., ::-1].transpose(2, 0, 1).astype(np.float32))
        parts.append(targets.encode(boxes, (size, size)))
    batch = {k: torch.from_numpy(np.stack([p[k] for p in parts])) for k in parts[0]}
    batch["image"] = torch.from_numpy(np.stack(images))
    return batch


def square_weights(samples: list[data.Sample], probs: np.ndarray) -> np.ndarray:
    """``probs`` kept for the images holding a square plate (:func:`augment.is_square`), zero
    elsewhere, normalised."""
    w = probs * np.array([bool(augment.is_square(s.boxes).any()) for s in samples])
    if not w.sum():
        raise ValueError("--square_share needs square plates in the training set; it has none")
    return w / w.sum()


def source_probs(samples: list[data.Sample]) -> np.ndarray:
    counts = {}
    for s in samples:
        counts[s.dataset] = counts.get(s.dataset, 0) + 1
    w = np.array([SOURCE_WEIGHTS.get(s.dataset, 0.1) / counts[s.dataset] for s in samples])
    return w / w.sum()


def predictor(onnx_model: bytes, threads: int):
    """blob -> (heatmap, scale, offset) of the exported graph (what ships), by onnxruntime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sess = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
    return lambda blob: sess.run(list(OUTPUTS), {INPUT: blob})


def validation(onnx_model: bytes, threads: int, val_video, val_street) -> dict:
    """Recall of the exported graph on both validation sets."""
    predict = predictor(onnx_model, threads)
    out = {"video": validate.evaluate(predict, val_video)}
    if val_street:
        out["street"] = validate.evaluate(predict, val_street)
    return out


def restore(path: str, net: torch.nn.Module, opt, sched) -> dict:
    """The checkpoint at ``path``, its model, optimiser and scheduler states loaded into
    ``net``, ``opt`` and ``sched`` (``--resume``)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    net.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    return ckpt


def record_epoch(out: str, log: list[dict], entry: dict, state: dict) -> None:
    """The end of an epoch: ``entry`` appended to ``log``, printed and written to
    ``<out>/log.jsonl``; ``state`` with the log saved as ``<out>/last.pt`` (atomically, what
    ``--resume`` reads)."""
    log.append(entry)
    print(json.dumps(entry), flush=True)
    with open(os.path.join(out, "log.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")
    last = os.path.join(out, "last.pt")
    torch.save({**state, "log": log}, last + ".part")
    os.replace(last + ".part", last)


def set_train_mode(net: PlateNet) -> None:
    """Train mode, except the backbone's BatchNorm layers (ImageNet statistics kept: batches
    of 16 crops are too small and too alike to re-estimate them)."""
    net.train()
    for m in net.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def main(argv=None) -> int:
    args = parse_args(argv)
    training.start_run(args.out, args.threads, args.seed)
    train_set, val_video = data.training_set(args.data)
    val_street = data.validation_photos(args.val_street, args.val_street_every)
    probs = source_probs(train_set)
    square_probs = square_weights(train_set, probs) if args.square_share > 0 else None
    net = PlateNet(args.backbone, args.width, args.front)
    net.load_pretrained(pretrained_weights(args.backbone, args.pretrained_cache))
    if args.init:
        net.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=False)["model"])
    elif net.lean:
        raise SystemExit("--front lean starts from a distilled checkpoint (--init): "
                         "python -m training.distill")
    teacher = load_checkpoint(args.teacher) if args.teacher else None
    frozen = FROZEN_LEAN if net.lean else FROZEN[args.backbone]
    for name, p in net.named_parameters():
        p.requires_grad = not name.startswith(frozen)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    total = args.epochs * args.steps
    warmup = max(1, min(100, total // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(i, total) / total)))
    start, log, negatives = 0, [], {}
    last = os.path.join(args.out, "last.pt")
    if args.resume and os.path.isfile(last):
        ckpt = restore(last, net, opt, sched)
        start, log = ckpt["epoch"], ckpt["log"]
        negatives = ckpt.get("negatives", {})
        print(f"resumed after epoch {start}", flush=True)
    print(f"train {len(train_set)} images, validate {len(val_video)} video frames + "
          f"{len(val_street)} street photos; {args.backbone}, {sum(p.numel() for p in params)} "
          f"trainable parameters", flush=True)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    for epoch in range(start, args.epochs):
        t0, c0 = time.time(), resource.getrusage(resource.RUSAGE_SELF)
        if epoch in args.mine_at:
            net.eval()
            negatives = mining.mine(predictor(to_onnx(net), args.threads), train_set)
            print(f"mined {sum(len(v) for v in negatives.values())} hard negatives in "
                  f"{len(negatives)} images ({time.time() - t0:.0f} s)", flush=True)
        cfg = augment.CropConfig(size=args.crop, plate_sizes=tuple(args.plate_sizes),
                                 around_negative=args.negative_share if negatives else 0.0,
                                 square_share=args.square_share, oblique=args.oblique)
        set_train_mode(net)
        rngs = [np.random.default_rng((args.seed, epoch, step)) for step in range(args.steps)]
        pending = pool.submit(make_batch, train_set, probs, rngs[0], cfg, args.batch, negatives,
                              square_probs)
        sums: dict[str, float] = {}
        for step in range(args.steps):
            batch = pending.result()
            if step + 1 < args.steps:
                pending = pool.submit(make_batch, train_set, probs, rngs[step + 1], cfg,
                                      args.batch, negatives, square_probs)
            parts = losses(net, batch, teacher, args.teacher_weight)
            loss = sum(parts.values())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            sched.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if (step + 1) % 20 == 0:
                print(f"epoch {epoch + 1} step {step + 1}/{args.steps} loss "
                      f"{sum(sums.values()) / (step + 1):.3f} ({time.time() - t0:.0f} s)",
                      flush=True)
        train_s = time.time() - t0
        net.eval()
        onnx_model = to_onnx(net)
        with open(os.path.join(args.out, f"epoch{epoch + 1}.onnx"), "wb") as f:
            f.write(onnx_model)
        val = validation(onnx_model, args.threads, val_video, val_street)
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        entry = {"epoch": epoch + 1, "loss": {k: round(v / args.steps, 4) for k, v in sums.items()},
                 "lr": sched.get_last_lr()[0], "train_s": round(train_s),
                 "wall_s": round(time.time() - t0),
                 "cpu_s": round(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime),
                 "cpu_kernels": training.CPU_KERNELS, "val": val}
        record_epoch(args.out, log, entry, {
            "model": net.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "epoch": epoch + 1, "args": vars(args),
            "negatives": negatives})
        torch.save({"model": net.state_dict(), "args": vars(args), "epoch": epoch + 1},
                   os.path.join(args.out, f"epoch{epoch + 1}.pt"))
        if args.stop_after and epoch + 1 >= args.stop_after:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
