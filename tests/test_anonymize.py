"""The two-stage algorithm with stand-in detectors that find painted squares, so the plan's
crops (person heads, vehicles, full frame, turns, zooms), their packing and the map-back are
checked exactly without any model."""
import cv2
import numpy as np

from beam_anon.detection.anonymize import Anonymizer
from beam_anon.boxes import Detections
from beam_anon.detectors import Detector
from beam_anon.settings import Settings


class ColourDetector(Detector):
    """Finds axis-aligned blobs of one pure colour; records the crop sizes it was shown."""

    def __init__(self, name, role, label, bgr, sure_size=0):
        self.name, self.role, self.label, self.bgr, self.sha256 = name, role, label, bgr, "0" * 64
        self.sure_size = sure_size  # blobs smaller than this score 0.15 (unsure), others 0.9
        self.seen_shapes = []

    def detect(self, image, min_score):
        self.seen_shapes.append(image.shape[:2])
        mask = np.all(image == self.bgr, axis=2).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        boxes = [[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:]]
        scores = [0.9 if min(w, h) >= self.sure_size else 0.15 for _, _, w, h, _ in stats[1:]]
        dets = Detections.from_boxes(boxes, scores, self.label)
        return dets[dets.scores >= min_score]


RED, BLUE, GREEN = (0, 0, 255), (255, 0, 0), (0, 255, 0)


def scene():
    img = np.full((720, 1280, 3), 128, np.uint8)
    img[100:400, 200:300] = GREEN      # a "person" (stage-1 object)
    img[120:140, 240:260] = RED        # its "face"
    img[600:610, 1000:1030] = BLUE     # a "plate" with no stage-1 object around it
    return img


PERSON = [200, 100, 300, 400]
CAR = [980, 560, 1060, 640]


def make(settings, sure_size=0):
    dets = {"s1": ColourDetector("s1", "stage1", "person", GREEN),
            "f": ColourDetector("f", "face", "face", RED, sure_size),
            "p": ColourDetector("p", "plate", "plate", BLUE)}
    # the stage-1 stand-in must report the whole person, including the face on it, and a car
    dets["s1"].detect = lambda im, s: Detections(np.array([PERSON, CAR], np.float32), [0.9, 0.9],
                                                 np.array(["person", "car"], object))
    return Anonymizer(settings.replace(stage1_model="s1", face_models=("f",), plate_models=("p",),
                                       zoom_models=("f",), region_models=("f", "p"),
                                       face_rotations=(), plate_check_model=None),
                      dets), dets


def test_boxes_map_back_exactly_through_person_and_vehicle_crops():
    anon, dets = make(Settings(full_frame=False, person_face_size=96, vehicle_crop_sizes=(300,),
                               overview_size=0, close_up_size=0))
    found, debug, _, cost = anon.detect(scene())
    faces, plates = found.with_label("face"), found.with_label("plate")
    np.testing.assert_allclose(faces.xyxy, [[240, 120, 260, 140]], atol=1.0)
    np.testing.assert_allclose(plates.xyxy, [[1000, 600, 1030, 610]], atol=1.0)
    assert {c.source for c in debug.crops} == {"person", "vehicle"}
    assert all(c.scale > 2 for c in debug.crops)           # both were upscaled
    assert cost.passes == {"s1": 1, "f": 1, "p": 1}


def test_full_frame_pass_finds_what_stage1_missed():
    anon, _ = make(Settings(full_frame=True, full_frame_max_side=512, full_frame_tile=512,
                            person_face_size=0, vehicle_crop_sizes=(), overview_size=0,
                            close_up_size=0))
    anon.stage1 = None
    found, debug, _, _ = anon.detect(scene())
    plates = found.with_label("plate")
    assert len(plates) == 1
    np.testing.assert_allclose(plates.xyxy[0], [1000, 600, 1030, 610], atol=1.0)
    assert len(found.with_label("face")) == 1  # the region and tile hits fused into one
    assert any(c.source == "full_frame" for c in debug.crops)


def test_zoom_confirms_a_small_unsure_candidate():
    settings = Settings(full_frame=True, person_face_size=0, zoom_min_score=0.1,
                        zoom_scale=2.0, zoom_max_size=24, model_thresholds=("f=0.5",))
    anon, dets = make(settings, sure_size=30)            # the 20-px face scores 0.15 at 1x
    found, debug, _, _ = anon.detect(scene())
    np.testing.assert_allclose(found.with_label("face").xyxy, [[240, 120, 260, 140]], atol=1.0)
    assert any(c.source == "zoom" and c.scale == 2.0 for c in debug.crops)
    off, _ = make(settings.replace(zoom=False), sure_size=30)
    assert len(off.detect(scene())[0].with_label("face")) == 0
    assert len(off.detect(scene())[1].near_misses) == 0  # 0.15 is below threshold - band


def test_run_blurs_with_margin_and_keeps_input():
    img = scene()
    anon, _ = make(Settings(full_frame=True, blur_margin_fraction=0.5, plate_margin_fraction=0.5))
    result = anon.run(img, keep_debug=True)
    assert np.array_equal(img, scene())
    face = result.boxes.with_label("face").xyxy[0]
    np.testing.assert_allclose(face, [230, 110, 270, 150], atol=1.0)
    assert not np.any(np.all(result.image == RED, axis=2))
    assert not np.any(np.all(result.image == BLUE, axis=2))
    assert result.debug is not None and set(result.timings) >= {"stage1", "faces", "plates",
                                                                 "blur"}
    untouched = np.ones(img.shape[:2], bool)
    for x0, y0, x1, y1 in result.boxes.xyxy.astype(int):
        untouched[y0:y1 + 1, x0:x1 + 1] = False
    assert np.array_equal(result.image[untouched], img[untouched])


def test_missing_detector_is_a_clear_error():
    import pytest
    with pytest.raises(ValueError, match="no detector loaded"):
        Anonymizer(Settings(), {})


def test_turned_full_frame_pass_maps_back_to_the_same_place():
    settings = Settings(full_frame=True, full_frame_max_side=512, person_face_size=0)
    anon, dets = make(settings)
    anon.settings = anon.settings.replace(face_rotations=(90, 180, 270),
                                          face_rotation_models=("f",))
    found, debug, _, _ = anon.detect(scene())
    faces = found.with_label("face")
    assert len(faces) == 1  # a wrong inverse would add a mirrored box
    np.testing.assert_allclose(faces.xyxy[0], [240, 120, 260, 140], atol=1.0)
    assert {c.turns for c in debug.crops} == {0, 1, 2, 3}
    assert any(shape[0] > shape[1] for shape in dets["f"].seen_shapes)  # 90-degree tiles seen


def test_a_plate_only_the_overview_found_needs_the_overview_threshold():
    settings = Settings(full_frame=False, person_face_size=0, vehicle_crop_sizes=(),
                        overview_size=300, close_up_size=0)
    anon, _ = make(settings)
    found, debug, _, _ = anon.detect(scene())
    assert len(found.with_label("plate")) == 1 and {c.source for c in debug.crops} == {"overview"}
    anon, _ = make(settings.replace(overview_threshold=0.95))     # it scores 0.9 there
    found, debug, _, _ = anon.detect(scene())
    assert len(found.with_label("plate")) == 0
    assert len(debug.near_misses.with_label("plate")) == 1          # for review, not lost
