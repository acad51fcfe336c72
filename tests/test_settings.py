"""Per-model entries ("name=value" options): malformed values and unknown model names stop a
run at start instead of failing every image or silently changing nothing."""
from __future__ import annotations

import pytest

from beam_anon import models
from beam_anon.detection.presets import PRESETS, preset
from beam_anon.models import user_models
from beam_anon.settings import LOOK_FIELDS, Settings


def test_per_model_names_and_their_option():
    s = Settings(model_thresholds=("centerface=0.3",), zoom_thresholds=(" yunet = 0.5",),
                 agree_thresholds=("centerface=0.1",), model_scales=("retinaface-mnv2=0.5/1",))
    assert s.per_model_names() == {"centerface": "model_thresholds", "yunet": "zoom_thresholds",
                                   "retinaface-mnv2": "model_scales",
                                   "beamplate": "verify_thresholds"}   # the default's entry
    for name in PRESETS:   # every preset's own entries name real models
        assert set(preset(name).per_model_names()) <= set(models.model_names()), name


@pytest.mark.parametrize("changes, message", [
    ({"model_thresholds": ("centerface=3",)}, "--model_thresholds 'centerface=3': expected"),
    ({"agree_thresholds": ("centerface",)}, "--agree_thresholds 'centerface': expected"),
    ({"zoom_thresholds": ("=0.4",)}, "--zoom_thresholds '=0.4': expected"),
    ({"model_scales": ("yunet=abc",)}, "--model_scales 'yunet=abc': expected name=scale"),
    ({"model_scales": ("yunet=-1",)}, "--model_scales 'yunet=-1': expected"),
    ({"verify_thresholds": ("beamplate=1.5",)}, "--verify_thresholds 'beamplate=1.5': expected"),
])
def test_malformed_entries_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        Settings(**changes).per_model_names()
    with pytest.raises(models.ModelError, match=message):
        user_models.check_start(Settings(**changes), None, load=False)


def test_unknown_model_in_an_entry_stops_the_run():
    with pytest.raises(models.ModelError, match="--zoom_thresholds: unknown model 'centreface'"):
        user_models.check_start(Settings(zoom_thresholds=("centreface=0.3",)), None, load=False)
    user_models.check_start(Settings(model_scales=("yunet=0", "centerface=1/0.5")), None,
                            load=False)


def test_every_preset_is_in_range():
    for name in PRESETS:
        preset(name).check_values()


@pytest.mark.parametrize("changes, message", [
    ({"blur_margin_fraction": -1.0}, "--blur_margin_fraction -1.0: expected >= 0"),  # shrinks
    ({"blur_strength": 0.0}, "--blur_strength 0.0: expected above 0"),              # no blur
    ({"face_threshold": 1.5}, "--face_threshold 1.5: expected from 0 to 1"),
    ({"review_max_fraction": 2.0}, "--review_max_fraction 2.0: expected from 0 to 1"),
    ({"vehicle_crop_sizes": (160, 0)}, "--vehicle_crop_sizes 0: expected above 0"),
    ({"face_rotations": (180, 45)}, "--face_rotations 45: expected multiples of 90"),
    ({"jpeg_quality": 0}, "--jpeg_quality 0: expected from 1 to 100"),
])
def test_values_out_of_range_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        Settings(**changes).check_values()


def test_look_models_and_stage1_classes_must_exist():
    for field in LOOK_FIELDS:
        with pytest.raises(models.ModelError, match=f"--{field}: unknown model 'centreface'"):
            user_models.check_start(Settings(**{field: ("centreface",)}), None, load=False)
    with pytest.raises(models.ModelError, match="nanodet-g-coco has no class 'carr'"):
        user_models.check_start(Settings(stage1_classes=("carr", "person")), None, load=False)
    # a known model that this run does not use makes no look: allowed (presets share lists)
    user_models.check_start(Settings(zoom_models=("yunet",)), None, load=False)
    user_models.check_start(Settings(stage1_model=None, stage1_classes=("carr",)), None,
                            load=False)


def test_verification_hit_score_per_model():
    s = Settings()
    assert s.verify_hit("centerface", "face") == 0.6            # verify_threshold
    assert s.verify_hit("beamplate", "plate") == 0.45           # its own entry
    assert Settings(verify_thresholds=("beamplate=0.1",)).verify_hit("beamplate", "plate") == 0.15
