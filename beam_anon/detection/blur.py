"""Make the pixels inside boxes unrecognizable: gaussian (default), pixelate or solid fill.

Strength scales with each box: the gaussian sigma and the pixelate cell are ``strength`` times
the box's longer side, so a large face gets as little detail left as a small one. Only pixels
inside a box change, and a box is blurred from its own pixels only (nothing from inside leaks out).
"""
from __future__ import annotations

import cv2
import numpy as np

from beam_anon.boxes import Detections

MODES = ("gaussian", "pixelate", "solid")
_WORK_SIGMA = 2.0  # sigma in pixels at the reduced size where large blurs are computed


def _pixel_box(xyxy: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """Float box -> integer pixel rectangle that contains it, clipped to the image."""
    x0, y0 = max(0, int(np.floor(xyxy[0]))), max(0, int(np.floor(xyxy[1])))
    x1, y1 = min(width, int(np.ceil(xyxy[2]))), min(height, int(np.ceil(xyxy[3])))
    return x0, y0, x1, y1


def _gaussian(roi: np.ndarray, strength: float) -> np.ndarray:
    h, w = roi.shape[:2]
    sigma = max(1.0, strength * max(h, w))
    # A blur of sigma s at full size ~ a blur of _WORK_SIGMA at size / (s / _WORK_SIGMA):
    # computing it small keeps the cost independent of the box size.
    factor = max(1.0, sigma / _WORK_SIGMA)
    sw, sh = max(1, round(w / factor)), max(1, round(h / factor))
    small = cv2.resize(roi, (sw, sh), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma / factor, borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _pixelate(roi: np.ndarray, strength: float) -> np.ndarray:
    h, w = roi.shape[:2]
    cell = max(2.0, strength * max(h, w))
    small = cv2.resize(roi, (max(1, round(w / cell)), max(1, round(h / cell))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _solid(roi: np.ndarray, strength: float) -> np.ndarray:
    return np.broadcast_to(roi.reshape(-1, roi.shape[-1]).mean(axis=0).astype(roi.dtype),
                           roi.shape)


_BLURS = {"gaussian": _gaussian, "pixelate": _pixelate, "solid": _solid}


def blur_boxes(image: np.ndarray, boxes: Detections, mode: str = "gaussian",
               strength: float = 0.25) -> np.ndarray:
    """Return a copy of ``image`` (H, W, C uint8) with every box (xyxy pixels) obscured.

    Overlapping boxes are handled by blurring the larger boxes first, so a small box inside a
    large one is obscured again after (never un-blurred)."""
    if mode not in _BLURS:
        raise ValueError(f"unknown blur mode {mode!r}; choose one of {', '.join(MODES)}")
    out = image.copy()
    height, width = image.shape[:2]
    for i in np.argsort(-boxes.area, kind="stable"):
        x0, y0, x1, y1 = _pixel_box(boxes.xyxy[i], width, height)
        if x1 > x0 and y1 > y0:
            out[y0:y1, x0:x1] = _BLURS[mode](out[y0:y1, x0:x1], strength)
    return out
