"""Derived model files, produced by ``models fetch`` from the verified archive files.

A registry entry's ``derived`` maps a variant (``fixed``, ``int8``; see ``beam_anon.detectors.runtime``) to
its recipe: ``file`` (under the model's folder), ``from`` (``original`` or another variant),
``convert`` (optional: the name of a :data:`CONVERTERS` entry that turns a non-ONNX source, a
TensorFlow frozen graph or a TF.js graph, into ONNX first), ``fixes`` (``beam_anon.models.graphs.apply_fixes`` strings) and, for ``int8``, ``float_from_op`` (the
op type from which the head decodes boxes and stays float), ``float_first_nodes`` (how many
nodes at the input stay float: the first convolutions see the fine detail of small faces) and
``float_output_nodes`` (the nodes producing the graph's outputs stay float). ``sha256`` is the reference digest
of the result, made on the development machine. Every produced file gets a provenance record
``<file>.json``: its source's sha256, the recipe, the calibration images' sha256, the library
versions, its own sha256 and whether it equals the reference. Loading verifies a file against
its provenance record, so a file changed after production is refused.

INT8 calibration uses real images the set-up fetches itself (the registry's sample photos from
PyPI packages), each whole, in quarters and centred, and each of those also resized to a 960-px
long side (the full-frame tile size), fed through the detector's own pre-processing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


class DerivedError(RuntimeError):
    """A derived model file could not be produced or failed its check."""


def sha256_file(path: str) -> str:
    """Hex sha256 of a local file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def provenance_path(root: str, recipe: dict) -> str:
    return os.path.join(root, recipe["file"] + ".json")


def provenance(root: str, recipe: dict) -> dict | None:
    """The provenance record of a produced file, or None when absent or unreadable."""
    try:
        with open(provenance_path(root, recipe), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _source_sha(entry: dict, recipe: dict) -> str:
    source = recipe.get("from", "original")
    return (entry["files"][entry["main_file"]] if source == "original"
            else entry["derived"][source]["sha256"])


def is_current(entry: dict, root: str, variant: str) -> bool:
    """True when ``variant``'s file exists, matches its provenance sha256, and was made from
    the current source by the current recipe."""
    recipe = entry["derived"][variant]
    record = provenance(root, recipe)
    path = os.path.join(root, recipe["file"])
    return (record is not None and os.path.isfile(path)
            and record.get("recipe") == _recipe_key(recipe)
            and record.get("source_sha256") == _source_sha(entry, recipe)
            and sha256_file(path) == record.get("sha256"))


def verified_file(entry: dict, root: str, variant: str) -> str:
    """Path of ``variant``'s produced file after checking it; raises :class:`DerivedError`
    naming the fetch command when it is missing, stale or changed."""
    if not is_current(entry, root, variant):
        raise DerivedError(f"{entry['name']}: derived {variant!r} file under {root} is missing, "
                           "stale or changed: run `python -m beam_anon.models fetch`")
    return os.path.join(root, entry["derived"][variant]["file"])


def _recipe_key(recipe: dict) -> dict:
    return {k: v for k, v in recipe.items() if k != "sha256"}


def calibration_images(paths: Sequence[str]) -> list[np.ndarray]:
    """BGR images for INT8 calibration from real photos (see the module doc), deterministic."""
    import cv2

    out = []
    for path in sorted(paths):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise DerivedError(f"calibration image {path} cannot be read")
        h, w = image.shape[:2]
        crops = [image, image[:h // 2, :w // 2], image[:h // 2, w // 2:], image[h // 2:, :w // 2],
                 image[h // 2:, w // 2:], image[h // 4:3 * h // 4, w // 4:3 * w // 4]]
        for crop in crops:
            out.append(np.ascontiguousarray(crop))
            r = 960 / max(crop.shape[:2])
            if abs(r - 1) > 0.05:
                out.append(cv2.resize(crop, (max(1, round(crop.shape[1] * r)),
                                             max(1, round(crop.shape[0] * r))),
                                      interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR))
    return out


#: converters from other model formats to ONNX, by the name a recipe's ``convert`` gives:
#: ``"module:function"``, the function taking the source file's path and returning an
#: ``onnx.ModelProto`` (imported only when a recipe needs it: TensorFlow is slow to import)
CONVERTERS: dict[str, str] = {
    "tf_frozen_graph": "beam_anon.models.convert.tf_frozen_graph:to_onnx",
    "tfjs_graph": "beam_anon.models.convert.tfjs_graph:to_onnx",
}


def _load_source(path: str, convert: str | None):
    """The ONNX model of a recipe's source: the file itself, or the named converter's result."""
    import importlib

    import onnx

    if not convert:
        return onnx.load(path)
    if convert not in CONVERTERS:
        raise DerivedError(f"unknown converter {convert!r}; known: {', '.join(CONVERTERS)}")
    module, function = CONVERTERS[convert].split(":")
    return getattr(importlib.import_module(module), function)(path)


def produce(entry: dict, root: str, samples: Sequence[str], variant: str) -> dict:
    """Make ``variant`` of ``entry`` under ``root`` (its verified archive files) from its
    recipe, atomically, with its provenance record; returns the record. ``samples``: the
    calibration photos (INT8 only)."""
    import onnx
    import onnxruntime

    from beam_anon.models import graphs, quantize
    from beam_anon.detectors import build_detector

    recipe = entry["derived"][variant]
    source = recipe.get("from", "original")
    src_path = (os.path.join(root, entry["main_file"]) if source == "original"
                else verified_file(entry, root, source))
    model = graphs.apply_fixes(_load_source(src_path, recipe.get("convert")),
                               recipe.get("fixes", []))
    target = os.path.join(root, recipe["file"])
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".part-", suffix=".onnx")
    os.close(fd)
    calibration = None
    try:
        if variant == "int8":
            detector = build_detector(entry, root, source, "cpu")
            feeds = [f for image in calibration_images(samples)
                     for f in detector.calibration_feeds(image)]
            if not feeds:
                raise DerivedError(f"{entry['name']}: no calibration inputs")
            dtypes = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
                      for i in model.graph.input}  # e.g. fp16 detector input, fp32 model
            feeds = [{k: v.astype(dtypes.get(k, v.dtype)) for k, v in f.items()} for f in feeds]
            op = recipe.get("float_from_op")
            float_nodes = list(graphs.downstream_of(model, op) if op else [])
            float_nodes += [n.name for n in model.graph.node[:recipe.get("float_first_nodes", 0)]]
            if recipe.get("float_output_nodes"):  # raw logits and box bins stay exact
                outs = {o.name for o in model.graph.output}
                float_nodes += [n.name for n in model.graph.node if set(n.output) & outs]
            quantize.quantize_int8(model, tmp, feeds, float_nodes)
            calibration = {os.path.basename(p): sha256_file(p) for p in sorted(samples)}
        else:
            onnx.save(model, tmp)
        digest = sha256_file(tmp)
        record = {"model": entry["name"], "variant": variant, "file": recipe["file"],
                  "source": source, "source_sha256": _source_sha(entry, recipe),
                  "recipe": _recipe_key(recipe), "calibration_images": calibration,
                  "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                  "sha256": digest, "reference_sha256": recipe.get("sha256"),
                  "matches_reference": digest == recipe.get("sha256")}
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    with open(provenance_path(root, recipe), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    if not record["matches_reference"]:
        log.warning("%s %s: produced sha256 %s differs from the reference %s (other CPU or "
                    "library build?); it is used, verified against its own provenance record",
                    entry["name"], variant, digest, recipe.get("sha256"))
    return record


def ensure(entry: dict, root: str, samples_fn) -> list[str]:
    """Produce every derived variant of ``entry`` that is missing or stale under ``root``, in
    recipe order; ``samples_fn()`` returns the calibration photos (called only when needed).
    Returns the variants made."""
    made = []
    for variant, recipe in entry.get("derived", {}).items():
        if is_current(entry, root, variant):
            continue
        produce(entry, root, samples_fn() if variant == "int8" else (), variant)
        made.append(variant)
    return made


def describe(entry: dict, root: str, graphs_too: bool = False) -> list[str]:
    """Lines for ``models list``: per derived variant its file, the first 12 hex digits of its
    sha256, what it was made from and whether it equals the reference build; with
    ``graphs_too`` the graph facts of the original and of each variant
    (``beam_anon.models.graphs.describe``)."""
    lines = []
    if graphs_too and entry["main_file"].endswith(".onnx"):
        from beam_anon.models import graphs
        lines.append(f"  {entry['name']} original: "
                     f"{graphs.describe(os.path.join(root, entry['main_file']))}")
    for variant, recipe in entry.get("derived", {}).items():
        record = provenance(root, recipe)
        if record is None or not is_current(entry, root, variant):
            lines.append(f"  {entry['name']} {variant:5} {recipe['file']:18} not made (run fetch)")
            continue
        same = ("= reference" if record["sha256"] == recipe.get("sha256")
                else f"differs from the reference {str(recipe.get('sha256'))[:12]}")
        lines.append(f"  {entry['name']} {variant:5} {recipe['file']:18} {record['sha256'][:12]} "
                     f"from {record['source']} {record['source_sha256'][:12]} "
                     f"fixes {','.join(recipe.get('fixes', [])) or '-'} "
                     f"onnxruntime {record['onnxruntime']} {same}")
        if graphs_too:
            from beam_anon.models import graphs
            lines.append(f"    {graphs.describe(os.path.join(root, recipe['file']))}")
    return lines

