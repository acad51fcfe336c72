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
    seen at its mining scale times a log-uniform factor of ``negative_jitter``; ``square_share``:
    share of crops centred on a square or two-row plate (:func:`is_square`), drawn from the
    images that have one (:func:`pick`); ``oblique``: share of crops seen as from the side
    (:func:`oblique_view`): squeezed across by a log-uniform factor of ``squeeze`` and turned by
    up to ``max_turn`` degrees (plates on cars seen at an angle are narrow, tall boxes)."""

    size: int = 256
    plate_sizes: tuple[float, float] = (5.0, 48.0)
    max_upscale: float = 2.5
    around_plate: float = 0.8
    random_scales: tuple[float, float] = (0.25, 1.2)
    min_box: float = 2.0
    around_negative: float = 0.0
    negative_jitter: tuple[float, float] = (0.7, 1.4)
    square_share: float = 0.0
    oblique: float = 0.0
    squeeze: tuple[float, float] = (0.35, 1.0)
    max_turn: float = 15.0


#: a plate box narrower than this many times its height is square (two-row plates, tuk-tuks,
#: motorbikes); there are 269 such plates in the training set
SQUARE_ASPECT = 1.3


def is_square(boxes: np.ndarray) -> np.ndarray:
    """(N,) True for the boxes (N, 4 xyxy) whose width is under ``SQUARE_ASPECT`` x height."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return (boxes[:, 2] - boxes[:, 0]) < SQUARE_ASPECT * (boxes[:, 3] - boxes[:, 1])


def pick(probs: np.ndarray, square_probs: np.ndarray | None, rng: np.random.Generator,
         cfg: CropConfig) -> tuple[int, bool]:
    """(image index, square): an image drawn by ``probs``, or with ``cfg.square_share`` one by
    ``square_probs`` (the same weights over the images holding a square plate) with
    ``square`` True: its crop is then centred on one of those plates. Draws nothing extra
    when ``square_share`` is 0 (runs without it draw exactly what they drew before)."""
    if cfg.square_share > 0 and square_probs is not None and rng.random() < cfg.square_share:
        return int(rng.choice(len(square_probs), p=square_probs)), True
    return int(rng.choice(len(probs), p=probs)), False


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


def oblique_view(rng: np.random.Generator, cfg: CropConfig, scale: float
                 ) -> tuple[float, float, float]:
    """(squeeze, turn, shift) for a crop at ``scale``: with ``cfg.oblique``, the view is
    squeezed across by ``squeeze`` (< 1: it covers ``1 / squeeze`` times the width, so move its
    left edge ``shift`` image pixels left to keep the chosen plate anywhere in it) and turned by
    ``turn`` degrees about its centre; else ``(1, 0, 0)``. Draws nothing when ``oblique`` is 0."""
    if cfg.oblique <= 0 or rng.random() >= cfg.oblique:
        return 1.0, 0.0, 0.0
    squeeze = log_uniform(rng, *cfg.squeeze)
    turn = float(rng.uniform(-cfg.max_turn, cfg.max_turn))
    side = cfg.size / scale
    return squeeze, turn, float(rng.uniform(0.0, side / squeeze - side))


def crop(image: np.ndarray, boxes: np.ndarray, scale: float, x0: float, y0: float,
         size: int, min_box: float = 2.0, squeeze: float = 1.0, turn: float = 0.0
         ) -> tuple[np.ndarray, np.ndarray]:
    """(size x size BGR crop, boxes in crop pixels): the view of :func:`choose_view` (and of
    :func:`oblique_view`: x scaled by ``scale * squeeze``, then turned ``turn`` degrees about
    the crop's centre), grey (114) outside the image; boxes (a turned box becomes the box
    around its corners) clipped to the crop and kept when their short side is still
    ``min_box`` pixels and at least half of them is inside."""
    oblique = squeeze != 1.0 or turn != 0.0   # else the plain path, exactly as before
    matrix = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]], np.float32)
    if oblique:
        matrix = _turned(np.array([[scale * squeeze, 0.0, -x0 * scale * squeeze],
                                   [0.0, scale, -y0 * scale]]), turn, size)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = cv2.warpAffine(image, matrix, (size, size), flags=interp,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(114, 114, 114))
    if not len(boxes):
        return out, np.zeros((0, 4), np.float32)
    if oblique:
        moved = _box_through(np.asarray(boxes, np.float64), matrix).astype(np.float32)
    else:
        moved = (boxes - np.array([x0, y0, x0, y0], np.float32)) * scale
    clipped = moved.clip(0, size)
    area = np.prod(np.clip(moved[:, 2:] - moved[:, :2], 0, None), axis=1)
    inside = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), axis=1)
    keep = (inside >= 0.5 * np.maximum(area, 1e-6)) & (
        (clipped[:, 2:] - clipped[:, :2]).min(axis=1) >= min_box)
    return out, clipped[keep].astype(np.float32)


def _turned(matrix: np.ndarray, turn: float, size: int) -> np.ndarray:
    """The 2x3 affine ``matrix`` followed by a turn of ``turn`` degrees about the centre of a
    ``size`` square (float32, for OpenCV)."""
    rot = cv2.getRotationMatrix2D((size / 2, size / 2), turn, 1.0)
    return np.hstack([rot[:, :2] @ matrix[:, :2],
                      (rot[:, :2] @ matrix[:, 2] + rot[:, 2])[:, None]]).astype(np.float32)


def _box_through(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy: the boxes around the corners of ``boxes`` (N, 4) mapped by ``matrix``."""
    x0, y0, x1, y1 = boxes.T
    corners = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1),
                        np.stack([x0, y1], 1), np.stack([x1, y1], 1)], 1)  # (N, 4, 2)
    mapped = corners @ matrix[:, :2].T.astype(np.float64) + matrix[:, 2]
    return np.concatenate([mapped.min(1), mapped.max(1)], 1)


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
    squeeze, turn, shift = oblique_view(rng, cfg, scale)
    out, out_boxes = crop(image, boxes, scale, x0 - shift, y0, cfg.size, cfg.min_box,
                          squeeze, turn)
    if rng.random() < 0.5:
        out, out_boxes = flip(out, out_boxes)
    return photometric(out, rng), out_boxes
