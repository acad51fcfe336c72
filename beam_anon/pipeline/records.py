"""Per-image manifest records kept next to the output, so a killed run can be resumed.

Every record is also written, atomically, to ``OUTPUT/.records/<sha256(key)[:32]>.json`` as
soon as its image is written (or has failed). ``manifest.jsonl`` is written only when a run
completes; the record files are what survives a crash. A rerun with ``--skip_existing`` reuses
the record of an input (and does not decode, detect or write it again) only if:

* the record is ``ok`` and names the same key and output path,
* the output file exists,
* its ``settings`` and ``models`` (name + sha256) equal the current run's.

Anything else is processed again and its output replaced atomically. The record file name is a
hash, so no key (however odd) can turn it into a path outside ``OUTPUT/.records``.
"""
from __future__ import annotations

import hashlib
import json
import logging

from apache_beam.io.filesystems import FileSystems

from beam_anon.manifest import ManifestRecord

RECORDS_DIR = ".records"
log = logging.getLogger(__name__)


def record_path(output_dir: str, key: str) -> str:
    """Where the record of ``key`` is kept: ``OUTPUT/.records/<hash>.json``."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return FileSystems.join(output_dir, RECORDS_DIR, digest + ".json")


def record_bytes(record: ManifestRecord) -> bytes:
    return record.to_json().encode("utf-8") + b"\n"


def previous_record(output_dir: str, key: str, settings: dict,
                    models: list[dict]) -> ManifestRecord | None:
    """The earlier run's record of ``key`` if it may stand for this run (see module doc);
    None otherwise (missing, failed, unreadable, other settings or models, output gone)."""
    path = record_path(output_dir, key)
    try:
        if not FileSystems.exists(path):
            return None
        with FileSystems.open(path) as f:
            record = ManifestRecord.from_json(f.read().decode("utf-8"))
    except Exception as e:  # a damaged record only means: process the image again
        log.warning("ignoring unreadable record %s: %s", path, e)
        return None
    expected = FileSystems.join(output_dir, key)
    if (record.ok and record.key == key and record.output == expected
            and record.settings == settings and record.models == models
            and FileSystems.exists(expected)):
        return record
    return None
