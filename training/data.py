"""Plate training data: ``labels.jsonl`` sets (the devset format, README of
``shared/trainset_plates``) loaded and checked, split by video, Kaggle copies removed.

Bad input is an error, never a silent skip: an image file without a labels line, a labels line
without its image, a box outside its image, an empty folder (:class:`DataError`).
Pure numpy/OpenCV: no torch needed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: a box may reach this far past its image's edge (float rounding in the sources) before it is an
#: error
EDGE_TOLERANCE = 1.0
#: video held out for validation (trainset README: the only dashcam-like source)
HELD_OUT_VIDEO = "dayride_type1_002"


class DataError(ValueError):
    """The dataset folder or its labels are not usable; the message names the file and line."""


@dataclass(frozen=True)
class Sample:
    """One labelled image: absolute path, size, (N, 4) float32 xyxy plate boxes, dataset name and
    video (empty when not a video frame)."""

    path: str
    width: int
    height: int
    boxes: np.ndarray
    dataset: str = ""
    video: str = ""


def validation_photos(folder: str, every: int) -> list[Sample]:
    """Every ``every``-th sample of ``folder`` (a validation set, e.g. devset_streetplates; never
    trained on); none when ``folder`` is ''."""
    return load(folder)[::every] if folder else []


def load(folder: str, label: str = "plate") -> list[Sample]:
    """Samples of ``folder`` (``labels.jsonl`` + ``images/``): every image file under
    ``images/`` must have a labels line and every line an image; boxes of ``label`` must lie
    inside their image (within :data:`EDGE_TOLERANCE`) and have positive size."""
    labels = os.path.join(folder, "labels.jsonl")
    if not os.path.isfile(labels):
        raise DataError(f"{folder}: no labels.jsonl (expected the devset format: labels.jsonl "
                        f"+ images/)")
    samples, named = [], set()
    with open(labels, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{labels}:{number}"
            try:
                rec = json.loads(line)
                rel, width, height = rec["image"], int(rec["width"]), int(rec["height"])
                raw = [b for b in rec.get("boxes", []) if b.get("label") == label]
                boxes = np.array([[b["x0"], b["y0"], b["x1"], b["y1"]] for b in raw],
                                 np.float32).reshape(-1, 4)
            except (ValueError, KeyError, TypeError) as err:
                raise DataError(f"{where}: not a valid labels line ({err})") from None
            path = os.path.normpath(os.path.join(folder, rel))
            if not os.path.isfile(path):
                raise DataError(f"{where}: image {rel} does not exist")
            check_boxes(boxes, width, height, where)
            samples.append(Sample(path, width, height, boxes, rec.get("dataset", ""),
                                  rec.get("video", "")))
            named.add(path)
    images = os.path.join(folder, "images")
    files = sorted(os.path.normpath(os.path.join(images, n)) for n in
                   (os.listdir(images) if os.path.isdir(images) else [])
                   if n.lower().endswith(IMAGE_EXTENSIONS))
    unlabelled = [p for p in files if p not in named]
    if unlabelled:
        raise DataError(f"{len(unlabelled)} image(s) in {images} have no line in {labels}, "
                        f"e.g. {os.path.basename(unlabelled[0])}")
    if not samples:
        raise DataError(f"{folder}: no labelled images")
    return samples


def check_boxes(boxes: np.ndarray, width: int, height: int, where: str) -> None:
    """Raises :class:`DataError` for a box of zero size or outside ``width`` x ``height``."""
    for x0, y0, x1, y1 in boxes:
        if not (x1 > x0 and y1 > y0):
            raise DataError(f"{where}: box {[x0, y0, x1, y1]} has no area")
        if (x0 < -EDGE_TOLERANCE or y0 < -EDGE_TOLERANCE or x1 > width + EDGE_TOLERANCE
                or y1 > height + EDGE_TOLERANCE):
            raise DataError(f"{where}: box {[x0, y0, x1, y1]} lies outside its "
                            f"{width}x{height} image")


def read_image(sample: Sample) -> np.ndarray:
    """The sample's BGR uint8 image; its size must match the labels line."""
    image = cv2.imread(sample.path, cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{sample.path}: not a readable image")
    if image.shape[:2] != (sample.height, sample.width):
        raise DataError(f"{sample.path}: {image.shape[1]}x{image.shape[0]} pixels, the labels "
                        f"say {sample.width}x{sample.height}")
    return image


def split(samples: list[Sample], held_out_video: str = HELD_OUT_VIDEO
          ) -> tuple[list[Sample], list[Sample]]:
    """(train, validation): the frames of ``held_out_video`` are the validation part."""
    val = [s for s in samples if s.video == held_out_video]
    return [s for s in samples if s.video != held_out_video], val


def average_hash(image: np.ndarray, side: int = 16) -> np.ndarray:
    """(side*side,) bool: grey image shrunk to side x side, above its mean (same picture at
    another size or JPEG quality -> nearly the same bits)."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    small = cv2.resize(grey, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    return (small > small.mean()).reshape(-1)


def dedupe(samples: list[Sample], hashes: list[np.ndarray], max_bits: int = 12) -> list[Sample]:
    """``samples`` without later copies: a sample whose hash differs from a kept one's in at
    most ``max_bits`` bits (of 256) and whose aspect ratio is within 5 % is dropped."""
    kept, kept_hashes, kept_aspect = [], [], []
    for sample, h in zip(samples, hashes):
        aspect = sample.width / sample.height
        if any(np.count_nonzero(h != k) <= max_bits and abs(aspect / a - 1) < 0.05
               for k, a in zip(kept_hashes, kept_aspect)):
            continue
        kept.append(sample)
        kept_hashes.append(h)
        kept_aspect.append(aspect)
    return kept


def training_set(folder: str) -> tuple[list[Sample], list[Sample]]:
    """(train, validation) of a trainset folder: split by :data:`HELD_OUT_VIDEO`, copies among
    the ``kaggle_carplates`` images removed (trainset README: 135 redundant copies)."""
    train, val = split(load(folder))
    kaggle = [s for s in train if s.dataset == "kaggle_carplates"]
    unique = dedupe(kaggle, [average_hash(read_image(s)) for s in kaggle])
    gone = {s.path for s in kaggle} - {s.path for s in unique}
    return [s for s in train if s.path not in gone], val
