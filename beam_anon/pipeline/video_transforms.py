"""Beam PTransforms for video files: one long recording becomes many parallel elements.

    p | ReadImages("/drives/**.mp4")                     # (key, fileio.ReadableFile)
      | AnonymizeVideos(settings, video_settings, "/out") # ManifestRecord; writes the videos
      | WriteManifest("/out")                            # manifest.jsonl, review.jsonl

Inside: probe and plan each video (``beam_anon.pipeline.video.plan``) -> Reshuffle the segment tasks
across workers -> anonymize each segment into a part (``video.process_segment``) -> group the
results by video -> join, write the output and the sidecar (``video.finish``). Fail closed: any
error for a video (probe, a segment, the join, the write) gives one ``failed`` record and no
output file for it; other videos go on. Metrics (namespace ``beam_anon``): counters ``videos``,
``videos_failed``, ``videos_written``, ``video_segments``, ``frames``.
"""
from __future__ import annotations

import logging
from typing import Callable

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from beam_anon.pipeline import video
from beam_anon.manifest import ManifestRecord, settings_dict
from beam_anon.settings import Settings
from beam_anon.pipeline.transforms import NAMESPACE, ReadImages, WriteManifest, _default_factory

log = logging.getLogger(__name__)
_FAILED = "failed"


class _PlanFn(beam.DoFn):
    """``(key, ReadableFile | path) -> SegmentTask``s; a video that cannot be planned goes to
    the ``failed`` output as its record."""

    def __init__(self, settings: Settings, vs: video.VideoSettings, models_dir, factory,
                 output_dir: str):
        self.settings, self.vs, self.models_dir = settings, vs, models_dir
        self.factory, self.output_dir = factory, output_dir
        self.videos = Metrics.counter(NAMESPACE, "videos")
        self.failed = Metrics.counter(NAMESPACE, "videos_failed")

    def setup(self):
        # the per-process model cache: the segments running in this process reuse the models
        self.models = self.factory(self.settings, self.models_dir).models()
        self.settings_json = settings_dict(self.settings)

    def process(self, element):
        key, source = element
        path = source.metadata.path if isinstance(source, fileio.ReadableFile) else source
        record = ManifestRecord(input=path, key=key, models=self.models,
                                settings=self.settings_json)
        self.videos.inc()
        try:
            tasks = video.plan(record, self.settings, self.vs, self.output_dir)
        except Exception as e:  # fail closed: nothing is decoded or written for it
            log.warning("failed %s: %s: %s", path, type(e).__name__, e)
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(_FAILED, record.failed(e))
            return
        log.info("%s: %d frames, %d segment(s)", key, tasks[0].info.frames, len(tasks))
        yield from tasks


class _SegmentFn(beam.DoFn):
    """``SegmentTask -> (key, SegmentResult)``; a failure becomes a result with its error."""

    def __init__(self, settings: Settings, vs: video.VideoSettings, models_dir, factory):
        self.settings, self.vs, self.models_dir, self.factory = settings, vs, models_dir, factory
        self.segments = Metrics.counter(NAMESPACE, "video_segments")
        self.frames = Metrics.counter(NAMESPACE, "frames")

    def setup(self):
        self.anonymizer = self.factory(self.settings, self.models_dir)
        video.show_progress()

    def process(self, task: video.SegmentTask):
        self.segments.inc()
        try:
            result = video.process_segment(task, self.anonymizer, self.settings, self.vs)
        except Exception as e:
            log.warning("failed %s segment %d: %s: %s", task.record.input, task.segment.index,
                        type(e).__name__, e)
            result = video.failed_segment(task, e)
        self.frames.inc(len(result.frames))
        yield task.record.key, result


class _FinishFn(beam.DoFn):
    """``(key, [SegmentResult]) -> ManifestRecord``: join and write one video."""

    def __init__(self, output_dir: str, settings: Settings, vs: video.VideoSettings):
        self.output_dir, self.settings, self.vs = output_dir, settings, vs
        self.failed = Metrics.counter(NAMESPACE, "videos_failed")
        self.written = Metrics.counter(NAMESPACE, "videos_written")

    def process(self, element):
        _, results = element
        record = video.finish(list(results), self.output_dir, self.settings, self.vs)
        (self.written if record.ok else self.failed).inc()
        yield record


class AnonymizeVideos(beam.PTransform):
    """``(key, fileio.ReadableFile | path) -> ManifestRecord`` (final). Writes each anonymized
    video to ``output_dir/key`` and its boxes to ``output_dir/key.boxes.jsonl``; records are
    ``failed`` (and nothing is written) for any video not processed completely.
    ``anonymizer_factory`` as in :class:`beam_anon.pipeline.transforms.AnonymizeImages`."""

    def __init__(self, settings: Settings, vs: video.VideoSettings, output_dir: str,
                 models_dir: str | None = None, anonymizer_factory: Callable | None = None):
        super().__init__()
        factory = anonymizer_factory or _default_factory
        self.plan = _PlanFn(settings, vs, models_dir, factory, output_dir)
        self.segment = _SegmentFn(settings, vs, models_dir, factory)
        self.finish = _FinishFn(output_dir, settings, vs)

    def expand(self, pcoll):
        planned = pcoll | "Plan" >> beam.ParDo(self.plan).with_outputs(_FAILED, main="tasks")
        done = (planned.tasks
                | "SpreadSegments" >> beam.Reshuffle()
                | "Segments" >> beam.ParDo(self.segment)
                | "ByVideo" >> beam.GroupByKey()
                | "Finish" >> beam.ParDo(self.finish))
        return (done, planned[_FAILED]) | "Records" >> beam.Flatten()


# --- command line -------------------------------------------------------------------------------

class VideoOptions(PipelineOptions):
    """Options of ``beam-anon`` for videos (``--input_format video``, or an
    ``--input`` ending in a video extension)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        d = video.VideoSettings()
        parser.add_argument("--video_track_memory", type=int, default=d.track_memory,
                            help="video: gaps of up to this many frames in a track are "
                            "bridged with interpolated boxes, and each track is blurred this "
                            "many frames before its first and after its last sighting "
                            "(default: %(default)s)")
        parser.add_argument("--video_track_iou", type=float, default=d.track_iou,
                            help="video: IoU a box needs with the next sighting to be linked "
                            "into one track (default: %(default)s)")
        parser.add_argument("--video_track_speed", type=float, default=d.track_speed,
                            help="video: motion a tracked box may make per frame, as a "
                            "fraction of its size, and still be linked (0 = plain IoU) "
                            "(default: %(default)s)")
        parser.add_argument("--video_track_grow", type=float, default=d.track_grow,
                            help="video: interpolated and carried-on boxes grow by this "
                            "fraction of their size per side for each frame away from a "
                            "sighting (default: %(default)s)")
        parser.add_argument("--video_detect_every", type=int, default=d.detect_every,
                            help="video: run the detectors on every k-th frame (and the last) "
                            "and blur tracked boxes in between; faster, lower recall "
                            "(docs/performance.md); needs video_track_memory >= k - 1 "
                            "(default: %(default)s)")
        parser.add_argument("--video_segment_frames", type=int, default=d.segment_frames,
                            help="video: frames per segment processed in parallel (cut at "
                            "the next keyframe); 0 = one segment per video "
                            "(default: %(default)s)")
        parser.add_argument("--video_crf", type=int, default=d.crf, help="video: H.264 "
                            "quality (libx264 crf, 0 = lossless .. 51; lower is better) "
                            "(default: %(default)s)")
        parser.add_argument("--video_preset", default=d.preset, help="video: libx264 speed "
                            "preset, ultrafast .. veryslow (default: %(default)s)")

    def video_settings(self) -> video.VideoSettings:
        return video.VideoSettings(self.video_track_memory, self.video_track_iou,
                                   self.video_track_speed, self.video_track_grow,
                                   self.video_detect_every, self.video_segment_frames,
                                   self.video_crf, self.video_preset)


def build(pipeline, opts, anonymizer_factory=None):
    """read videos -> anonymize -> write videos, sidecars and the manifest, for the CLI."""
    if getattr(opts, "skip_existing", False):
        raise SystemExit("--skip_existing is for image folders, not videos")
    if getattr(opts, "debug_dir", None):
        raise SystemExit("--debug_dir is for images, not videos")
    try:
        vs = opts.view_as(VideoOptions).video_settings()
    except ValueError as e:
        raise SystemExit(f"video options: {e}")
    records = (pipeline
               | "ReadVideos" >> ReadImages(opts.input)
               | "AnonymizeVideos" >> AnonymizeVideos(opts.settings(), vs, opts.output,
                                                      opts.models_dir, anonymizer_factory))
    _ = records | "WriteRecords" >> WriteManifest(opts.output)
    return records
