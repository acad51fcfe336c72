"""Crop classifiers: a second opinion on a detector's boxes (``beamplate-check``, ``training/``).

A detector scores a box from what its small receptive field sees; a crop classifier sees the
whole box, normalised to its size, with some context around it (a plate's frame, the bumper
below it). Each box (image pixels, xyxy) becomes a *region*: the box grown to
:data:`CONTEXT` times its width and height around its centre, then widened or heightened to
:data:`ASPECT` (w / h), so square and wide plates keep their shape. The region is resized to
:data:`INPUT_W` x :data:`INPUT_H` pixels (grey :data:`FILL` outside the image).

Contract of the graph: input ``crops`` [N, 3, 48, 96] RGB float32 0-255 (normalisation inside),
output ``prob`` [N, 1]: the probability that the box holds the object (a plate).
The same :func:`crops` cuts the inputs when training (``training.check``), so training and the
pipeline see boxes the same way.
"""
from __future__ import annotations

import cv2
import numpy as np

from beam_anon.detectors import runtime

INPUT_W, INPUT_H = 96, 48
ASPECT = INPUT_W / INPUT_H
CONTEXT = 1.6
FILL = 114
BATCH = 64


def regions(xyxy: np.ndarray) -> np.ndarray:
    """(N, 4) regions of (N, 4) boxes: grown to CONTEXT times their size, then to ASPECT."""
    xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
    centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    wh = np.maximum(xyxy[:, 2:] - xyxy[:, :2], 1.0) * CONTEXT
    w = np.maximum(wh[:, 0], wh[:, 1] * ASPECT)
    h = w / ASPECT
    half = np.stack([w, h], axis=1) / 2
    return np.concatenate([centre - half, centre + half], axis=1)


def cut(image: np.ndarray, area, out_w: int, out_h: int) -> np.ndarray:
    """(out_h, out_w, 3) BGR: the image area ``area`` (xyxy pixels, may reach outside: grey
    :data:`FILL` there) resized to ``out_w`` x ``out_h`` (area averaging where it shrinks)."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = map(float, area)
    sx, sy = out_w / max(x1 - x0, 1e-6), out_h / max(y1 - y0, 1e-6)
    ix0, iy0 = int(max(np.floor(x0), 0)), int(max(np.floor(y0), 0))
    ix1, iy1 = int(min(np.ceil(x1), width)), int(min(np.ceil(y1), height))
    if ix1 <= ix0 or iy1 <= iy0:
        return np.full((out_h, out_w, 3), FILL, np.uint8)
    part, fx, fy = image[iy0:iy1, ix0:ix1], 1.0, 1.0
    if sx < 1 or sy < 1:   # shrink by averaging first, then place (warpAffine samples)
        nw = max(1, round((ix1 - ix0) * min(sx, 1.0)))
        nh = max(1, round((iy1 - iy0) * min(sy, 1.0)))
        fx, fy = nw / (ix1 - ix0), nh / (iy1 - iy0)
        part = cv2.resize(part, (nw, nh), interpolation=cv2.INTER_AREA)
    matrix = np.array([[sx / fx, 0, (ix0 - x0) * sx], [0, sy / fy, (iy0 - y0) * sy]],
                      np.float32)
    return cv2.warpAffine(part, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(FILL,) * 3)


def crops(image: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
    """(N, 3, INPUT_H, INPUT_W) float32 RGB 0-255: the region of each box of ``xyxy`` (image
    pixels) cut from the BGR ``image`` (H, W, 3) by :func:`cut`."""
    out = np.empty((len(xyxy), 3, INPUT_H, INPUT_W), np.float32)
    for i, area in enumerate(regions(xyxy)):
        out[i] = cut(image, area, INPUT_W, INPUT_H)[..., ::-1].transpose(2, 0, 1)
    return out


#: (width, height) in pixels of the boxes :func:`calibration_boxes` tiles an image with: wide,
#: square and tall plates from distant to near
CALIBRATION_BOXES = ((16, 6), (32, 10), (48, 24), (64, 16), (40, 40), (24, 48), (120, 40),
                     (200, 100))
CALIBRATION_PER_SIZE = 24


def calibration_boxes(width: int, height: int) -> np.ndarray:
    """(N, 4) xyxy boxes of every :data:`CALIBRATION_BOXES` size, up to
    :data:`CALIBRATION_PER_SIZE` each, spread evenly over a ``width`` x ``height`` image."""
    out = []
    for bw, bh in CALIBRATION_BOXES:
        if bw > width or bh > height:
            continue
        xs = np.arange(0, width - bw + 1, bw)
        ys = np.arange(0, height - bh + 1, bh)
        grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.float32)
        pick = np.linspace(0, len(grid) - 1, min(CALIBRATION_PER_SIZE, len(grid))).round()
        xy = grid[pick.astype(int)]
        out.append(np.concatenate([xy, xy + (bw, bh)], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 4), np.float32)


class CropCheck:
    """A loaded crop classifier (registry family ``crop_check``): :meth:`scores` of boxes of
    the detectors named in :attr:`checks`."""

    name: str = ""
    role: str = ""
    variant: str = "original"
    sha256: str = ""
    licence: str = "unknown"

    def __init__(self, spec: dict, model_dir: str, variant: str, device: str):
        self.session = runtime.session(runtime.model_file(spec, model_dir, variant), device)
        io = spec.get("io", {})
        self.input_name = io.get("input", "crops")
        self.output = io.get("outputs", ["prob"])[0]
        #: the detectors whose boxes it was trained on (registry ``checks``): it is asked
        #: about their boxes only
        self.checks = tuple(spec.get("checks", ()))

    def calibration_feeds(self, image: np.ndarray) -> list[dict]:
        """Input dicts of :data:`BATCH` crops each for INT8 calibration
        (``beam_anon.models.derived``): boxes tiling ``image`` at :data:`CALIBRATION_BOXES`
        sizes, as :meth:`scores` cuts them."""
        boxes = calibration_boxes(image.shape[1], image.shape[0])
        return [{self.input_name: crops(image, boxes[i:i + BATCH])}
                for i in range(0, len(boxes), BATCH)]

    def scores(self, image: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
        """(N,) probability that each box (image pixels, xyxy) of the BGR ``image`` holds the
        object; batches of :data:`BATCH` crops per pass."""
        xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
        out = [self.session.run([self.output], {self.input_name: crops(image, xyxy[i:i + BATCH])})
               [0].reshape(-1) for i in range(0, len(xyxy), BATCH)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)
