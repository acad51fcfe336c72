"""TF.js graph model (``model.json`` + its weight shards) -> ONNX, for ``models fetch``.

A TF.js graph model is a TensorFlow GraphDef written as JSON (``modelTopology.node``) whose
constants' values live in binary shards described by ``weightsManifest`` (in manifest order,
each ``float32``/``int32``/... or quantized to ``float16``/``uint8``/``uint16``). This module
rebuilds the GraphDef with every constant filled in (quantized weights restored to float32,
int32-stored constants cast back to the node's dtype), imports it into a ``tf.Graph`` and
converts that with tf2onnx (constant folding, NHWC->NCHW transposes optimised away). The graph
inputs and outputs keep the names of the model's ``signature`` (``Identity_3:0`` ...).

TensorFlow and tf2onnx are imported only when a conversion runs (``tensorflow-cpu`` and
``tf2onnx`` are set-up dependencies; see requirements.in).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Mapping

import numpy as np

#: ONNX opset of converted graphs (onnxruntime 1.2x runs it everywhere)
OPSET = 13

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_, "int64": np.int64}
_QUANTIZED = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}
_TF_DTYPES = {"DT_FLOAT": np.float32, "DT_INT32": np.int32, "DT_INT64": np.int64,
              "DT_BOOL": np.bool_, "DT_HALF": np.float16}


class ConvertError(RuntimeError):
    """The TF.js graph cannot be read or converted."""


def read_weights(model_json: dict, folder: str) -> dict[str, np.ndarray]:
    """``{constant name: array}`` of a TF.js model's weight shards, dequantized."""
    out: dict[str, np.ndarray] = {}
    for group in model_json["weightsManifest"]:
        data = b"".join(_read(os.path.join(folder, p)) for p in group["paths"])
        pos = 0
        for w in group["weights"]:
            shape = [int(d) for d in w["shape"]]
            count = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            dtype = _QUANTIZED[q["dtype"]] if q else _DTYPES[w["dtype"]]
            size = count * np.dtype(dtype).itemsize
            if pos + size > len(data):
                raise ConvertError(f"weights end before {w['name']!r} ({len(data)} bytes)")
            arr = np.frombuffer(data, dtype, count, pos).reshape(shape)
            pos += size
            if q and q["dtype"] == "float16":
                arr = arr.astype(np.float32)
            elif q:  # affine uint8/uint16: value = q * scale + min
                arr = arr.astype(np.float32) * np.float32(q["scale"]) + np.float32(q["min"])
            out[w["name"]] = arr.astype(_DTYPES[w["dtype"]], copy=False)
        if pos != len(data):
            raise ConvertError(f"{group['paths']}: {len(data) - pos} bytes left unread")
    return out


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def graph_def(model_json: dict, weights: Mapping[str, np.ndarray]):
    """The model's ``tf.compat.v1.GraphDef`` with every constant's value filled in."""
    import tensorflow as tf
    from google.protobuf import json_format

    gd = tf.compat.v1.GraphDef()
    for node in model_json["modelTopology"]["node"]:
        nd = json_format.ParseDict(node, tf.compat.v1.NodeDef())
        if nd.op == "Const":
            if node["name"] not in weights:
                raise ConvertError(f"constant {node['name']!r} has no weights")
            dtype = _TF_DTYPES[node["attr"]["dtype"]["type"]]
            value = np.asarray(weights[node["name"]]).astype(dtype)
            nd.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, shape=value.shape))
        gd.node.append(nd)
    return gd


def _source(ref: str) -> tuple[str, int]:
    """``(node name, output index)`` of a node input reference (``name``, ``name:1``)."""
    name, _, index = ref.lstrip("^").partition(":")
    return name, int(index or 0)


def fold_constants(gd):
    """``gd`` with every tensor computed from constants alone (shape arithmetic the TF.js
    exporter left in, e.g. ``SparseToDense`` of constant pads) replaced by a ``Const`` holding
    its value, computed by TensorFlow; the graph's own maths is untouched."""
    import tensorflow as tf

    nodes = {n.name: n for n in gd.node}
    constant = {n.name for n in gd.node if n.op == "Const"}
    changed = True
    while changed:  # the JSON's node order is not topological
        changed = False
        for n in gd.node:
            if (n.name not in constant and n.op not in ("Placeholder",) and n.input
                    and all(_source(i)[0] in constant for i in n.input)):
                constant.add(n.name)
                changed = True
    wanted = sorted({i for n in gd.node if n.name not in constant for i in n.input
                     if _source(i)[0] in constant and nodes[_source(i)[0]].op != "Const"})
    if not wanted:
        return gd
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(gd, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        values = session.run([i if ":" in i else i + ":0" for i in wanted])
    folded = tf.compat.v1.GraphDef()
    names = {}
    for ref, value in zip(wanted, values):
        name, index = _source(ref)
        names[ref] = name if index == 0 else f"{name}__{index}"
        const = folded.node.add(name=names[ref], op="Const")
        const.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
        const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, shape=value.shape))
    for n in gd.node:
        if n.name in constant and (n.op != "Const" or n.name in names.values()):
            continue
        copy = folded.node.add()
        copy.CopyFrom(n)
        copy.input[:] = [names.get(i, i) for i in n.input]
    return folded


def signature(model_json: dict) -> tuple[list[str], list[str]]:
    """``(input tensor names, output tensor names)`` from the model's signature, sorted."""
    sig = model_json.get("signature") or {}
    inputs, outputs = sorted(sig.get("inputs", {})), sorted(sig.get("outputs", {}))
    if not inputs or not outputs:
        raise ConvertError("the TF.js model has no signature naming its inputs and outputs")
    return inputs, outputs


def to_onnx(path: str):
    """The ONNX ``ModelProto`` of the TF.js graph model ``path`` (its ``model.json``; shards
    next to it), checked against TensorFlow's outputs. Inputs and outputs keep the names of the
    model's signature (rename them with the ``rename`` graph fix, ``beam_anon.models.graphs``); every
    other tensor and node is put in canonical form (:func:`beam_anon.models.convert.canonical.canonical`):
    tf2onnx numbers what it makes differently in each process, and the derived file's sha256
    is pinned."""
    try:
        import tensorflow as tf  # noqa: F401
        import tf2onnx
    except ImportError as err:
        raise ConvertError(f"converting {path} needs tensorflow-cpu and tf2onnx "
                           f"(pip install -r requirements.txt): {err}") from err
    from beam_anon.models.convert.canonical import canonical

    with open(path, encoding="utf-8") as f:
        model_json = json.load(f)
    if model_json.get("format") != "graph-model":
        raise ConvertError(f"{path}: format {model_json.get('format')!r}, expected graph-model")
    gd = fold_constants(graph_def(model_json, read_weights(model_json, os.path.dirname(path))))
    inputs, outputs = signature(model_json)
    # tf2onnx's TF-level constant folding fails on numpy 2 (np.cast) and logs that as an
    # error; it is not needed after fold_constants, and the result is checked against
    # TensorFlow below: quiet.
    logger, level = logging.getLogger("tf2onnx"), logging.getLogger("tf2onnx").level
    logger.setLevel(logging.CRITICAL)
    try:
        model, _ = tf2onnx.convert.from_graph_def(gd, input_names=inputs, output_names=outputs,
                                                  opset=OPSET)
    finally:
        logger.setLevel(level)
    check(gd, model, model_json)
    return canonical(model, {name: name for name in inputs + outputs})


def check(gd, model, model_json: dict, tolerance: float = 1e-3) -> None:
    """Raise :class:`ConvertError` unless ``model`` (ONNX) gives TensorFlow's outputs for the
    GraphDef ``gd`` on a fixed pseudo-random input of the signature's shape."""
    import onnxruntime
    import tensorflow as tf

    inputs, outputs = signature(model_json)
    spec = model_json["signature"]["inputs"][inputs[0]]
    shape = [int(d.get("size", 1)) for d in spec["tensorShape"]["dim"]]
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(gd, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        want = session.run(outputs, {inputs[0]: x})
    got = onnxruntime.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"]).run(outputs,
                                                                               {inputs[0]: x})
    for name, w, g in zip(outputs, want, got):
        if w.shape != g.shape or not np.allclose(w, g, atol=tolerance, rtol=tolerance):
            raise ConvertError(f"converted output {name} differs from TensorFlow's "
                               f"(max {np.abs(w - g).max() if w.shape == g.shape else g.shape})")


