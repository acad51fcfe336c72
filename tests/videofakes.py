"""Helpers for the video tests: a marker clip whose objects a stand-in detector finds exactly
(to test the video plumbing fast and deterministically; the real models have their own tests in
test_video.py), and checks that a region of an output frame is blurred.

Objects are textured squares: ``face`` squares are magenta, ``plate`` squares cyan, both with a
white grid (detail for the blur check). In the frames listed as misses an object is drawn in a
dim shade the :class:`MarkerAnonymizer` does not see, as a detector misses a face: it is still
there and must still come out blurred (that is the temporal step's job).
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np

from beam_anon.detection.anonymize import AnonymizeResult
from beam_anon.detection.blur import blur_boxes
from beam_anon.boxes import Detections

COLOURS = {"face": (255, 0, 255), "plate": (255, 255, 0)}  # BGR
SIDE = 24


def marker_objects(n: int) -> list[dict]:
    """Three objects over ``n`` frames: ``{label, boxes: [xyxy per frame], missed: set}``."""
    a = [[10 + 3 * f, 10, 10 + 3 * f + SIDE, 10 + SIDE] for f in range(n)]
    b = [[120, 50, 120 + SIDE, 50 + SIDE] for _ in range(n)]
    c = [[40 + 2 * f, 60 + (f % 7), 40 + 2 * f + SIDE, 60 + (f % 7) + SIDE // 2]
         for f in range(n)]
    return [{"label": "face", "boxes": a, "missed": {7, 8}},
            {"label": "face", "boxes": b, "missed": {20, 21, 22, 23}},
            {"label": "plate", "boxes": c, "missed": {15}}]


def marker_frames(n: int = 30, size=(160, 96)) -> tuple[list[np.ndarray], list[dict]]:
    """``(frames, objects)``: upright BGR frames of a grey gradient with the objects drawn."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([40 + x * 60 // w, 40 + y * 60 // h, np.full_like(x, 60)], -1)
    objects = marker_objects(n)
    frames = []
    for f in range(n):
        img = base.astype(np.uint8).copy()
        for o in objects:
            x0, y0, x1, y1 = o["boxes"][f]
            colour = np.array(COLOURS[o["label"]])
            img[y0:y1, x0:x1] = colour // 2 if f in o["missed"] else colour
            img[y0:y1:6, x0:x1] = 255
            img[y0:y1, x0:x1:6] = 255
        frames.append(img)
    return frames, objects


class MarkerAnonymizer:
    """Stand-in for ``Anonymizer``: finds the bright marker squares (not the dim ones) and blurs
    them with the real blur. Same contract: ``run(image) -> AnonymizeResult``, ``models()``."""

    def run(self, image: np.ndarray, keep_debug: bool = False) -> AnonymizeResult:
        found = []
        for label, colour in COLOURS.items():
            near = np.abs(image.astype(np.int16) - np.array(colour)).max(axis=2) < 60
            mask = cv2.dilate(near.astype(np.uint8), np.ones((5, 5), np.uint8))
            n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
            boxes = [[x, y, x + w, y + h] for x, y, w, h, area in stats[1:n] if area >= 60]
            found.append(Detections.from_boxes(boxes, [0.9] * len(boxes), label))
        dets = Detections.concat(found)
        return AnonymizeResult(blur_boxes(image, dets), dets, None, {"stage2": 0.0})

    def models(self) -> list[dict]:
        return [{"name": "markers", "sha256": "0" * 64}]


def marker_factory(settings, models_dir):
    return MarkerAnonymizer()


def detail(img: np.ndarray, box) -> float:
    """High-frequency energy (variance of the Laplacian) of the grey pixels inside the inner 80 %
    of ``box`` (xyxy)."""
    x0, y0, x1, y1 = np.asarray(box, float)
    dx, dy = (x1 - x0) * 0.1, (y1 - y0) * 0.1
    x0, y0, x1, y1 = int(np.ceil(x0 + dx)), int(np.ceil(y0 + dy)), int(x1 - dx), int(y1 - dy)
    grey = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2GRAY).astype(np.float32)
    return float(cv2.Laplacian(grey, cv2.CV_32F)[y0:y1, x0:x1].var())


def blurred(before: np.ndarray, after: np.ndarray, box, ratio: float = 0.35) -> bool:
    """Whether ``after`` has at most ``ratio`` of the detail ``before`` has inside ``box``."""
    return detail(after, box) <= ratio * max(detail(before, box), 1e-6)


def read_sidecar(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def leftovers(out_dir: str) -> list[str]:
    """Temporary files or parts left under ``out_dir``."""
    found = []
    for root, dirs, files in os.walk(out_dir):
        found += [os.path.join(root, d) for d in dirs if d == ".video_parts"]
        found += [os.path.join(root, f) for f in files if f.endswith(".tmp")]
    return found
