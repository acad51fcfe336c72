"""Where stage 2 looks: stage-1 boxes -> merged regions -> a plan of crops at a useful scale.

A ``Crop`` is a rectangle of the original image (integer pixels, xyxy) plus the factor it is
resized by before stage 2 sees it (crop pixels per image pixel). Small regions are upscaled so
small faces and plates become large enough to find; regions too large to upscale usefully are
split into overlapping tiles; an optional full-frame pass tiles the whole image so stage-1 misses
do not become privacy misses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from beam_anon.boxes import Detections, clip, expand, merge_regions
from beam_anon.settings import Settings

TILE_OVERLAP = 0.2  # fraction of a tile shared with its neighbour, so objects on a seam are whole


@dataclass(frozen=True)
class Crop:
    """``xyxy``: integer pixel rectangle of the image; ``scale``: resize factor applied to it;
    ``turns``: counter-clockwise quarter turns applied after resizing (upside-down faces)."""

    xyxy: tuple[int, int, int, int]
    scale: float
    source: str  # "region" | "full_frame"
    turns: int = 0

    @property
    def offset(self) -> tuple[int, int]:
        return self.xyxy[0], self.xyxy[1]


def _spans(start: float, stop: float, size: int, overlap: float) -> list[tuple[int, int]]:
    """Cover [start, stop) with equal windows of at most ``size`` pixels, neighbours sharing at
    least ``overlap * size`` pixels. Equal windows (not ``size`` windows crammed together) keep
    the pixels a detector sees close to the area covered."""
    start, stop = int(math.floor(start)), int(math.ceil(stop))
    length = stop - start
    if length <= size:
        return [(start, stop)]
    shared = int(size * overlap)
    count = math.ceil((length - shared) / (size - shared))
    window = math.ceil((length + (count - 1) * shared) / count)
    step = (length - window) / (count - 1)
    return [(start + round(i * step), start + round(i * step) + window) for i in range(count)]


def tile(xyxy, max_size: int, overlap: float = TILE_OVERLAP) -> list[tuple[int, int, int, int]]:
    """Split one xyxy rectangle into overlapping tiles no larger than ``max_size`` per side."""
    x0, y0, x1, y1 = xyxy
    return [(a, b, c, d) for (b, d) in _spans(y0, y1, max_size, overlap)
            for (a, c) in _spans(x0, x1, max_size, overlap)]


def stage1_regions(stage1: Detections, width: int, height: int, settings: Settings) -> np.ndarray:
    """Stage-1 boxes of the configured classes -> merged, padded, clipped regions (xyxy)."""
    wanted = stage1.with_label(*settings.stage1_classes)
    wanted = wanted[wanted.scores >= settings.stage1_threshold]
    merged = merge_regions(wanted.xyxy, width, height, settings.merge_iou,
                           settings.merge_small_fraction, settings.merge_gap_fraction)
    padded = clip(expand(Detections.from_boxes(merged, np.ones(len(merged)), "region"),
                         settings.region_padding_fraction), width, height)
    return padded.xyxy


def region_crops(regions: np.ndarray, settings: Settings) -> list[Crop]:
    """Crops for merged regions: upscale small ones towards ``crop_target_size`` (at most
    ``crop_max_upscale``), tile those whose long side exceeds ``crop_max_size``."""
    crops: list[Crop] = []
    for region in np.asarray(regions).reshape(-1, 4):
        for x0, y0, x1, y1 in tile(region, settings.crop_max_size):
            long_side = max(x1 - x0, y1 - y0, 1)
            scale = min(settings.crop_max_upscale, max(1.0, settings.crop_target_size / long_side))
            crops.append(Crop((x0, y0, x1, y1), scale, "region"))
    return crops


def full_frame_crops(width: int, height: int, settings: Settings, scale: float,
                     turns: int = 0) -> list[Crop]:
    """Tiles over the whole image, resized by ``scale`` to ``full_frame_tile`` pixels a side,
    then turned by ``turns`` counter-clockwise quarter turns."""
    size = max(32, int(settings.full_frame_tile / scale))
    return [Crop(t, scale, "full_frame", turns) for t in tile((0, 0, width, height), size)]


def plan_crops(regions: np.ndarray, width: int, height: int, settings: Settings,
               role: str, model: str = "") -> list[Crop]:
    """Crops stage 2 runs on for ``role`` (``face`` | ``plate``) and ``model``: the full-frame
    passes at the role's scales (capped per model), plus the region crops upscaled beyond the
    largest of them (a region at a smaller scale is already seen whole by a full-frame tile)."""
    scales = settings.full_frame_scales(role, model)
    covered = max(scales, default=0.0)
    crops = [c for c in region_crops(regions, settings) if c.scale > covered]
    for scale in scales:
        crops += full_frame_crops(width, height, settings, scale)
    if scales and role == "face" and model in settings.face_rotation_models:
        for degrees in settings.face_rotations:
            crops += full_frame_crops(width, height, settings, 1.0, int(degrees) // 90)
    return crops
