"""Blur every face and licence plate in a folder of JPEG/PNG images.

    python -m pipelines.anonymize --input '/data/photos/**.jpg' --output /data/anon [options]

Writes ``OUTPUT/<path relative to the input glob's directory>`` for every image anonymized, and
``OUTPUT/manifest.jsonl`` with one record per input (schema: ``beam_anon.manifest``). Images that
fail get no output file and a ``failed`` record. ``--input_format tfrecord``: ``--input`` matches
TFRecord shards of ``tf.train.Example``; ``OUTPUT/data-*.tfrecord`` is written
(``beam_anon.tfrecords``). ``--input_format video`` (or an ``--input`` ending in .mp4, .mov, .mkv,
.avi): anonymized videos and ``OUTPUT/<key>.boxes.jsonl`` (``beam_anon.video``).
Arguments not listed here go to Beam:
``--runner`` (default FnApiRunner: local, offline, one worker process per core), ``--direct_num_workers``,
``--direct_running_mode``; on Dataflow ``--runner=DataflowRunner --project --region
--temp_location gs://... --setup_file ./setup.py``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from beam_anon import tfrecords, video_transforms
from beam_anon.blur import MODES as BLUR_MODES
from beam_anon.settings import Settings
from beam_anon.transforms import (NAMESPACE, AnonymizeImages, ReadImages, WriteAnonymized,
                                  glob_prefix, manifest_path)
from beam_anon.video_io import is_video_path

DEFAULT_RUNNER = "FnApiRunner"

#: --help text of every Settings field (test_pipeline checks none is missing)
SETTINGS_HELP = {
    "stage1_model": "stage-1 person/vehicle detector (registry name), 'none' to skip stage 1 "
                    "(stage 2 then runs on full-frame tiles only)",
    "face_models": "comma-separated face detectors (registry names); all run, boxes are unioned",
    "plate_models": "comma-separated licence-plate detectors (registry names)",
    "stage1_classes": "comma-separated COCO classes whose boxes become stage-2 regions",
    "stage1_threshold": "stage-1 minimum score, 0-1",
    "merge_iou": "stage-1 boxes overlapping more than this IoU merge into one region",
    "merge_small_fraction": "a box under this fraction of the image (both sides) is 'small' and "
                            "merges with boxes it touches",
    "merge_gap_fraction": "gap, as a fraction of the image size, still counted as touching",
    "region_padding_fraction": "padding added to each region, fraction of its size per side",
    "crop_target_size": "long side in pixels a small region is upscaled to for stage 2",
    "crop_max_upscale": "largest upscale factor of a region crop",
    "crop_max_size": "regions longer than this (pixels) are split into tiles",
    "full_frame": "also run stage 2 on the whole image in tiles, so stage-1 misses are not "
                  "privacy misses (true/false)",
    "full_frame_tile": "full-frame tile side in pixels as stage 2 sees it",
    "face_full_frame_scales": "comma-separated resize factors of the full-frame face passes "
                              "(2 = tiles upscaled 2x, finds smaller faces, costs 4x)",
    "plate_full_frame_scales": "comma-separated resize factors of the full-frame plate passes",
    "face_threshold": "face minimum score, 0-1 (lower blurs more)",
    "plate_threshold": "licence-plate minimum score, 0-1 (lower blurs more)",
    "model_thresholds": "per-model minimum scores overriding the two above, e.g. "
                        "centerface=0.3,yunet=0.6",
    "face_rotations": "extra full-frame face passes on the image turned by these angles "
                      "(degrees, multiples of 90; e.g. 180 finds upside-down faces; empty: none)",
    "face_rotation_models": "face models that run the turned passes",
    "model_max_scales": "per-model cap on the full-frame scales, e.g. yunet=1 (yunet skips "
                        "the 2x pass)",
    "nms_iou": "duplicate boxes overlapping more than this IoU are fused",
    "blur_mode": "how boxes are made unrecognizable: " + " | ".join(BLUR_MODES),
    "blur_margin_fraction": "each box grows by this fraction of its size per side before blurring",
    "blur_strength": "gaussian sigma / pixelate cell as a fraction of the box's long side",
    "verify": "verification pass: run the face and plate detectors again on the blurred image "
              "and blur what they still find, more strongly each round (true/false)",
    "verify_threshold": "verification hit: a detection on the blurred image scoring at least "
                        "this (and at least the model's own threshold), 0-1",
    "verify_rounds": "re-blur rounds (blur strength doubles each round); still detected after "
                     "the last round -> the record needs review",
    "review_band": "detections scoring within this much below their threshold are not blurred "
                   "but put the image in OUTPUT/review.jsonl (0 = off)",
    "jpeg_quality": "JPEG output quality, 1-100",
    "keep_metadata": "keep allow-listed EXIF (capture time, exposure; never GPS, camera, serial "
                     "numbers or thumbnail; see beam_anon.image_io) (true/false)",
    "max_pixels": "images with more pixels fail with a clear error (decompression-bomb guard)",
    "detect_max_pixels": "larger images are searched on a copy shrunk to this many pixels "
                         "(bounded time and memory); boxes map back, the blur is full-resolution",
}


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _settings_argument(parser, f: dataclasses.Field) -> None:
    default = f.default
    kw = {"default": default, "help": f"{SETTINGS_HELP[f.name]} (default: %(default)s)"}
    if isinstance(default, bool):
        kw.update(type=_bool, nargs="?", const=True, metavar="BOOL")
    elif isinstance(default, tuple):
        item = type(default[0]) if default else str
        kw.update(type=lambda s: tuple(item(x.strip()) for x in s.split(",") if x.strip()),
                  metavar="A,B", default=",".join(map(str, default)))
        kw["help"] = f"{SETTINGS_HELP[f.name]} (default: {','.join(map(str, default))})"
    elif "None" in str(f.type):
        kw.update(type=lambda s: None if s.strip().lower() in ("", "none") else s.strip())
    else:
        kw["type"] = type(default)
    if f.name == "blur_mode":
        kw["choices"] = BLUR_MODES
    parser.add_argument(f"--{f.name}", **kw)


class AnonymizeOptions(PipelineOptions):
    """The pipeline's own options: input/output and every ``Settings`` field."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", help="glob of images, e.g. '/data/**.jpg' or "
                            "'gs://bucket/photos/**' ('**' crosses directories)")
        parser.add_argument("--output", help="output directory (local or gs://); receives the "
                            "anonymized images and manifest.jsonl")
        parser.add_argument("--models_dir", default=None, help="model weight store (default: "
                            "$BEAM_ANON_MODELS or ~/.cache/beam_anon/models)")
        parser.add_argument("--debug_dir", default=None, help="write per-image debug views here "
                            "(ORIGINAL, un-anonymized pixels with every detection drawn); must "
                            "not be inside --output")
        parser.add_argument("--skip_existing", type=_bool, nargs="?", const=True,
                            default=False, metavar="BOOL", help="rerun into the same --output: "
                            "inputs whose output and record (OUTPUT/.records) exist from a run "
                            "with the same settings and models are not processed again; the "
                            "manifest still lists every input once (default: %(default)s)")
        parser.add_argument("--report", type=_bool, nargs="?", const=True, default=False,
                            metavar="BOOL", help="when the run is done, write OUTPUT/report.html "
                            "(python -m beam_anon.report: counts, plots, review queue, thumbnails "
                            "of anonymized outputs only) (default: %(default)s)")
        for f in dataclasses.fields(Settings):
            _settings_argument(parser, f)

    def settings(self) -> Settings:
        values = self.get_all_options()
        fields = {}
        for f in dataclasses.fields(Settings):
            value = values[f.name]
            if isinstance(f.default, tuple):
                item = type(f.default[0]) if f.default else str
                if isinstance(value, str):
                    value = value.split(",")
                value = tuple(item(str(x).strip()) for x in value if str(x).strip())
            fields[f.name] = value
        return Settings(**fields)


def _is_local(path: str) -> bool:
    return "://" not in path


def _local_abs(path: str | None) -> str | None:
    if path is None or not _is_local(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def _check(opts: AnonymizeOptions) -> None:
    """Refuse what would silently do harm; raises SystemExit with a clear message."""
    if not opts.input or not opts.output:
        raise SystemExit("pipelines.anonymize: --input GLOB and --output DIR are required "
                         "(see --help)")
    out = opts.output.rstrip("/") + "/"
    if out == glob_prefix(opts.input):
        raise SystemExit(f"--output {opts.output} is the input directory: the anonymized "
                         "images would overwrite the originals")
    if opts.debug_dir and (opts.debug_dir.rstrip("/") + "/").startswith(out):
        raise SystemExit("--debug_dir holds un-anonymized pixels and must not be inside --output")
    if _is_local(opts.input) and not FileSystems.match([opts.input])[0].metadata_list:
        raise SystemExit(f"no file matches --input {opts.input}")


def build(pipeline: beam.Pipeline, opts: AnonymizeOptions, anonymizer_factory=None):
    """Add read -> anonymize -> write to ``pipeline``; returns the final records.
    ``anonymizer_factory``: see ``AnonymizeImages`` (default: the real models)."""
    input_format = opts.view_as(tfrecords.TFRecordOptions).input_format
    if input_format == "tfrecord":
        return tfrecords.build(pipeline, opts, anonymizer_factory)
    if input_format == "video" or (input_format == "images" and is_video_path(opts.input)):
        return video_transforms.build(pipeline, opts, anonymizer_factory)
    return (pipeline
            | "ReadImages" >> ReadImages(opts.input)
            | "AnonymizeImages" >> AnonymizeImages(
                opts.settings(), opts.models_dir, opts.debug_dir, anonymizer_factory,
                skip_existing_in=opts.output if opts.skip_existing else None)
            | "WriteAnonymized" >> WriteAnonymized(opts.output))


def summary(result, opts: AnonymizeOptions) -> str:
    """One line: counts from the pipeline's metrics, output dir and manifest path."""
    counts: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        counts[c.key.metric.name] = counts.get(c.key.metric.name, 0) + int(value or 0)
    if "videos" in counts:
        videos, failed = counts["videos"], counts.get("videos_failed", 0)
        return (f"beam_anon: {videos} videos, {videos - failed} ok, {failed} failed, "
                f"{counts.get('frames', 0)} frames in {counts.get('video_segments', 0)} "
                f"segments -> {opts.output} (manifest: {manifest_path(opts.output)})")
    images, failed = counts.get("images", 0), counts.get("images_failed", 0)
    skipped = f" ({counts['images_skipped']} skipped)" if counts.get("images_skipped") else ""
    return (f"beam_anon: {images} images, {images - failed} ok{skipped}, {failed} failed, "
            f"{counts.get('faces', 0)} faces and {counts.get('plates', 0)} plates blurred -> "
            f"{opts.output} (manifest: {manifest_path(opts.output)})")


def main(argv: list[str] | None = None, anonymizer_factory=None):
    """Run the pipeline; returns the Beam PipelineResult (after it finished, when the runner
    waits). ``anonymizer_factory`` replaces the real models (tests only)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m pipelines.anonymize", description=__doc__,
                                     allow_abbrev=False,  # --region is not --region_padding...
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    AnonymizeOptions._add_argparse_args(parser)
    tfrecords.TFRecordOptions._add_argparse_args(parser)
    video_transforms.VideoOptions._add_argparse_args(parser)
    parser.parse_known_args(argv)  # --help, and type errors reported before Beam starts
    options = PipelineOptions(argv)
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = DEFAULT_RUNNER
        if (os.cpu_count() or 1) > 1 and anonymizer_factory is None and not any(
                a.startswith("--direct_num_workers") for a in argv):
            # models run one thread each (BEAM_ANON_THREADS), so use a process per core
            direct = options.view_as(DirectOptions)
            direct.direct_num_workers = os.cpu_count()
            direct.direct_running_mode = "multi_processing"
    opts = options.view_as(AnonymizeOptions)
    opts.input, opts.output = _local_abs(opts.input), _local_abs(opts.output)
    opts.debug_dir, opts.models_dir = _local_abs(opts.debug_dir), _local_abs(opts.models_dir)
    _check(opts)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, opts, anonymizer_factory)
    result = pipeline.run()
    state = result.wait_until_finish()
    if str(state).endswith("DONE"):
        print(summary(result, opts))
        if opts.report:
            from beam_anon.report import write_report
            print(f"beam_anon: report {write_report(opts.output)}")
    else:
        print(f"beam_anon: pipeline {state or 'submitted'}, not finished here; manifest will be "
              f"{manifest_path(opts.output)}")
    return result


if __name__ == "__main__":
    main()
