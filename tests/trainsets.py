"""Small labelled plate sets written to disk for the training tests (``labels.jsonl`` in the
devset's format, images under ``images/``)."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np


def write_set(folder, images: dict[str, tuple[int, int]], lines: list[dict]) -> str:
    """A labels.jsonl set: grey images of (w, h) under images/, the given labels lines."""
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    for name, (w, h) in images.items():
        cv2.imwrite(os.path.join(folder, "images", name), np.full((h, w, 3), 90, np.uint8))
    with open(os.path.join(folder, "labels.jsonl"), "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return str(folder)


def toy_set(folder):
    """``folder`` (a Path) filled with three noisy 128x96 images, each with one white "plate"
    box at (40, 50, 80, 62), and their labels.jsonl."""
    rng = np.random.default_rng(0)
    os.makedirs(folder / "images")
    lines = []
    for i in range(3):
        image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        cv2.rectangle(image, (40, 50), (80, 62), (255, 255, 255), -1)
        cv2.imwrite(str(folder / "images" / f"{i}.jpg"), image)
        lines.append(line(f"{i}.jpg", 128, 96, [(40, 50, 80, 62)], dataset="x"))
    with open(folder / "labels.jsonl", "w") as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def line(name, w, h, boxes, **extra):
    return {"image": f"images/{name}", "width": w, "height": h, "classes": ["plate"],
            "boxes": [{"label": "plate", "x0": b[0], "y0": b[1], "x1": b[2], "y1": b[3]}
                      for b in boxes], **extra}
