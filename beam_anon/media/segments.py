"""Splitting a video into segments that are processed in parallel and joined in order.

Frame numbers are 0 .. n_frames - 1 in presentation order. A segment *writes* the frames
``[start, end)`` (the cores of all segments partition the video, in order) and *decodes and
detects* ``[lo, hi)``: its core plus ``overlap`` frames of context on each side (clipped to the
video), so that the temporal step (``beam_anon.detection.tracking``, overlap = ``tracking.reach(memory)``)
sees in every segment what it would see in a whole-video run. Pure functions, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Segment:
    index: int
    start: int   # first frame written
    end: int     # one past the last frame written
    lo: int      # first frame decoded and detected
    hi: int      # one past the last frame decoded and detected

    @property
    def frames(self) -> int:
        return self.end - self.start


def plan_segments(n_frames: int, keyframes: Sequence[int], target_frames: int,
                  overlap: int) -> list[Segment]:
    """Cut ``[0, n_frames)`` into segments of ``target_frames`` frames or a little more (the
    last one may be shorter): each cut is at the first keyframe (``keyframes``: frame numbers)
    at least ``target_frames`` after the previous cut, or, when there is none within twice that,
    exactly ``target_frames`` after it (that segment then decodes from the keyframe before its
    context: correct, just more decoding). ``target_frames`` <= 0 gives one segment.
    ``overlap`` >= 0 frames of context each side, clipped to the video."""
    if n_frames <= 0:
        raise ValueError(f"a video needs at least one frame, got {n_frames}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0 frames, got {overlap}")
    cuts = [0]
    keys = sorted(set(keyframes))
    while target_frames > 0 and cuts[-1] + target_frames < n_frames:
        due = cuts[-1] + target_frames
        cut = next((k for k in keys if due <= k < n_frames), None)
        cut = cut if cut is not None and cut < due + target_frames else due
        if cut >= n_frames:
            break
        cuts.append(cut)
    bounds = list(zip(cuts, cuts[1:] + [n_frames]))
    return [Segment(i, s, e, max(0, s - overlap), min(n_frames, e + overlap))
            for i, (s, e) in enumerate(bounds)]


def detect_frame(frame: int, n_frames: int, every: int) -> bool:
    """Whether detection runs on ``frame``: every ``every``-th frame from 0, and always the last
    frame (so a track's end is seen). The rule depends on the frame number only, so every
    segmentation detects the same frames."""
    return every <= 1 or frame % every == 0 or frame == n_frames - 1
