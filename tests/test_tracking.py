"""The temporal step (beam_anon.detection.tracking): links, interpolation across gaps, extension before and
after a track, and the locality that lets video segments be processed independently."""
import numpy as np
import pytest

from beam_anon.detection import tracking
from beam_anon.detection.tracking import Linking
from beam_anon.boxes import Detections

W, H = 640, 360


def face(*xyxy, score=0.9, label="face"):
    return Detections.from_boxes([xyxy], [score], label)


def added(frame_boxes: tracking.FrameBoxes):
    return [(src, tuple(np.round(b, 2))) for src, b in
            zip(frame_boxes.source, frame_boxes.boxes.xyxy) if src != tracking.DETECTED]


def test_gap_within_memory_is_interpolated():
    dets = {f: Detections.empty() for f in range(20)}
    dets[10] = face(100, 100, 140, 150)
    dets[13] = face(130, 100, 170, 150)
    out = tracking.fill(dets, range(20), Linking(3, 0.1, 0, 0), n_frames=20, width=W, height=H)
    assert tracking.links(dets, Linking(3, 0.1, 0, 0)) == {(10, 0): (13, 0)}
    assert added(out[11]) == [("interpolated", (110, 100, 150, 150))]
    assert added(out[12]) == [("interpolated", (120, 100, 160, 150))]
    assert out[11].origin == ((10, 0),) and out[11].boxes.labels[0] == "face"
    # the track is extended 3 frames before its first and after its last sighting, no further
    assert [f for f in range(20) if len(out[f].boxes)] == list(range(7, 17))
    assert all(s == "extended" for f in (7, 8, 9, 14, 15, 16) for s in out[f].source)
    assert out[10].source == ("detected",) and out[10].link == ((13, 0),)


def test_gap_longer_than_memory_is_not_bridged():
    dets = {f: Detections.empty() for f in range(20)}
    dets[2] = face(100, 100, 140, 150)
    dets[8] = face(100, 100, 140, 150)
    out = tracking.fill(dets, range(20), Linking(2, 0.1, 0, 0), n_frames=20, width=W, height=H)
    assert tracking.links(dets, Linking(2, 0.1, 0, 0)) == {}
    assert [f for f in range(20) if len(out[f].boxes)] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert {s for f in (3, 4, 6, 7) for s in out[f].source} == {"extended"}


def test_extension_follows_the_velocity_and_keeps_the_last_box():
    dets = {f: face(100 + 10 * f, 50, 140 + 10 * f, 90) for f in range(5)}
    out = tracking.fill(dets, range(8), Linking(2, 0.3, 0, 0), n_frames=8, width=W, height=H)
    assert added(out[5]) == [("extended", (140, 50, 190, 90))]   # union of frame 4 and moved
    assert added(out[6]) == [("extended", (140, 50, 200, 90))]
    assert out[7].boxes.xyxy.size == 0
    assert all(not added(out[f]) for f in range(1, 5))     # seen every frame: nothing added


def test_a_link_to_a_box_covering_little_of_it_still_carries_it_on():
    dets = {f: Detections.empty() for f in range(4)}
    dets[1] = face(100, 100, 200, 160)        # the whole plate
    dets[2] = face(150, 100, 190, 120)        # a smeared frame: a corner of it (IoU 0.13)
    rule = Linking(1, 0.1, 0, 0)
    out = tracking.fill(dets, range(4), rule, n_frames=4, width=W, height=H)
    assert tracking.links(dets, rule) == {(1, 0): (2, 0)}
    assert ("extended", (100, 100, 200, 160)) in added(out[2])    # the larger box carried on
    assert not any(b == (150, 100, 190, 120) for _, b in added(out[1]))  # the smaller: not
    turned = {1: dets[2], 2: dets[1]}         # the other way round: the larger carried back
    back = tracking.fill(turned, range(4), rule, n_frames=4, width=W, height=H)
    assert ("extended", (100, 100, 200, 160)) in added(back[1])
    beside = {1: face(100, 100, 200, 160), 2: face(90, 40, 200, 105)}   # as large, beside it
    assert ("extended", (100, 100, 200, 160)) in added(
        tracking.fill(beside, range(1, 3), rule, 4, W, H)[2])
    even = {1: face(100, 100, 200, 160), 2: face(105, 100, 205, 160)}
    assert not added(tracking.fill(even, range(1, 3), rule, 4, W, H)[2])


def test_extension_backward_uses_the_forward_link():
    dets = {f: Detections.empty() for f in range(6)}
    for f in (3, 4, 5):
        dets[f] = face(100 + 10 * f, 50, 140 + 10 * f, 90)
    out = tracking.fill(dets, range(6), Linking(2, 0.3, 0, 0), n_frames=6, width=W, height=H)
    assert added(out[2]) == [("extended", (120, 50, 170, 90))]
    assert added(out[1]) == [("extended", (110, 50, 170, 90))]


def test_labels_do_not_link_and_added_boxes_are_clipped():
    dets = {0: Detections.concat([face(600, 300, 660, 380), face(10, 10, 50, 50, label="plate")]),
            1: Detections.empty(), 2: face(10, 10, 50, 50)}
    out = tracking.fill(dets, range(3), Linking(1, 0.5, 0, 0), n_frames=3, width=W, height=H)
    assert tracking.links(dets, Linking(1, 0.5, 0, 0)) == {}  # the face of frame 2 is not the plate
    assert list(zip(out[1].boxes.labels, out[1].boxes.xyxy.tolist())) == [
        ("face", [600, 300, 640, 360]), ("plate", [10, 10, 50, 50]), ("face", [10, 10, 50, 50])]
    assert out[1].origin == ((0, 0), (0, 1), (2, 0))


def test_detect_every_kth_frame_links_across_the_skipped_frames():
    # frames without an entry were not searched
    dets = {f: face(100 + 4 * f, 50, 140 + 4 * f, 90) for f in range(0, 13, 3)}
    out = tracking.fill(dets, range(13), Linking(2, 0.3, 0, 0), n_frames=13, width=W, height=H)
    assert len(tracking.links(dets, Linking(2, 0.3, 0, 0))) == 4
    for f in range(13):
        assert len(out[f].boxes) >= 1, f
        if f % 3:
            assert out[f].source == ("interpolated",)
            assert np.allclose(out[f].boxes.xyxy[0], [100 + 4 * f, 50, 140 + 4 * f, 90])


def test_track_numbers_are_components_in_order_of_first_sighting():
    ids = [(0, 0), (0, 1), (1, 0), (2, 0), (3, 0)]
    forward = {(0, 1): (1, 0), (1, 0): (3, 0), (0, 0): None, (2, 0): None}
    assert tracking.track_numbers(ids, forward) == {(0, 0): 1, (0, 1): 2, (1, 0): 2, (2, 0): 3,
                                                    (3, 0): 2}


def _random_dets(rng, n_frames, every=1):
    """A few objects moving, with random misses and false positives."""
    dets = {}
    starts = rng.uniform(0, 500, size=(4, 2))
    speeds = rng.uniform(-8, 8, size=(4, 2))
    for f in range(n_frames):
        if f % every:
            continue
        boxes, labels = [], []
        for k in range(4):
            if rng.random() < 0.35:
                continue  # missed
            x, y = starts[k] + speeds[k] * f
            boxes.append([x, y, x + 30 + 5 * k, y + 40])
            labels.append("face" if k % 2 == 0 else "plate")
        if rng.random() < 0.2:
            x, y = rng.uniform(0, 600, 2)
            boxes.append([x, y, x + 20, y + 20])
            labels.append("face")
        dets[f] = Detections(np.array(boxes, np.float32).reshape(-1, 4),
                             rng.uniform(0.3, 1, len(boxes)), labels)
    return dets


@pytest.mark.parametrize("memory, every, speed", [(0, 1, 0.5), (1, 1, 0), (3, 1, 0.5),
                                                  (2, 3, 1.0), (5, 2, 0.5)])
def test_a_frame_depends_only_on_its_reach(memory, every, speed):
    """What segments rely on: the boxes of frame f computed from the detections of
    [f - reach, f + reach] alone equal those computed from the whole video."""
    rng = np.random.default_rng(memory * 10 + every)
    n, rule = 80, Linking(memory, 0.2, speed)
    dets = _random_dets(rng, n, every)
    full = tracking.fill(dets, range(n), rule, n, W, H)
    r = rule.reach
    for f in range(n):
        window = {g: d for g, d in dets.items() if f - r <= g <= f + r}
        local = tracking.fill(window, [f], rule, n, W, H)[f]
        assert local.source == full[f].source and local.origin == full[f].origin, f
        assert np.array_equal(local.boxes.xyxy, full[f].boxes.xyxy), f
        assert np.array_equal(local.boxes.scores, full[f].boxes.scores), f
        assert local.link == full[f].link, f
    # and a smaller window is not enough in general (the reach is not overstated by much)
    narrow = [f for f in range(n) if not np.array_equal(
        tracking.fill({g: d for g, d in dets.items() if abs(g - f) <= memory}, [f], rule,
                      n, W, H)[f].boxes.xyxy, full[f].boxes.xyxy)]
    assert narrow or memory == 0


def test_motion_allowance_links_a_fast_object():
    dets = {0: face(100, 50, 140, 90), 1: Detections.empty(), 2: face(160, 50, 200, 90)}
    assert tracking.links(dets, Linking(2, 0.2, 0, 0)) == {}        # no overlap: no link
    assert tracking.links(dets, Linking(2, 0.2, 0.5, 0)) == {(0, 0): (2, 0)}
    out = tracking.fill(dets, [1], Linking(2, 0.2, 0.5, 0), 3, W, H)[1]
    assert out.source == ("interpolated",) and out.boxes.xyxy[0].tolist() == [130, 50, 170, 90]


def test_a_vanishing_object_is_not_linked_to_a_passing_one():
    """B is hidden in frames 20-23; A passes close by. A is A's own best match backward, so B
    keeps its track end and is carried on (not interpolated towards A)."""
    dets = {}
    for f in range(17, 27):
        a = face(10 + 3 * f, 10, 34 + 3 * f, 34)
        dets[f] = a if 20 <= f <= 23 else Detections.concat([a, face(120, 50, 144, 74)])
    rule = Linking(3, 0.2, 0.5)
    assert all(b[1] == a[1] for a, b in tracking.links(dets, rule).items())  # A-A, B-B only
    out = tracking.fill(dets, range(17, 27), rule, 30, W, H)
    for f in (20, 21, 22, 23):
        assert any(src == "extended" and b[0] <= 120 and b[1] <= 50 and b[2] >= 144
                   and b[3] >= 74 for b, src in zip(out[f].boxes.xyxy, out[f].source)), f


def test_added_boxes_grow_with_the_distance_from_a_sighting():
    dets = {0: face(100, 100, 140, 140), 1: Detections.empty(), 2: Detections.empty(),
            3: Detections.empty(), 4: face(100, 100, 140, 140)}
    out = tracking.fill(dets, range(5), Linking(3, 0.2, 0, 0.1), 8, W, H)
    assert added(out[1]) == [("interpolated", (96, 96, 144, 144))]    # 1 frame away: 10 %
    assert added(out[2]) == [("interpolated", (92, 92, 148, 148))]    # 2 frames away
    assert added(out[3]) == [("interpolated", (96, 96, 144, 144))]


@pytest.mark.parametrize("kw", [dict(memory=-1), dict(speed=-0.1), dict(grow=-1)])
def test_bad_linking_is_refused(kw):
    with pytest.raises(ValueError):
        Linking(**kw)
