"""Detector-level validation: the model on whole images at 1x (padded to multiples of 32, as
``beam_anon.detectors.centerface`` feeds it), decoded by that same decoder, against labelled
plates. A plate is found when a box scoring at least the threshold overlaps it by IoU >= 0.3 or
covers 70 % of it. This is one look, not the pipeline (which adds vehicle crops, overview and
zooms), so it is a lower bound used to compare epochs and starting points.
"""
from __future__ import annotations

import numpy as np

from beam_anon.boxes import covered_fraction, iou_matrix
from beam_anon.detectors.centerface import CenterFace, blob
from training.data import Sample, read_image

BUCKETS = (("<16", 0, 16), ("16-31", 16, 32), (">=32", 32, 1e9))
THRESHOLDS = (0.2, 0.3, 0.5)


def found(gt: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N,) bool: each GT box overlapped by IoU >= 0.3, or 70 % covered, by one of ``boxes``."""
    if not len(gt) or not len(boxes):
        return np.zeros(len(gt), bool)
    return ((iou_matrix(gt, boxes) >= 0.3) | (covered_fraction(gt, boxes) >= 0.7)).any(axis=1)


def recall_table(hits: dict[float, list], sizes: list) -> dict:
    """``{"t0.3": {"all": r, "<16": r, ...}, ...}`` from per-threshold hit lists and GT sizes."""
    sizes = np.asarray(sizes, np.float32)
    out = {}
    for t, h in hits.items():
        h = np.asarray(h, bool)
        row = {"all": round(float(h.mean()), 3) if len(h) else 0.0}
        for name, lo, hi in BUCKETS:
            sel = (sizes >= lo) & (sizes < hi)
            row[name] = round(float(h[sel].mean()), 3) if sel.any() else None
        out[f"t{t}"] = row
    out["plates"] = int(len(sizes))
    return out


def evaluate(predict, samples: list[Sample]) -> dict:
    """Recall table of ``predict`` (BGR image -> (heat, scale, offset) arrays as the ONNX model
    returns them, batch 1) on ``samples``; also the mean number of boxes per image at 0.3."""
    hits: dict[float, list] = {t: [] for t in THRESHOLDS}
    sizes, boxes_per_image = [], []
    for sample in samples:
        image = read_image(sample)
        heat, scale, offset = predict(blob(image))
        dets = CenterFace.decode(heat[0, 0], scale[0], offset[0], sample.width, sample.height,
                                 min(THRESHOLDS), label="plate")
        for t in THRESHOLDS:
            hits[t] += list(found(sample.boxes, dets.xyxy[dets.scores >= t]))
        boxes_per_image.append(int((dets.scores >= 0.3).sum()))
        sizes += list((sample.boxes[:, 2:] - sample.boxes[:, :2]).min(axis=1))
    table = recall_table(hits, sizes)
    table["boxes_per_image_t0.3"] = (round(float(np.mean(boxes_per_image)), 2)
                                     if boxes_per_image else None)
    return table
