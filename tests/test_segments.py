"""Segment planning (beam_anon.media.segments): cores partition the video at keyframes, context is
clipped to the video, the detection rule depends on the frame number only."""
import pytest

from beam_anon.media.segments import Segment, detect_frame, plan_segments


def test_cores_partition_the_video_at_keyframes():
    segs = plan_segments(100, keyframes=range(0, 100, 12), target_frames=30, overlap=5)
    assert [(s.start, s.end) for s in segs] == [(0, 36), (36, 72), (72, 100)]
    assert [(s.lo, s.hi) for s in segs] == [(0, 41), (31, 77), (67, 100)]
    assert [s.index for s in segs] == [0, 1, 2] and sum(s.frames for s in segs) == 100


def test_one_segment_when_not_split_or_short():
    assert plan_segments(50, [0, 10, 20], 0, 4) == [Segment(0, 0, 50, 0, 50)]
    assert plan_segments(50, [0, 10, 20], 50, 4) == [Segment(0, 0, 50, 0, 50)]
    assert plan_segments(1, [0], 10, 4) == [Segment(0, 0, 1, 0, 1)]


def test_sparse_keyframes_cut_at_the_target_length():
    segs = plan_segments(50, [0, 45], 10, 2)
    assert [(s.start, s.end) for s in segs] == [(0, 10), (10, 20), (20, 30), (30, 45),
                                               (45, 50)]  # 45: a keyframe within 2x the target
    segs = plan_segments(50, [0, 15, 45], 10, 2)  # 15 is within 2x the target: taken
    assert [(s.start, s.end) for s in segs][:2] == [(0, 15), (15, 25)]


def test_every_frame_a_keyframe_gives_exact_lengths():
    segs = plan_segments(10, range(10), 4, 2)
    assert [(s.start, s.end, s.lo, s.hi) for s in segs] == [(0, 4, 0, 6), (4, 8, 2, 10),
                                                           (8, 10, 6, 10)]


@pytest.mark.parametrize("n, overlap", [(0, 1), (5, -1)])
def test_bad_arguments(n, overlap):
    with pytest.raises(ValueError):
        plan_segments(n, [0], 3, overlap)


def test_detect_every_kth_frame_and_the_last():
    assert [f for f in range(11) if detect_frame(f, 11, 3)] == [0, 3, 6, 9, 10]
    assert all(detect_frame(f, 11, 1) for f in range(11))
