"""The shipped beamplate, start to end: ``nice -n 5 python -m training.recipe --export``
(about 45 min on a 2-core CPU; ``--help``).

Stages (each a :mod:`training.train` run in ``<out>/<stage>``, resumable; a finished stage is
skipped), then the export of the last stage to ``models/own/beamplate.onnx`` with its sha256,
this command and the commit written into ``models/registry.json`` (``--export``):

1. ``base``: 16 epochs from ImageNet EfficientNet-Lite0, plates scaled to 5-80 px;
2. ``negatives``: 6 epochs from ``base`` at half the learning rate, hard negatives mined before
   epochs 1 and 4 (:mod:`training.mining`): the plate-like texture (badges, lamps, signs,
   windows) the model as it stands boxes where no plate is. (A second such stage, and 20
   epochs from ImageNet with mining inside, measured worse: docs/model_beamplate.md.)
3. ``shapes``: 4 epochs from ``negatives``, negatives mined again, a quarter of the crops
   centred on square and two-row plates and 30 % of them seen as from the side (squeezed
   across, turned): the plates the street photos still lost.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from training import export, train

COMMON = ["--backbone", "efficientnet_lite0", "--steps", "60", "--plate_sizes", "5", "80",
          "--val_street_every", "3"]
#: (stage, options on top of COMMON); ``{prev}`` is the previous stage's folder
STAGES = [
    ("base", ["--epochs", "16"]),
    ("negatives", ["--epochs", "6", "--lr", "1e-3", "--init", "{prev}/last.pt",
                   "--mine_at", "0", "3", "--negative_share", "0.3"]),
    ("shapes", ["--epochs", "4", "--lr", "1e-3", "--init", "{prev}/last.pt", "--mine_at", "0",
                "--negative_share", "0.3", "--square_share", "0.25", "--oblique", "0.3"]),
]


def stage_args(out: str, extra: list[str]) -> list[list[str]]:
    """The :mod:`training.train` argument lists of every stage, in order."""
    runs, prev = [], ""
    for name, opts in STAGES:
        folder = os.path.join(out, name)
        runs.append(["--out", folder, *COMMON, *[o.format(prev=prev) for o in opts], *extra])
        prev = folder
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.recipe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join("training", "runs", "beamplate"))
    p.add_argument("--export", action="store_true",
                   help="write the result to models/own/beamplate.onnx and the registry")
    p.add_argument("train_options", nargs=argparse.REMAINDER,
                   help="after --: passed to every stage (e.g. -- --threads 4)")
    args = p.parse_args(argv)
    extra = [a for a in args.train_options if a != "--"]
    for run in stage_args(args.out, extra):
        print("python -m training.train " + shlex.join(run), flush=True)
        if train.main(run + ["--resume"]):
            return 1
    if args.export:
        # the run folder (--out) holds checkpoints, not anything the weights depend on: left
        # out of the recorded command, as training.check does
        command = "nice -n 5 python -m training.recipe " + shlex.join(
            ["--export", *(["--", *extra] if extra else [])])
        export.main(["--checkpoint", os.path.join(stage_args(args.out, extra)[-1][1],
                                                  "last.pt"),
                     "--out", os.path.join(os.path.dirname(export.REGISTRY), "own",
                                           "beamplate.onnx"),
                     "--registry", "--command", command])
    return 0


if __name__ == "__main__":
    sys.exit(main())
