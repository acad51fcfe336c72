"""Verification pass: does anything still look like a face or plate after the blur?

After :class:`beam_anon.detection.anonymize.Anonymizer` blurs an image, :func:`verify_blur` runs the same
stage-2 detectors again on the **anonymized** pixels, where they could still find something:
every blurred region cut out with context (:data:`CONTEXT_FRACTION` of its size per side) and
resized so the region is :data:`RECHECK_BOX_SIZE` pixels (:func:`recheck_crops`), for the
detectors of its role, packed into shared canvases (one or two passes per model), plus the
full-frame tiles at scale 1 when ``verify_full_frame``. A detection scoring at least
``settings.verify_hit(model, role)`` (``verify_threshold`` or the model's ``verify_thresholds``
entry, at least its own threshold) is a *hit*:

* a hit over a blurred region means the blur left something detectable: that region and the hit
  are blurred again, with ``blur_strength * 2**round``;
* a hit elsewhere is something new (the blur changed its context, or the tiling differs): it is
  blurred too (margin included) and added to the blurred boxes; boxes of one label nested in
  each other become their union (``beam_anon.boxes.merge_objects``), which is blurred too.

At most ``settings.verify_rounds`` such rounds; a round with no hit ends it. If the last check
still finds hits the image *needs review* (``beam_anon.detection.review``).
Units: boxes are xyxy pixels of the image given; scores in [0, 1].
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from beam_anon.detection import looks, plan, review
from beam_anon.detection.blur import blur_boxes
from beam_anon.boxes import (Detections, clip, covered_fraction, expand, fuse, map_to_image,
                             merge_objects)
from beam_anon.detection.regions import Crop, int_box, scaled_tiles

CONTEXT_FRACTION = 0.5     # context around a blurred region when it is re-checked, per side
RECHECK_BOX_SIZE = 64      # pixels: a blurred region's long side as the re-check sees it
                           # (96 found no more with weak blurs, at twice the cost)
COVERED_FRACTION = 0.9     # a hit this much inside a blurred box adds no new box

# review reasons (beam_anon.detection.review)
NEAR_THRESHOLD, VERIFY_REBLURRED = review.NEAR_THRESHOLD, review.VERIFY_REBLURRED
VERIFY_SURVIVED, FAILED = review.VERIFY_SURVIVED, review.FAILED


@dataclass
class VerifyResult:
    image: np.ndarray        # final anonymized copy
    boxes: Detections        # every region blurred (the first pass's plus the ones added)
    fixed: Detections        # hits that were blurred (again) in some round
    survived: Detections     # hits still detected after the last round (empty when clean)
    rounds: int              # fix rounds applied (0 = the first check was clean)

    @property
    def needs_review(self) -> bool:
        return len(self.survived) > 0


def _among(xyxy: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(N,) True where a box of ``xyxy`` equals one of ``others`` (within 0.01 px)."""
    if not len(others):
        return np.zeros(len(xyxy), bool)
    return (np.abs(xyxy[:, None, :] - others[None, :, :]).max(axis=2) < 0.01).any(axis=1)


def recheck_crops(boxes: Detections, width: int, height: int, settings) -> list[Crop]:
    """Crops of the blurred ``boxes`` (one role's), each with :data:`CONTEXT_FRACTION` context
    per side, resized so the box's long side is :data:`RECHECK_BOX_SIZE` pixels (upscaled at
    most ``crop_max_upscale``; large boxes are shrunk, which makes a face left recognisable
    easier, not harder, to find)."""
    context = clip(expand(boxes, CONTEXT_FRACTION, 4.0), width, height)
    crops = []
    for box, ctx in zip(boxes.xyxy, context.xyxy):
        scale = min(settings.crop_max_upscale,
                    RECHECK_BOX_SIZE / max(float((box[2:] - box[:2]).max()), 1.0))
        rect = int_box(ctx, width, height)
        if rect is not None:
            crops.append(Crop(rect, scale, "verify"))
    return crops


def detect_again(anonymizer, image: np.ndarray, boxes: Detections,
                 cost: looks.Cost | None = None) -> Detections:
    """Verification hits in ``image`` (already anonymized): stage-2 detections scoring at least
    ``settings.verify_hit(model, role)`` on the :func:`recheck_crops` of ``boxes`` of the
    detector's role (and on full-frame tiles at scale 1 when ``verify_full_frame``); fused, in
    image pixels."""
    settings = anonymizer.settings
    full_height, full_width = image.shape[:2]
    image, scale = looks.detection_copy(image, settings.detect_max_pixels)  # as detect() does
    height, width = image.shape[:2]
    small_boxes = map_to_image(boxes, (0, 0), (1 / scale[0], 1 / scale[1]))
    tiles = (scaled_tiles((0, 0, width, height), 1.0, settings.full_frame_max_side, "verify")
             if settings.verify_full_frame else [])
    found = []
    for name, detector, role, _ in anonymizer.stage2:
        crops = tiles + recheck_crops(small_boxes.with_label(role), width, height, settings)
        found.append(looks.run(detector, image, crops, settings.verify_hit(name, role), cost))
    hits = map_to_image(fuse(Detections.concat(found), settings.nms_iou), (0, 0), scale)
    return clip(hits, full_width, full_height)


def verify_blur(anonymizer, image: np.ndarray, boxes: Detections,
                cost: looks.Cost | None = None) -> VerifyResult:
    """Check ``image`` (anonymized, ``boxes`` = regions blurred in it) and fix what is found, at
    most ``settings.verify_rounds`` times (see the module doc). Never modifies ``image``."""
    settings = anonymizer.settings
    height, width = image.shape[:2]
    fixed = []
    hits = detect_again(anonymizer, image, boxes, cost)
    rounds = 0
    while len(hits) and rounds < settings.verify_rounds:
        rounds += 1
        targets = clip(plan.with_margins(hits, settings), width, height)
        overlapped = (covered_fraction(boxes.xyxy, targets.xyxy).max(axis=1) > 0
                      if len(boxes) else np.zeros(0, bool))
        strength = settings.blur_strength * 2 ** rounds
        image = blur_boxes(image, Detections.concat([boxes[overlapped], targets]),
                           settings.blur_mode, strength)
        new = (covered_fraction(targets.xyxy, boxes.xyxy).max(axis=1) < COVERED_FRACTION
               if len(boxes) else np.ones(len(targets), bool))
        merged = merge_objects(Detections.concat([boxes, targets[new]]))
        grown = merged[~_among(merged.xyxy, boxes.xyxy)]  # unions of nested boxes: blur them
        if len(grown):
            image = blur_boxes(image, grown, settings.blur_mode, strength)
        boxes = merged
        fixed.append(hits)
        hits = detect_again(anonymizer, image, boxes, cost)
    return VerifyResult(image, boxes, Detections.concat(fixed), hits, rounds)


def check(anonymizer, image: np.ndarray, boxes: Detections, near_misses: Detections,
          timings: dict, cost: looks.Cost | None = None, vehicles: Detections | None = None,
          original: np.ndarray | None = None) -> tuple[np.ndarray, Detections, dict | None]:
    """What ``Anonymizer.run`` calls after blurring: the verification pass when
    ``settings.verify`` (time in ``timings["verify"]``) and the review entry (``vehicles``:
    stage 1's, for :func:`beam_anon.detection.review.plated_vehicles`; ``original``: the image
    before the blur, where the plate check looks at plate near misses,
    ``Anonymizer.near_plate_check``).
    Returns ``(final image, final blurred boxes, review entry or None)``."""
    verified = None
    if anonymizer.settings.verify:
        t = time.perf_counter()
        verified = verify_blur(anonymizer, image, boxes, cost)
        image, boxes = verified.image, verified.boxes
        timings["verify"] = time.perf_counter() - t
    near = review.unblurred(near_misses, boxes)
    plated = review.plated_vehicles(vehicles if vehicles is not None else Detections.empty(),
                                    boxes)
    plate_check = (anonymizer.near_plate_check(original, cost) if original is not None
                   else None)
    return image, boxes, review.entry(near, verified.survived if verified else None,
                                      verified.fixed if verified else None, anonymizer.settings,
                                      plated, plate_check)
