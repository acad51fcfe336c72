import numpy as np
import pytest

from beam_anon.detection.blur import MODES, blur_boxes
from beam_anon.boxes import Detections


def noise_image(h=200, w=300, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", MODES)
def test_only_inside_boxes_changes(mode):
    img = noise_image()
    box = Detections.from_boxes([[50, 40, 150, 140]], [1.0], "face")
    out = blur_boxes(img, box, mode)
    mask = np.zeros(img.shape[:2], bool)
    mask[40:140, 50:150] = True
    assert np.array_equal(out[~mask], img[~mask])
    # detail inside is destroyed: the local variance collapses
    assert out[mask].astype(float).std() < 0.25 * img[mask].astype(float).std()
    assert np.array_equal(img, noise_image())  # input untouched


def test_fractional_box_covers_all_touched_pixels():
    img = noise_image()
    out = blur_boxes(img, Detections.from_boxes([[10.5, 10.5, 20.2, 20.2]], [1], "face"), "solid")
    assert (out[10:21, 10:21] == out[10, 10]).all()


def test_nested_boxes_stay_blurred():
    img = noise_image()
    boxes = Detections.from_boxes([[60, 60, 80, 80], [0, 0, 200, 200]], [1, 1], "face")
    out = blur_boxes(img, boxes, "gaussian")
    assert out[60:80, 60:80].astype(float).std() < 0.25 * img[60:80, 60:80].astype(float).std()


def test_box_outside_image_is_ignored():
    img = noise_image()
    out = blur_boxes(img, Detections.from_boxes([[400, 400, 500, 500]], [1], "face"))
    assert np.array_equal(out, img)


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown blur mode"):
        blur_boxes(noise_image(), Detections.empty(), "swirl")
