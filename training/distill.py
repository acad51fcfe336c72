"""Teach a lean front the features of a trained detector's first layers (feature distillation).

``nice -n 5 python -m training.distill --teacher RUN/last.pt --out RUN2`` (``--help``).

The student is the teacher with :class:`training.model.LeanFront` in place of EfficientNet-Lite0's
stem and blocks 0-1 (the stride-2 layers: 40 % of a 1280x736 pass). Every other weight is the
teacher's, copied. Only the front trains, on the detector's own training crops
(:func:`training.train.make_batch`), to minimise the mean squared difference between its output
and the teacher's block-1 output, divided by that output's mean square (so 1.0 is "no better than
zeros"). ``<out>/last.pt`` is a :mod:`training.train` checkpoint (``front: lean``): fine-tune it with
``python -m training.train --front lean --init <out>/last.pt``. The last epoch exports the student
and logs its validation recall, as :mod:`training.train` does.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch

import training
from training import augment, data, train
from training.export import load_checkpoint, to_onnx
from training.model import PlateNet


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.distill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="checkpoint (.pt) of a trained detector")
    p.add_argument("--out", required=True, help="run folder (last.pt, log.jsonl)")
    p.add_argument("--data", default=os.path.join(train.SHARED, "trainset_plates"))
    p.add_argument("--val_street", default=os.path.join(train.SHARED, "devset_streetplates"),
                   help="validation only; '' to skip")
    p.add_argument("--val_street_every", type=int, default=1)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--plate_sizes", type=float, nargs=2, default=(5.0, 80.0))
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    return p.parse_args(argv)


def student_of(teacher: PlateNet) -> PlateNet:
    """A lean-front copy of ``teacher``: every weight but the front's is the teacher's."""
    if teacher.backbone_name != "efficientnet_lite0" or teacher.lean:
        raise ValueError("the teacher must be an EfficientNet-Lite0 detector with its own front")
    student = PlateNet(teacher.backbone_name, teacher.lat4[0].out_channels, front="lean")
    result = student.load_state_dict(teacher.state_dict(), strict=False)
    untaught = [k for k in result.missing_keys if not k.startswith("backbone.front.")]
    if untaught:
        raise ValueError(f"the student has weights the teacher lacks: {untaught[:3]}")
    return student


def distill_loss(student: PlateNet, teacher: PlateNet, rgb: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the student's front and the teacher's stem on ``rgb`` (RGB
    0-255 NCHW), over the teacher's mean square."""
    with torch.no_grad():
        want = teacher.backbone.stem(teacher.backbone_input(rgb))
    got = student.backbone.stem(student.backbone_input(rgb))
    return ((got - want) ** 2).mean() / (want ** 2).mean().clamp(min=1e-6)


def main(argv=None) -> int:
    args = parse_args(argv)
    training.start_run(args.out, args.threads, args.seed)
    teacher = load_checkpoint(args.teacher)
    student = student_of(teacher)
    train_set, val_video = data.training_set(args.data)
    val_street = data.validation_photos(args.val_street, args.val_street_every)
    probs = train.source_probs(train_set)
    params = list(student.backbone.front.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    total = args.epochs * args.steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))
    start, log = 0, []
    last = os.path.join(args.out, "last.pt")
    if args.resume and os.path.isfile(last):
        start, log = (c := train.restore(last, student, opt, sched))["epoch"], c["log"]
        print(f"resumed after epoch {start}", flush=True)
    cfg = augment.CropConfig(size=args.crop, plate_sizes=tuple(args.plate_sizes))
    # what training.export.load_checkpoint needs to rebuild the student
    saved_args = {**vars(args), "backbone": student.backbone_name,
                  "width": student.lat4[0].out_channels, "front": "lean"}
    for epoch in range(start, args.epochs):
        t0 = time.time()
        student.eval()
        student.backbone.front.train()
        total_loss = 0.0
        for step in range(args.steps):
            rng = np.random.default_rng((args.seed, epoch, step))
            batch = train.make_batch(train_set, probs, rng, cfg, args.batch)
            loss = distill_loss(student, teacher, batch["image"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach())
            if (step + 1) % 20 == 0:
                print(f"epoch {epoch + 1} step {step + 1}/{args.steps} relative error "
                      f"{total_loss / (step + 1):.4f} ({time.time() - t0:.0f} s)", flush=True)
        student.eval()
        entry = {"epoch": epoch + 1, "relative_error": round(total_loss / args.steps, 4),
                 "lr": sched.get_last_lr()[0], "wall_s": round(time.time() - t0),
                 "cpu_kernels": training.CPU_KERNELS}
        if epoch + 1 == args.epochs:
            entry["val"] = train.validation(to_onnx(student), args.threads, val_video,
                                            val_street)
        train.record_epoch(args.out, log, entry, {
            "model": student.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "epoch": epoch + 1, "args": saved_args})
    return 0


if __name__ == "__main__":
    sys.exit(main())
