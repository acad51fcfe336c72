"""Resource bounds: large images are searched on a shrunk copy and blurred at full resolution;
images above max_pixels fail with a clear error before any pixel is decoded."""
import cv2
import numpy as np
import pytest

from beam_anon.detection.looks import detection_copy
from beam_anon.media.image_io import ImageError, decode
from beam_anon.settings import Settings
from tests.test_anonymize import BLUE, RED, make


def big_scene(w=4000, h=3000):
    img = np.full((h, w, 3), 128, np.uint8)
    img[1000:1400, 1000:1400] = RED          # a "face", 400 px
    img[2600:2680, 200:440] = BLUE         # a "plate"
    return img


def test_detection_copy_bounds_pixels_and_maps_back():
    img = np.zeros((3000, 4000, 3), np.uint8)
    same, scale = detection_copy(img, 12_000_000)
    assert same is img and scale == (1.0, 1.0)
    small, (sx, sy) = detection_copy(img, 3_000_000)
    h, w = small.shape[:2]
    assert w * h <= 3_000_000 and (w, h) == (2000, 1500) and (sx, sy) == (0.5, 0.5)


def test_large_image_detected_small_blurred_at_full_resolution():
    img = big_scene()
    settings = Settings(stage1_model=None, full_frame=True, full_frame_tile=1024,
                        blur_margin_fraction=0.0, plate_margin_fraction=0.0,
                        plate_min_height_fraction=0.0, detect_max_pixels=3_000_000)
    anon, dets = make(settings)
    result = anon.run(img, keep_debug=True)
    # the detectors never saw more than the shrunk copy (2000 x 1500)
    seen = dets["f"].seen_shapes + dets["p"].seen_shapes
    assert seen and max(h * w for h, w in seen) <= 3_000_000
    assert result.image.shape == img.shape
    np.testing.assert_allclose(result.boxes.with_label("face").xyxy[0], [1000, 1000, 1400, 1400],
                               atol=2.0)
    np.testing.assert_allclose(result.boxes.with_label("plate").xyxy[0], [200, 2600, 440, 2680],
                               atol=2.0)
    assert not np.any(np.all(result.image == RED, axis=2))
    assert not np.any(np.all(result.image == BLUE, axis=2))
    # outside the boxes the full-resolution pixels are untouched
    untouched = np.ones(img.shape[:2], bool)
    for x0, y0, x1, y1 in result.boxes.xyxy.astype(int):
        untouched[max(0, y0 - 1):y1 + 2, max(0, x0 - 1):x1 + 2] = False
    assert np.array_equal(result.image[untouched], img[untouched])
    # debug boxes are in full-resolution pixels too
    assert result.debug.stage2.xyxy.max() > 2000
    assert max(c.xyxy[2] for c in result.debug.crops) == 4000


def test_pixel_limit_is_a_clear_error():
    ok, jpeg = cv2.imencode(".jpg", np.zeros((400, 500, 3), np.uint8))
    with pytest.raises(ImageError, match=r"500x400 = 200000 pixels, above max_pixels=100000"):
        decode(jpeg.tobytes(), 100_000)
