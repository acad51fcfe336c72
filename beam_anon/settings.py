"""All tunable settings of an anonymization run, as one frozen dataclass passed down unchanged.

Units: sizes in pixels, ``*_fraction`` relative to the thing named, scores in [0, 1].
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

#: stage-1 COCO classes whose boxes become regions searched by stage 2
DEFAULT_STAGE1_CLASSES = ("person", "bicycle", "car", "motorcycle", "bus", "truck")

#: numeric fields that must be above 0 (scales, sizes of looks, the blur: 0 would not blur)
POSITIVE_FIELDS = ("face_full_frame_scales", "plate_full_frame_scales", "face_rotation_scale",
                   "zoom_scale", "crowd_scale", "crop_max_upscale", "vehicle_crop_sizes",
                   "full_frame_tile", "full_frame_max_side", "blur_strength", "max_pixels",
                   "detect_max_pixels")

#: fields listing the models that make a kind of look (a model the run does not use makes none)
LOOK_FIELDS = ("region_models", "zoom_models", "face_rotation_models")

#: fields of ``"name=value"`` entries, one per model: scores in [0, 1], except ``model_scales``
#: (``name=s1/s2``, scales >= 0)
PER_MODEL_FIELDS = ("model_thresholds", "zoom_thresholds", "agree_thresholds", "model_scales",
                    "verify_thresholds")


@dataclass(frozen=True)
class Settings:
    # models (registry names, see models/registry.json); the defaults are all permissively
    # licensed (beam_anon.models.licences): NanoDet-g (Apache-2.0) finds persons and vehicles
    stage1_model: str | None = "nanodet-g-coco"
    # CenterFace looks; RetinaFace-MobileNetV2 looks at the whole image at half size (large
    # faces) and verifies where CenterFace is unsure (its zooms)
    face_models: tuple[str, ...] = ("centerface", "retinaface-mnv2")
    plate_models: tuple[str, ...] = ("beamplate",)   # the project's own (training/)
    # detectors of the user's own, named like registry models above: each a checked spec as
    # JSON, with its files' sha256 (--model_spec FILE; beam_anon.models.user_models)
    model_specs: tuple[str, ...] = ()
    # licence classes besides permissive the run may use: agpl, unknown (beam_anon.models.licences)
    allow_licences: tuple[str, ...] = ()
    # runtime (beam_anon.detectors.runtime): int8 | float | original model files; auto | cpu | cuda
    precision: str = "int8"
    device: str = "auto"
    # stage 1
    stage1_classes: tuple[str, ...] = DEFAULT_STAGE1_CLASSES
    stage1_threshold: float = 0.25         # NanoDet's (yolov8n-coco was run at 0.15)
    stage1_tile: int = 0                   # stage 1 also sees tiles this large (pixels); 0 off
    merge_iou: float = 0.3                 # stage-1 boxes overlapping more become one crop
    # the detection plan (beam_anon.detection.plan): cheap looks
    full_frame: bool = True
    full_frame_tile: int = 1280            # tile side as fixed-input models (YOLO) see it
    full_frame_max_side: int = 2048        # any-size models see the image whole up to this side
    face_full_frame_scales: tuple[float, ...] = (1.0,)
    plate_full_frame_scales: tuple[float, ...] = (1.0,)
    # per model "name=s1/s2": its full-frame scales instead of its role's ("name=0": none).
    # RetinaFace sees the whole image at half size: CenterFace scores some large faces low at 1x
    # that RetinaFace at 0.5x finds (devset faces 0.964 -> 0.979; docs/accuracy.md)
    model_scales: tuple[str, ...] = ("yunet=1", "retinaface-mnv2=0.5")
    face_rotations: tuple[int, ...] = (180,)  # degrees, multiples of 90 (upside-down faces)
    face_rotation_models: tuple[str, ...] = ("centerface",)
    face_rotation_scale: float = 0.5       # turned looks at this scale (upside-down faces are big)
    overview_size: int = 300               # plates: whole image shrunk to this long side; 0 off
    overview_threshold: float = 0.0        # a plate box only the overview found needs this; 0 off
    close_up_size: int = 160               # plates: ... and to this one, for a plate filling it
    close_up_threshold: float = 0.3        # minimum score there (its false boxes are large)
    region_padding_fraction: float = 0.1   # of a stage-1 box's own size, each side
    vehicle_crop_sizes: tuple[int, ...] = (160, 300)  # vehicle long side as plate models see it
    person_face_size: int = 32             # persons' head areas upscaled to this face size; 0 off
    region_models: tuple[str, ...] = ("centerface", "beamplate")  # look there
    crop_max_upscale: float = 6.0
    # zoom where unsure, and the crowd fallback
    zoom: bool = True
    zoom_models: tuple[str, ...] = ("centerface", "retinaface-mnv2")
    zoom_min_score: float = 0.1            # candidates from here up to the threshold
    zoom_max_size: int = 32                # pixels (long side): larger candidates are not zoomed
    zoom_context: float = 1.0              # neighbourhood: candidate grown by this, per side
    zoom_scale: float = 2.0
    zoom_thresholds: tuple[str, ...] = ("centerface=0.4", "retinaface-mnv2=0.5")  # closer looks
    crowd_min_faces: int = 4               # this many faces under crowd_face_size -> crowd look
    crowd_face_size: int = 16
    crowd_scale: float = 2.0
    # agreement: "name=score": a box from this score up (below the model's threshold) is
    # accepted where another listed model found one at the same place (beam_anon.detection.plan)
    # (RetinaFace from 0.05: devset faces under 16 px 0.922 -> 0.963 against 0.08, for 0.2
    # points of blurred area; docs/accuracy.md)
    agree_thresholds: tuple[str, ...] = ("centerface=0.1", "retinaface-mnv2=0.05")
    # head fallback: blur the head area of a large person with no face found there
    head_fallback: bool = False
    head_fallback_min_face: int = 20       # pixels: expected face size (beam_anon.detection.plan)
    head_fallback_min_score: float = 0.5
    # stage 2 minimum scores: per role, overridden per model by "name=score" entries
    face_threshold: float = 0.5
    plate_threshold: float = 0.15
    # a plate box whose centre is on no stage-1 vehicle (grown by a tenth) needs this score; 0: off
    # (no effect without stage 1). Off by default: at 0.3 (balanced) it blurs 3 points less and
    # keeps every plate, but 4 devset faces were covered only by false plate boxes (accuracy.md)
    plate_off_vehicle_threshold: float = 0.0
    model_thresholds: tuple[str, ...] = ("centerface=0.3", "yunet=0.6", "retinaface-mnv2=0.5")
    nms_iou: float = 0.4
    # plate check: a crop classifier's second opinion (beam_anon.detectors.crop_check) on plate
    # boxes scoring under plate_check_below whose short side is plate_check_min_side pixels or
    # more; a box it scores under plate_check_threshold is not blurred (beam_anon.detection.plan).
    # 0.05: the highest measured that keeps every plate of both dev sets (0.1 lost 2 street plates)
    plate_check_model: str | None = "beamplate-check"
    plate_check_threshold: float = 0.05
    plate_check_below: float = 0.5
    plate_check_min_side: float = 10.0
    # blur
    blur_mode: str = "gaussian"            # gaussian | pixelate | solid
    blur_margin_fraction: float = 0.15     # each box grows by this fraction of its size per side
    plate_margin_fraction: float = 0.3     # the same for plates (detectors box the characters)
    plate_min_height_fraction: float = 0.5  # plates then at least this part of their width tall
    blur_strength: float = 0.25            # gaussian sigma / pixelate cell as a fraction of box size
    # verification pass and review queue (beam_anon.detection.verify)
    verify: bool = True                    # re-detect on the blurred output, blur what survives
    verify_threshold: float = 0.6          # verification hit: score >= max(this, model threshold)
    # ... per model instead: beamplate scores a plain, unblurred plate 0.41-0.57 on the
    # re-check crops (0.6 never), a blurred one up to 0.40 (docs/verification.md)
    verify_thresholds: tuple[str, ...] = ("beamplate=0.45",)
    verify_rounds: int = 2                 # re-blur rounds (strength doubles each) before review
    verify_full_frame: bool = False        # also re-check full-frame tiles, not only blurred boxes
    review_band: float = 0.1               # detections in [threshold - band, threshold): review
    review_just_below: float = 0.005       # ... queued alone when this close (beam_anon.detection.review)
    review_max_fraction: float = 0.0       # fill the queue with lower risks up to this share
    review_plate_check: float = 0.5        # a plate near miss is queued only if the plate check
                                           # scores it this much (0: no check; docs/verification.md)
    # output
    jpeg_mode: str = "lossless"           # lossless | reencode (beam_anon.media.jpeg_output)
    jpeg_quality: int = 95                 # re-encoded JPEGs only
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
    def _entry(entries: tuple[str, ...], model: str) -> str | None:
        """The value text of ``model`` in ``"name=value"`` entries, or None."""
        for entry in entries:
            name, _, value = entry.partition("=")
            if name.strip() == model:
                return value.strip()
        return None

    @staticmethod
    def _per_model(entries: tuple[str, ...], model: str) -> float | None:
        """Value of ``model`` in ``"name=value"`` entries, or None."""
        value = Settings._entry(entries, model)
        return None if value is None else float(value)

    def threshold(self, model: str, role: str) -> float:
        """Minimum score for ``model`` (registry name) in ``role`` (``face`` | ``plate``)."""
        value = self._per_model(self.model_thresholds, model)
        if value is not None:
            return value
        return self.face_threshold if role == "face" else self.plate_threshold

    def zoom_threshold(self, model: str, role: str) -> float:
        """Minimum score of ``model``'s closer looks (zoom, crowd): its ``zoom_thresholds``
        entry, else :meth:`threshold` (a second look at a larger scale may accept lower)."""
        value = self._per_model(self.zoom_thresholds, model)
        return self.threshold(model, role) if value is None else value

    def verify_hit(self, model: str, role: str) -> float:
        """Minimum score of a verification hit of ``model``: its ``verify_thresholds`` entry,
        else ``verify_threshold``; at least :meth:`threshold`."""
        value = self._per_model(self.verify_thresholds, model)
        return max(self.verify_threshold if value is None else value, self.threshold(model, role))

    def full_frame_scales(self, role: str, model: str = "") -> tuple[float, ...]:
        """Scales of the full-frame passes of ``model`` in ``role``: its ``model_scales``
        entry (``name=s1/s2``; 0 or nothing: none), else the role's; empty when off."""
        if not self.full_frame:
            return ()
        own = self._entry(self.model_scales, model)
        if own is not None:
            return tuple(s for s in (float(v) for v in own.split("/") if v.strip()) if s > 0)
        return self.face_full_frame_scales if role == "face" else self.plate_full_frame_scales

    def check_values(self) -> None:
        """Raises ValueError, naming the option, for a value out of its range: scores and
        overlaps (``*_threshold``, ``*_score``, ``*_iou``, ``review_*``, ``plate_check_below``)
        in [0, 1]; :data:`POSITIVE_FIELDS` above 0; every other number >= 0 (a negative
        margin would shrink every blurred box); turns in multiples of 90 degrees; JPEG quality
        1-100."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                     for v in values):
                continue   # names, modes, switches
            name = f.name
            unit = (name.endswith(("_threshold", "_score", "_iou", "_below"))
                    or name.startswith("review_"))
            low, high = (1, 100) if name == "jpeg_quality" else (0, 1 if unit else float("inf"))
            bad = [v for v in values if not low <= v <= high
                   or (name in POSITIVE_FIELDS and v <= 0)
                   or (name == "face_rotations" and v % 90)]
            if not bad:
                continue
            v = bad[0]
            if name in POSITIVE_FIELDS and v <= 0:
                want = "above 0"
            elif not low <= v <= high:
                want = ">= 0" if high == float("inf") else f"from {low} to {high}"
            else:
                want = "multiples of 90 degrees"
            raise ValueError(f"--{name} {v}: expected {want}")

    def per_model_names(self) -> dict[str, str]:
        """``{model name: the first of PER_MODEL_FIELDS naming it}`` over those fields' entries.
        Raises ValueError, naming the option, for an entry that is not ``name=value`` or whose
        value is not a score in [0, 1] (``model_scales``: ``/``-separated scales >= 0)."""
        names: dict[str, str] = {}
        for field_name in PER_MODEL_FIELDS:
            for entry in getattr(self, field_name):
                name, eq, value = (part.strip() for part in entry.partition("="))
                try:
                    numbers = [float(v) for v in value.split("/")] if eq and name else []
                except ValueError:
                    numbers = []
                if field_name == "model_scales":
                    ok = bool(numbers) and all(0 <= v < 100 for v in numbers)
                else:
                    ok = len(numbers) == 1 and 0 <= numbers[0] <= 1
                if not ok:
                    want = ("name=scale or name=s1/s2 (scales >= 0)"
                            if field_name == "model_scales" else "name=score (0-1)")
                    raise ValueError(f"--{field_name} {entry!r}: expected {want}")
                names.setdefault(name, field_name)
        return names

    def model_names(self) -> tuple[str, ...]:
        names = (self.stage1_model,) if self.stage1_model else ()
        check = (self.plate_check_model,) if self.plate_check_model and self.plate_models else ()
        return names + tuple(self.face_models) + tuple(self.plate_models) + check
