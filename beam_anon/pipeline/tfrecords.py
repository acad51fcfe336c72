"""TFRecord datasets of ``tf.train.Example`` in and out: only the image bytes change.

    p | ReadTFRecordShards("/data/train-*.tfrecord.gz")   # (path, rel, index, bytes|None, error)
      | AnonymizeExamples(settings, TFRecordConfig())     # (new bytes|None, raw|None, [records])
      | WriteTFRecords("/out", num_shards=8)              # data-*.tfrecord[.gz], manifest, review

* Reading is :mod:`beam_anon.pipeline.tfrecord_reader`: a data-CRC failure fails that record (raw bytes
  kept for dead letters); a bad length CRC, truncation or a broken compressed stream fails "the
  rest of the shard" as one record. Nothing crashes the pipeline.
* Each image (every value of every ``image_keys`` feature) goes through the shared per-image
  core (:meth:`beam_anon.pipeline.transforms.AnonymizeFn.anonymize_pixels`) and is written in its own
  format and its stored orientation (``tf.io.decode_jpeg`` ignores EXIF, so the dataset's boxes
  keep matching); JPEG: only the blurred boxes' blocks are rewritten, at every EXIF orientation
  (:mod:`beam_anon.media.jpeg_output`). Every other feature is left as parsed and reserialized.
* Fail closed per Example: a missing image key, an undecodable image, a detector error, or
  JPEG/PNG bytes under an unlisted key (unless ``keep_other_images``) -> the Example is not
  written and all its manifest records are ``failed``.
* Manifest: one record per image; ``input`` = ``<shard path>#<index>``; ``key`` = the first
  present ``key_features`` value, else ``<shard relative to the glob>#<index>``, plus
  ``|<image key>[<value index>]`` when an Example holds several images; ``output`` = the
  output dataset's glob.
* ``add_boxes``: ``<p>anonymized/bbox/{xmin,ymin,xmax,ymax}`` (normalized to the stored image),
  ``<p>anonymized/label`` and, for several images under one key, ``<p>anonymized/bbox/
  image_index``; ``<p>`` is the image key minus a trailing ``encoded`` (``image/``), else the key
  plus ``/``. Features of those names are replaced.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import WriteToTFRecord
from apache_beam.metrics import Metrics

from beam_anon.media import image_io, jpeg_output
from beam_anon import progress
from beam_anon.manifest import STATUS_OK, ManifestRecord
from beam_anon.pipeline.tfrecord_reader import (COMPRESSIONS, ReadTFRecordShards,
                                       resolve_output_compression)
from beam_anon.pipeline.transforms import NAMESPACE, AnonymizeFn, WriteManifest, _default_factory

log = logging.getLogger(__name__)

_JPEG, _PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
# EXIF orientation -> the orientation that undoes it (image_io.apply_orientation)
_INVERSE_ORIENTATION = {6: 8, 8: 6}


@dataclass(frozen=True)
class TFRecordConfig:
    """What to anonymize in each Example: ``image_keys`` (bytes features, all required; every
    value is an image), ``key_features`` (names for the manifest ``key``, first present wins),
    ``add_boxes`` (write the blurred boxes as features), ``keep_other_images`` (allow JPEG/PNG
    bytes under other keys instead of failing the Example)."""

    image_keys: tuple[str, ...] = ("image/encoded",)
    key_features: tuple[str, ...] = ("image/filename", "image/source_id")
    add_boxes: bool = False
    keep_other_images: bool = False


class TFRecordError(ValueError):
    """A record or Example that cannot be processed (message says why)."""


# --- anonymizing ---------------------------------------------------------------------------------

def _first_text(example, names) -> str | None:
    feature = example.features.feature
    for name in names:
        if name in feature and feature[name].WhichOneof("kind") == "bytes_list":
            values = feature[name].bytes_list.value
            if values and values[0]:
                return values[0].decode("utf-8", errors="replace")
    return None


def boxes_to_stored(xyxy: np.ndarray, width: int, height: int, orientation: int) -> np.ndarray:
    """Boxes in pixels of the upright image (``width`` x ``height``) -> normalized
    ``[xmin, ymin, xmax, ymax]`` (float32) of the image as stored with EXIF ``orientation``."""
    b = np.clip(np.asarray(xyxy, np.float64).reshape(-1, 4) / [width, height, width, height],
                0.0, 1.0)
    x, y = b[:, [0, 2]], b[:, [1, 3]]  # both corners
    u, v = {1: (x, y), 2: (1 - x, y), 3: (1 - x, 1 - y), 4: (x, 1 - y), 5: (y, x),
            6: (y, 1 - x), 7: (1 - y, 1 - x), 8: (1 - y, x)}[orientation]
    return np.stack([u.min(1), v.min(1), u.max(1), v.max(1)], axis=1).astype(np.float32)


def _image_like(value: bytes) -> bool:
    return value.startswith(_JPEG) or value.startswith(_PNG)


class _AnonymizeExampleFn(AnonymizeFn):
    """``(path, rel, index, bytes | None, error | None) -> (Example bytes | None, raw bytes |
    None, [ManifestRecord])``: new bytes exactly when every record is ok; raw bytes (for the
    dead letters) when the Example failed."""

    def __init__(self, settings, models_dir, factory, debug_dir, config: TFRecordConfig):
        super().__init__(settings, models_dir, factory, debug_dir)
        self.config = config
        self.examples = Metrics.counter(NAMESPACE, "examples")
        self.examples_failed = Metrics.counter(NAMESPACE, "examples_failed")
        self.examples_ok = Metrics.counter(NAMESPACE, "examples_ok")

    def setup(self):
        super().setup()
        import tensorflow as tf  # heavy: once per process, never at graph construction
        self.train = tf.train

    def process(self, element):
        path, rel, index, data, error = element
        input_id, key = f"{path}#{index}", f"{rel}#{index}"
        self.examples.inc()
        records: list[ManifestRecord] = []
        try:
            if error:
                raise TFRecordError(error)
            example = self.train.Example.FromString(data)
            key = _first_text(example, self.config.key_features) or key
            self._anonymize_example(example, input_id, key, records)
            out = example.SerializeToString()
        except Exception as e:  # fail closed: the Example is not written
            log.warning("failed %s (%s): %s: %s", input_id, key, type(e).__name__, e)
            if not records:
                records.append(self._record(input_id, key))
            failing = records[-1].key
            records = [r.failed(e) if r is records[-1] else r.failed(
                f"Example not written: its image {failing} failed: {e}", type(e).__name__)
                for r in records]
            self.failed.inc(len(records))
            self.examples_failed.inc()
            yield None, data, records
            return
        self.examples_ok.inc()
        yield out, None, records

    def _record(self, input_id: str, key: str) -> ManifestRecord:
        self.images.inc()
        return ManifestRecord(input=input_id, key=key, models=self.models,
                              settings=self.settings_json)

    def _anonymize_example(self, example, input_id: str, key: str, records: list) -> None:
        """Anonymize every configured image of ``example`` in place; appends one record per
        image (the last one appended is the one that raised, on failure)."""
        feature = example.features.feature
        units = []
        for k in self.config.image_keys:
            if (k not in feature or feature[k].WhichOneof("kind") != "bytes_list"
                    or not feature[k].bytes_list.value):
                raise TFRecordError(f"no image bytes under feature {k!r} (see --image_keys)")
            units += [(k, i) for i in range(len(feature[k].bytes_list.value))]
        if not self.config.keep_other_images:
            for name, f in feature.items():
                if (name not in self.config.image_keys and f.WhichOneof("kind") == "bytes_list"
                        and any(_image_like(v) for v in f.bytes_list.value)):
                    raise TFRecordError(
                        f"feature {name!r} holds a JPEG/PNG image that would be written "
                        "un-anonymized: add it to --image_keys, or pass "
                        "--tfrecord_keep_other_images if it is not a photo (e.g. masks)")
        multi = len(units) > 1
        boxes: dict[str, list] = {}
        for k, i in units:
            record = self._record(input_id, f"{key}|{k}[{i}]" if multi else key)
            records.append(record)
            start = time.perf_counter()
            img, result = self.anonymize_pixels(feature[k].bytes_list.value[i], record)
            t = time.perf_counter()
            undo = _INVERSE_ORIENTATION.get(img.orientation, img.orientation)
            stored = [image_io.apply_orientation(a, undo) if a is not None else None
                      for a in (result.image, img.pixels, img.alpha)]
            xyxy = boxes_to_stored(result.boxes.xyxy, img.width, img.height, img.orientation)
            height, width = stored[0].shape[:2]
            out = jpeg_output.encode_output(
                feature[k].bytes_list.value[i], dataclasses.replace(img, alpha=stored[2]),
                stored[0], xyxy.astype(np.float64) * [width, height, width, height], stored[1],
                self.settings, stored=True)
            record.jpeg, record.jpeg_reason = out.jpeg, out.reason
            record.timings["encode"] = time.perf_counter() - t
            feature[k].bytes_list.value[i] = out.data
            boxes.setdefault(k, []).append((i, xyxy, [str(label) for label in result.boxes.labels]))
            record.status = STATUS_OK
            self.ms.update(int((time.perf_counter() - start) * 1000))
        if self.config.add_boxes:
            for k, per_image in boxes.items():
                self._add_box_features(feature, k, per_image)

    def _add_box_features(self, feature, image_key: str, per_image: list) -> None:
        prefix = (image_key[:-len("encoded")] if image_key.endswith("encoded")
                  else image_key + "/") + "anonymized/"
        xyxy = np.concatenate([b for _, b, _ in per_image]).reshape(-1, 4)
        tf_train = self.train
        for col, name in enumerate(("xmin", "ymin", "xmax", "ymax")):
            feature[prefix + "bbox/" + name].CopyFrom(tf_train.Feature(
                float_list=tf_train.FloatList(value=xyxy[:, col].tolist())))
        feature[prefix + "label"].CopyFrom(tf_train.Feature(bytes_list=tf_train.BytesList(
            value=[label.encode() for _, _, labels in per_image for label in labels])))
        if len(per_image) > 1:
            feature[prefix + "bbox/image_index"].CopyFrom(tf_train.Feature(
                int64_list=tf_train.Int64List(
                    value=[i for i, b, _ in per_image for _ in range(len(b))])))

    def _write_debug(self, key, original, result):
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
        super()._write_debug(safe, original, result)


class AnonymizeExamples(beam.PTransform):
    """``(path, rel, index, bytes | None, error | None)`` from :class:`ReadTFRecordShards` ->
    ``(Example bytes | None, raw record | None, [ManifestRecord])``. ``anonymizer_factory``
    and ``debug_dir`` as in :class:`beam_anon.pipeline.transforms.AnonymizeImages`."""

    def __init__(self, settings, config: TFRecordConfig = TFRecordConfig(),
                 models_dir: str | None = None, debug_dir: str | None = None,
                 anonymizer_factory=None):
        super().__init__()
        self.fn = _AnonymizeExampleFn(settings, models_dir, anonymizer_factory or
                                      _default_factory, debug_dir, config)

    def expand(self, pcoll):
        return pcoll | "AnonymizeExamples" >> beam.ParDo(self.fn)


# --- writing ------------------------------------------------------------------------------------

def suffix_for(compression: str) -> str:
    return ".tfrecord" + {"gzip": ".gz", "deflate": ".deflate"}.get(compression, "")


def _final_records(element, output_glob: str, written: list):
    _, _, records = element
    for r in records:
        yield dataclasses.replace(r, output=output_glob) if r.ok else r


class WriteTFRecords(beam.PTransform):
    """``(Example bytes | None, raw | None, [ManifestRecord]) -> ManifestRecord``.

    Writes ok Examples to ``OUTPUT/data-SSSSS-of-NNNNN.tfrecord[.gz]`` (``num_shards`` 0: the
    runner decides), with ``dead_letter`` the raw failed records to
    ``OUTPUT/dead_letter-SSSSS-of-NNNNN.tfrecord[.gz]``, and, only after those files are final,
    every record to ``OUTPUT/manifest.jsonl`` and the review queue (failed Examples' images and
    records with a ``review``) to ``OUTPUT/review.jsonl``, exactly as for image folders
    (:class:`beam_anon.pipeline.transforms.WriteManifest`). ``compression``: ``uncompressed``,
    ``gzip`` or ``deflate``."""

    def __init__(self, output_dir: str, num_shards: int = 0, compression: str = "uncompressed",
                 dead_letter: bool = False):
        super().__init__()
        if compression not in COMPRESSIONS or compression == "auto":
            raise ValueError(f"output compression {compression!r}: uncompressed, gzip or deflate")
        self.output_dir, self.num_shards = output_dir, num_shards
        self.compression, self.dead_letter = compression, dead_letter

    def _write(self, pcoll, name: str):
        return pcoll | f"Write_{name}" >> WriteToTFRecord(
            FileSystems.join(self.output_dir, name), file_name_suffix=suffix_for(self.compression),
            num_shards=self.num_shards, compression_type=COMPRESSIONS[self.compression])

    def expand(self, pcoll):
        written = [self._write(pcoll | "OkBytes" >> beam.FlatMap(
            lambda e: [e[0]] if e[0] is not None else []), "data")]
        if self.dead_letter:
            written.append(self._write(pcoll | "DeadBytes" >> beam.FlatMap(
                lambda e: [e[1]] if e[0] is None and e[1] is not None else []), "dead_letter"))
        files = tuple(written) | "Written" >> beam.Flatten()
        output_glob = FileSystems.join(self.output_dir, "data-*" + suffix_for(self.compression))
        records = pcoll | "Records" >> beam.FlatMap(_final_records, output_glob,
                                                    beam.pvalue.AsList(files))
        _ = records | "WriteRecords" >> WriteManifest(self.output_dir)
        return records


# --- command line -------------------------------------------------------------------------------

def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


class TFRecordOptions(beam.options.pipeline_options.PipelineOptions):
    """Options of ``beam-anon`` (``beam_anon.cli``) for ``--input_format tfrecord``."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input_format", choices=("images", "tfrecord", "video"),
                            default="images",
                            help="images: --input matches image files; tfrecord: --input "
                            "matches TFRecord shards of tf.train.Example; video: --input "
                            "matches video files (chosen without this option when --input "
                            "ends in .mp4, .mov, .mkv or .avi) (default: %(default)s)")
        parser.add_argument("--image_keys", default="image/encoded", help="tfrecord: comma-"
                            "separated bytes features holding the images; every one must be "
                            "present (default: %(default)s)")
        parser.add_argument("--key_features", default="image/filename,image/source_id",
                            help="tfrecord: features naming an Example in the manifest, first "
                            "present wins, else SHARD#INDEX (default: %(default)s)")
        parser.add_argument("--tfrecord_compression", choices=tuple(COMPRESSIONS),
                            default="auto", help="tfrecord input compression; auto: by "
                            "extension (.gz, .deflate) or gzip magic (default: %(default)s)")
        parser.add_argument("--output_compression", default=None,
                            choices=("uncompressed", "gzip", "deflate"),
                            help="tfrecord output compression (default: same as the input)")
        parser.add_argument("--num_shards", type=int, default=0, help="tfrecord output shards; "
                            "0 lets the runner decide (default: %(default)s)")
        parser.add_argument("--tfrecord_add_boxes", action="store_true", help="tfrecord: add "
                            "the blurred boxes as image/anonymized/bbox/{xmin,ymin,xmax,ymax} "
                            "(normalized) and image/anonymized/label features")
        parser.add_argument("--tfrecord_keep_other_images", action="store_true",
                            help="tfrecord: write Examples whose other bytes features hold "
                            "JPEG/PNG data (masks...) unchanged instead of failing them")
        parser.add_argument("--dead_letter", action="store_true", help="tfrecord: write the raw "
                            "records of failed Examples to OUTPUT/dead_letter-*.tfrecord")

    def config(self) -> TFRecordConfig:
        return TFRecordConfig(_csv(self.image_keys), _csv(self.key_features),
                              bool(self.tfrecord_add_boxes), bool(self.tfrecord_keep_other_images))


def build(pipeline, opts, anonymizer_factory=None, ticker=None):
    """read shards -> anonymize Examples -> write shards + manifest, for the CLI's options;
    ``ticker`` (``beam_anon.progress``) counts Examples done."""
    t = opts.view_as(TFRecordOptions)
    if not t.config().image_keys:
        raise SystemExit("--image_keys names no feature")
    if getattr(opts, "skip_existing", False):
        raise SystemExit("--skip_existing is for image folders; TFRecord output is rewritten whole")
    out_compression = resolve_output_compression(opts.input, t.tfrecord_compression,
                                                  t.output_compression)
    return (pipeline
            | "ReadTFRecords" >> ReadTFRecordShards(opts.input, t.tfrecord_compression)
            | "AnonymizeExamples" >> AnonymizeExamples(opts.settings(), t.config(),
                                                       opts.models_dir, opts.debug_dir,
                                                       anonymizer_factory)
            | "Progress" >> beam.Map(progress.passing, ticker)
            | "WriteTFRecords" >> WriteTFRecords(opts.output, t.num_shards, out_compression,
                                                 t.dead_letter))
