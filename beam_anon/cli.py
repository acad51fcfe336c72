"""Blur every face and licence plate in a folder of JPEG/PNG images.

    beam-anon --input '/data/photos/**.jpg' --output /data/anon [options]

(the same: ``python -m beam_anon.cli``; in the repository also ``python -m pipelines.anonymize``).

Writes ``OUTPUT/<path relative to the input glob's directory>`` for every image anonymized, and
``OUTPUT/manifest.jsonl`` with one record per input (schema: ``beam_anon.manifest``). Images that
fail get no output file and a ``failed`` record. ``--input_format tfrecord``: ``--input`` matches
TFRecord shards of ``tf.train.Example``; ``OUTPUT/data-*.tfrecord`` is written
(``beam_anon.pipeline.tfrecords``). ``--input_format video`` (or an ``--input`` ending in .mp4, .mov, .mkv,
.avi): anonymized videos and ``OUTPUT/<key>.boxes.jsonl`` (``beam_anon.pipeline.video``).
Arguments not listed here go to Beam:
``--runner`` (default FnApiRunner: local, offline, one worker thread per core in one process),
``--direct_num_workers``, ``--direct_running_mode``; on Dataflow ``--runner=DataflowRunner
--project --region --temp_location gs://... --setup_file ./setup.py``.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (DirectOptions, PipelineOptions, StandardOptions,
                                                  WorkerOptions)

from beam_anon.models import licences, user_models
from beam_anon import progress
from beam_anon.pipeline import tfrecords, video_transforms
from beam_anon.detectors.user_spec import SpecError
from beam_anon.models import ModelError
from beam_anon.options import add_settings_arguments, parse_bool, settings_from
from beam_anon.settings import Settings
from beam_anon.pipeline.transforms import (NAMESPACE, AnonymizeImages, ReadImages, WriteAnonymized,
                                  glob_prefix, manifest_path)
from beam_anon.media.video_io import is_video_path

DEFAULT_RUNNER = "FnApiRunner"

class AnonymizeOptions(PipelineOptions):
    """The pipeline's own options: input/output and every ``Settings`` field."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", help="a directory (every file under it) or a glob "
                            "of images, e.g. '/data/**.jpg' or "
                            "'gs://bucket/photos/**' ('**' crosses directories)")
        parser.add_argument("--output", help="output directory (local or gs://); receives the "
                            "anonymized images and manifest.jsonl")
        parser.add_argument("--models_dir", default=None, help="model weight store (default: "
                            "$BEAM_ANON_MODELS or ~/.cache/beam_anon/models)")
        parser.add_argument("--debug_dir", default=None, help="write per-image debug views here "
                            "(ORIGINAL, un-anonymized pixels with every detection drawn); must "
                            "not be inside --output")
        parser.add_argument("--skip_existing", type=parse_bool, nargs="?", const=True,
                            default=False, metavar="BOOL", help="rerun into the same --output: "
                            "inputs whose output and record (OUTPUT/.records) exist from a run "
                            "with the same settings and models are not processed again; the "
                            "manifest still lists every input once (default: %(default)s)")
        parser.add_argument("--report", type=parse_bool, nargs="?", const=True, default=False,
                            metavar="BOOL", help="when the run is done, write OUTPUT/report.html "
                            "(python -m beam_anon.tools.report: counts, plots, review queue, thumbnails "
                            "of anonymized outputs only) (default: %(default)s)")
        parser.add_argument("--quiet", type=parse_bool, nargs="?", const=True, default=False,
                            metavar="BOOL", help="no progress lines on stderr (local runs print "
                            "images done of total, images/s and ETA every few seconds)")
        parser.add_argument("--log_level", default="WARNING",
                            choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                            help="log level of this process and its workers; at WARNING the "
                            "SDK workers' start-up notes nobody can act on are hidden, INFO "
                            "shows them (default: %(default)s)")
        add_settings_arguments(parser)

    def settings(self) -> Settings:
        """The run's Settings: ``--preset`` with every option given on top."""
        return settings_from(self.get_all_options())


def _is_local(path: str) -> bool:
    return "://" not in path


def _local_abs(path: str | None) -> str | None:
    if path is None or not _is_local(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def input_glob(path: str | None) -> str | None:
    """``--input`` as a glob: a directory (local, or any path ending in ``/``) means every
    file under it, at any depth (``DIR/**``); anything else is the glob as given."""
    if path and (path.endswith("/") or (_is_local(path) and os.path.isdir(path))):
        return path.rstrip("/") + "/**"
    return path


def _check(opts: AnonymizeOptions) -> None:
    """Refuse what would silently do harm; raises SystemExit with a clear message."""
    if not opts.input or not opts.output:
        raise SystemExit("beam-anon: --input GLOB and --output DIR are required "
                         "(see --help)")
    out = opts.output.rstrip("/") + "/"
    if out == glob_prefix(opts.input):
        raise SystemExit(f"--output {opts.output} is the input directory: the anonymized "
                         "images would overwrite the originals")
    if "**" in opts.input and out.startswith(glob_prefix(opts.input)):
        raise SystemExit(f"--output {opts.output} is inside the input directory, which "
                         f"--input {opts.input} searches at every depth: a later run would "
                         "read the anonymized images as input; choose an output outside it")
    if opts.debug_dir and (opts.debug_dir.rstrip("/") + "/").startswith(out):
        raise SystemExit("--debug_dir holds un-anonymized pixels and must not be inside --output")
    if _is_local(opts.input) and not FileSystems.match([opts.input])[0].metadata_list:
        raise SystemExit(f"no file matches --input {opts.input}")


def _own_models(opts: AnonymizeOptions) -> Settings:
    """The run's settings, with the ``--model_spec`` files read and checked and their models
    registered in this process, so every later check knows them; a bad spec stops the run."""
    try:
        settings = opts.settings()
    except SpecError as e:
        raise SystemExit(f"beam-anon: {e}") from None
    user_models.register_all(settings)
    return settings


def _check_models(settings: Settings, models_dir: str | None, load: bool) -> None:
    """Stop now, not with one failed record per image, for a value out of its range
    (``Settings.check_values``), a model name nobody knows or named in the wrong role, and
    (``load``) a spec model that does not load or fails on a probe image
    (``beam_anon.models.user_models.check_start``)."""
    try:
        settings.check_values()
    except ValueError as e:
        raise SystemExit(f"beam-anon: {e}") from None
    try:
        user_models.check_start(settings, models_dir, load)
        licences.check(settings)  # non-permissive models need --allow_licences
    except (SpecError, ModelError, licences.LicenceError) as e:
        raise SystemExit(f"beam-anon: {e}") from None


def build(pipeline: beam.Pipeline, opts: AnonymizeOptions, anonymizer_factory=None,
          ticker=None):
    """Add read -> anonymize -> write to ``pipeline``; returns the final records.
    ``anonymizer_factory``: see ``AnonymizeImages`` (default: the real models); ``ticker``
    (``beam_anon.progress``): counts inputs done."""
    input_format = opts.view_as(tfrecords.TFRecordOptions).input_format
    if input_format == "tfrecord":
        return tfrecords.build(pipeline, opts, anonymizer_factory, ticker)
    if input_format == "video" or (input_format == "images" and is_video_path(opts.input)):
        return video_transforms.build(pipeline, opts, anonymizer_factory)
    return (pipeline
            | "ReadImages" >> ReadImages(opts.input)
            | "AnonymizeImages" >> AnonymizeImages(
                opts.settings(), opts.models_dir, opts.debug_dir, anonymizer_factory,
                skip_existing_in=opts.output if opts.skip_existing else None)
            | "Progress" >> beam.Map(progress.passing, ticker)
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


#: what Beam's local SDK workers say at every start that a user can do nothing about; the
#: runner relays worker logs through its job-service logger
WORKER_NOISE = ("No semi_persistent_directory found", "No session file found",
                "Discarding unparseable args", "Discarding invalid overrides")
RELAY_LOGGER = "apache_beam.runners.portability.local_job_service"
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner",
                 "SwitchingDirectRunner", "PrismRunner")


class _DropWorkerNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in WORKER_NOISE)


def _quiet_logs(options: PipelineOptions, level: str) -> None:
    """This process (and the workers it relays) logs at ``level``; at WARNING and above the
    workers' start-up notes (:data:`WORKER_NOISE`) are dropped."""
    logging.basicConfig(level=level, format="%(levelname)s:%(name)s:%(message)s")
    logging.getLogger().setLevel(level)
    relay = logging.getLogger(RELAY_LOGGER)
    relay.filters = [f for f in relay.filters if not isinstance(f, _DropWorkerNoise)]
    if logging.getLevelName(level) >= logging.WARNING:
        relay.addFilter(_DropWorkerNoise())
    worker = options.view_as(WorkerOptions)
    if not worker.default_sdk_harness_log_level:
        worker.default_sdk_harness_log_level = level


def _progress(options: PipelineOptions, opts) -> progress.Progress | None:
    """A progress printer for local runs (not ``--quiet``); the total is the number of input
    files for images and videos, unknown (no ETA) for TFRecord Examples."""
    runner = str(options.view_as(StandardOptions).runner or "")
    if opts.quiet or not any(runner.endswith(r) for r in LOCAL_RUNNERS):
        return None
    tfrecord = opts.view_as(tfrecords.TFRecordOptions).input_format == "tfrecord"
    if tfrecord or is_video_path(opts.input):
        return None if not tfrecord else progress.Progress(None, "records")
    try:
        total = len(FileSystems.match([opts.input])[0].metadata_list)
    except Exception:  # an unreadable glob fails the run later, with Beam's own message
        total = None
    return progress.Progress(total, "images")


def local_defaults(options: PipelineOptions, argv: list[str], workers: bool = True) -> None:
    """No ``--runner``: the local FnApiRunner, and (``workers``) on a machine of several
    cores, unless ``--direct_num_workers`` is given, one worker thread per core in this process.
    The models run one thread each (``BEAM_ANON_THREADS``) and release the GIL, so the threads
    keep every core busy. Threads rather than processes: the models load once per run and no
    SDK worker processes start (a one-image run 3.4 -> 2.1 s; runs of 100-150 images 3-7 %
    shorter, of 200 the same; docs/performance.md). Detectors are thread-safe (onnxruntime sessions; the TFLite
    interpreter behind a lock; tests/test_detectors.py runs each from several threads)."""
    if options.view_as(StandardOptions).runner:
        return
    options.view_as(StandardOptions).runner = DEFAULT_RUNNER
    if workers and (os.cpu_count() or 1) > 1 and not any(
            a.startswith("--direct_num_workers") for a in argv):
        direct = options.view_as(DirectOptions)
        direct.direct_num_workers = os.cpu_count()
        direct.direct_running_mode = "multi_threading"


def main(argv: list[str] | None = None, anonymizer_factory=None):
    """Run the pipeline; returns the Beam PipelineResult (after it finished, when the runner
    waits). ``anonymizer_factory`` replaces the real models (tests only)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="beam-anon", description=__doc__,
                                     allow_abbrev=False,  # --region is not --region_padding...
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    AnonymizeOptions._add_argparse_args(parser)
    tfrecords.TFRecordOptions._add_argparse_args(parser)
    video_transforms.VideoOptions._add_argparse_args(parser)
    parser.parse_known_args(argv)  # --help, and type errors reported before Beam starts
    options = PipelineOptions(argv)
    local_defaults(options, argv, workers=anonymizer_factory is None)  # tests: one worker
    opts = options.view_as(AnonymizeOptions)
    _quiet_logs(options, opts.log_level)
    opts.input, opts.output = input_glob(_local_abs(opts.input)), _local_abs(opts.output)
    opts.debug_dir, opts.models_dir = _local_abs(opts.debug_dir), _local_abs(opts.models_dir)
    settings = _own_models(opts)
    _check(opts)
    _check_models(settings, opts.models_dir, load=anonymizer_factory is None)
    pipeline = beam.Pipeline(options=options)
    watch = _progress(options, opts)
    build(pipeline, opts, anonymizer_factory, watch.ticker() if watch else None)
    with watch or contextlib.nullcontext():
        result = pipeline.run()
        state = result.wait_until_finish()
    if str(state).endswith("DONE"):
        print(summary(result, opts))
        if opts.report:
            from beam_anon.tools.report import write_report
            print(f"beam_anon: report {write_report(opts.output)}")
    else:
        print(f"beam_anon: pipeline {state or 'submitted'}, not finished here; manifest will be "
              f"{manifest_path(opts.output)}")
    return result


def command() -> int:
    """The ``beam-anon`` console command: exit status 0 when the run finished (or was handed to
    a runner that does not wait, e.g. Dataflow), 1 when it failed or was cancelled; bad options
    and start checks exit 2 / with their message (``SystemExit``); Ctrl-C 130, saying how to
    go on."""
    try:
        state = str(getattr(main(), "state", "") or "")
    except KeyboardInterrupt:
        print("\nbeam_anon: interrupted. Every image finished so far is written with its record; "
              "run the same command with --skip_existing to go on from there.", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)  # not sys.exit: tearing down the runner's busy worker threads aborts
    return 1 if state.endswith(("FAILED", "CANCELLED")) else 0


if __name__ == "__main__":
    sys.exit(command())
