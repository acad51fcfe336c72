"""Command-line options for every ``Settings`` field and the ``--preset`` they override.

``add_settings_arguments(parser)`` adds ``--preset`` and one ``--<field>`` per Settings field
(default: unset, so the preset decides); ``settings_from(values)`` turns parsed values (a dict,
e.g. ``PipelineOptions.get_all_options()``) into the Settings of the chosen preset with every
option given on top.
"""
from __future__ import annotations

import argparse
import dataclasses

from beam_anon.detection.blur import MODES as BLUR_MODES
from beam_anon.media.jpeg_output import MODES as JPEG_MODES
from beam_anon.detection.presets import PRESETS, preset, preset_summary
from beam_anon.settings import Settings

#: --help text of every Settings field (tests check none is missing)
SETTINGS_HELP = {
    "stage1_model": "stage-1 person/vehicle detector (registry name), 'none' to skip stage 1 "
                    "(no vehicle or person looks then; full-frame looks and zooms still run)",
    "face_models": "comma-separated face detectors (registry names); all run, boxes are unioned",
    "plate_models": "comma-separated licence-plate detectors (registry names)",
    "model_specs": "a detector of your own (TF SavedModel, TFLite, ONNX), described by the JSON "
                   "spec FILE (README: your own detector); its name is then usable in "
                   "--face_models, --plate_models or --stage1_model; repeatable",
    "allow_licences": "comma list of licence classes besides permissive that this run may use: "
                      "agpl, unknown (python -m beam_anon.models list shows each model's "
                      "licence); a run naming such a model without it stops at start",
    "precision": "model files that run: int8 (INT8 variants where kept, made at fetch), float "
                 "(graph-fixed float files), original (the archives' files as shipped)",
    "device": "auto (CUDA when onnxruntime-gpu sees a GPU, else CPU) | cpu | cuda",
    "stage1_classes": "comma-separated COCO classes stage 1 looks for (persons, vehicles)",
    "stage1_threshold": "stage-1 minimum score, 0-1",
    "stage1_tile": "stage 1 also looks at overlapping tiles of at most this many image pixels "
                   "a side, each at the model's input size (weak small-object models find "
                   "distant vehicles and persons there; 0: the whole image only)",
    "merge_iou": "stage-1 boxes overlapping more than this IoU become one crop",
    "full_frame": "cheap looks at the whole image, so stage-1 misses are not privacy misses "
                  "(true/false)",
    "full_frame_tile": "full-frame tile side in pixels for fixed-input models (YOLO letterboxes "
                       "each tile to its input)",
    "full_frame_max_side": "any-size models see the whole image in one piece up to this side "
                           "(pixels as they see it), in tiles above",
    "face_full_frame_scales": "comma-separated resize factors of the full-frame face looks "
                              "(2 = upscaled 2x, finds smaller faces, costs 4x)",
    "plate_full_frame_scales": "comma-separated resize factors of the full-frame plate looks",
    "model_scales": "per-model full-frame scales instead of the role's, name=s1/s2, e.g. "
                    "yunet=1,retinaface-mnv2=0.5 (name=0: the model makes no full-frame look)",
    "face_rotations": "extra full-frame face looks on the image turned by these angles "
                      "(degrees, multiples of 90; 180 finds upside-down faces; empty: none)",
    "face_rotation_models": "face models that make the turned looks",
    "face_rotation_scale": "resize factor of the turned looks (upside-down and lying faces are "
                           "mostly large)",
    "region_models": "models that make the overview, vehicle and person looks (the others "
                     "look at the full frame only)",
    "overview_size": "plates: the whole image shrunk to this long side (pixels) is looked at "
                     "too, for close-up plates too large for the 1x look (0: off)",
    "overview_threshold": "minimum score of a plate box that only the overview look found (its "
                          "false boxes are large); below it a near miss, for review (0: off)",
    "close_up_size": "plates: the whole image shrunk to this long side (pixels) is looked at "
                     "too, for a plate that fills the photo (0: off)",
    "close_up_threshold": "minimum plate score in the close-up look (a false box there covers "
                          "much of the image)",
    "plate_off_vehicle_threshold": "minimum score of a plate box whose centre is on no stage-1 "
                                   "vehicle (grown by a tenth of its size); 0: off (default); "
                                   "no effect without stage 1. 0.3 blurs about 3 points less "
                                   "area in balanced, every plate kept, but see "
                                   "docs/accuracy.md: false plate boxes also cover faces",
    "region_padding_fraction": "padding added to each stage-1 box, fraction of its size per side",
    "vehicle_crop_sizes": "comma-separated long sides (pixels) each stage-1 vehicle is resized "
                          "to for the plate models (empty: no vehicle looks)",
    "person_face_size": "persons whose expected face is smaller than this (pixels) get their "
                        "head area upscaled to it for the face models (0: off)",
    "crop_max_upscale": "largest upscale factor of a vehicle, person or re-check crop",
    "zoom": "closer looks where a cheap look was unsure (true/false)",
    "zoom_models": "models that make the closer looks (zoom, crowd)",
    "zoom_min_score": "unsure candidates scoring from this up to the threshold get a closer look",
    "zoom_max_size": "candidates larger than this (pixels, long side) are not zoomed",
    "zoom_context": "a zoomed neighbourhood is the candidate grown by this fraction per side",
    "zoom_scale": "resize factor of the closer looks",
    "zoom_thresholds": "per-model minimum scores of the closer looks where a cheap look "
                       "hesitated, e.g. centerface=0.2 (default: the model's threshold)",
    "crowd_min_faces": "this many faces under crowd_face_size -> the crowd area is searched "
                       "again at crowd_scale (0: off)",
    "crowd_face_size": "pixels: faces smaller than this count for the crowd fallback",
    "crowd_scale": "resize factor of the crowd look",
    "agree_thresholds": "per-model scores from which a box below the model's threshold is "
                        "blurred where another model listed here found a box at the same place "
                        "(IoU >= 0.3), e.g. centerface=0.1,retinaface-mnv2=0.05 (empty: off)",
    "head_fallback": "blur the head area of a stage-1 person large enough that its face should "
                     "have been found, when no face was found there (true/false)",
    "head_fallback_min_face": "pixels: the person's expected face size from which the head "
                              "fallback applies",
    "head_fallback_min_score": "stage-1 score a person needs for the head fallback",
    "face_threshold": "face minimum score, 0-1 (lower blurs more)",
    "plate_threshold": "licence-plate minimum score, 0-1 (lower blurs more)",
    "model_thresholds": "per-model minimum scores overriding the two above, e.g. "
                        "centerface=0.3,yunet=0.6",
    "plate_check_model": "crop classifier (registry name, e.g. beamplate-check) that gives a "
                         "second opinion on unsure plate boxes; 'none' to skip",
    "plate_check_threshold": "an unsure plate box the check model scores below this (0-1) is "
                             "not blurred",
    "plate_check_below": "plate boxes scoring from this up are not checked (sure enough)",
    "plate_check_min_side": "plate boxes whose short side is smaller (pixels) are not checked "
                            "(distant plates: too few pixels for a second opinion)",
    "nms_iou": "duplicate boxes overlapping more than this IoU are fused",
    "blur_mode": "how boxes are made unrecognizable: " + " | ".join(BLUR_MODES),
    "blur_margin_fraction": "each face box grows by this fraction of its size per side before "
                            "blurring",
    "plate_margin_fraction": "each plate box grows by this fraction of its size per side",
    "plate_min_height_fraction": "then each plate box is made at least this fraction of its "
                                 "width tall, about its centre (a plate's frame and text rows "
                                 "reach beyond the characters a detector boxes; 0 = off)",
    "blur_strength": "gaussian sigma / pixelate cell as a fraction of the box's long side",
    "verify": "verification pass: run the face and plate detectors again on the blurred boxes "
              "and their surroundings and blur what they still find, more strongly each round "
              "(true/false)",
    "verify_threshold": "verification hit: a detection on the blurred image scoring at least "
                        "this (and at least the model's own threshold), 0-1",
    "verify_thresholds": "per-model verification hit scores instead of --verify_threshold, "
                         "\"name=score\" entries (beamplate's scores on plain plates stay "
                         "under 0.6)",
    "verify_rounds": "re-blur rounds (blur strength doubles each round); still detected after "
                     "the last round -> the record needs review",
    "verify_full_frame": "the verification pass also re-checks the whole image (true/false)",
    "review_band": "detections outside every blurred box scoring within this much below their "
                   "threshold are not blurred but are review candidates (0 = off)",
    "review_just_below": "a review candidate this close to its threshold is queued even when "
                         "only one look saw it (others need two looks: models or scales)",
    "review_plate_check": "a plate candidate just below its threshold is queued for review only "
                          "when the plate check (--plate_check_model) scores it at least this, "
                          "0-1 (0 = every such candidate seen by two looks, as without a check)",
    "review_max_fraction": "fill OUTPUT/review.jsonl with the next riskiest images up to this "
                           "share of all images (0: only the queued ones: failures, survivors "
                           "of verification, qualified near-threshold detections)",
    "jpeg_mode": "JPEG outputs: lossless (only the 8/16-px blocks holding blurred pixels are "
                 "rewritten, every other block is the input's, bit for bit) | reencode (the "
                 "whole picture re-encoded at --jpeg_quality); the manifest's jpeg field says "
                 "which path each image took and why (beam_anon.media.jpeg_output)",
    "jpeg_quality": "quality of re-encoded JPEG outputs, 1-100 (--jpeg_mode reencode and the "
                    "lossless mode's fallbacks)",
    "keep_metadata": "keep allow-listed EXIF (capture time, exposure; never GPS, camera, serial "
                     "numbers or thumbnail; see beam_anon.media.image_io) (true/false)",
    "max_pixels": "images with more pixels fail with a clear error (decompression-bomb guard)",
    "detect_max_pixels": "larger images are searched on a copy shrunk to this many pixels "
                         "(bounded time and memory); boxes map back, the blur is full-resolution",
}


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _tuple_of(item):
    return lambda s: tuple(item(x.strip()) for x in s.split(",") if x.strip())


def _field_argument(parser, f: dataclasses.Field) -> None:
    if f.name == "model_specs":  # files on the command line; their checked contents in Settings
        parser.add_argument("--model_spec", action="append", default=None, metavar="FILE",
                            help=SETTINGS_HELP[f.name])
        return
    default = f.default
    kw = {"default": None,
          "help": f"{SETTINGS_HELP[f.name]} (balanced: {_show(default) or 'none'})"}
    if isinstance(default, bool):
        kw.update(type=parse_bool, nargs="?", const=True, metavar="BOOL")
    elif isinstance(default, tuple):
        item = float if "float" in str(f.type) else int if "int" in str(f.type) else str
        kw.update(type=_tuple_of(item), metavar="A,B")
    elif "None" in str(f.type):
        kw.update(type=lambda s: s.strip() if s.strip().lower() not in ("", "none") else "none")
    else:
        kw["type"] = type(default)
    if f.name == "blur_mode":
        kw["choices"] = BLUR_MODES
    if f.name == "jpeg_mode":
        kw["choices"] = JPEG_MODES
    parser.add_argument(f"--{f.name}", **kw)


def add_settings_arguments(parser) -> None:
    """``--preset`` and one option per Settings field (default unset: the preset's value)."""
    parser.add_argument("--preset", default="balanced", choices=list(PRESETS),
                        help="named settings that the options below override; measured on "
                             "the devsets (docs/accuracy.md, docs/performance.md): "
                             + "; ".join(f"{n}: {preset_summary(n)}" for n in PRESETS)
                             + " (default: %(default)s)")
    for f in dataclasses.fields(Settings):
        _field_argument(parser, f)


def _with_specs(changes: dict, spec_files, preset_name: str) -> None:
    """Read and check the ``--model_spec`` files (``beam_anon.models.user_models``) into
    ``changes["model_specs"]``; a spec's ``threshold`` becomes its model's entry in
    ``model_thresholds`` (and ``stage1_threshold`` for the stage-1 model) unless given there."""
    import json

    from beam_anon.models.user_models import read_spec

    specs = tuple(read_spec(path) for path in spec_files)
    changes["model_specs"] = tuple(changes.get("model_specs", ())) + specs
    for entry in map(json.loads, specs):
        name, threshold = entry["name"], entry["threshold"]
        thresholds = changes.get("model_thresholds", PRESETS[preset_name].get(
            "model_thresholds", Settings.model_thresholds))
        if threshold is None or any(t.partition("=")[0].strip() == name for t in thresholds):
            continue
        changes["model_thresholds"] = tuple(thresholds) + (f"{name}={threshold}",)
        if changes.get("stage1_model") == name and "stage1_threshold" not in changes:
            changes["stage1_threshold"] = threshold


def settings_from(values: dict) -> Settings:
    """The Settings of ``values["preset"]`` with every field given in ``values`` (not None)
    applied on top. Tuple fields accept a comma string or a sequence; ``none`` for no model
    (stage 1, plate check).
    ``values["model_spec"]``: spec files (``--model_spec``), read and checked here."""
    changes = {}
    for f in dataclasses.fields(Settings):
        value = values.get(f.name)
        if value is None:
            continue
        if f.name == "model_specs":
            value = tuple(value)
        elif isinstance(f.default, tuple):
            item = float if "float" in str(f.type) else int if "int" in str(f.type) else str
            if isinstance(value, str):
                value = value.split(",")
            value = tuple(item(str(x).strip()) for x in value if str(x).strip())
        elif "None" in str(f.type) and str(value).lower() == "none":
            value = None
        changes[f.name] = value
    if values.get("model_spec"):
        _with_specs(changes, values["model_spec"], values.get("preset") or "balanced")
    return preset(values.get("preset") or "balanced", **changes)
