"""Crop geometry: which rectangle of an image a detector sees, at which scale.

A ``Crop`` is a rectangle of the original image (integer pixels, xyxy) plus the factor it is
resized by before a detector sees it (crop pixels per image pixel) and the quarter turns applied
after resizing. Which crops are looked at, and when, is decided by :mod:`beam_anon.detection.plan`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

TILE_OVERLAP = 0.2  # fraction of a tile shared with its neighbour, so objects on a seam are whole


@dataclass(frozen=True)
class Crop:
    """``xyxy``: integer pixel rectangle of the image; ``scale``: resize factor applied to it;
    ``source``: why it is looked at (``full_frame``, ``zoom``, ``vehicle``...); ``turns``:
    counter-clockwise quarter turns applied after resizing (upside-down faces)."""

    xyxy: tuple[int, int, int, int]
    scale: float
    source: str
    turns: int = 0

    @property
    def offset(self) -> tuple[int, int]:
        return self.xyxy[0], self.xyxy[1]

    @property
    def size(self) -> tuple[int, int]:
        """(w, h) in pixels as the detector sees it (before turning)."""
        x0, y0, x1, y1 = self.xyxy
        return max(1, round((x1 - x0) * self.scale)), max(1, round((y1 - y0) * self.scale))


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


def scaled_tiles(xyxy, scale: float, max_side: int, source: str, turns: int = 0) -> list[Crop]:
    """``xyxy`` resized by ``scale``, cut into tiles of at most ``max_side`` pixels a side as the
    detector sees them."""
    size = max(32, int(max_side / scale))
    return [Crop(t, scale, source, turns) for t in tile(xyxy, size)]


def int_box(xyxy, width: int, height: int) -> tuple[int, int, int, int] | None:
    """A float xyxy box as integer pixels covering it, clipped to the image; None if empty."""
    x0, y0 = max(0, int(math.floor(xyxy[0]))), max(0, int(math.floor(xyxy[1])))
    x1, y1 = min(width, int(math.ceil(xyxy[2]))), min(height, int(math.ceil(xyxy[3])))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None

