"""The whole two-stage algorithm on one image, without Beam.

image -> stage 1 (persons, vehicles) -> the detection plan (``beam_anon.detection.plan``: cheap full-frame,
vehicle and person looks, then closer looks only where something can be) -> faces and plates
mapped back to image pixels -> duplicates fused -> each box enlarged by the blur margin ->
blurred copy of the image. Every model pass is counted (``passes``, ``megapixels``).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from beam_anon.detection import looks, plan, verify
from beam_anon.detection.blur import blur_boxes
from beam_anon.boxes import Detections, clip, fuse, map_to_image, merge_objects, nms
from beam_anon.detectors import Detector
from beam_anon.detection.regions import Crop
from beam_anon.settings import Settings

ROLES = ("face", "plate")
STAGE1_NMS_IOU = 0.6


@dataclass
class DebugInfo:
    """What the original system's detail mode showed, all in image pixels."""

    stage1: Detections
    crops: list[Crop]            # every crop a face or plate model saw (source says why)
    stage2: Detections           # raw face/plate boxes mapped back, before fusion and margin
    #: fused detections in [threshold - review_band, threshold): not blurred, for review
    near_misses: Detections = field(default_factory=Detections.empty)


@dataclass
class AnonymizeResult:
    image: np.ndarray            # blurred copy, same shape as the input
    boxes: Detections            # regions actually blurred (pixels, labels face | plate)
    debug: DebugInfo | None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    review: dict | None = None   # beam_anon.detection.review.entry: why a person should look
    cost: looks.Cost = field(default_factory=looks.Cost)     # model passes, megapixels


class Anonymizer:
    """Runs the configured detectors (looked up by registry name in ``detectors``)."""

    def __init__(self, settings: Settings, detectors: Mapping[str, Detector]):
        missing = [n for n in settings.model_names() if n not in detectors]
        if missing:
            raise ValueError(f"Anonymizer: no detector loaded for {missing}")
        self.settings = settings
        self.stage1 = detectors[settings.stage1_model] if settings.stage1_model else None
        #: (name, detector, role, minimum score) for every stage-2 model
        self.stage2 = [(n, detectors[n], role, settings.threshold(n, role))
                       for role, names in (("face", settings.face_models),
                                           ("plate", settings.plate_models)) for n in names]
        self.detectors = {n: detectors[n] for n in settings.model_names()}
        self.plate_check = (detectors[settings.plate_check_model]
                            if settings.plate_check_model in self.detectors else None)

    def models(self) -> list[dict]:
        """``[{name, variant, sha256, licence}]`` of every model this anonymizer uses (for the
        manifest): the sha256 is that of the file that ran (original, graph-fixed or INT8; a
        SavedModel's: of its directory's files)."""
        return [{"name": n, "variant": getattr(d, "variant", "original"), "sha256": d.sha256,
                 "licence": getattr(d, "licence", "unknown")}
                for n, d in self.detectors.items()]

    def _low(self, threshold: float, model: str = "") -> float:
        """Lowest score a model reports: candidates for zooming, review and agreement."""
        s = self.settings
        agree = s._per_model(s.agree_thresholds, model)
        return max(1e-3, min(threshold, threshold - s.review_band,
                             s.zoom_min_score if s.zoom else threshold,
                             threshold if agree is None else agree))

    def _role(self, role: str, image: np.ndarray, stage1: Detections, cost: looks.Cost,
              seen: list[Crop]) -> tuple[Detections, Detections]:
        """``(found, unsure)`` boxes of ``role`` after the cheap looks and the closer ones."""
        s, (height, width) = self.settings, image.shape[:2]
        models = [(n, d, t, s.zoom_threshold(n, r)) for n, d, r, t in self.stage2 if r == role]
        found, unsure = [], []

        def look(name, detector, crops, threshold, confirm=None):
            seen.extend(crops)
            dets = looks.run(detector, image, crops, self._low(threshold, name), cost)
            sure = dets.scores >= threshold
            if confirm is not None:  # a closer look accepts lower only where a cheap look hesitated
                sure &= (dets.scores >= confirm[0]) | plan.agrees(dets, confirm[1])
            found.append(dets[sure])
            unsure.append(dets[~sure])

        for name, detector, threshold, _ in models:
            size = getattr(detector, "input_size", None)
            look(name, detector, plan.cheap_looks(role, name, stage1, width, height, s, size),
                 threshold)
            if role == "plate" and name in s.region_models:  # below its threshold: nothing
                crops = plan.close_up_look(width, height, s)
                seen.extend(crops)
                found.append(looks.run(detector, image, crops,
                                       max(threshold, s.close_up_threshold), cost))
        candidates = Detections.concat(unsure)
        candidates = candidates[candidates.scores >= s.zoom_min_score]
        closer = plan.zoom_looks(candidates, width, height, s)
        if role == "face":
            closer += plan.crowd_looks(Detections.concat(found), width, height, s)
        for name, detector, threshold, closer_threshold in models:
            if name in s.zoom_models and closer:
                look(name, detector, closer, closer_threshold, (threshold, candidates))
        if s.agree_thresholds:   # two models agreeing admit what each alone was unsure of
            maybe = Detections.concat(unsure)
            agreed = plan.agreement(maybe, Detections.concat(found + unsure), s)
            refused = plan.doubted(maybe, s) & ~agreed    # asked, not confirmed: no review
            found, unsure = found + [maybe[agreed]], [maybe[~agreed & ~refused]]
        if role == "face":
            found.append(plan.head_fallback(stage1, Detections.concat(found + unsure), s))
            return Detections.concat(found), Detections.concat(unsure)
        plates = Detections.concat(found)   # off every vehicle, or only in the overview: a
        away = (plan.off_vehicle(plates, stage1, width, height, s)   # higher score, or a near miss
                | plan.overview_only(plates, s))
        plates, unsure = plates[~away], unsure + [plates[away]]
        if self.plate_check:   # a second opinion on the plates the detector was unsure of
            plates = self._checked(image, plates, cost)
        return plates, Detections.concat(unsure)

    def _checked(self, image: np.ndarray, plates: Detections, cost: looks.Cost) -> Detections:
        """``plates`` less the boxes the plate check was asked about (``plan.check_asked``) and
        scored under ``plate_check_threshold``: turned down, neither blurred nor queued for
        review."""
        asked = plan.check_asked(plates, self.settings, self.plate_check.checks)
        if not asked.any():
            return plates
        probs = self._check_scores(image, plates.xyxy[asked], cost)
        refused = np.zeros(len(plates), bool)
        refused[asked] = probs < self.settings.plate_check_threshold
        return plates[~refused]

    def near_plate_check(self, image: np.ndarray, cost: looks.Cost | None = None):
        """``(K, 4) plate boxes -> (K,)`` the plate check's probabilities that they hold a plate,
        on ``image`` (the original), for the review queue (``beam_anon.detection.review``);
        None when the run has no plate check or ``review_plate_check`` is 0."""
        if not self.plate_check or not self.settings.review_plate_check:
            return None
        return functools.partial(self._check_scores, image, cost=cost)

    def _check_scores(self, image: np.ndarray, xyxy: np.ndarray,
                      cost: looks.Cost | None = None) -> np.ndarray:
        """(K,) the plate check's probabilities for (K, 4) boxes of ``image``, timed in
        ``cost``."""
        t = time.perf_counter()
        probs = self.plate_check.scores(image, xyxy)
        if cost is not None:
            cost.add(self.settings.plate_check_model, 0, time.perf_counter() - t)
        return probs

    def detect(self, image: np.ndarray) -> tuple[Detections, DebugInfo, dict[str, float],
                                                 looks.Cost]:
        """Faces and plates in ``image`` (fused, before the blur margin), with debug, timings
        (seconds: ``stage1``, ``faces``, ``plates``) and cost (passes, megapixels per model)."""
        height, width = image.shape[:2]
        timings: dict[str, float] = {}
        cost = looks.Cost()
        t = time.perf_counter()
        stage1 = (looks.run(self.stage1, image, plan.stage1_looks(
            width, height, self.settings, getattr(self.stage1, "input_size", None)),
            self.settings.stage1_threshold, cost) if self.stage1 else Detections.empty())
        if self.settings.stage1_tile:   # an object seen whole and in a tile: keep the best box
            stage1 = nms(stage1, STAGE1_NMS_IOU)
        timings["stage1"] = time.perf_counter() - t
        found, near, seen = [], [], []
        for role in ROLES:
            t = time.perf_counter()
            sure, unsure = self._role(role, image, stage1, cost, seen)
            found.append(sure)
            band = np.array([self.settings.threshold(n, r) for n, _, r, _ in self.stage2
                             if r == role] or [1.0]).min() - self.settings.review_band
            near.append(unsure[unsure.scores >= band])
            timings[role + "s"] = time.perf_counter() - t
        stage2 = clip(Detections.concat(found), width, height)
        near_misses = fuse(clip(Detections.concat(near), width, height), self.settings.nms_iou)
        fused = merge_objects(fuse(stage2, self.settings.nms_iou))  # one box per object
        crops = list(dict.fromkeys(seen))
        return fused, DebugInfo(stage1, crops, stage2, near_misses), timings, cost

    def run(self, image: np.ndarray, keep_debug: bool = False) -> AnonymizeResult:
        """Detect and blur. ``image``: upright uint8 BGR (H, W, 3). Never modifies ``image``.
        Above ``settings.detect_max_pixels`` detection runs on a shrunk copy (bounded time and
        memory); boxes are mapped back and the blur is applied at full resolution."""
        height, width = image.shape[:2]
        small, scale = looks.detection_copy(image, self.settings.detect_max_pixels)
        found, debug, timings, cost = self.detect(small)
        if scale != (1.0, 1.0):  # boxes back to full resolution; the blur runs there
            found = map_to_image(found, (0, 0), scale)
            sx, sy = scale
            debug = DebugInfo(
                map_to_image(debug.stage1, (0, 0), scale),
                [dataclasses.replace(c, xyxy=(round(c.xyxy[0] / sx), round(c.xyxy[1] / sy),
                                              round(c.xyxy[2] / sx), round(c.xyxy[3] / sy)),
                                     scale=c.scale * sx) for c in debug.crops],
                map_to_image(debug.stage2, (0, 0), scale),
                map_to_image(debug.near_misses, (0, 0), scale))
        blurred_boxes = merge_objects(clip(plan.with_margins(found, self.settings), width, height))
        t = time.perf_counter()
        out = blur_boxes(image, blurred_boxes, self.settings.blur_mode, self.settings.blur_strength)
        timings["blur"] = time.perf_counter() - t
        out, blurred_boxes, review = verify.check(
            self, out, blurred_boxes, debug.near_misses, timings, cost,
            debug.stage1.with_label(*plan.VEHICLES), original=image)
        return AnonymizeResult(out, blurred_boxes, debug if keep_debug else None, timings,
                               review, cost)


def load_anonymizer(settings: Settings, models_dir: str | None = None) -> Anonymizer:
    """An Anonymizer whose detectors come from the per-process model cache (the settings'
    own detectors, ``--model_spec``, registered there first)."""
    from beam_anon.models import get_detector  # import here: keeps this module free of I/O
    from beam_anon.models.user_models import register_all

    register_all(settings)
    return Anonymizer(settings, {n: get_detector(n, models_dir, settings.precision, settings.device)
                                 for n in settings.model_names()})
