"""A detector of the user's own (``--model_spec FILE``): the JSON spec, checked, as a
registry-like entry (``beam_anon.models``) that :func:`beam_anon.detectors.build_detector`
builds (families ``tf_saved_model``, ``tflite``: :mod:`beam_anon.detectors.tf_ssd`; ``onnx``:
:mod:`beam_anon.detectors.ssd`).

Spec (JSON object; unknown keys are errors, so a typo does not silently do nothing)::

    {"name": "nightfaces", "role": "face" | "plate" | "stage1",
     "format": "tf_saved_model" | "tflite" | "onnx",
     "path": "local path or gs://... (a file; a SavedModel's directory)",
     "class_ids": [1],          # label-map ids (1 = first class, as in a label_map.pbtxt)
     "threshold": 0.5,          # optional: the model's blur threshold (default: the role's)
     "input_size": [H, W],      # optional: resize to this (default: the model's fixed input
                                #   shape, else the image as it is)
     "labels": {"1": "person", "3": "car"},  # stage 1 only: id -> COCO-style name
     "licence": "Apache-2.0",   # optional; without it the licence is "unknown"
     "outputs": {"boxes": ..., "classes": ..., "scores": ..., "count": ...},  # optional
     "class_base": 0 | 1,       # optional: first class id the model outputs (tflite 0, else 1)
     "input_range": [lo, hi],   # optional, float inputs: pixel 0..255 -> lo..hi
                                #   (tflite default [-1, 1], others [0, 255])
     "channel_order": "rgb" | "bgr",  # optional, default rgb
     "sha256": "..."}           # optional: the file's (or directory's) digest, checked

Outputs are those of the TF Object Detection API: boxes [1, N, 4] normalized
``ymin, xmin, ymax, xmax``, classes [1, N], scores [1, N], count [1]. ``"outputs"`` names
them: SavedModel and ONNX output names; for TFLite the ``:N`` suffix of the output tensor's
name (an integer) or a whole tensor name.
"""
from __future__ import annotations

import math
import re

ROLES = ("face", "plate", "stage1")
FORMATS = ("tf_saved_model", "tflite", "onnx")
OUTPUTS = ("boxes", "classes", "scores", "count")
#: stage-1 names the plan uses (beam_anon.detection.plan: persons' heads, vehicles' plates)
STAGE1_USED = ("person", "bicycle", "car", "motorcycle", "bus", "truck")
REQUIRED = ("name", "role", "format", "path")
OPTIONAL = ("class_ids", "threshold", "input_size", "labels", "licence", "outputs",
            "class_base", "input_range", "channel_order", "sha256")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: default output names of the TF Object Detection API's SavedModel (and tf2onnx of it)
OD_API_OUTPUTS = {"boxes": "detection_boxes", "classes": "detection_classes",
                  "scores": "detection_scores", "count": "num_detections"}


#: licences a spec may state that count as permissive (the text starts with one); anything
#: else is "agpl" when it says so, else "unknown" (the licence guard's classes)
PERMISSIVE_LICENCES = ("mit", "bsd", "apache", "cc0", "cc-by-4.0", "unlicense", "zlib", "isc")


def licence_class(licence: str) -> str:
    """``permissive``, ``agpl`` or ``unknown`` for a spec's ``"licence"`` text."""
    text = licence.strip().lower()
    if "agpl" in text or "affero" in text:
        return "agpl"
    return "permissive" if text.startswith(PERMISSIVE_LICENCES) else "unknown"


class SpecError(ValueError):
    """A model spec that cannot be used as it is; the message says what to change."""


def _int(value, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or int(value) < low:
        raise SpecError(f"{what}: expected an integer >= {low}, got {value!r}")
    return int(value)


def _class_ids(spec: dict, labels: dict[int, str] | None) -> list[int]:
    ids = spec.get("class_ids")
    if ids is None and labels is not None:
        return sorted(labels)
    if not isinstance(ids, list) or not ids:
        raise SpecError("class_ids: a non-empty list of the label-map ids (1 = first class) "
                        "that are this role's objects, e.g. [1]")
    out = [_int(i, "class_ids", 1) for i in ids]
    if len(set(out)) != len(out):
        raise SpecError(f"class_ids: {ids} repeats an id")
    if labels is not None and set(out) - set(labels):
        raise SpecError(f"class_ids {sorted(set(out) - set(labels))} have no entry in labels")
    return out


def _labels(spec: dict, role: str) -> dict[int, str] | None:
    labels = spec.get("labels")
    if role != "stage1":
        if labels is not None:
            raise SpecError(f"labels: only stage1 models have labels; a {role} model's boxes "
                            f"are all {role}s")
        return None
    if not isinstance(labels, dict) or not labels:
        raise SpecError('labels: a stage1 model needs {"id": "name"} with COCO-style names, '
                        'e.g. {"1": "person", "3": "car"}')
    out = {}
    for key, name in labels.items():
        try:
            ident = _int(int(key), "labels id", 1)
        except ValueError as e:
            raise SpecError(f"labels: key {key!r} is not a class id") from e
        if not isinstance(name, str) or not name.strip():
            raise SpecError(f"labels[{key!r}]: expected a class name, got {name!r}")
        out[ident] = name.strip()
    if not set(out.values()) & set(STAGE1_USED):
        raise SpecError(f"labels: none of {sorted(set(out.values()))} is a class the plan "
                        f"uses ({', '.join(STAGE1_USED)})")
    return out


def _outputs(spec: dict, fmt: str) -> dict:
    given = spec.get("outputs", {})
    if not isinstance(given, dict) or set(given) - set(OUTPUTS):
        raise SpecError(f"outputs: an object with keys among {', '.join(OUTPUTS)}, got "
                        f"{given!r}")
    out = {}
    for key, value in given.items():
        if fmt == "tflite" and not isinstance(value, str):
            out[key] = _int(value, f"outputs.{key} (the :N of the tensor name)")
        elif isinstance(value, str) and value:
            out[key] = value
        else:
            raise SpecError(f"outputs.{key}: expected an output name, got {value!r}")
    if len(set(map(str, out.values()))) != len(out):
        raise SpecError(f"outputs: {given} names one output twice")
    if fmt != "tflite":
        out = {**OD_API_OUTPUTS, **out}
    return out


def _pair(value, what: str, kind) -> tuple:
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise SpecError(f"{what}: expected two numbers, got {value!r}")
    return tuple(kind(v) for v in value)


def parse(spec, taken: tuple[str, ...] = ()) -> dict:
    """The checked entry of a spec (parsed JSON); ``taken``: names already in use (the
    registry's). Raises :class:`SpecError`. The entry holds every field, defaults filled in,
    plus ``family`` (= format) and ``source: "spec"``; files and digests are added by
    :mod:`beam_anon.models.user_models`."""
    if not isinstance(spec, dict):
        raise SpecError("a model spec is a JSON object")
    missing = [k for k in REQUIRED if not spec.get(k)]
    if missing:
        raise SpecError(f"missing {', '.join(missing)} (required: {', '.join(REQUIRED)})")
    unknown = sorted(set(spec) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise SpecError(f"unknown keys {unknown}; known: {', '.join(REQUIRED + OPTIONAL)}")
    name, role, fmt = spec["name"], spec["role"], spec["format"]
    if not isinstance(name, str) or not NAME.match(name):
        raise SpecError(f"name {name!r}: letters, digits, '.', '_', '-' (at most 64)")
    if name in taken:
        raise SpecError(f"name {name!r} is already a model's name; choose another")
    if role not in ROLES:
        raise SpecError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if fmt not in FORMATS:
        raise SpecError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not isinstance(spec["path"], str):
        raise SpecError(f"path: expected a string, got {spec['path']!r}")
    labels = _labels(spec, role)
    threshold = spec.get("threshold")
    if threshold is not None and (isinstance(threshold, bool)
                                  or not isinstance(threshold, (int, float))
                                  or not 0 < threshold <= 1 or math.isnan(threshold)):
        raise SpecError(f"threshold {threshold!r}: expected a score in (0, 1]")
    size = spec.get("input_size")
    if size is not None:
        size = _pair(size, "input_size [H, W]", int)
        if min(size) < 8 or max(size) > 8192 or list(size) != spec["input_size"]:
            raise SpecError(f"input_size {spec['input_size']}: whole pixels, 8 to 8192")
    channels = spec.get("channel_order", "rgb")
    if channels not in ("rgb", "bgr"):
        raise SpecError(f"channel_order {channels!r}: expected rgb or bgr")
    base = spec.get("class_base", 0 if fmt == "tflite" else 1)
    if base not in (0, 1) or isinstance(base, bool):
        raise SpecError(f"class_base {base!r}: the first class id the model outputs, 0 or 1")
    licence = spec.get("licence", "unknown")
    if not isinstance(licence, str) or not licence.strip():
        raise SpecError(f"licence {licence!r}: expected a licence name, e.g. Apache-2.0")
    licence = licence.strip()
    digest = spec.get("sha256")
    if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", str(digest)):
        raise SpecError(f"sha256 {digest!r}: expected 64 lower-case hex digits")
    input_range = spec.get("input_range", [-1.0, 1.0] if fmt == "tflite" else [0.0, 255.0])
    input_range = _pair(input_range, "input_range [lo, hi]", float)
    if input_range[0] == input_range[1]:
        raise SpecError(f"input_range {list(input_range)}: lo and hi must differ")
    return {"name": name, "role": role, "format": fmt, "family": fmt, "source": "spec",
            "path": spec["path"], "class_ids": _class_ids(spec, labels),
            "labels": {str(k): v for k, v in (labels or {}).items()},
            "threshold": None if threshold is None else float(threshold),
            "input_size": list(size) if size else None, "licence": licence,
            "licence_class": licence_class(licence),
            "outputs": _outputs(spec, fmt), "class_base": base,
            "input_range": list(input_range), "channel_order": channels,
            "expected_sha256": digest}
