"""Training crops, seeded: a square crop of ``size`` pixels around a random plate (scaled so the
plate gets a random size, mostly small: close-ups become distant plates) or anywhere in the image
(at a random scale, for negatives), horizontal flip, colour and blur jitter.

Everything draws from the ``numpy.random.Generator`` it is given, so a seed fixes the crops.
Pure numpy/OpenCV: no torch needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CropConfig:
    """``size``: output side in pixels; ``plate_sizes``: (min, max) short side in pixels a
    plate is scaled to (log-uniform); ``max_upscale``: scale limit (upscaled plates are blurry,
    as in the pipeline's vehicle crops); ``around_plate``: share of crops centred near a plate;
    ``random_scales``: (min, max) scale of the other crops; ``min_box``: boxes whose short side
    ends below this many pixels are dropped from the targets; ``around_negative``: share of
    crops centred on a mined hard negative (:mod:`training.mining`) when the image has one,
    seen at its mining scale times a log-uniform factor of ``negative_jitter``."""

    size: int = 256
    plate_sizes: tuple[float, float] = (5.0, 48.0)
    max_upscale: float = 2.5
    around_plate: float = 0.8
    random_scales: tuple[float, float] = (0.25, 1.2)
    min_box: float = 2.0
    around_negative: float = 0.0
    negative_jitter: tuple[float, float] = (0.7, 1.4)


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _around(box, scale: float, size: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """(scale, x0, y0) of a crop at ``scale`` holding ``box`` at a random place."""
    side = size / scale
    bw, bh = box[2] - box[0], box[3] - box[1]
    x0 = box[0] - rng.uniform(0.0, max(side - bw, 0.0))
    y0 = box[1] - rng.uniform(0.0, max(side - bh, 0.0))
    return scale, float(x0), float(y0)


def choose_view(boxes: np.ndarray, width: int, height: int, rng: np.random.Generator,
                cfg: CropConfig, negatives: np.ndarray | None = None
                ) -> tuple[float, float, float]:
    """(scale, x0, y0): the crop covers image pixels ``x0 .. x0 + size / scale`` (same for y)
    and is resized by ``scale``. Around a plate: the plate's short side becomes a log-uniform
    size of ``plate_sizes`` and it lands at a random place inside the crop. Around a hard
    negative (``negatives``: (M, 5) xyxy + mining scale): near the scale it was mined at."""
    if (cfg.around_negative > 0 and negatives is not None and len(negatives)
            and rng.random() < cfg.around_negative):
        neg = negatives[rng.integers(len(negatives))]
        scale = min(cfg.max_upscale, float(neg[4]) * log_uniform(rng, *cfg.negative_jitter))
        return _around(neg[:4], scale, cfg.size, rng)
    if len(boxes) and rng.random() < cfg.around_plate:
        box = boxes[rng.integers(len(boxes))]
        short = float(min(box[2] - box[0], box[3] - box[1]))
        scale = min(cfg.max_upscale, log_uniform(rng, *cfg.plate_sizes) / max(short, 1.0))
        return _around(box, scale, cfg.size, rng)
    scale = log_uniform(rng, *cfg.random_scales)
    side = cfg.size / scale
    x0 = rng.uniform(min(0.0, width - side), max(0.0, width - side))
    y0 = rng.uniform(min(0.0, height - side), max(0.0, height - side))
    return scale, float(x0), float(y0)


def crop(image: np.ndarray, boxes: np.ndarray, scale: float, x0: float, y0: float,
         size: int, min_box: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """(size x size BGR crop, boxes in crop pixels): the view of :func:`choose_view`, grey
    (114) outside the image; boxes clipped to the crop and kept when their short side is still
    ``min_box`` pixels and at least half of them is inside."""
    matrix = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]], np.float32)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = cv2.warpAffine(image, matrix, (size, size), flags=interp,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(114, 114, 114))
    if not len(boxes):
        return out, np.zeros((0, 4), np.float32)
    moved = (boxes - np.array([x0, y0, x0, y0], np.float32)) * scale
    clipped = moved.clip(0, size)
    area = np.prod(np.clip(moved[:, 2:] - moved[:, :2], 0, None), axis=1)
    inside = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), axis=1)
    keep = (inside >= 0.5 * np.maximum(area, 1e-6)) & (
        (clipped[:, 2:] - clipped[:, :2]).min(axis=1) >= min_box)
    return out, clipped[keep].astype(np.float32)


def flip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right (plates stay plates; the model must not learn text direction)."""
    w = image.shape[1]
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), flipped


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation jitter, sometimes grey, blur or noise (night, haze,
    motion, sensor noise)."""
    img = image.astype(np.float32)
    if rng.random() < 0.8:
        img = img * rng.uniform(0.6, 1.4) + rng.uniform(-30, 30)
        mean = img.mean()
        img = (img - mean) * rng.uniform(0.7, 1.3) + mean
    if rng.random() < 0.1:
        img[:] = img.mean(axis=2, keepdims=True)
    elif rng.random() < 0.5:
        grey = img.mean(axis=2, keepdims=True)
        img = grey + (img - grey) * rng.uniform(0.5, 1.5)
    if rng.random() < 0.2:
        k = int(rng.choice([3, 5]))
        img = cv2.GaussianBlur(img, (k, k), 0)
    if rng.random() < 0.2:
        img = img + rng.normal(0, rng.uniform(2, 8), img.shape).astype(np.float32)
    return img.clip(0, 255).astype(np.uint8)


def sample(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
           cfg: CropConfig = CropConfig()) -> tuple[np.ndarray, np.ndarray]:
    """One augmented training crop (BGR uint8 ``cfg.size`` square) and its boxes."""
    h, w = image.shape[:2]
    scale, x0, y0 = choose_view(boxes, w, h, rng, cfg)
    out, out_boxes = crop(image, boxes, scale, x0, y0, cfg.size, cfg.min_box)
    if rng.random() < 0.5:
        out, out_boxes = flip(out, out_boxes)
    return photometric(out, rng), out_boxes
