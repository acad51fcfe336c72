"""Hard negatives: places in the training images where the current model sees a plate and the
labels have none, so that training crops can be centred on them (``augment.choose_view``).

The pipeline's false plate boxes are mostly plate-like texture (grilles, signs, window frames,
text) that random crops rarely show the model at the scale it errs at. Labels are incomplete
(trainset README: distant plates may have no box), so a mined box is kept only when it is
unlikely to be an unlabelled plate: its short side is at least :data:`MIN_SIDE` image pixels
(distant plates are what the labels miss), it scores below :data:`MAX_SCORE` (a confident box
is as likely a missed label as a mistake) and it keeps clear of every labelled plate.

Each negative is ``(x0, y0, x1, y1, scale)``: image pixels, and the scale the model saw the
image at when it erred (crops are drawn near that scale). Pure numpy/OpenCV + a ``predict``
callable: no torch needed.
"""
from __future__ import annotations

import cv2
import numpy as np

from beam_anon.boxes import Detections, expand, intersections
from beam_anon.detectors.centerface import CenterFace, blob
from training.data import Sample, read_image

#: the model sees each training image with its long side at these sizes (when that shrinks
#: it): about the full-frame look and the pipeline's overview (``overview_size``)
LOOK_SIDES = (1024, 320)
MIN_SCORE = 0.12       # a little under the pipeline's plate threshold (0.15)
MAX_SCORE = 0.6
MIN_SIDE = 12.0        # image pixels, the box's short side
CLEARANCE = 0.5        # a negative may not touch a labelled plate grown by this part per side
PER_VIEW = 4           # the highest-scoring negatives of an image per view


def clear_of(boxes: np.ndarray, plates: np.ndarray, grow: float = CLEARANCE) -> np.ndarray:
    """(N,) True where a box of ``boxes`` (N, 4) does not intersect any of ``plates`` (M, 4)
    grown by ``grow`` of its width and height per side."""
    grown = expand(Detections.from_boxes(plates, np.ones(len(plates)), "plate"), grow).xyxy
    return ~(intersections(boxes, grown) > 0).any(axis=1)


def select(xyxy: np.ndarray, scores: np.ndarray, plates: np.ndarray,
           scale: float) -> np.ndarray:
    """(K, 5) negatives among detections ``xyxy`` (image pixels) scored ``scores`` at
    ``scale``: in [MIN_SCORE, MAX_SCORE), short side >= MIN_SIDE, clear of ``plates``."""
    short = (xyxy[:, 2:] - xyxy[:, :2]).min(axis=1) if len(xyxy) else np.zeros(0)
    keep = ((scores >= MIN_SCORE) & (scores < MAX_SCORE) & (short >= MIN_SIDE)
            & clear_of(xyxy, plates))
    order = np.argsort(-scores[keep], kind="stable")
    picked = xyxy[keep][order]
    return np.concatenate([picked, np.full((len(picked), 1), scale, np.float32)],
                          axis=1).astype(np.float32)


def resize(image: np.ndarray, scale: float) -> np.ndarray:
    """``image`` shrunk by ``scale`` (INTER_AREA), itself when ``scale`` is 1."""
    h, w = image.shape[:2]
    return image if scale == 1.0 else cv2.resize(
        image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def mine_image(predict, image: np.ndarray, plates: np.ndarray) -> np.ndarray:
    """(K <= PER_VIEW per view, 5) negatives of one BGR image over the :data:`LOOK_SIDES` views
    (``predict``: blob -> heatmap, scale, offset as the exported model returns them)."""
    h, w = image.shape[:2]
    found = []
    for side in LOOK_SIDES:
        scale = min(1.0, side / max(h, w))
        view = resize(image, scale)
        heat, size, offset = predict(blob(view))
        dets = CenterFace.decode(heat[0, 0], size[0], offset[0], view.shape[1], view.shape[0],
                                 MIN_SCORE, label="plate")
        found.append(select(dets.xyxy / scale, dets.scores, plates, scale)[:PER_VIEW])
        if scale == 1.0:
            break
    return np.concatenate(found) if found else np.zeros((0, 5), np.float32)


def mine(predict, samples: list[Sample]) -> dict[str, np.ndarray]:
    """``{image path: (K, 5) negatives}`` for every sample with at least one."""
    out = {}
    for sample in samples:
        rows = mine_image(predict, read_image(sample), sample.boxes)
        if len(rows):
            out[sample.path] = rows
    return out
