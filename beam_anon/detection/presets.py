"""Presets: named sets of the detection plan's settings (:mod:`beam_anon.detection.plan`), each
with its measured recall and cost (docs/accuracy.md, docs/performance.md); options override
them."""
from __future__ import annotations

from beam_anon.settings import Settings

#: named settings; ``balanced`` is the default (the Settings defaults themselves)
PRESETS: dict[str, dict] = {
    # one face pass (and RetinaFace's half-size one) and one plate pass over the whole image,
    # plus zooms where unsure, and the plate overview (300 px: close-up plates too large for the
    # 0.75x look; street plates 0.969 with it, 0.910 without, and one devset plate lost); with
    # no other plate look, beamplate's threshold is lower (0.12). The plate check at 0.01 keeps
    # every plate fast finds and blurs 1.5-2 points less (0.03 lost 1 street plate, 0.05 2).
    # RetinaFace (INT8) looks at the
    # zooms too, with balanced's agreement: faces 0.933 -> 0.950 for 7-14 ms per dashcam frame;
    # and at the whole image at half size (model_scales): 0.950 -> 0.966, faces >= 32 px
    # 0.939 -> 0.986
    "fast": {"stage1_model": None, "face_models": ("centerface", "retinaface-mnv2"),
             "zoom_models": ("centerface", "retinaface-mnv2"),
             "zoom_thresholds": ("centerface=0.2", "retinaface-mnv2=0.5"), "zoom_max_size": 32,
             "face_rotations": (), "person_face_size": 0,
             "crowd_min_faces": 0, "plate_models": ("beamplate",), "plate_threshold": 0.12,
             "plate_full_frame_scales": (0.75,), "verify": False,
             "plate_check_threshold": 0.01},
    # CenterFace looks (full frame, turned, persons' heads, zooms); RetinaFace-MobileNetV2
    # looks at the whole image at half size (large faces CenterFace scores low: devset faces
    # 0.964 -> 0.979) and where CenterFace was unsure (zooms, crowd); their agreement admits boxes
    # below either's threshold (issue 17, docs/accuracy.md)
    "balanced": {},
    # every look the permissive models allow: CenterFace and YuNet at 1x and 2x, all turns,
    # head fallback, and RetinaFace on the zooms with balanced's agreement (devset faces 0.966
    # -> 0.984 with it) and on the half-size whole image (0.984 -> 0.991) (platedet-yolov8s
    # and clpdet join with --allow_licences agpl,unknown --plate_models
    # beamplate,platedet-yolov8s,clpdet and the same in --region_models)
    "thorough": {"face_models": ("centerface", "yunet", "retinaface-mnv2"),
                 "face_rotation_scale": 1.0, "zoom_min_score": 0.05, "zoom_max_size": 24,
                 "region_models": ("centerface", "yunet", "beamplate"),
                 "zoom_models": ("centerface", "yunet", "retinaface-mnv2", "beamplate"),
                 "zoom_thresholds": ("centerface=0.2", "yunet=0.5", "retinaface-mnv2=0.5"),
                 "face_full_frame_scales": (1.0, 2.0), "face_rotations": (90, 180, 270),
                 "head_fallback": True, "plate_full_frame_scales": (1.0, 2.0),
                 "vehicle_crop_sizes": (160, 300, 640), "verify_full_frame": True,
                 # every plate box the detector draws is blurred (the check is asked about
                 # none); the check only decides which plate candidates join the review queue
                 # (98 -> 58 % of the devset images, 97 -> 51 % of the street photos)
                 "plate_check_below": 0.0},
}


#: each preset's measured devset recall and cost (docs/accuracy.md, docs/performance.md), for --help
PRESET_MEASURED: dict[str, str] = {
    "fast": "devset faces 0.966 (under 16 px 0.948), plates 1.000, street plates 0.969 (under "
            "16 px 0.962), 6.8 false boxes/image, 21-23 percent of the image blurred; 0.98x "
            "deface's images/s on dashcam frames",
    "balanced": "devset faces 0.979 (0.963), plates 1.000, street plates 0.996 (under 16 px "
                "0.987), 7.1 false boxes/image, 17-19 percent of the image blurred; 0.70x "
                "deface's images/s on dashcam frames",
    "thorough": "devset faces 0.991 (0.981), plates 1.000, street plates 1.000, 13.9 false "
                "boxes/image, 30-31 percent blurred; about 2 s per image",
}


def preset_summary(name: str) -> str:
    return PRESET_MEASURED.get(name, "")


def preset(name: str, **overrides) -> Settings:
    """Settings of preset ``name`` with ``overrides`` (field=value) applied on top."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return Settings().replace(**{**PRESETS[name], **overrides})
