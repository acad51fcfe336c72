"""Examples for the plate crop classifier (``beamplate-check``): the boxes the plate detector
really draws on the training images, labelled plate or not, cut as patches that training
crops are jittered from.

* **Candidates**: the shipped detector (``predict``) on each training image at the views of
  :data:`VIEWS` (long side in pixels, when that shrinks it: about the pipeline's full-frame,
  vehicle and overview looks), decoded down to :data:`MIN_SCORE`.
* **Positive**: a candidate overlapping a labelled plate by IoU >= :data:`POSITIVE_IOU`, and
  every labelled plate itself.
* **Negative**: a candidate clear of every labelled plate (``mining.clear_of``), short side at
  least :data:`MIN_SIDE` image pixels and scoring under :data:`MAX_SCORE` (labels are
  incomplete: small or confident boxes away from labels may be unlabelled plates). Others
  (partly on a plate) are left out.

A patch is the box's classifier region (``crop_check.regions``) grown :data:`PATCH_GROW` times,
cut at :data:`PATCH_W` x :data:`PATCH_H` (twice the classifier's input): room to jitter the box.
Pure numpy/OpenCV + ``predict``: no torch needed.
"""
from __future__ import annotations

import numpy as np

from beam_anon.boxes import iou_matrix
from beam_anon.detectors import crop_check
from beam_anon.detectors.centerface import CenterFace, blob
from training import mining
from training.data import Sample, read_image

VIEWS = (1024, 640, 320)
MIN_SCORE = 0.08
MAX_SCORE = 0.6
MIN_SIDE = 10.0
POSITIVE_IOU = 0.3
PER_VIEW = 12          # negatives per image and view, the highest-scoring
PATCH_GROW = 2.0
PATCH_W, PATCH_H = 2 * crop_check.INPUT_W, 2 * crop_check.INPUT_H


def patch_region(box: np.ndarray) -> np.ndarray:
    """(4,) the image area a patch of ``box`` holds."""
    region = crop_check.regions(box[None])[0]
    centre, half = (region[:2] + region[2:]) / 2, (region[2:] - region[:2]) * PATCH_GROW / 2
    return np.concatenate([centre - half, centre + half])


def cut_patch(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(PATCH_H x PATCH_W BGR patch, the box in patch pixels)."""
    area = patch_region(box)
    patch = crop_check.cut(image, area, PATCH_W, PATCH_H)
    scale = np.array([PATCH_W / (area[2] - area[0]), PATCH_H / (area[3] - area[1])] * 2,
                     np.float32)
    return patch, ((box - np.tile(area[:2], 2)) * scale).astype(np.float32)


def candidates(predict, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((K, 4) boxes in image pixels, (K,) scores) the detector draws at every view."""
    h, w = image.shape[:2]
    boxes, scores = [], []
    for side in VIEWS:
        scale = min(1.0, side / max(h, w))
        view = mining.resize(image, scale)
        heat, size, offset = predict(blob(view))
        dets = CenterFace.decode(heat[0, 0], size[0], offset[0], view.shape[1], view.shape[0],
                                 MIN_SCORE, label="plate")
        boxes.append(dets.xyxy / scale)
        scores.append(dets.scores)
        if scale == 1.0:
            break
    return np.concatenate(boxes).astype(np.float32), np.concatenate(scores).astype(np.float32)


def label(boxes: np.ndarray, scores: np.ndarray, plates: np.ndarray) -> np.ndarray:
    """(K,) 1 positive, 0 negative, -1 left out (see the module's rules)."""
    out = np.full(len(boxes), -1, np.int8)
    if not len(boxes):
        return out
    if len(plates):
        out[(iou_matrix(boxes, plates) >= POSITIVE_IOU).any(axis=1)] = 1
    short = (boxes[:, 2:] - boxes[:, :2]).min(axis=1)
    negative = (out < 0) & (scores < MAX_SCORE) & (short >= MIN_SIDE) & mining.clear_of(
        boxes, plates)
    out[negative] = 0
    return out


def examples(predict, sample: Sample) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """(patches, boxes in patch pixels, labels 1/0) of one training image: its labelled plates,
    the candidates that overlap them, and up to :data:`PER_VIEW` negatives per view."""
    image = read_image(sample)
    boxes, scores = candidates(predict, image)
    labels = label(boxes, scores, sample.boxes)
    negatives = np.flatnonzero(labels == 0)
    negatives = negatives[np.argsort(-scores[negatives], kind="stable")][:PER_VIEW * len(VIEWS)]
    chosen = [(b, 1) for b in sample.boxes] + [(boxes[i], 1) for i in np.flatnonzero(labels == 1)]
    chosen += [(boxes[i], 0) for i in negatives]
    patches, inside, ys = [], [], []
    for box, y in chosen:
        patch, moved = cut_patch(image, np.asarray(box, np.float32))
        patches.append(patch)
        inside.append(moved)
        ys.append(y)
    return patches, inside, ys


def build(predict, samples: list[Sample]) -> dict[str, np.ndarray]:
    """``{"patches": (N, PATCH_H, PATCH_W, 3) uint8, "boxes": (N, 4), "labels": (N,),
    "image": (N,) index into samples}`` for every example of ``samples``, in order."""
    patches, boxes, labels, index = [], [], [], []
    for i, sample in enumerate(samples):
        p, b, y = examples(predict, sample)
        patches += p
        boxes += b
        labels += y
        index += [i] * len(y)
    return {"patches": np.stack(patches).astype(np.uint8) if patches else
            np.zeros((0, PATCH_H, PATCH_W, 3), np.uint8),
            "boxes": np.array(boxes, np.float32).reshape(-1, 4),
            "labels": np.array(labels, np.int8), "image": np.array(index, np.int32)}
