"""ManifestRecord: JSON round trip, failure marking, schema documented in one place."""
import dataclasses
import json

import pytest

import beam_anon.manifest as manifest
from beam_anon.boxes import Detections
from beam_anon.manifest import ManifestRecord, settings_dict
from beam_anon.settings import Settings


def _record() -> ManifestRecord:
    boxes = Detections.from_boxes([[1.5, 2, 30, 40.25]], [0.9], "face").to_records()
    return ManifestRecord(input="gs://b/in/a/é.jpg", key="a/é.jpg", output="/out/a/é.jpg",
                          status="ok", width=64, height=48, format="jpeg", boxes=boxes,
                          models=[{"name": "yunet", "sha256": "ab" * 32}],
                          settings=settings_dict(Settings()), timings={"decode": 0.01})


def test_json_round_trip_is_one_line_and_lossless():
    rec = _record()
    line = rec.to_json()
    assert "\n" not in line
    assert list(json.loads(line)) == [f.name for f in dataclasses.fields(ManifestRecord)]
    assert ManifestRecord.from_json(line) == rec
    assert Detections.from_records(ManifestRecord.from_json(line).boxes).xyxy.tolist() == \
        [[1.5, 2.0, 30.0, 40.25]]


def test_failed_drops_output_and_names_the_error():
    rec = _record().failed(OSError("disk full"))
    assert (rec.status, rec.output, rec.error, rec.error_type) == \
        ("failed", None, "disk full", "OSError")
    assert not rec.ok and _record().ok
    assert ManifestRecord("x", "x").status == "failed"  # default is not ok
    assert ManifestRecord("x", "x").failed("boom").error_type == "Error"


def test_unknown_fields_rejected():
    d = _record().to_dict()
    d["surprise"] = 1
    with pytest.raises(ValueError, match="surprise"):
        ManifestRecord.from_dict(d)


def test_every_field_is_documented():
    for f in dataclasses.fields(ManifestRecord):
        assert f"\n{f.name} " in manifest.__doc__, f.name
