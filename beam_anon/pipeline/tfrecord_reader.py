"""Reading TFRecord shards without TensorFlow: Beam FileSystems, the record framing and its CRCs.

    p | ReadTFRecordShards("/data/train-*.tfrecord.gz")   # (path, rel, index, bytes|None, error)

Contracts:

* Compression is explicit (a key of :data:`COMPRESSIONS`) or ``auto``: by extension, then by
  the gzip magic bytes of the shard (:func:`shard_compression`).
* A record whose data CRC fails is passed on with its bytes *and* an error (the bytes are kept
  for dead letters); a bad length CRC, a truncated record or a broken compressed stream ends the
  shard with one ``(None, error)`` element for "the rest of the shard". Nothing here raises for
  a bad shard: every problem becomes an element, so the caller can fail it closed and account
  for it in the manifest.
* No glob match is an error (``EmptyMatchTreatment.DISALLOW``).
"""
from __future__ import annotations

import struct

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics

from beam_anon.pipeline.transforms import NAMESPACE, glob_prefix, relative_key

#: --tfrecord_compression / --output_compression values -> Beam compression types
COMPRESSIONS = {"auto": CompressionTypes.AUTO, "uncompressed": CompressionTypes.UNCOMPRESSED,
                "gzip": CompressionTypes.GZIP, "deflate": CompressionTypes.DEFLATE}
MAX_RECORD_BYTES = 1 << 30  # a longer length field is treated as corruption


def _read_exact(f, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_records(f):
    """Yield ``(data, None)`` per good record of an open TFRecord stream, ``(data, error)`` for
    a record whose data CRC fails, and a final ``(None, error)`` when the stream cannot be
    followed any further (truncated, bad length CRC)."""
    crc = _TFRecordUtil._masked_crc32c
    while True:
        header = _read_exact(f, 12)
        if not header:
            return
        if len(header) < 12:
            yield None, "truncated record header at end of shard"
            return
        length, length_crc = struct.unpack("<QI", header)
        if length_crc != crc(header[:8]) or length > MAX_RECORD_BYTES:
            yield None, "corrupt record length (CRC mismatch); rest of the shard unreadable"
            return
        body = _read_exact(f, length + 4)
        if len(body) < length + 4:
            yield None, "truncated record at end of shard"
            return
        data = body[:length]
        if struct.unpack("<I", body[length:])[0] != crc(data):
            yield data, "corrupt record data (CRC mismatch)"
        else:
            yield data, None


def shard_compression(path: str, compression: str) -> str:
    """Beam compression type of one shard: explicit, else by extension, else gzip magic."""
    if compression != "auto":
        return COMPRESSIONS[compression]
    detected = CompressionTypes.detect_compression_type(path)
    if detected != CompressionTypes.UNCOMPRESSED:
        return detected
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return CompressionTypes.GZIP if f.read(2) == b"\x1f\x8b" else detected


def resolve_output_compression(pattern: str, compression: str, output: str | None) -> str:
    """``output`` if given; else the input's: explicit, else detected from the glob's extension,
    else (local globs) from the first matching shard; else uncompressed. Returns a key of
    :data:`COMPRESSIONS` other than ``auto``."""
    if output:
        return output
    if compression != "auto":
        return compression
    names = {v: k for k, v in COMPRESSIONS.items()}
    detected = CompressionTypes.detect_compression_type(pattern)
    if detected == CompressionTypes.UNCOMPRESSED and "://" not in pattern:
        matched = FileSystems.match([pattern])[0].metadata_list
        if matched:
            detected = shard_compression(matched[0].path, "auto")
    return names.get(detected, "uncompressed")


class _ReadShardFn(beam.DoFn):
    def __init__(self, prefix: str, compression: str):
        self.prefix, self.compression = prefix, compression
        self.shards = Metrics.counter(NAMESPACE, "tfrecord_shards")

    def process(self, metadata):
        path = metadata.path
        rel = relative_key(path, self.prefix)
        index = 0
        self.shards.inc()
        try:
            kind = shard_compression(path, self.compression)
            with FileSystems.open(path, compression_type=kind) as f:
                for data, error in read_records(f):
                    yield path, rel, index, data, error
                    index += 1
        except Exception as e:  # undecompressible or unreadable: the rest of the shard fails
            yield path, rel, index, None, f"shard unreadable from here: {type(e).__name__}: {e}"


class ReadTFRecordShards(beam.PTransform):
    """``PBegin -> (shard path, shard key, record index, bytes | None, error | None)``.

    ``shard key`` is the shard's path relative to the glob's fixed directory; ``record index``
    counts from 0 within the shard. ``compression``: a key of :data:`COMPRESSIONS`. No match is
    an error."""

    def __init__(self, file_pattern: str, compression: str = "auto"):
        super().__init__()
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression {compression!r}: one of {', '.join(COMPRESSIONS)}")
        self.file_pattern, self.compression = file_pattern, compression

    def expand(self, pbegin):
        return (pbegin
                | "Match" >> fileio.MatchFiles(
                    self.file_pattern,
                    empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)
                | "SpreadShards" >> beam.Reshuffle()
                | "ReadShards" >> beam.ParDo(
                    _ReadShardFn(glob_prefix(self.file_pattern), self.compression))
                | "SpreadRecords" >> beam.Reshuffle())
