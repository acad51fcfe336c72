"""All tunable settings of an anonymization run, as one frozen dataclass passed down unchanged.

Units: sizes in pixels, ``*_fraction`` relative to the thing named, scores in [0, 1].
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

#: stage-1 COCO classes whose boxes become regions searched by stage 2
DEFAULT_STAGE1_CLASSES = ("person", "bicycle", "car", "motorcycle", "bus", "truck")


@dataclass(frozen=True)
class Settings:
    # models (registry names, see models/registry.json)
    stage1_model: str | None = "yolov8n-coco"
    face_models: tuple[str, ...] = ("yunet", "centerface")
    plate_models: tuple[str, ...] = ("platedet-yolov8s", "clpdet")
    # stage 1
    stage1_classes: tuple[str, ...] = DEFAULT_STAGE1_CLASSES
    stage1_threshold: float = 0.25
    # merge (the original system's rule)
    merge_iou: float = 0.3
    merge_small_fraction: float = 0.1
    merge_gap_fraction: float = 0.01
    # crops for stage 2
    region_padding_fraction: float = 0.1   # of the region's own size, each side
    crop_target_size: int = 640            # long side a small region is upscaled to
    crop_max_upscale: float = 4.0
    crop_max_size: int = 1280              # regions larger than this are split into tiles
    # full-frame stage-2 pass so stage-1 misses do not become privacy misses
    full_frame: bool = True
    full_frame_tile: int = 960             # tile side in pixels as stage 2 sees it
    # resize factors of the full-frame passes, per role (2.0 = tiles upscaled 2x: small faces)
    face_full_frame_scales: tuple[float, ...] = (1.0, 2.0)
    plate_full_frame_scales: tuple[float, ...] = (1.0,)
    # stage 2 minimum scores: per role, overridden per model by "name=score" entries
    face_threshold: float = 0.5
    plate_threshold: float = 0.4
    model_thresholds: tuple[str, ...] = ("centerface=0.3", "yunet=0.6")
    # per-model cap on the full-frame scales, "name=scale" (yunet gains little at 2x, costs 4x)
    model_max_scales: tuple[str, ...] = ("yunet=1",)
    # extra full-frame face passes (scale 1) on the image turned by these angles (degrees,
    # multiples of 90): finds upside-down and lying faces; only for the models listed
    face_rotations: tuple[int, ...] = (180,)
    face_rotation_models: tuple[str, ...] = ("centerface",)
    nms_iou: float = 0.4
    # blur
    blur_mode: str = "gaussian"            # gaussian | pixelate | solid
    blur_margin_fraction: float = 0.15     # each box grows by this fraction of its size per side
    blur_strength: float = 0.25            # gaussian sigma / pixelate cell as a fraction of box size
    # verification pass and review queue (beam_anon.verify)
    verify: bool = True                    # re-detect on the blurred output, blur what survives
    verify_threshold: float = 0.6          # verification hit: score >= max(this, model threshold)
    verify_rounds: int = 2                 # re-blur rounds (strength doubles each) before review
    review_band: float = 0.1               # detections in [threshold - band, threshold): review
    # output
    jpeg_quality: int = 95
    keep_metadata: bool = False
    max_pixels: int = 100_000_000          # images above this fail with a clear error
    detect_max_pixels: int = 24_000_000    # larger images are detected on a downscaled copy

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Stable JSON of every setting (for the manifest and skip-existing checks)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @staticmethod
    def _per_model(entries: tuple[str, ...], model: str) -> float | None:
        """Value of ``model`` in ``"name=value"`` entries, or None."""
        for entry in entries:
            name, _, value = entry.partition("=")
            if name.strip() == model:
                return float(value)
        return None

    def threshold(self, model: str, role: str) -> float:
        """Minimum score for ``model`` (registry name) in ``role`` (``face`` | ``plate``)."""
        value = self._per_model(self.model_thresholds, model)
        if value is not None:
            return value
        return self.face_threshold if role == "face" else self.plate_threshold

    def full_frame_scales(self, role: str, model: str = "") -> tuple[float, ...]:
        """Scales of the full-frame passes for ``role`` and ``model``; empty when off."""
        if not self.full_frame:
            return ()
        scales = self.face_full_frame_scales if role == "face" else self.plate_full_frame_scales
        cap = self._per_model(self.model_max_scales, model)
        return tuple(s for s in scales if cap is None or s <= cap)

    def model_names(self) -> tuple[str, ...]:
        names = (self.stage1_model,) if self.stage1_model else ()
        return names + tuple(self.face_models) + tuple(self.plate_models)
