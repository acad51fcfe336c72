"""Beam PTransforms: read image files, anonymize them, write outputs and the manifest.

    p | ReadImages("/data/**.jpg")                     # (key, fileio.ReadableFile)
      | AnonymizeImages(settings)                      # (key, bytes | None, ManifestRecord)
      | WriteAnonymized("/out")                        # ManifestRecord; /out/manifest.jsonl

Fail closed: any exception for one image (read, decode, detect, encode, write, bad key) gives a
``failed`` record and no output file for it; every input gets exactly one manifest record.
Metrics (namespace ``beam_anon``): counters ``images``, ``images_failed``, ``images_written``,
``images_skipped``, ``faces``, ``plates``; distribution ``ms_per_image``.
Each record is also kept in ``OUTPUT/.records/`` as soon as its image is done, so a killed run
can be resumed with ``skip_existing`` (see :mod:`beam_anon.pipeline.records`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
import uuid
from typing import BinaryIO, Callable, Iterable

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_anon.media import image_io, jpeg_output
from beam_anon.detection import review
from beam_anon.manifest import STATUS_OK, ManifestRecord, settings_dict
from beam_anon.pipeline.records import previous_record, record_bytes, record_path
from beam_anon.settings import Settings

NAMESPACE = "beam_anon"
MANIFEST_NAME = "manifest.jsonl"
REVIEW_NAME = "review.jsonl"
_WILDCARDS = "*?[{"
log = logging.getLogger(__name__)


# --- keys and paths -------------------------------------------------------------------------

def glob_prefix(file_pattern: str) -> str:
    """The fixed directory of a glob, ending in ``/``: ``/a/b/**.jpg`` -> ``/a/b/``;
    ``gs://b/x/*.png`` -> ``gs://b/x/``."""
    cut = min([file_pattern.find(c) for c in _WILDCARDS if c in file_pattern] or
              [len(file_pattern)])
    return file_pattern[:file_pattern.rfind("/", 0, cut) + 1]


def relative_key(path: str, prefix: str) -> str:
    """``path`` relative to ``prefix`` (the output name); the base name if outside it."""
    return path[len(prefix):] if path.startswith(prefix) else path.rsplit("/", 1)[-1]


def check_key(key: str) -> str:
    """Raise ValueError unless ``key`` is a relative path that stays inside the output dir."""
    parts = key.split("/")
    if (not key or "\\" in key or "\x00" in key or any(p in ("", ".", "..") for p in parts)):
        raise ValueError(f"unsafe output key {key!r}: must be a relative path without "
                         "'.', '..', empty parts (so no leading '/' or scheme) or backslashes")
    return key


def write_atomic(path: str, data: bytes | BinaryIO) -> None:
    """Write ``data`` (bytes, or a binary file object read to its end) to ``path`` via a
    temporary file in the same directory and a rename, so a reader never sees a partial file;
    the temporary file is removed on failure."""
    directory, name = FileSystems.split(path)
    tmp = FileSystems.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with FileSystems.create(tmp, mime_type="application/octet-stream",
                                compression_type=CompressionTypes.UNCOMPRESSED) as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                shutil.copyfileobj(data, f, 1 << 20)
        FileSystems.rename([tmp], [path])
    except BaseException:
        try:
            if FileSystems.exists(tmp):
                FileSystems.delete([tmp])
        except Exception:  # the original error matters more
            log.warning("could not remove temporary file %s", tmp)
        raise


# --- read -----------------------------------------------------------------------------------

class ReadImages(beam.PTransform):
    """``PBegin -> (key, fileio.ReadableFile)`` for every file matching ``file_pattern``.

    ``key`` is the path relative to the glob's fixed directory (:func:`glob_prefix`). No match
    is an error. Beam globs: ``*`` stays inside one directory, ``**`` crosses directories
    (``/d/**.jpg`` finds ``/d/a.jpg`` and ``/d/x/b.jpg``; ``/d/**/*.jpg`` skips ``/d/a.jpg``).
    Bytes are read later, inside :class:`AnonymizeImages`, so read errors become failed records.
    """

    def __init__(self, file_pattern: str):
        super().__init__()
        self.file_pattern = file_pattern
        self.prefix = glob_prefix(file_pattern)

    def expand(self, pbegin):
        prefix = self.prefix
        return (pbegin
                | "Match" >> fileio.MatchFiles(
                    self.file_pattern,
                    empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)
                # without it the whole run fuses behind the one glob element: one worker
                | "Spread" >> beam.Reshuffle()
                | "ReadMatches" >> fileio.ReadMatches()
                | "Key" >> beam.Map(lambda rf: (relative_key(rf.metadata.path, prefix), rf)))


# --- anonymize ------------------------------------------------------------------------------

def _default_factory(settings: Settings, models_dir: str | None):
    from beam_anon.detection.anonymize import load_anonymizer
    return load_anonymizer(settings, models_dir)


class AnonymizeFn(beam.DoFn):
    """The per-image core, shared with ``beam_anon.pipeline.tfrecords`` (which subclasses it): the
    anonymizer is loaded once per process in ``setup``; :meth:`anonymize_pixels` is the step
    every input format runs."""

    def __init__(self, settings: Settings, models_dir: str | None,
                 anonymizer_factory: Callable, debug_dir: str | None,
                 skip_existing_in: str | None = None):
        self.settings = settings
        self.models_dir = models_dir
        self.factory = anonymizer_factory
        self.debug_dir = debug_dir
        self.skip_existing_in = skip_existing_in
        self.images = Metrics.counter(NAMESPACE, "images")
        self.skipped = Metrics.counter(NAMESPACE, "images_skipped")
        self.failed = Metrics.counter(NAMESPACE, "images_failed")
        self.faces = Metrics.counter(NAMESPACE, "faces")
        self.plates = Metrics.counter(NAMESPACE, "plates")
        self.ms = Metrics.distribution(NAMESPACE, "ms_per_image")

    def setup(self):
        # the factory goes through beam_anon.models' per-process cache: one load per process
        self.anonymizer = self.factory(self.settings, self.models_dir)
        self.models = self.anonymizer.models()
        self.settings_json = settings_dict(self.settings)

    def process(self, element):
        key, source = element
        start = time.perf_counter()
        path = source.metadata.path if isinstance(source, fileio.ReadableFile) else key
        record = ManifestRecord(input=path, key=key, models=self.models,
                                settings=self.settings_json)
        self.images.inc()
        try:
            check_key(key)
            if self.skip_existing_in is not None:
                done = previous_record(self.skip_existing_in, key, self.settings_json,
                                       self.models)
                if done is not None:  # output and record of an identical earlier run
                    self.skipped.inc()
                    yield key, None, done
                    return
            out = self._anonymize(source, record)
        except Exception as e:  # fail closed: no bytes leave for this image
            log.warning("failed %s: %s: %s", path, type(e).__name__, e)
            self.failed.inc()
            yield key, None, record.failed(e)
            return
        self.ms.update(int((time.perf_counter() - start) * 1000))
        yield key, out, record

    def _anonymize(self, source, record: ManifestRecord) -> bytes:
        timings = record.timings
        t = time.perf_counter()
        if isinstance(source, fileio.ReadableFile):
            with source.open(mime_type="application/octet-stream",
                             compression_type=CompressionTypes.UNCOMPRESSED) as f:
                data = f.read()
        else:
            data = source
        timings["read"] = time.perf_counter() - t
        img, result = self.anonymize_pixels(data, record)
        t = time.perf_counter()
        out = jpeg_output.encode_output(data, img, result.image, result.boxes.xyxy, img.pixels,
                                        self.settings, stored=False)
        record.jpeg, record.jpeg_reason = out.jpeg, out.reason
        timings["encode"] = time.perf_counter() - t
        record.status = STATUS_OK
        return out.data

    def anonymize_pixels(self, data: bytes, record: ManifestRecord):
        """Decode ``data`` and run the anonymizer -> ``(DecodedImage, AnonymizeResult)``; fills
        ``record``'s size, format, boxes and timings, counts faces/plates, writes the debug
        view. Raises on any failure; neither encodes nor marks the record ok."""
        t = time.perf_counter()
        img = image_io.decode(data, self.settings.max_pixels)
        record.timings["decode"] = time.perf_counter() - t
        record.width, record.height, record.format = img.width, img.height, img.format
        result = self.anonymizer.run(img.pixels, keep_debug=self.debug_dir is not None)
        record.timings.update(result.timings)
        cost = getattr(result, "cost", None)
        if cost is not None:
            record.passes = dict(cost.passes)
            record.megapixels = {k: round(v, 3) for k, v in cost.megapixels.items()}
        record.boxes = result.boxes.to_records()
        record.review = getattr(result, "review", None)  # see beam_anon.detection.review
        record.needs_review = "verify_survived" in (record.review or {}).get("reasons", ())
        labels = result.boxes.labels.astype(str)
        self.faces.inc(int((labels == "face").sum()))
        self.plates.inc(int((labels == "plate").sum()))
        if self.debug_dir is not None and result.debug is not None:
            self._write_debug(record.key, img.pixels, result)
        return img, result

    def _write_debug(self, key: str, original: np.ndarray, result) -> None:
        """Best effort: a debug view never fails the image (it is not the anonymized output)."""
        try:
            view = draw_debug(original, result.debug, result.boxes)
            write_atomic(FileSystems.join(self.debug_dir, key + ".debug.jpg"),
                         image_io.encode(view, None, "jpeg", 90))
        except Exception as e:
            log.warning("debug view for %s not written: %s", key, e)


class AnonymizeImages(beam.PTransform):
    """``(key, bytes | fileio.ReadableFile) -> (key, anonymized bytes | None, ManifestRecord)``.

    Bytes are None exactly when the record is ``failed``, or when ``skip_existing_in`` (the
    output dir) holds this input's output and record from a run with the same settings and
    models: then the earlier ``ok`` record (with its ``output``) is passed on unchanged.
    Otherwise the record's ``output`` is filled in by :class:`WriteAnonymized`. ``anonymizer_factory(settings, models_dir)`` returns an object
    with ``run(image, keep_debug) -> AnonymizeResult`` and ``models() -> [{name, sha256}]``;
    default :func:`beam_anon.detection.anonymize.load_anonymizer`. ``debug_dir``: where to write, per
    image, the original (NOT anonymized) picture with stage-1 boxes, regions, crops and stage-2
    boxes drawn on it, as ``debug_dir/key.debug.jpg``; for the operator's eyes only.
    """

    def __init__(self, settings: Settings, models_dir: str | None = None,
                 debug_dir: str | None = None, anonymizer_factory: Callable | None = None,
                 skip_existing_in: str | None = None):
        super().__init__()
        self.fn = AnonymizeFn(settings, models_dir, anonymizer_factory or _default_factory,
                               debug_dir, skip_existing_in)

    def expand(self, pcoll):
        return pcoll | "Anonymize" >> beam.ParDo(self.fn)


# --- write ----------------------------------------------------------------------------------

class _WriteFn(beam.DoFn):
    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.failed = Metrics.counter(NAMESPACE, "images_failed")
        self.written = Metrics.counter(NAMESPACE, "images_written")

    def process(self, element) -> Iterable[ManifestRecord]:
        key, data, record = element
        if data is None and record.ok and record.output is not None:
            yield record  # skipped: output and record are an earlier run's (skip_existing)
            return
        if data is None or not record.ok:
            yield self._keep(record if not record.ok else record.failed("no output bytes"))
            return
        t = time.perf_counter()
        try:
            path = FileSystems.join(self.output_dir, check_key(key))
            write_atomic(path, data)
        except Exception as e:
            log.warning("write failed for %s: %s: %s", key, type(e).__name__, e)
            self.failed.inc()
            yield self._keep(record.failed(e))
            return
        self.written.inc()
        yield self._keep(dataclasses.replace(record, output=path, timings={
            **record.timings, "write": time.perf_counter() - t}))

    def _keep(self, record: ManifestRecord) -> ManifestRecord:
        """Write the record to ``OUTPUT/.records/`` (after the image), so it survives a crash;
        best effort: without it a rerun just processes the image again."""
        try:
            write_atomic(record_path(self.output_dir, record.key), record_bytes(record))
        except Exception as e:
            log.warning("record for %s not kept: %s", record.key, e)
        return record


class WriteAnonymized(beam.PTransform):
    """``(key, bytes | None, ManifestRecord) -> ManifestRecord`` (final, with ``output``).

    Writes each ok image to ``output_dir/key`` atomically, then its record to
    ``output_dir/.records/`` (:mod:`beam_anon.pipeline.records`), and at the end ``manifest.jsonl`` and
    ``review.jsonl`` (:class:`WriteManifest`).
    A write failure or an unsafe key turns the record into ``failed``.
    """

    def __init__(self, output_dir: str):
        super().__init__()
        self.output_dir = output_dir

    def expand(self, pcoll):
        records = pcoll | "WriteImages" >> beam.ParDo(_WriteFn(self.output_dir))
        _ = records | "WriteRecords" >> WriteManifest(self.output_dir)
        return records


def _review_items(record: ManifestRecord) -> list[dict]:
    item = record.review_item()
    if item:
        item["max_fraction"] = float((record.settings or {}).get("review_max_fraction") or 0.0)
    return [item] if item else []


def _queue(items: list[dict], total: int) -> list[dict]:
    """The run's review queue (``beam_anon.detection.review.select``), riskiest first."""
    fraction = max((i.pop("max_fraction", 0.0) for i in items), default=0.0)
    return review.select(items, total, fraction)


class WriteManifest(beam.PTransform):
    """``ManifestRecord ->`` the run's record files, shared by every input format.

    Writes every record to ``output_dir/manifest.jsonl`` (one JSON object per line; schema in
    ``beam_anon.manifest``) and the review queue, riskiest first (``beam_anon.detection.review``: failures,
    verification survivors, qualified near-threshold detections; more with
    ``review_max_fraction``), to ``output_dir/review.jsonl`` (one ``ManifestRecord.review_item``
    per line; the file exists, possibly empty, after every run). Records must be final (``output`` filled
    in) when they arrive. Returns the manifest ``WriteToText``'s result (the file name)."""

    def __init__(self, output_dir: str):
        super().__init__()
        self.output_dir = output_dir

    def expand(self, records):
        total = records | "Count" >> beam.combiners.Count.Globally()
        _ = (records
             | "ReviewItems" >> beam.FlatMap(_review_items)
             | "Candidates" >> beam.combiners.ToList()
             | "RankByRisk" >> beam.FlatMap(_queue, beam.pvalue.AsSingleton(total))
             | "ReviewJson" >> beam.Map(json.dumps, ensure_ascii=False, separators=(",", ":"))
             | "WriteReview" >> beam.io.WriteToText(
                 FileSystems.join(self.output_dir, REVIEW_NAME), shard_name_template=""))
        return (records
                | "ToJson" >> beam.Map(ManifestRecord.to_json)
                | "WriteManifest" >> beam.io.WriteToText(
                    manifest_path(self.output_dir), shard_name_template=""))


def manifest_path(output_dir: str) -> str:
    """``output_dir/manifest.jsonl``."""
    return FileSystems.join(output_dir, MANIFEST_NAME)


# --- debug view -----------------------------------------------------------------------------

def draw_debug(image: np.ndarray, debug, blurred) -> np.ndarray:
    """The original system's detail view, drawn on a copy of ``image`` (BGR): stage-1 boxes
    (blue, class + score), every crop a face or plate model saw (source and scale; grey full
    frame, yellow vehicles and persons, cyan zooms), raw face/plate boxes (red, label + score)
    and the final blurred boxes (green)."""
    view = image.copy()
    thick = max(1, round(max(image.shape[:2]) / 600))

    def box(xyxy, colour, text=None, width=thick):
        x0, y0, x1, y1 = (int(round(float(v))) for v in xyxy)
        cv2.rectangle(view, (x0, y0), (x1 - 1, y1 - 1), colour, width)
        if text:
            cv2.putText(view, text, (x0 + 2, max(y0 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4 * thick, colour, width)

    for crop in debug.crops:  # grey: full frame and turned, yellow: stage-1 crops, cyan: zooms
        colour = {"vehicle": (0, 220, 255), "person": (0, 220, 255), "zoom": (255, 255, 0),
                  "crowd": (255, 255, 0)}.get(crop.source, (160, 160, 160))
        box(crop.xyxy, colour, f"{crop.source} x{crop.scale:.2f}", 1)
    for xyxy, score, label in zip(debug.stage1.xyxy, debug.stage1.scores, debug.stage1.labels):
        box(xyxy, (255, 90, 0), f"{label} {score:.2f}")
    for xyxy in blurred.xyxy:
        box(xyxy, (0, 200, 0))
    for xyxy, score, label in zip(debug.stage2.xyxy, debug.stage2.scores, debug.stage2.labels):
        box(xyxy, (0, 0, 255), f"{label} {score:.2f}")
    return view
