"""Temporal consistency for video: link per-frame detections into tracks and blur each track in
the frames the detector missed. Pure functions on ``Detections``; no video I/O, no Beam.

Input: ``{frame: Detections}`` for the frames where detection ran (boxes as blurred, i.e. margin
included, pixels of the upright frame). A frame with no entry was not searched (``detect_every``
> 1); a frame with an empty entry was searched and held nothing. With :class:`Linking` memory
``M`` (frames) and link horizon ``L = M + 1``:

* **link**: box ``a`` of frame ``f`` links forward to box ``b`` when ``b`` is the highest-IoU
  box of its label in the first frame ``g`` in ``(f, f + L]`` that holds one with IoU >= ``iou``
  (ties: lower index), and ``a`` is likewise ``b``'s best in the last frame before ``g`` that
  holds one (mutual: an object that vanishes is not linked to a neighbour). IoU is taken after
  growing both boxes by ``speed * (g - f)`` of their size on every side (an object may move
  about ``speed`` of its size per frame). A **track** is a connected component of links.
* **interpolate**: for a link ``a -> b`` with ``g > f + 1``, frames ``f+1 .. g-1`` get the
  linear interpolation of the two boxes (so a face found in frames 10 and 13 is blurred in 11, 12).
* **extend**: a box with no forward link is carried on for ``M`` frames, one that nothing links
  to is carried back for ``M`` frames; it moves at the per-frame velocity of its link (the box
  linking to it, or the box it links to; still if none), and each carried box is the union of
  the moved box and the original, so a slowed-down object stays covered too. A box whose link
  goes to a box in the adjacent frame covering less than ``partial`` of it is carried on (or
  back) as well: that sighting may be part of the object only, or a weak detection beside it in
  a smeared frame.
* Added boxes grow by ``grow`` of their size per side for each frame they are away from the
  nearest sighting.

Locality: the boxes of frame ``f`` depend only on detections in frames ``[f - reach, f + reach]``
(``Linking.reach = 2L``). A video segment that detects that much context on each side
therefore computes exactly what a whole-video run computes (``tests/test_tracking.py`` checks
it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from beam_anon.boxes import Detections, clip, covered_fraction, expand, iou_matrix

DETECTED, INTERPOLATED, EXTENDED = "detected", "interpolated", "extended"
BoxId = tuple[int, int]  # (frame, index of the box in that frame's Detections)


@dataclass(frozen=True)
class Linking:
    """``memory``: frames (>= 0) a gap may last and a track is carried on; ``iou``: the overlap
    a box needs with its next sighting; ``speed``: motion allowed per frame, as a fraction of
    the box size (0: plain IoU); ``grow``: how much an added box grows per frame away from the
    nearest sighting, fraction of its size per side (motion is not quite linear); ``partial``:
    a link to a box covering less than this fraction of a box still carries that box on."""

    memory: int = 3
    iou: float = 0.2
    speed: float = 0.5
    grow: float = 0.15
    partial: float = 0.5

    def __post_init__(self):
        if self.memory < 0:
            raise ValueError(f"track memory must be >= 0 frames, got {self.memory}")
        if self.speed < 0 or self.grow < 0:
            raise ValueError(f"track speed and grow must be >= 0, got {self.speed}, "
                             f"{self.grow}")

    @property
    def reach(self) -> int:
        """Frames of context needed on each side of a frame to compute its boxes."""
        return 2 * (self.memory + 1)


@dataclass(frozen=True)
class FrameBoxes:
    """Everything blurred in one frame: the frame's own detections first, then the boxes the
    temporal step added. Per box: ``source`` (``detected`` | ``interpolated`` | ``extended``),
    ``origin`` (the detection it comes from; a detection is its own origin) and ``link`` (for
    detections: the box it links forward to, else None)."""

    boxes: Detections
    source: tuple[str, ...]
    origin: tuple[BoxId, ...]
    link: tuple[BoxId | None, ...]

    @property
    def added(self) -> Detections:
        """Only the boxes the temporal step added."""
        return self.boxes[np.array([s != DETECTED for s in self.source], bool)]


def _first_matches(dets: Mapping[int, Detections], rule: Linking,
                   forward: bool) -> dict[BoxId, BoxId]:
    """For every box, its best match (highest grown IoU >= ``rule.iou``, same label; ties: lower
    index) in the nearest frame within the horizon, after it (``forward``) or before it, that
    holds any match."""
    horizon = rule.memory + 1
    frames = sorted(dets, reverse=not forward)
    out: dict[BoxId, BoxId] = {}
    for n, f in enumerate(frames):
        a = dets[f]
        if not len(a):
            continue
        labels = a.labels.astype(str)
        pending = np.ones(len(a), bool)
        for g in frames[n + 1:]:
            if abs(g - f) > horizon or not pending.any():
                break
            b = dets[g]
            if not len(b):
                continue
            grow = rule.speed * abs(g - f)
            ious = iou_matrix(expand(a, grow).xyxy, expand(b, grow).xyxy)
            ious[labels[:, None] != b.labels.astype(str)[None, :]] = -1.0
            for i in np.flatnonzero(pending):
                j = int(np.argmax(ious[i]))
                if ious[i, j] >= rule.iou:
                    out[(f, int(i))] = (g, j)
                    pending[i] = False
    return out


def links(dets: Mapping[int, Detections], rule: Linking) -> dict[BoxId, BoxId]:
    """Forward link of every box that has one (see the module doc), ``{(f, i): (g, j)}``:
    ``b`` is ``a``'s best match in the next frame holding one, and ``a`` is ``b``'s in the
    previous frame holding one (mutual, so an object that vanishes is not linked to a
    neighbour)."""
    ahead, behind = _first_matches(dets, rule, True), _first_matches(dets, rule, False)
    return {a: b for a, b in ahead.items() if behind.get(b) == a}


def _box(dets: Mapping[int, Detections], box_id: BoxId) -> np.ndarray:
    return dets[box_id[0]].xyxy[box_id[1]].astype(np.float64)


def _velocity(dets, earlier: BoxId | None, later: BoxId | None) -> np.ndarray:
    """Per-frame displacement of the corners from ``earlier`` to ``later`` (zero if either is
    missing)."""
    if earlier is None or later is None:
        return np.zeros(4)
    return (_box(dets, later) - _box(dets, earlier)) / (later[0] - earlier[0])


def fill(dets: Mapping[int, Detections], frames: Iterable[int], rule: Linking,
         n_frames: int, width: int, height: int) -> dict[int, FrameBoxes]:
    """The boxes to blur in each of ``frames``: detections plus interpolated and extended boxes
    (module doc), clipped to the ``width`` x ``height`` frame; extension stays inside
    ``[0, n_frames)``."""
    memory = rule.memory
    wanted = set(frames)
    fwd = links(dets, rule)
    back = {b: a for a, b in fwd.items()}  # links are mutual: one box links to b at most
    added: dict[int, list[tuple[np.ndarray, str, float, str, BoxId]]] = {f: [] for f in wanted}

    def add(frame: int, xyxy: np.ndarray, origin: BoxId, source: str, score: float):
        if frame in added:
            d = dets[origin[0]]
            added[frame].append((xyxy, str(d.labels[origin[1]]), score, source, origin))

    for (f, i), (g, j) in sorted(fwd.items()):
        a, b = _box(dets, (f, i)), _box(dets, (g, j))
        score = float(min(dets[f].scores[i], dets[g].scores[j]))
        for h in range(f + 1, g):
            t = (h - f) / (g - f)
            add(h, _grown(a + (b - a) * t, rule.grow * min(h - f, g - h)), (f, i),
                INTERPOLATED, score)
    def partial(box: BoxId, seen: BoxId | None) -> bool:
        """``seen``, its sighting in the next (or previous) frame, covers less than
        ``rule.partial`` of ``box`` (across a gap the object may have moved away: not asked)."""
        return seen is not None and abs(seen[0] - box[0]) == 1 and covered_fraction(
            _box(dets, box)[None], _box(dets, seen)[None])[0, 0] < rule.partial

    for f in sorted(dets):
        for i in range(len(dets[f])):
            a, box, score = (f, i), _box(dets, (f, i)), float(dets[f].scores[i])
            if a not in fwd or partial(a, fwd[a]):
                v = _velocity(dets, back.get(a), a)
                for s in range(1, memory + 1):
                    if f + s < n_frames:
                        add(f + s, _grown(_union(box, box + v * s), rule.grow * s), a, EXTENDED,
                            score)
            if a not in back or partial(a, back[a]):
                v = _velocity(dets, a, fwd.get(a))
                for s in range(1, memory + 1):
                    if f - s >= 0:
                        add(f - s, _grown(_union(box, box - v * s), rule.grow * s), a, EXTENDED,
                            score)
    return {f: _frame_boxes(f, dets.get(f, Detections.empty()), added[f], fwd, width, height)
            for f in sorted(wanted)}


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.concatenate([np.minimum(a[:2], b[:2]), np.maximum(a[2:], b[2:])])


def _grown(box: np.ndarray, fraction: float) -> np.ndarray:
    """``box`` grown by ``fraction`` of its width/height on every side."""
    pad = (box[2:] - box[:2]) * fraction
    return box + np.concatenate([-pad, pad])


def _frame_boxes(f: int, own: Detections, added: list, fwd: dict, width: int,
                 height: int) -> FrameBoxes:
    xyxy = np.array([x for x, *_ in added], np.float32).reshape(-1, 4)
    inside = ((np.minimum(xyxy[:, 2:], [width, height]) > np.maximum(xyxy[:, :2], 0))
              .all(axis=1))  # boxes entirely outside the frame are dropped
    kept = [a for a, keep in zip(added, inside) if keep]
    extra = clip(Detections(xyxy[inside], [s for _, _, s, _, _ in kept],
                            [lab for _, lab, _, _, _ in kept]), width, height)
    return FrameBoxes(
        Detections.concat([own, extra]),
        tuple([DETECTED] * len(own) + [src for _, _, _, src, _ in kept]),
        tuple([(f, i) for i in range(len(own))] + [o for *_, o in kept]),
        tuple([fwd.get((f, i)) for i in range(len(own))] + [None] * len(kept)))


def track_numbers(box_ids: Iterable[BoxId], forward: Mapping[BoxId, BoxId | None]
                  ) -> dict[BoxId, int]:
    """Track number (1, 2, ...) of every detection: connected components of the forward links,
    numbered in order of their first detection (frame, then index)."""
    parent: dict[BoxId, BoxId] = {b: b for b in box_ids}

    def root(b: BoxId) -> BoxId:
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        return b

    for a, b in forward.items():
        if b is not None and a in parent and b in parent:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    numbers: dict[BoxId, int] = {}
    out = {}
    for b in sorted(parent):
        out[b] = numbers.setdefault(root(b), len(numbers) + 1)
    return out
