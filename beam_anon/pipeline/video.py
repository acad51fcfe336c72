"""Anonymizing one video, no pipeline code: plan segments, process each one, join them.

* :func:`plan` probes the file (``beam_anon.media.video_io``) and cuts it into segments
  (``beam_anon.media.segments``); each :class:`SegmentTask` can run on any worker.
* :func:`process_segment` decodes the segment's frames plus ``Linking.reach`` frames of context
  each side, runs the image anonymizer (``Anonymizer.run``, exactly as for
  images) on every ``detect_every``-th frame, adds the temporal step's boxes
  (``beam_anon.detection.tracking``) and blurs them too, and encodes the segment's own frames to a part
  file under ``OUTPUT/.video_parts/`` (anonymized pixels only). Frames are finished as soon as
  their context is decoded, so memory holds about ``2 * reach + 1`` frames.
* :func:`finish` checks that every segment succeeded and that together they cover every frame,
  numbers the tracks, joins the parts with the source's audio (``beam_anon.media.video_encode``), and
  writes ``OUTPUT/<key>.boxes.jsonl`` then ``OUTPUT/<key>``, each atomically. Anything short of
  that: no output file (fail closed), the caller records the error.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems

from beam_anon.detection import review as review_mod
from beam_anon.detection import tracking
from beam_anon.media import video_encode, video_io
from beam_anon.detection.blur import blur_boxes
from beam_anon.boxes import Detections
from beam_anon.manifest import STATUS_OK, ManifestRecord
from beam_anon.media.segments import Segment, detect_frame, plan_segments
from beam_anon.settings import Settings
from beam_anon.pipeline.transforms import check_key, write_atomic

PARTS_DIR = ".video_parts"
SIDECAR_SUFFIX = ".boxes.jsonl"
PROGRESS_SECONDS = 10.0
MAX_REVIEW_BOXES = 100
log = logging.getLogger(__name__)
progress_log = logging.getLogger("beam_anon.progress")


def show_progress() -> None:
    """Make the progress lines (INFO on ``beam_anon.progress``) reach this process's stderr
    whatever the runner's log level (local terminal; worker logs on Dataflow). Idempotent."""
    if not any(getattr(h, "_beam_anon", False) for h in progress_log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("beam_anon: %(message)s"))
        handler._beam_anon = True
        progress_log.addHandler(handler)
    progress_log.setLevel(logging.INFO)


@dataclass(frozen=True)
class VideoSettings:
    """Video-only settings (each frame is anonymized with the run's ``Settings``). In frames."""

    track_memory: int = 3        # gaps up to this long are bridged; tracks extended this far
    track_iou: float = 0.2       # IoU a box needs with its next sighting to link to it
    track_speed: float = 0.5     # motion allowed per frame when linking, fraction of box size
    track_grow: float = 0.15     # added boxes grow this much per frame from a sighting (per side)
    detect_every: int = 1        # detect on every k-th frame (and the last); track in between
    segment_frames: int = 300    # frames per segment (cut at the next keyframe); 0: never split
    crf: int = 18                # libx264 quality, 0 (lossless) .. 51; 18 ~ visually lossless
    preset: str = "medium"       # libx264 speed preset (ultrafast .. veryslow)

    def __post_init__(self):
        if self.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {self.detect_every}")
        if self.track_memory < self.detect_every - 1:
            raise ValueError(f"track_memory ({self.track_memory}) must be >= detect_every - 1 "
                             f"({self.detect_every - 1}): frames between detections would "
                             "get no boxes")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in 0..51, got {self.crf}")
        _ = self.linking  # validates memory and speed

    @property
    def linking(self) -> tracking.Linking:
        return tracking.Linking(self.track_memory, self.track_iou, self.track_speed,
                                self.track_grow)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SegmentTask:
    """One segment of one video: where to read, which frames, where its part goes. ``pts`` and
    ``durations``: the output timestamps of frames ``segment.lo .. segment.hi - 1``."""

    record: ManifestRecord        # the video's record so far (input, key, models, settings)
    info: video_io.VideoInfo
    segment: Segment
    segments: int
    pts: tuple[int, ...]
    durations: tuple[int, ...]
    parts_dir: str


@dataclass
class SegmentResult:
    """What a segment produced: its part file, its frames' boxes (``frames``: one dict per
    frame of the core, in order), counts and timings; or the error that stopped it."""

    task: SegmentTask
    part: str | None = None
    frames: list[dict] = field(default_factory=list)
    detected: int = 0
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    reviews: list[tuple[int, dict]] = field(default_factory=list)
    error: str | None = None
    error_type: str | None = None


def parts_dir(output_dir: str, key: str) -> str:
    """Where the parts of ``key`` go: ``OUTPUT/.video_parts/<hash of key>``."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return FileSystems.join(output_dir, PARTS_DIR, digest)


def plan(record: ManifestRecord, settings: Settings, vs: VideoSettings,
         output_dir: str) -> list[SegmentTask]:
    """Probe ``record.input`` and cut it into segment tasks (one when it cannot be split)."""
    check_key(record.key)
    t = time.perf_counter()
    probe = video_io.probe(record.input, settings.max_pixels)
    info = probe.info
    record = dataclasses.replace(record, timings={"probe": time.perf_counter() - t})
    target = vs.segment_frames if info.seekable else 0
    segs = plan_segments(info.frames, info.keyframes, target, vs.linking.reach)
    where = parts_dir(output_dir, record.key)
    return [SegmentTask(record, info, s, len(segs), tuple(map(int, probe.pts[s.lo:s.hi])),
                        tuple(map(int, probe.durations[s.lo:s.hi])), where) for s in segs]


def _box_dicts(fb: tracking.FrameBoxes) -> list[dict]:
    out = []
    for rec, source, origin, link in zip(fb.boxes.to_records(), fb.source, fb.origin, fb.link):
        out.append(dict(rec, source=source, origin=list(origin),
                        link=list(link) if link else None))
    return out


class _Progress:
    """Logs frames done / total and frames per second every PROGRESS_SECONDS, and at the end."""

    def __init__(self, task: SegmentTask):
        s = task.segment
        self.name = (f"{task.record.key}: segment {s.index + 1}/{task.segments} "
                     f"(frames {s.start}-{s.end - 1} of {task.info.frames})")
        self.total, self.start = s.hi - s.lo, time.perf_counter()
        self.last = self.start

    def update(self, done: int, final: bool = False) -> None:
        now = time.perf_counter()
        if final or now - self.last >= PROGRESS_SECONDS:
            self.last = now
            rate = done / max(now - self.start, 1e-9)
            progress_log.info("%s: %d/%d frames, %.2f frames/s%s", self.name, done,
                              self.total, rate, " (done)" if final else "")


def process_segment(task: SegmentTask, anonymizer, settings: Settings,
                    vs: VideoSettings) -> SegmentResult:
    """Anonymize one segment into its part file (see the module doc). Raises on any failure;
    a part already uploaded is removed by :func:`finish` (or never used)."""
    start = time.perf_counter()
    seg, info, n = task.segment, task.info, task.info.frames
    width, height = info.display_size
    rule = vs.linking
    r = rule.reach
    result = SegmentResult(task)
    timings: dict[str, float] = defaultdict(float)
    dets: dict[int, Detections] = {}
    pending: deque = deque()
    progress = _Progress(task)

    with video_encode.local_tempdir() as tmp:
        local = os.path.join(tmp, "part.mp4")
        writer = video_encode.PartWriter(local, width, height, info.rate, info.time_base,
                                         info.container, vs.crf, vs.preset)

        def finish_frame(f, img):
            t = time.perf_counter()
            window = {g: d for g, d in dets.items() if abs(g - f) <= r}
            fb = tracking.fill(window, [f], rule, n, width, height)[f]
            added = fb.added
            if len(added):
                img = blur_boxes(img, added, settings.blur_mode, settings.blur_strength)
            timings["track"] += time.perf_counter() - t
            t = time.perf_counter()
            writer.write(img, task.pts[f - seg.lo], task.durations[f - seg.lo])
            timings["encode"] += time.perf_counter() - t
            result.frames.append({"frame": f, "pts": task.pts[f - seg.lo],
                                  "boxes": _box_dicts(fb)})

        try:
            t = time.perf_counter()
            for done, (i, img) in enumerate(video_io.decode_range(
                    task.record.input, info, seg.lo, seg.hi, task.pts), 1):
                timings["decode"] += time.perf_counter() - t
                if detect_frame(i, n, vs.detect_every):
                    res = anonymizer.run(img)
                    dets[i], img = res.boxes, res.image
                    result.detected += 1
                    for step, seconds in res.timings.items():
                        timings[step] += seconds
                    if getattr(res, "review", None):
                        result.reviews.append((i, res.review))
                if seg.start <= i < seg.end:
                    pending.append((i, img))
                while pending and pending[0][0] + r <= i:
                    finish_frame(*pending.popleft())
                for old in [g for g in dets if g < i - 2 * r]:
                    del dets[old]
                progress.update(done)
                t = time.perf_counter()
            while pending:
                finish_frame(*pending.popleft())
            t = time.perf_counter()
            frames = writer.close()
            timings["encode"] += time.perf_counter() - t
        except BaseException:
            writer.abort()
            raise
        if frames != seg.frames or [d["frame"] for d in result.frames] != list(
                range(seg.start, seg.end)):
            raise video_io.VideoError(f"segment {seg.index} wrote {frames} of its "
                                      f"{seg.frames} frames")
        t = time.perf_counter()
        result.part = FileSystems.join(task.parts_dir,
                                       f"{seg.index:06d}-{uuid.uuid4().hex}.mp4")
        video_encode.upload(local, result.part)
        timings["upload"] += time.perf_counter() - t
    progress.update(seg.hi - seg.lo, final=True)
    result.timings = dict(timings)
    result.seconds = time.perf_counter() - start
    return result


def failed_segment(task: SegmentTask, error: BaseException) -> SegmentResult:
    """The result of a segment that raised ``error``."""
    s = task.segment
    return SegmentResult(task, error=f"segment {s.index + 1}/{task.segments} (frames "
                                     f"{s.start}-{s.end - 1}): {str(error) or repr(error)}",
                         error_type=type(error).__name__)


def _sidecar(results: list[SegmentResult], info: video_io.VideoInfo) -> tuple[bytes, dict]:
    """The sidecar's bytes (one line per frame: ``{frame, t, boxes}``, box ``{label, score,
    track, x0, y0, x1, y1, source}``) and the counts for the manifest."""
    frames = [fr for r in results for fr in r.frames]
    if [fr["frame"] for fr in frames] != list(range(info.frames)):
        raise video_io.VideoError("the segments do not cover every frame exactly once")
    forward = {tuple(b["origin"]): (tuple(b["link"]) if b["link"] else None)
               for fr in frames for b in fr["boxes"] if b["source"] == tracking.DETECTED}
    numbers = tracking.track_numbers(forward, forward)
    lines, boxes, added, tracks = [], defaultdict(int), 0, defaultdict(set)
    for fr in frames:
        out = []
        for b in fr["boxes"]:
            track = numbers.get(tuple(b["origin"]))
            if track is None:  # per-frame detection must not depend on the segmentation
                raise video_io.VideoError(f"frame {fr['frame']}: segments disagree on the "
                                          f"detections of frame {b['origin'][0]}")
            out.append({"label": b["label"], "score": b["score"], "track": track,
                        "x0": b["x0"], "y0": b["y0"], "x1": b["x1"], "y1": b["y1"],
                        "source": b["source"]})
            boxes[b["label"]] += 1
            added += b["source"] != tracking.DETECTED
            tracks[b["label"]].add(track)
        t = round(float(fr["pts"] * info.time_base), 6)
        lines.append(json.dumps({"frame": fr["frame"], "t": t, "boxes": out},
                                separators=(",", ":")))
    counts = {"boxes": dict(boxes), "boxes_added": added,
              "tracks": {label: len(ids) for label, ids in tracks.items()}}
    return ("\n".join(lines) + "\n").encode(), counts


def _review(results: list[SegmentResult]) -> tuple[dict | None, bool]:
    """The video's review: its frames' merged (highest risk, queued if any frame is), with
    each box's frame number, at most MAX_REVIEW_BOXES boxes (riskiest first)."""
    merged = review_mod.merge([dict(rv, boxes=[dict(b, frame=frame) for b in rv.get("boxes", ())])
                               for r in results for frame, rv in r.reviews])
    if merged is None:
        return None, False
    merged["boxes"] = merged["boxes"][:MAX_REVIEW_BOXES]
    return merged, review_mod.VERIFY_SURVIVED in merged["reasons"]


def remove_parts(directory: str) -> None:
    """Delete the parts of one video (every attempt's); best effort."""
    try:
        found = FileSystems.match([FileSystems.join(directory, "*")])[0].metadata_list
        if found:
            FileSystems.delete([m.path for m in found])
        if "://" not in directory:
            shutil.rmtree(directory, ignore_errors=True)
            try:
                os.rmdir(os.path.dirname(directory))  # .video_parts, once empty
            except OSError:
                pass
    except Exception as e:
        log.warning("could not remove video parts in %s: %s", directory, e)


def finish(results: list[SegmentResult], output_dir: str, settings: Settings,
           vs: VideoSettings) -> ManifestRecord:
    """Join a video's segment results into its output and sidecar; returns its final record
    (``ok``, or ``failed`` with nothing written). Removes the parts in every case."""
    results = sorted(results, key=lambda r: r.task.segment.index)
    task = results[0].task
    record, info = task.record, task.info
    try:
        failed = [r for r in results if r.error]
        if failed:
            return record.failed(failed[0].error, failed[0].error_type)
        if [r.task.segment.index for r in results] != list(range(task.segments)):
            raise video_io.VideoError(f"{len(results)} of {task.segments} segments arrived")
        return _write(results, output_dir, settings, vs)
    except Exception as e:
        log.warning("failed %s: %s: %s", record.input, type(e).__name__, e)
        return record.failed(e)
    finally:
        remove_parts(task.parts_dir)


def _write(results, output_dir, settings, vs) -> ManifestRecord:
    task = results[0].task
    record, info = task.record, task.info
    timings: dict[str, float] = defaultdict(float, record.timings)
    for r in results:
        for step, seconds in r.timings.items():
            timings[step] += seconds
    sidecar, counts = _sidecar(results, info)
    output = FileSystems.join(output_dir, check_key(record.key))
    sidecar_path = output + SIDECAR_SUFFIX
    with video_encode.local_tempdir() as tmp:
        t = time.perf_counter()
        local = os.path.join(tmp, "video")
        video_encode.join([r.part for r in results], record.input, local, info,
                          settings.keep_metadata)
        timings["join"] = time.perf_counter() - t
        t = time.perf_counter()
        write_atomic(sidecar_path, sidecar)
        try:
            with open(local, "rb") as f:
                write_atomic(output, f)
        except BaseException:
            FileSystems.delete([sidecar_path])
            raise
        timings["write"] = time.perf_counter() - t
    review, needs_review = _review(results)
    width, height = info.display_size
    seconds = sum(r.seconds for r in results)
    video = {"frames": info.frames, "fps": round(float(info.rate), 4),
             "duration": round(info.duration, 6), "codec": video_encode.encoder_name(),
             "source_codec": info.codec, "rotation": info.orientation.degrees,
             "audio_streams": info.audio_streams, "dropped_streams": list(info.dropped_streams),
             "segments": len(results),
             "frames_detected": sum(detect_frame(f, info.frames, vs.detect_every)
                                    for f in range(info.frames)),
             "detector_runs": sum(r.detected for r in results), **counts,
             "frames_per_second": round(info.frames / max(seconds, 1e-9), 3),
             "sidecar": sidecar_path, "settings": vs.to_dict()}
    return dataclasses.replace(
        record, output=output, status=STATUS_OK, width=width, height=height,
        format=record.input.rsplit(".", 1)[-1].lower(), timings=dict(timings),
        needs_review=needs_review, review=review, video=video)
