"""The detection plan's pure parts: crop geometry, which looks are made for which boxes, the
fallbacks and the presets (beam_anon.detection.regions, beam_anon.detection.plan). Boxes are xyxy pixels."""
import numpy as np
import pytest

from beam_anon.detection import plan, presets
from beam_anon.boxes import Detections
from beam_anon.detection.regions import int_box, scaled_tiles, tile
from beam_anon.settings import Settings


def dets(boxes, scores=None, label="face"):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Detections.from_boxes(boxes, scores if scores is not None else np.full(len(boxes), 0.9),
                                 label)


def test_tile_covers_rectangle_with_bounded_tiles():
    tiles = tile((0, 0, 2500, 1000), 960)
    assert all(t[2] - t[0] <= 960 and t[3] - t[1] <= 960 for t in tiles)
    covered = np.zeros((1000, 2500), bool)
    for x0, y0, x1, y1 in tiles:
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert tile((10, 20, 110, 220), 960) == [(10, 20, 110, 220)]


def test_scaled_tiles_bound_what_the_detector_sees():
    crops = scaled_tiles((0, 0, 1280, 720), 2.0, 960, "x")
    assert len(crops) > 1 and all(c.scale == 2.0 and max(c.size) <= 960 for c in crops)
    assert scaled_tiles((0, 0, 1280, 720), 1.0, 2048, "x")[0].xyxy == (0, 0, 1280, 720)


def test_int_box_covers_and_clips():
    assert int_box((10.2, 5.7, 20.1, 30.0), 100, 100) == (10, 5, 21, 30)
    assert int_box((-5, -5, 200, 50), 100, 100) == (0, 0, 100, 50)
    assert int_box((150, 10, 160, 20), 100, 100) is None


def test_full_frame_looks_scales_tiles_and_turns():
    s = Settings(face_full_frame_scales=(1.0, 2.0), face_rotations=(180,),
                 face_rotation_models=("cf",), full_frame_max_side=2048, full_frame_tile=640)
    crops = plan.full_frame_looks(1280, 720, s, "face", "cf")
    assert {(c.scale, c.turns) for c in crops} == {(1.0, 0), (2.0, 0), (0.5, 2)}
    assert [c.xyxy for c in crops if c.scale == 1.0 and c.turns == 0] == [(0, 0, 1280, 720)]
    sized = plan.full_frame_looks(1280, 720, s, "face", "other", input_size=640)
    assert all(max(c.size) == 640 for c in sized) and not any(c.turns for c in sized)
    # tiles of at most 640 / scale image pixels, each seen at the model's 640
    assert {max(c.xyxy[2] - c.xyxy[0], c.xyxy[3] - c.xyxy[1]) for c in sized if c.scale > 1.5}\
        <= set(range(321))
    assert plan.full_frame_looks(1280, 720, s.replace(full_frame=False), "face", "cf") == []
    def scales(settings, model):
        return sorted({c.scale for c in plan.full_frame_looks(1280, 720, settings, "face", model)
                       if c.source == "full_frame"})
    own = s.replace(model_scales=("cf=1", "rf=0.5/2", "off=0"))
    assert scales(own, "cf") == [1.0] and scales(own, "rf") == [0.5, 2.0]
    assert scales(own, "off") == [] and scales(own, "other") == [1.0, 2.0]
    assert plan.stage1_look(1280, 720, 640).size == (640, 360)
    assert plan.stage1_look(1280, 720, None).scale == 1.0


def test_vehicle_looks_are_scaled_by_each_vehicles_size():
    s = Settings(vehicle_crop_sizes=(160, 300), crop_max_upscale=6.0, stage1_threshold=0.3)
    stage1 = Detections(np.array([[100, 100, 140, 120], [500, 300, 1100, 700],
                                  [0, 0, 50, 50], [600, 10, 700, 60]], np.float32),
                        [0.9, 0.9, 0.9, 0.1], np.array(["car", "bus", "person", "car"], object))
    crops = plan.vehicle_looks(stage1, 1280, 720, s)
    assert len(crops) == 4 and {c.source for c in crops} == {"vehicle"}
    small = [c for c in crops if c.xyxy[0] < 200]
    assert sorted(round(max(c.size)) for c in small) == [160, 288]  # 300: capped at 6 x 48 px
    big = [c for c in crops if c.xyxy[0] >= 200]
    assert sorted(round(max(c.size)) for c in big) == [160, 300] and all(c.scale < 1 for c in big)
    assert big[0].xyxy[0] < 500 and big[0].xyxy[3] > 700 - 1  # padded, clipped to the image
    assert plan.vehicle_looks(stage1, 1280, 720, s.replace(vehicle_crop_sizes=())) == []


def test_close_up_look_shrinks_the_whole_image():
    (crop,) = plan.close_up_look(1280, 720, Settings(close_up_size=160))
    assert crop.xyxy == (0, 0, 1280, 720) and round(max(crop.size)) == 160
    assert crop.source == "close_up"
    assert plan.close_up_look(1280, 720, Settings(close_up_size=0)) == []
    assert plan.close_up_look(120, 90, Settings(close_up_size=160)) == []  # not a shrink


def test_plates_off_every_vehicle_need_the_higher_score():
    stage1 = Detections(np.array([[100, 100, 300, 200], [600, 100, 700, 200]], np.float32),
                        [0.9, 0.9], np.array(["car", "person"], object))
    plates = dets([[180, 190, 220, 205],    # on the car's bumper, just below its box: grown
                   [640, 150, 660, 158],    # on the person
                   [900, 400, 940, 410],    # on nothing, sure
                   [900, 500, 940, 510]],   # on nothing, unsure
                  [0.2, 0.2, 0.5, 0.2], "plate")
    s = Settings(stage1_model="nanodet-g-coco", stage1_threshold=0.25,
                 plate_off_vehicle_threshold=0.3)
    assert plan.off_vehicle(plates, stage1, 1000, 600, s).tolist() == [False, True, False, True]
    assert not plan.off_vehicle(plates, stage1, 1000, 600, s.replace(stage1_model=None)).any()
    assert not plan.off_vehicle(plates, stage1, 1000, 600,
                                s.replace(plate_off_vehicle_threshold=0.0)).any()
    assert plan.off_vehicle(plates, Detections.empty(), 1000, 600, s).tolist() == [
        True, True, False, True]


def test_plates_only_the_overview_found_need_its_threshold():
    xyxy = [[0, 0, 400, 200], [0, 0, 400, 200], [0, 0, 400, 200], [0, 0, 40, 20], [0, 0, 40, 20]]
    plates = Detections(np.array(xyxy, np.float32), [0.2, 0.4, 0.2, 0.2, 0.2],
                        np.array(["plate"] * 5, object),
                        [{"beamplate:overview"}, {"beamplate:overview"},
                         {"beamplate:overview", "beamplate:full_frame"}, {"beamplate:vehicle"},
                         set()])
    s = Settings(overview_threshold=0.3)
    assert plan.overview_only(plates, s).tolist() == [True, False, False, False, False]
    assert not plan.overview_only(plates, Settings()).any()          # off by default


def test_person_looks_upscale_head_areas_of_small_persons_only():
    s = Settings(person_face_size=32, crop_max_upscale=4.0, stage1_threshold=0.3)
    stage1 = Detections(np.array([[100, 100, 120, 180], [400, 0, 800, 720]], np.float32),
                        [0.9, 0.9], np.array(["person", "person"], object))
    (crop,) = plan.person_looks(stage1, 1280, 720, s)
    assert crop.scale == pytest.approx(32 / (80 * plan.FACE_PER_PERSON_HEIGHT))
    x0, y0, x1, y1 = crop.xyxy
    assert (x0, y0) == (100, 100) and x1 == 120 and y1 < 140  # the top of the person


def test_zoom_looks_merge_overlapping_neighbourhoods_and_skip_large_candidates():
    s = Settings(zoom_max_size=24, zoom_context=1.0, zoom_scale=2.0)
    cands = dets([[100, 100, 110, 110], [112, 100, 122, 110], [500, 500, 600, 600]], [0.1] * 3)
    (crop,) = plan.zoom_looks(cands, 1280, 720, s)
    assert crop.scale == 2.0 and crop.source == "zoom"
    x0, y0, x1, y1 = crop.xyxy
    assert x0 <= 90 and x1 >= 132 and y0 <= 90 and y1 >= 120
    assert plan.zoom_looks(cands, 1280, 720, s.replace(zoom=False)) == []


def test_agreement_needs_overlap():
    a = dets([[0, 0, 10, 10], [50, 50, 60, 60]])
    assert plan.agrees(a, dets([[1, 1, 11, 11]])).tolist() == [True, False]
    assert plan.agrees(a, Detections.empty()).tolist() == [False, False]


def test_crowd_look_only_for_many_small_faces():
    s = Settings(crowd_min_faces=4, crowd_face_size=16, crowd_scale=2.0)
    few = dets([[100 + 20 * i, 100, 110 + 20 * i, 110] for i in range(3)])
    assert plan.crowd_looks(few, 1280, 720, s) == []
    many = dets([[100 + 20 * i, 100, 110 + 20 * i, 110] for i in range(5)] + [[0, 0, 300, 300]])
    crops = plan.crowd_looks(many, 1280, 720, s)
    assert crops and all(c.scale == 2.0 and c.source == "crowd" for c in crops)
    x0, y0, x1, y1 = crops[0].xyxy
    assert x0 <= 70 and y0 <= 70 and x1 >= 220   # the small faces plus three faces around


def test_head_fallback_blurs_large_persons_without_a_face_only():
    s = Settings(head_fallback=True, head_fallback_min_face=20, head_fallback_min_score=0.5,
                 stage1_threshold=0.3)
    stage1 = Detections(np.array([[100, 100, 200, 400], [500, 100, 600, 400],
                                  [900, 100, 905, 120]], np.float32),
                        [0.9, 0.9, 0.9], np.array(["person"] * 3, object))
    faces = dets([[540, 110, 560, 130]])                  # the second person's face was found
    heads = plan.head_fallback(stage1, faces, s)
    assert len(heads) == 1 and heads.labels[0] == "face"  # the tiny third person is skipped
    x0, y0, x1, y1 = heads.xyxy[0]
    assert 100 <= x0 < 150 < x1 <= 200 and y0 == 100 and y1 < 250
    assert len(plan.head_fallback(stage1, faces, s.replace(head_fallback=False))) == 0


def test_margins_per_role():
    s = Settings(blur_margin_fraction=0.1, plate_margin_fraction=0.5)
    out = plan.with_margins(Detections(np.array([[0, 0, 100, 100], [0, 0, 100, 10]], np.float32),
                                       [1, 1], np.array(["face", "plate"], object)), s)
    np.testing.assert_allclose(out.with_label("face").xyxy[0], [-10, -10, 110, 110])
    np.testing.assert_allclose(out.with_label("plate").xyxy[0], [-50, -45, 150, 55])
    flat = plan.with_margins(Detections(np.array([[0, 0, 100, 10]], np.float32), [1],
                                        np.array(["plate"], object)),
                             s.replace(plate_min_height_fraction=0.0))
    np.testing.assert_allclose(flat.xyxy[0], [-50, -5, 150, 15])


def test_presets_are_settings_and_options_override_them():
    assert presets.preset("balanced") == Settings()
    fast = presets.preset("fast")
    assert fast.stage1_model is None and not fast.verify
    assert presets.preset("fast", verify=True).verify
    assert set(presets.preset("thorough").face_models) > set(fast.face_models)
    with pytest.raises(ValueError, match="unknown preset"):
        presets.preset("nope")


def test_stage1_looks_whole_and_tiles():
    s = Settings()
    assert plan.stage1_looks(1280, 720, s, 640) == [plan.stage1_look(1280, 720, 640)]
    tiled = s.replace(stage1_tile=720)
    looks = plan.stage1_looks(1280, 720, tiled, None)      # a model that resizes itself
    assert looks[0] == plan.stage1_look(1280, 720, None) and len(looks) == 3
    for crop in looks[1:]:
        x0, y0, x1, y1 = crop.xyxy
        assert crop.scale == 1.0 and crop.source == "stage1_tile"
        assert max(x1 - x0, y1 - y0) <= 720 and (x0, y1) in ((0, 720), (x0, 720))
    assert looks[1].xyxy[0] == 0 and looks[2].xyxy[2] == 1280   # the tiles cover the width
    assert looks[1].xyxy[2] > looks[2].xyxy[0]                   # and overlap
    yolo = plan.stage1_looks(1280, 720, tiled, 640)[1:]          # fixed-size model: resized
    assert all(max(c.size) == 640 for c in yolo)
    assert len(plan.stage1_looks(800, 600, tiled, None)) == 1    # too small to gain from tiles
