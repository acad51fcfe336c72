import numpy as np

from beam_anon.boxes import Detections
from beam_anon.regions import full_frame_crops, plan_crops, region_crops, stage1_regions, tile
from beam_anon.settings import Settings


def test_tile_covers_rectangle_with_bounded_tiles():
    tiles = tile((0, 0, 2500, 1000), 960)
    assert all(t[2] - t[0] <= 960 and t[3] - t[1] <= 960 for t in tiles)
    covered = np.zeros((1000, 2500), bool)
    for x0, y0, x1, y1 in tiles:
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert min(t[0] for t in tiles) == 0 and max(t[2] for t in tiles) == 2500


def test_tile_small_rectangle_is_itself():
    assert tile((10, 20, 110, 220), 960) == [(10, 20, 110, 220)]


def test_small_region_upscaled_but_capped():
    s = Settings(crop_target_size=640, crop_max_upscale=4.0)
    (crop,) = region_crops(np.array([[0, 0, 100, 50]]), s)
    assert crop.scale == 4.0
    (crop,) = region_crops(np.array([[0, 0, 320, 200]]), s)
    assert crop.scale == 2.0
    (crop,) = region_crops(np.array([[0, 0, 900, 700]]), s)
    assert crop.scale == 1.0


def test_large_region_split():
    s = Settings(crop_max_size=1000)
    crops = region_crops(np.array([[0, 0, 3000, 900]]), s)
    assert len(crops) >= 3 and all(c.xyxy[2] - c.xyxy[0] <= 1000 for c in crops)


def test_regions_filter_classes_and_threshold():
    s = Settings(stage1_threshold=0.3)
    stage1 = Detections(np.array([[10, 10, 50, 90], [300, 300, 400, 400], [500, 10, 600, 90]]),
                        np.array([0.9, 0.9, 0.1]), np.array(["person", "dog", "car"], object))
    regions = stage1_regions(stage1, 1000, 1000, s)
    assert len(regions) == 1
    x0, y0, x1, y1 = regions[0]
    assert x0 < 10 and y1 > 90  # padded


def test_full_frame_tiles_scale():
    crops = full_frame_crops(1280, 720, Settings(full_frame_tile=960), 2.0)
    assert all(c.scale == 2.0 for c in crops)
    assert all(c.xyxy[2] - c.xyxy[0] <= 480 for c in crops)


def test_plan_keeps_only_regions_upscaled_beyond_full_frame():
    regions = np.array([[0, 0, 100, 100], [200, 200, 700, 600]])  # scales 4.0 and 1.28
    s = Settings(face_full_frame_scales=(1.0, 2.0), plate_full_frame_scales=(1.0,))
    face = plan_crops(regions, 1280, 720, s, "face")
    assert [c.scale for c in face if c.source == "region"] == [4.0]
    assert {c.scale for c in face if c.source == "full_frame"} == {1.0, 2.0}
    plate = plan_crops(regions, 1280, 720, s, "plate")
    assert sorted(c.scale for c in plate if c.source == "region") == [1.28, 4.0]
    off = plan_crops(regions, 1280, 720, s.replace(full_frame=False), "face")
    assert len(off) == 2 and all(c.source == "region" for c in off)
