import numpy as np
import pytest

from beam_anon.boxes import (Detections, centres_inside, clip, expand, fuse, iou_matrix,
                             map_to_image, merge_regions, nms, unrotate)


def dets(boxes, scores=None, label="face"):
    scores = np.linspace(0.9, 0.5, len(boxes)) if scores is None else scores
    return Detections.from_boxes(boxes, scores, label)


def test_detections_validates_lengths():
    with pytest.raises(ValueError):
        Detections(np.zeros((2, 4)), np.zeros(1), np.array(["a", "b"], object))


def test_iou_known_values():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou_matrix(a, b)[0], [1.0, 50 / 150, 0.0], rtol=1e-6)


def test_nms_keeps_best_per_label():
    d = Detections(np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10]]),
                   np.array([0.6, 0.9, 0.5]), np.array(["face", "face", "plate"], object))
    kept = nms(d, 0.5)
    assert sorted(zip(kept.labels, kept.scores.round(2))) == [("face", 0.9), ("plate", 0.5)]


def test_fuse_returns_union_of_cluster():
    d = dets([[0, 0, 10, 10], [2, 2, 12, 12], [50, 50, 60, 60]], [0.5, 0.9, 0.7])
    fused = fuse(d, 0.4)
    assert len(fused) == 2
    big = fused[np.argmax(fused.scores)]
    np.testing.assert_allclose(big.xyxy[0], [0, 0, 12, 12])
    assert big.scores[0] == pytest.approx(0.9)


def test_expand_and_clip():
    d = expand(dets([[10, 10, 30, 20]]), 0.5)
    np.testing.assert_allclose(d.xyxy[0], [0, 5, 40, 25])
    c = clip(dets([[-5, -5, 5, 5], [200, 200, 210, 210]]), 100, 100)
    assert len(c) == 1 and c.xyxy[0].tolist() == [0, 0, 5, 5]


def test_expand_min_pixels():
    d = expand(dets([[10, 10, 12, 12]]), 0.1, min_pixels=3)
    np.testing.assert_allclose(d.xyxy[0], [7, 7, 15, 15])


def test_map_to_image_inverts_crop_and_scale():
    # a box at image (110, 220)-(130, 240) in a crop cut at (100, 200) and upscaled 2x
    in_crop = dets([[20, 40, 60, 80]])
    back = map_to_image(in_crop, (100, 200), 2.0)
    np.testing.assert_allclose(back.xyxy[0], [110, 220, 130, 240])
    back = map_to_image(in_crop, (0, 0), (2.0, 4.0))
    np.testing.assert_allclose(back.xyxy[0], [10, 10, 30, 20])


def test_records_round_trip():
    d = Detections(np.array([[1.234, 2, 3, 4]]), np.array([0.5]), np.array(["plate"], object))
    back = Detections.from_records(d.to_records())
    assert back.labels[0] == "plate" and back.xyxy[0, 0] == pytest.approx(1.23)


def test_merge_by_iou():
    out = merge_regions(np.array([[0, 0, 500, 500], [100, 100, 600, 600]]), 1000, 1000)
    assert out.tolist() == [[0, 0, 600, 600]]


def test_no_merge_large_disjoint():
    boxes = np.array([[0, 0, 300, 300], [310, 0, 600, 300]])
    assert len(merge_regions(boxes, 1000, 1000)) == 2


def test_merge_small_touching_boxes_chain():
    # three small boxes (< 10 % of the image) in a row, 5 px apart (under 1 % gap): one region
    boxes = np.array([[0, 0, 50, 50], [55, 0, 105, 50], [110, 0, 160, 50]])
    assert merge_regions(boxes, 1000, 1000).tolist() == [[0, 0, 160, 50]]


def test_small_box_far_away_not_merged():
    boxes = np.array([[0, 0, 50, 50], [100, 0, 150, 50]])
    assert len(merge_regions(boxes, 1000, 1000)) == 2


def test_merge_empty():
    assert merge_regions(np.zeros((0, 4)), 100, 100).shape == (0, 4)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_unrotate_inverts_rot90(k):
    img = np.zeros((60, 100), np.uint8)
    img[10:20, 30:50] = 1                      # a box at x 30-50, y 10-20
    rot = np.rot90(img, k)
    ys, xs = np.nonzero(rot)
    found = dets([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]])
    np.testing.assert_allclose(unrotate(found, k, 100, 60).xyxy[0], [30, 10, 50, 20])


def test_centres_inside_is_half_open_and_pairwise():
    boxes = [[0, 0, 10, 10], [10, 10, 30, 30], [95, 95, 105, 105]]   # centres 5, 20, 100
    areas = [[0, 0, 20, 20], [5, 5, 100, 100]]
    np.testing.assert_array_equal(centres_inside(boxes, areas),
                                  [[True, True], [False, True], [False, False]])
    assert centres_inside([], areas).shape == (0, 2) and centres_inside(boxes, []).shape == (3, 0)
