"""The whole two-stage algorithm on one image, without Beam.

image -> stage 1 (persons, vehicles) -> merged regions -> crops (+ full-frame tiles)
      -> stage 2 (faces, plates) on every crop -> boxes mapped back to image pixels
      -> duplicates fused -> each box enlarged by the blur margin -> blurred copy of the image.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Mapping

import cv2
import numpy as np

from beam_anon.blur import blur_boxes
from beam_anon.boxes import Detections, clip, expand, fuse, map_to_image, unrotate
from beam_anon.detectors import Detector
from beam_anon.regions import Crop, plan_crops, stage1_regions
from beam_anon.settings import Settings


@dataclass
class DebugInfo:
    """What the original system's detail mode showed, all in image pixels."""

    stage1: Detections
    regions: np.ndarray          # merged, padded stage-1 regions (xyxy)
    crops: list[Crop]
    stage2: Detections           # raw stage-2 boxes mapped back, before fusion and margin
    #: fused detections in [threshold - review_band, threshold): not blurred, for review
    near_misses: Detections = field(default_factory=Detections.empty)


@dataclass
class AnonymizeResult:
    image: np.ndarray            # blurred copy, same shape as the input
    boxes: Detections            # regions actually blurred (pixels, labels face | plate)
    debug: DebugInfo | None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    review: dict | None = None   # beam_anon.verify.review_entry: why a person should look


def cut_crop(image: np.ndarray, crop: Crop) -> tuple[np.ndarray, tuple[float, float]]:
    """The crop's pixels resized by its scale (then turned by ``crop.turns``), and the exact
    (sx, sy) resize factors after rounding."""
    x0, y0, x1, y1 = crop.xyxy
    pixels, factors = image[y0:y1, x0:x1], (1.0, 1.0)
    if crop.scale != 1.0:
        w, h = x1 - x0, y1 - y0
        nw, nh = max(1, round(w * crop.scale)), max(1, round(h * crop.scale))
        interp = cv2.INTER_LINEAR if crop.scale > 1 else cv2.INTER_AREA
        pixels, factors = cv2.resize(pixels, (nw, nh), interpolation=interp), (nw / w, nh / h)
    if crop.turns % 4:
        pixels = np.ascontiguousarray(np.rot90(pixels, crop.turns))
    return pixels, factors


def crop_to_image(dets: Detections, crop: Crop, pixels: np.ndarray,
                  factors: tuple[float, float]) -> Detections:
    """Boxes found in ``pixels`` (what :func:`cut_crop` made of ``crop``) -> image pixels."""
    if crop.turns % 4:
        h, w = pixels.shape[:2]
        w, h = (h, w) if crop.turns % 2 else (w, h)
        dets = unrotate(dets, crop.turns, w, h)
    return map_to_image(dets, crop.offset, factors)


def detection_copy(image: np.ndarray, max_pixels: int) -> tuple[np.ndarray, tuple[float, float]]:
    """``image`` itself if it has at most ``max_pixels`` pixels, else a copy shrunk (INTER_AREA)
    to fit, with the exact (sx, sy) factors (copy pixels per image pixel) to map boxes back."""
    height, width = image.shape[:2]
    if width * height <= max_pixels:
        return image, (1.0, 1.0)
    f = (max_pixels / (width * height)) ** 0.5
    nw, nh = max(1, int(width * f)), max(1, int(height * f))
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA), (nw / width, nh / height)


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

    def models(self) -> list[dict]:
        """``[{name, sha256}]`` of every model this anonymizer uses (for the manifest)."""
        return [{"name": n, "sha256": d.sha256} for n, d in self.detectors.items()]

    def detect(self, image: np.ndarray) -> tuple[Detections, DebugInfo, dict[str, float]]:
        """Faces and plates in ``image`` (fused, before the blur margin), with debug and timings."""
        height, width = image.shape[:2]
        timings: dict[str, float] = {}
        t = time.perf_counter()
        stage1 = (self.stage1.detect(image, self.settings.stage1_threshold)
                  if self.stage1 else Detections.empty())
        timings["stage1"] = time.perf_counter() - t

        t = time.perf_counter()
        regions = stage1_regions(stage1, width, height, self.settings)
        plans = {name: plan_crops(regions, width, height, self.settings, role, name)
                 for name, _, role, _ in self.stage2}
        cut: dict[Crop, tuple[np.ndarray, tuple[float, float]]] = {}
        found, near = [], []
        for name, detector, role, threshold in self.stage2:
            crops = plans[name]
            for c in crops:
                if c not in cut:
                    cut[c] = cut_crop(image, c)
            low = min(threshold, max(threshold - self.settings.review_band, 1e-3))
            per_crop = detector.detect_batch([cut[c][0] for c in crops], low)
            mapped = [crop_to_image(d, c, *cut[c]) for d, c in zip(per_crop, crops)]
            found += [d[d.scores >= threshold] for d in mapped]
            near += [d[d.scores < threshold] for d in mapped]
        stage2 = clip(Detections.concat(found), width, height)
        near_misses = fuse(clip(Detections.concat(near), width, height), self.settings.nms_iou)
        fused = fuse(stage2, self.settings.nms_iou)
        timings["stage2"] = time.perf_counter() - t
        crops = list(dict.fromkeys(c for plan in plans.values() for c in plan))
        return fused, DebugInfo(stage1, regions, crops, stage2, near_misses), timings

    def run(self, image: np.ndarray, keep_debug: bool = False) -> AnonymizeResult:
        """Detect and blur. ``image``: upright uint8 BGR (H, W, 3). Never modifies ``image``.
        Above ``settings.detect_max_pixels`` detection runs on a shrunk copy (bounded time and
        memory); boxes are mapped back and the blur is applied at full resolution."""
        height, width = image.shape[:2]
        small, scale = detection_copy(image, self.settings.detect_max_pixels)
        found, debug, timings = self.detect(small)
        if scale != (1.0, 1.0):  # boxes back to full resolution; the blur runs there
            found = map_to_image(found, (0, 0), scale)
            sx, sy = scale
            debug = DebugInfo(
                map_to_image(debug.stage1, (0, 0), scale),
                np.asarray(debug.regions).reshape(-1, 4) / np.array([sx, sy, sx, sy]),
                [dataclasses.replace(c, xyxy=(round(c.xyxy[0] / sx), round(c.xyxy[1] / sy),
                                              round(c.xyxy[2] / sx), round(c.xyxy[3] / sy)),
                                     scale=c.scale * sx) for c in debug.crops],
                map_to_image(debug.stage2, (0, 0), scale),
                map_to_image(debug.near_misses, (0, 0), scale))
        blurred_boxes = clip(expand(found, self.settings.blur_margin_fraction, 1.0), width, height)
        t = time.perf_counter()
        out = blur_boxes(image, blurred_boxes, self.settings.blur_mode, self.settings.blur_strength)
        timings["blur"] = time.perf_counter() - t
        from beam_anon import verify  # verify imports this module
        out, blurred_boxes, review = verify.check(self, out, blurred_boxes, debug.near_misses,
                                                  timings)
        return AnonymizeResult(out, blurred_boxes, debug if keep_debug else None, timings, review)


def load_anonymizer(settings: Settings, models_dir: str | None = None) -> Anonymizer:
    """An Anonymizer whose detectors come from the per-process model cache."""
    from beam_anon.models import get_detector  # import here: keeps this module free of I/O

    return Anonymizer(settings, {n: get_detector(n, models_dir) for n in settings.model_names()})
