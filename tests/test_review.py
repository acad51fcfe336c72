"""Issue 11's rules: one blurred box per object, the risk-ranked review queue, progress lines."""
import io

import numpy as np

from beam_anon import progress
from beam_anon.detection import review
from beam_anon.boxes import Detections, covered_fraction, merge_objects
from beam_anon.manifest import ManifestRecord
from beam_anon.settings import Settings


def dets(boxes, scores, labels, sources=None):
    return Detections(np.array(boxes, np.float32), scores, np.array(labels, object), sources)


def test_nested_and_chained_boxes_become_one_object_each():
    d = dets([[0, 0, 100, 100], [10, 10, 50, 50],          # nested
              [200, 0, 260, 40], [225, 0, 275, 40], [250, 0, 290, 40],  # a chain: C joins A+B
              [400, 0, 440, 40], [435, 0, 475, 40],        # overlap of 5/40: two objects
              [10, 10, 50, 50]],                            # a plate inside a face: kept apart
             [0.5, 0.9, 0.4, 0.7, 0.3, 0.8, 0.8, 0.6],
             ["face"] * 7 + ["plate"],
             [{"a:x"}, {"b:y"}, {"a:x"}, {"a:z"}, {"b:x"}, {"a:x"}, {"a:x"}, {"c:x"}])
    out = merge_objects(d)
    faces = out.with_label("face")
    boxes = sorted(faces.xyxy.tolist())
    assert [0, 0, 100, 100] in boxes and [200, 0, 290, 40] in boxes
    assert [400, 0, 440, 40] in boxes and [435, 0, 475, 40] in boxes and len(faces) == 4
    big = faces[faces.xyxy[:, 2] == 100]
    assert big.scores[0] == np.float32(0.9) and big.sources[0] == {"a:x", "b:y"}
    assert faces.models(int(np.flatnonzero(faces.xyxy[:, 2] == 290)[0])) == ["a", "b"]
    assert len(out.with_label("plate")) == 1
    # no pair of one label left where more than half of the smaller lies inside the other
    cov = covered_fraction(faces.xyxy, faces.xyxy)
    np.fill_diagonal(cov, 0)
    assert (cov <= 0.5).all()


def test_box_records_name_the_models_that_found_them():
    d = dets([[0, 0, 10, 10]], [0.9], ["face"], [{"centerface:zoom", "yunet:full_frame"}])
    (rec,) = d.to_records()
    assert rec["models"] == ["centerface", "yunet"]
    assert Detections.from_records([rec]).models(0) == ["centerface", "yunet"]


S = Settings(model_thresholds=("m=0.3", "n=0.3"), review_band=0.1, review_just_below=0.02)


def test_near_threshold_needs_two_signals_or_a_score_just_below():
    near = dets([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [0.22, 0.22, 0.29],
                ["face"] * 3, [{"m:full_frame"}, {"m:full_frame", "n:full_frame"},
                               {"m:zoom"}])
    entries = review.near_entries(near, S)
    assert [e["queued"] for e in entries] == [False, True, True]
    assert entries[1]["signals"] == 2 and entries[1]["risk"] > entries[0]["risk"]
    assert entries[2]["risk"] > entries[0]["risk"]
    one = review.entry(near[[0]], None, None, S)
    assert one["queued"] is False and one["reasons"] == [review.NEAR_THRESHOLD]


def test_plate_candidates_need_the_plate_check_to_be_queued():
    s = Settings(plate_threshold=0.15, review_band=0.1)
    two_looks = {"beamplate:full_frame", "beamplate:vehicle"}
    near = dets([[0, 0, 30, 10], [50, 0, 80, 10], [100, 0, 130, 10], [0, 50, 20, 70]],
                np.array([0.1, 0.1, 0.1, 0.45], np.float32), ["plate"] * 3 + ["face"],
                [two_looks, two_looks, {"beamplate:full_frame"}, two_looks])
    asked = []

    def check(xyxy):   # a plate check that likes the first box only
        asked.append(xyxy.copy())
        return np.where(xyxy[:, 0] == 0, 0.9, 0.1).astype(np.float32)

    entries = review.near_entries(near, s, plate_check=check)
    assert [e["queued"] for e in entries] == [True, False, False, True]
    assert entries[0]["check"] == 0.9 and entries[1]["check"] == 0.1
    assert "check" not in entries[2] and "check" not in entries[3]   # one look; a face
    assert len(asked) == 1 and len(asked[0]) == 2     # asked once, only what would be queued
    stricter = review.near_entries(near, s.replace(review_plate_check=0.95), plate_check=check)
    assert not any(e["queued"] for e in stricter[:3])
    assert [e["queued"] for e in review.near_entries(near, s)] == [True, True, False, True]
    item = {"reasons": [review.NEAR_THRESHOLD], "boxes": [entries[0]]}
    assert "plate check 0.90" in review.why(item)


def test_plate_candidates_on_a_car_whose_plate_was_blurred_are_not_queued():
    cars = dets([[0, 0, 100, 60], [200, 0, 300, 60]], [0.9, 0.9], ["car", "car"])
    blurred = dets([[40, 40, 60, 50]], [0.8], ["plate"])          # the first car's plate
    plated = review.plated_vehicles(cars, blurred)
    np.testing.assert_array_equal(plated, [[0, 0, 100, 60]])
    weak = dets([[40, 40, 60, 50]], [0.3], ["plate"])     # maybe the badge: tells nothing
    assert len(review.plated_vehicles(cars, weak)) == 0
    two = [{"m:full_frame", "m:vehicle"}] * 3
    near = dets([[10, 30, 30, 38],        # the first car's badge: listed, not queued
                 [240, 40, 260, 50],      # the second car, no plate found: queued
                 [500, 40, 520, 50]],     # on no vehicle: queued as before
                [0.22] * 3, ["plate"] * 3, two)
    entries = review.near_entries(near, S, plated)
    assert [e["queued"] for e in entries] == [False, True, True]
    assert entries[0]["on_plated_vehicle"] and "on_plated_vehicle" not in entries[1]
    # faces on that car (a driver) still queue
    face = dets([[10, 30, 30, 38]], [0.22], ["face"], two[:1])
    assert review.near_entries(face, S, plated)[0]["queued"]


def test_failures_and_survivors_always_in_the_queue_riskiest_first():
    survived = dets([[0, 0, 10, 10]], [0.7], ["face"])
    items = [
        {"key": "weak", **review.entry(dets([[0, 0, 9, 9]], [0.21], ["face"], [{"m:a"}]),
                                      None, None, S)},
        {"key": "survivor", **review.entry(Detections.empty(), survived, None, S)},
        {"key": "fixed", **review.entry(Detections.empty(), None, survived, S)},
        ManifestRecord(input="x", key="broken").failed("bad").review_item()]
    queue = review.select(items, total=100)
    assert [i["key"] for i in queue] == ["broken", "survivor"]
    more = review.select(items, total=100, max_fraction=0.03)
    assert [i["key"] for i in more] == ["broken", "survivor", "weak"]
    assert all(a["risk"] >= b["risk"] for a, b in zip(more, more[1:]))
    assert "still detected" in review.why(items[1]) and "failed" in review.why(items[3])


def test_progress_line_and_printer_for_a_log_file(tmp_path):
    assert progress.line(120, 304, 60.0) == \
        "beam_anon: 120/304 images (39 %), 2.0 images/s, ETA 1 min 32 s"
    assert progress.line(5, None, 10.0, "records") == "beam_anon: 5 records done, 0.5 records/s"
    out = io.StringIO()
    with progress.Progress(10, interval=0.05, stream=out) as p:
        ticker = p.ticker()
        for _ in range(4):
            ticker.tick()
        import time
        time.sleep(0.3)
        ticker.tick(6)
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("beam_anon: 4/10 images") and "ETA" in lines[0]
    assert lines[-1].startswith("beam_anon: 10/10 images (100 %)")
    assert len(lines) == len(set(lines)) or lines[-1] == lines[-2]  # one line per change


def test_a_record_lists_every_queued_box_and_the_riskiest_others_only():
    n = review.MAX_UNQUEUED_LISTED + 15
    near = dets([[i * 20, 0, i * 20 + 10, 10] for i in range(n)],
                [0.21 + 0.001 * i for i in range(n)], ["plate"] * n, [{"m:a"}] * n)
    survived = dets([[0, 50, 10, 60]], [0.7], ["face"])
    one = review.entry(near, survived, None, S)
    assert [b["reason"] for b in one["boxes"]][0] == review.VERIFY_SURVIVED
    assert len(one["boxes"]) == 1 + review.MAX_UNQUEUED_LISTED and one["unlisted"] == 15
    kept = [b["score"] for b in one["boxes"][1:]]
    assert min(kept) > 0.21 + 0.001 * 14       # the riskiest (closest to the threshold) kept
    both = review.merge([one, one])
    assert len(both["boxes"]) == 2 + review.MAX_UNQUEUED_LISTED and both["unlisted"] == 40
