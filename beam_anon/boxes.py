"""One box type, ``Detections``, and the pure box maths every stage uses.

Conventions, everywhere in beam_anon:
* boxes are ``xyxy`` in **pixels** of some image (float32, x0 < x1, y0 < y1, x1/y1 exclusive);
* ``scores`` are in [0, 1];
* ``labels`` are short strings: ``face``, ``plate`` or a stage-1 class such as ``person``, ``car``;
* ``sources`` (optional) say which looks found each box: a frozenset of ``model:look`` strings
  (e.g. ``centerface:zoom``); fusing boxes unions them.

Every function here takes and returns ``Detections`` (or plain arrays for the region maths) and
never mutates its input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


NO_SOURCE: frozenset = frozenset()


def _sources(values, n: int) -> np.ndarray:
    out = np.empty(n, dtype=object)
    out[:] = [NO_SOURCE] * n if values is None else [frozenset(v) for v in values]
    return out


@dataclass(frozen=True)
class Detections:
    """N boxes with scores and labels. ``xyxy`` (N, 4) float32 pixels; ``scores`` (N,) float32;
    ``labels`` (N,) str; ``sources`` (N,) frozensets of ``model:look`` strings (default empty)."""

    xyxy: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    sources: np.ndarray | None = None

    def __post_init__(self):
        xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        labels = np.asarray(self.labels, dtype=object).reshape(-1)
        sources = _sources(self.sources, len(xyxy))
        if not len(xyxy) == len(scores) == len(labels) == len(sources):
            raise ValueError(f"Detections: {len(xyxy)} boxes, {len(scores)} scores, "
                             f"{len(labels)} labels, {len(sources)} sources")
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "sources", sources)

    def moved(self, xyxy) -> "Detections":
        """The same boxes (scores, labels, sources) at new coordinates ``xyxy``."""
        return Detections(xyxy, self.scores, self.labels, self.sources)

    def found_by(self, source: str) -> "Detections":
        """Every box's sources replaced by ``{source}`` (``model:look``)."""
        return Detections(self.xyxy, self.scores, self.labels, [{source}] * len(self))

    def models(self, i: int) -> list[str]:
        """Sorted model names that found box ``i``."""
        return sorted({s.split(":", 1)[0] for s in self.sources[i]})

    def looks(self, i: int) -> set[str]:
        """The looks (``full_frame``, ``zoom``, ``overview``, ...) in which box ``i`` was found."""
        return {s.partition(":")[2] for s in self.sources[i]}

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, object))

    @classmethod
    def from_boxes(cls, xyxy, scores, label: str) -> "Detections":
        """Boxes that all carry one label."""
        xyxy = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4)
        return cls(xyxy, scores, np.full(len(xyxy), label, dtype=object))

    @classmethod
    def concat(cls, parts: Iterable["Detections"]) -> "Detections":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.xyxy for p in parts]),
                   np.concatenate([p.scores for p in parts]),
                   np.concatenate([p.labels for p in parts]),
                   np.concatenate([p.sources for p in parts]))

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index) -> "Detections":
        """Select by boolean mask, index array or slice."""
        if isinstance(index, (int, np.integer)):
            index = [index]
        return Detections(self.xyxy[index], self.scores[index], self.labels[index],
                          self.sources[index])

    def with_label(self, *labels: str) -> "Detections":
        return self[np.isin(self.labels.astype(str), list(labels))]

    @property
    def wh(self) -> np.ndarray:
        """(N, 2) widths and heights in pixels."""
        return np.maximum(self.xyxy[:, 2:] - self.xyxy[:, :2], 0.0)

    @property
    def area(self) -> np.ndarray:
        wh = self.wh
        return wh[:, 0] * wh[:, 1]

    def to_records(self) -> list[dict]:
        """JSON-ready list of ``{label, score, x0, y0, x1, y1[, models]}`` (pixels, 2 decimals;
        ``models``: the models that found the box, when known)."""
        out = []
        for i, (b, s, lab) in enumerate(zip(self.xyxy, self.scores, self.labels)):
            rec = {"label": str(lab), "score": round(float(s), 4),
                   "x0": round(float(b[0]), 2), "y0": round(float(b[1]), 2),
                   "x1": round(float(b[2]), 2), "y1": round(float(b[3]), 2)}
            if self.sources[i]:
                rec["models"] = self.models(i)
            out.append(rec)
        return out

    @classmethod
    def from_records(cls, records: Sequence[dict]) -> "Detections":
        if not records:
            return cls.empty()
        return cls([[r["x0"], r["y0"], r["x1"], r["y1"]] for r in records],
                   [r.get("score", 1.0) for r in records], [r["label"] for r in records],
                   [r.get("models", ()) for r in records])


def areas(xyxy: np.ndarray) -> np.ndarray:
    """(N,) areas in square pixels of an (N, 4) xyxy array (0 for inverted boxes)."""
    return np.prod(np.clip(xyxy[:, 2:] - xyxy[:, :2], 0, None), axis=1)


def intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection areas in square pixels of xyxy arrays a (N, 4) and b (M, 4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    return np.prod(np.clip(rb - lt, 0, None), axis=2)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy arrays a (N, 4) and b (M, 4) -> (N, M)."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    inter = intersections(a, b)
    union = areas(a)[:, None] + areas(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def covered_fraction(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) fraction of each box in ``a`` that lies inside each box in ``b`` (xyxy arrays)."""
    return intersections(a, b) / np.maximum(areas(a)[:, None], 1e-9)


def centres_inside(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) True where the centre of box ``a[i]`` lies in box ``b[j]`` (xyxy arrays; left and
    top edges inside, right and bottom outside)."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    c = (a[:, None, :2] + a[:, None, 2:]) / 2
    return ((c >= b[None, :, :2]) & (c < b[None, :, 2:])).all(axis=2)


def nested(xyxy: np.ndarray, inside: float = 0.5) -> np.ndarray:
    """(N, N) True where more than ``inside`` of the smaller of two boxes lies inside the other
    (one object boxed twice); the diagonal is False."""
    area = areas(xyxy)
    out = intersections(xyxy, xyxy) > inside * np.maximum(
        np.minimum(area[:, None], area[None, :]), 1e-9)
    np.fill_diagonal(out, False)
    return out


def _greedy_clusters(dets: Detections, iou_threshold: float):
    """Greedy NMS clustering per label: yields (index of the best box, indices of the boxes it
    absorbs, itself included), best scores first within each label."""
    labels = dets.labels.astype(str)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[np.argsort(-dets.scores[idx], kind="stable")]
        ious = iou_matrix(dets.xyxy[idx], dets.xyxy[idx])
        taken = np.zeros(len(idx), bool)
        for i in range(len(idx)):
            if taken[i]:
                continue
            members = ~taken & (ious[i] > iou_threshold)
            members[i] = True
            taken |= members
            yield int(idx[i]), idx[members]


def nms(dets: Detections, iou_threshold: float = 0.5) -> Detections:
    """Greedy non-maximum suppression per label; keeps the higher-scoring box of each overlap."""
    if len(dets) < 2:
        return dets
    keep = [best for best, _ in _greedy_clusters(dets, iou_threshold)]
    return dets[np.sort(np.array(keep, dtype=int))]


def fuse(dets: Detections, iou_threshold: float = 0.4) -> Detections:
    """Like :func:`nms` per label, but each kept box becomes the union of the boxes it
    suppresses (score: the highest). For privacy: duplicates from several crops or detectors
    collapse into one box that still covers every pixel any of them covered."""
    if len(dets) < 2:
        return dets
    clusters = list(_greedy_clusters(dets, iou_threshold))
    union = [np.concatenate([dets.xyxy[m, :2].min(0), dets.xyxy[m, 2:].max(0)])
             for _, m in clusters]
    best = np.array([b for b, _ in clusters], dtype=int)
    sources = [frozenset().union(*dets.sources[m]) for _, m in clusters]
    return Detections(np.array(union), dets.scores[best], dets.labels[best], sources)


def clip(dets: Detections, width: int, height: int) -> Detections:
    """Clip boxes to the image ``[0, width] x [0, height]``; drops boxes left with no area."""
    xyxy = dets.xyxy.copy()
    xyxy[:, 0::2] = np.clip(xyxy[:, 0::2], 0, width)
    xyxy[:, 1::2] = np.clip(xyxy[:, 1::2], 0, height)
    out = dets.moved(xyxy)
    return out[(out.wh > 0).all(axis=1)] if len(out) else out


def expand(dets: Detections, fraction: float, min_pixels: float = 0.0) -> Detections:
    """Grow each box by ``fraction`` of its own width/height on every side (at least
    ``min_pixels``). Not clipped: call :func:`clip` after."""
    wh = dets.wh
    pad = np.maximum(wh * fraction, min_pixels)
    pad = np.concatenate([-pad, pad], axis=1)
    return dets.moved(dets.xyxy + pad)


def at_least_tall(dets: Detections, fraction: float) -> Detections:
    """Boxes less tall than ``fraction`` of their width grown vertically, about their centre, to
    that height (widths unchanged). Not clipped: call :func:`clip` after."""
    wh = dets.wh
    grow = np.maximum(fraction * wh[:, 0] - wh[:, 1], 0) / 2
    zero = np.zeros_like(grow)
    return dets.moved(dets.xyxy + np.stack([zero, -grow, zero, grow], axis=1))


def map_to_image(dets: Detections, offset_xy: Sequence[float], scale) -> Detections:
    """Map boxes found in a crop that was cut at ``offset_xy`` (pixels of the image) and then
    resized by ``scale`` (crop pixels per image pixel; one factor or ``(sx, sy)``) back to image
    pixels."""
    ox, oy = float(offset_xy[0]), float(offset_xy[1])
    sx, sy = np.broadcast_to(np.asarray(scale, np.float32), (2,))
    xyxy = dets.xyxy / np.array([sx, sy, sx, sy], np.float32) + np.array([ox, oy, ox, oy], np.float32)
    return dets.moved(xyxy)


def unrotate(dets: Detections, quarter_turns: int, width: int, height: int) -> Detections:
    """Map boxes found in ``np.rot90(image, quarter_turns)`` (counter-clockwise turns) back to
    pixels of ``image``, which is ``width`` x ``height`` pixels."""
    x0, y0, x1, y1 = dets.xyxy.T
    k = quarter_turns % 4
    if k == 0:
        return dets
    if k == 1:    # rotated pixel (x', y') came from (width - y', x')
        xyxy = np.stack([width - y1, x0, width - y0, x1], axis=1)
    elif k == 2:  # (x', y') came from (width - x', height - y')
        xyxy = np.stack([width - x1, height - y1, width - x0, height - y0], axis=1)
    else:         # (x', y') came from (y', height - x')
        xyxy = np.stack([y0, height - x1, y1, height - x0], axis=1)
    return dets.moved(xyxy)


def _should_merge(a: np.ndarray, b: np.ndarray, width: int, height: int,
                  iou_threshold: float, small_fraction: float, gap_fraction: float) -> bool:
    if iou_matrix(a[None], b[None])[0, 0] > iou_threshold:
        return True
    wa, ha = a[2] - a[0], a[3] - a[1]
    wb, hb = b[2] - b[0], b[3] - b[1]
    small = ((wa < small_fraction * width and ha < small_fraction * height)
             or (wb < small_fraction * width and hb < small_fraction * height))
    if not small:
        return False
    dx = abs((a[0] + a[2]) - (b[0] + b[2])) / 2
    dy = abs((a[1] + a[3]) - (b[1] + b[3])) / 2
    return (dx < (wa + wb) / 2 + gap_fraction * width
            and dy < (ha + hb) / 2 + gap_fraction * height)


def merge_regions(xyxy: np.ndarray, width: int, height: int, iou_threshold: float = 0.3,
                  small_fraction: float = 0.1, gap_fraction: float = 0.01) -> np.ndarray:
    """The original system's merge rule, applied until nothing changes: two boxes become their
    union when their IoU exceeds ``iou_threshold``, or when one is small (under
    ``small_fraction`` of the image in both width and height) and they touch or nearly touch
    (centre distance under half their summed sizes plus ``gap_fraction`` of the image, per
    axis). Input and output are xyxy pixel arrays; output order is not meaningful."""
    boxes = [np.asarray(b, np.float32) for b in np.asarray(xyxy, np.float32).reshape(-1, 4)]
    changed = True
    while changed and len(boxes) > 1:
        changed = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if _should_merge(boxes[i], boxes[j], width, height,
                                 iou_threshold, small_fraction, gap_fraction):
                    a, b = boxes[i], boxes[j]
                    boxes[i] = np.concatenate([np.minimum(a[:2], b[:2]), np.maximum(a[2:], b[2:])])
                    del boxes[j]
                    changed = True
                    break
            if changed:
                break
    return np.array(boxes, np.float32).reshape(-1, 4)


def merge_overlapping(xyxy: np.ndarray) -> np.ndarray:
    """Union boxes of the groups of (N, 4) xyxy boxes that overlap, directly or through a chain
    of others (connected components; touching edges do not count); order not meaningful."""
    boxes = np.asarray(xyxy, np.float32).reshape(-1, 4)
    if len(boxes) < 2:
        return boxes
    lt = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    linked = (rb > lt).all(axis=2)
    group = np.full(len(boxes), -1)
    for start in range(len(boxes)):
        if group[start] >= 0:
            continue
        group[start] = start
        frontier = np.array([start])
        while len(frontier):
            reach = linked[frontier].any(axis=0) & (group < 0)
            group[reach] = start
            frontier = np.flatnonzero(reach)
    return np.array([np.concatenate([boxes[group == g, :2].min(0), boxes[group == g, 2:].max(0)])
                     for g in np.unique(group)], np.float32)


def merge_objects(dets: Detections, inside: float = 0.5) -> Detections:
    """One box per object: same-label boxes where more than ``inside`` of the smaller lies
    inside the other (nested boxes, or chains of them) become their union, with the highest
    score and every source; repeated until no such pair is left. Order: by label, then score."""
    out = []
    for label in dict.fromkeys(dets.labels.astype(str)):
        part = dets[dets.labels.astype(str) == label]
        boxes, scores = part.xyxy.copy(), part.scores.copy()
        sources = list(part.sources)
        changed = True
        while changed and len(boxes) > 1:
            changed = False
            pairs = nested(boxes, inside)
            if pairs.any():
                i, j = np.argwhere(pairs)[0]
                boxes[i] = np.concatenate([np.minimum(boxes[i, :2], boxes[j, :2]),
                                           np.maximum(boxes[i, 2:], boxes[j, 2:])])
                scores[i] = max(scores[i], scores[j])
                sources[i] = sources[i] | sources[j]
                keep = np.arange(len(boxes)) != j
                boxes, scores = boxes[keep], scores[keep]
                sources = [s for k, s in enumerate(sources) if k != j]
                changed = True
        order = np.argsort(-scores, kind="stable")
        out.append(Detections(boxes[order], scores[order], np.full(len(boxes), label, object),
                              [sources[k] for k in order]))
    return Detections.concat(out)

