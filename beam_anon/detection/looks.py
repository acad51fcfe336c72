"""Running one detector on many crops: cut, resize, pack small ones into shared canvases, run,
map every box back to image pixels; counts model passes and megapixels seen.

A *look* is a :class:`beam_anon.detection.regions.Crop` (image rectangle, resize factor, quarter turns).
Crops whose resized pixels fit a canvas are packed into as few canvases as possible (shelf
packing, :data:`GAP` pixels of neutral grey between cells), so one model pass serves many small
crops: vehicle crops for a plate model, zoomed neighbourhoods for a face model. A box found on a
canvas belongs to the cell holding its centre and is clipped to that cell. Units: pixels, xyxy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from beam_anon.boxes import Detections, map_to_image, unrotate
from beam_anon.detection.regions import Crop

GAP = 8           # pixels between packed cells (and around them): no box spans two crops
FILL = 114        # grey of the canvas, as YOLO's letterbox pads
CANVAS = (640, 640)  # canvas for detectors of any input size (trimmed to what is used)


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


@dataclass
class Cell:
    crop: Crop
    pixels: np.ndarray            # the crop as cut (resized, turned)
    factors: tuple[float, float]
    at: tuple[int, int] = (0, 0)  # top-left corner in its canvas


@dataclass
class Canvas:
    pixels: np.ndarray
    cells: list[Cell] = field(default_factory=list)


def pack(cells: Sequence[Cell], size: tuple[int, int]) -> list[Canvas]:
    """Shelf-pack ``cells`` (tallest first) into canvases of ``size`` (w, h); a cell too large
    for one gets a canvas of its own, of its own size (no padding, no packing)."""
    width, height = size
    canvases: list[Canvas] = []
    shelves: list[list] = []          # per canvas: [y of the open shelf, its height, next x]
    for cell in sorted(cells, key=lambda c: -c.pixels.shape[0]):
        h, w = cell.pixels.shape[:2]
        if w + 2 * GAP > width or h + 2 * GAP > height:
            canvases.append(Canvas(cell.pixels, [cell]))
            shelves.append(None)
            continue
        for canvas, shelf in zip(canvases, shelves):
            if shelf is None:
                continue
            y, shelf_h, x = shelf
            if x + w + GAP <= width and y + h + GAP <= height and h <= shelf_h:
                break
            if y + shelf_h + GAP + h + GAP <= height:   # open a new shelf below
                shelf[:] = [y + shelf_h + GAP, h, GAP]
                break
        else:
            canvas = Canvas(np.full((height, width, 3), FILL, np.uint8))
            canvases.append(canvas)
            shelf = [GAP, h, GAP]
            shelves.append(shelf)
        y, _, x = shelf
        canvas.pixels[y:y + h, x:x + w] = cell.pixels
        cell.at = (x, y)
        canvas.cells.append(cell)
        shelf[2] = x + w + GAP
    return canvases


def unpack(dets: Detections, canvas: Canvas, model: str = "") -> Detections:
    """Boxes found on ``canvas`` -> image pixels: each box goes to the cell holding its centre,
    clipped to it; boxes in the gaps are dropped. With ``model``, each box's source becomes
    ``model:<its crop's source>``."""
    out = []
    centres = (dets.xyxy[:, :2] + dets.xyxy[:, 2:]) / 2
    for cell in canvas.cells:
        x, y = cell.at
        h, w = cell.pixels.shape[:2]
        inside = ((centres[:, 0] >= x) & (centres[:, 0] < x + w)
                  & (centres[:, 1] >= y) & (centres[:, 1] < y + h))
        if not inside.any():
            continue
        xyxy = dets.xyxy[inside] - np.array([x, y, x, y], np.float32)
        xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, w)
        xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, h)
        local = dets[inside].moved(xyxy)
        if model:
            local = local.found_by(f"{model}:{cell.crop.source}")
        out.append(crop_to_image(local, cell.crop, cell.pixels, cell.factors))
    return Detections.concat(out)


@dataclass
class Cost:
    """Per model, for one image: passes run, megapixels fed, seconds spent in those passes
    (pre-processing and decoding included) (manifest ``passes``, ``megapixels``,
    ``model_seconds``)."""

    passes: dict[str, int] = field(default_factory=dict)
    megapixels: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, model: str, pixels: int, seconds: float = 0.0) -> None:
        self.passes[model] = self.passes.get(model, 0) + 1
        self.megapixels[model] = self.megapixels.get(model, 0.0) + pixels / 1e6
        self.seconds[model] = self.seconds.get(model, 0.0) + seconds


def run(detector, image: np.ndarray, crops: Sequence[Crop], min_score: float,
        cost: Cost | None = None) -> Detections:
    """``detector`` on every crop of ``image`` -> boxes in image pixels (scores >= min_score).
    Crops are packed into canvases of ``detector.canvas`` (e.g. YOLO's 640x640) or
    :data:`CANVAS`; a canvas is trimmed to the cells placed on it (to multiples of
    ``detector.trim`` when set) unless the model's input is static, and a lone cell runs alone."""
    if not crops:
        return Detections.empty()
    cells = [Cell(c, *cut_crop(image, c)) for c in dict.fromkeys(crops)]
    fixed = getattr(detector, "canvas", None)
    canvases = pack(cells, fixed or CANVAS)
    trim = getattr(detector, "trim", 0)
    for i, c in enumerate(canvases):
        if fixed and not trim:
            continue                # a static input: the canvas is what the model takes
        if len(c.cells) == 1:       # a lone cell runs as itself
            c.cells[0].at = (0, 0)
            canvases[i] = Canvas(c.cells[0].pixels, c.cells)
        else:                       # a shared canvas is trimmed to what is used
            bottom = max(cell.at[1] + cell.pixels.shape[0] for cell in c.cells) + GAP
            right = max(cell.at[0] + cell.pixels.shape[1] for cell in c.cells) + GAP
            if trim:
                bottom, right = -(-bottom // trim) * trim, -(-right // trim) * trim
            c.pixels = c.pixels[:bottom, :right]
    t = time.perf_counter()
    found = detector.detect_batch([c.pixels for c in canvases], min_score)
    if cost is not None:
        share = (time.perf_counter() - t) / len(canvases)
        for c in canvases:
            cost.add(detector.name, detector.input_pixels(c.pixels), share)
    return Detections.concat(unpack(d, c, detector.name) for d, c in zip(found, canvases))
