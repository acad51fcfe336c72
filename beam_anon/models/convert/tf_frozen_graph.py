"""TensorFlow frozen graph (``GraphDef`` ``.pb``) -> ONNX, with tf2onnx (pinned in
requirements.in), for ``models fetch`` (recipe ``"convert": "tf_frozen_graph"``,
:data:`beam_anon.models.derived.CONVERTERS`).

The one frozen graph in the registry is RetinaFace-MobileNetV2 (``retinaface==1.1.1``'s
``retinaface/src/frozen_graph.pb``, peteryuX's retinaface-tf2 weights). Its graph ends in
prior decoding and a built-in NMS; the conversion cuts it before them, at the three head
tensors :data:`OUTPUTS`, so the boxes are decoded in NumPy (``beam_anon.detectors.retina``)
with our own thresholds and NMS. The result, renamed to plain names:

* input ``x`` [1, H, W, 3] float32 RGB 0-255 (the graph normalises inside), H and W multiples
  of 32;
* ``deltas`` [1, N, 4] (SSD offsets), ``landmarks`` [1, N, 10], ``scores`` [1, N, 2] (softmax,
  column 1 = face), N the priors of strides 8/16/32 with two sizes each.

TensorFlow and tf2onnx are imported only when a conversion runs (slow to import). Opset
:data:`OPSET`; the conversion is deterministic for one library build (its sha256 is pinned in the
registry like any derived file): :func:`beam_anon.models.convert.canonical.canonical` removes what
varies between tf2onnx runs.
"""
from __future__ import annotations

from typing import Mapping

from beam_anon.models.convert.canonical import canonical
from beam_anon.models.derived import DerivedError

#: RetinaFace-MobileNetV2 head tensors (before prior decoding and NMS) -> ONNX output names
OUTPUTS: Mapping[str, str] = {
    "RetinaFaceModel/tf_op_layer_concat/concat:0": "deltas",
    "RetinaFaceModel/tf_op_layer_concat_1/concat_1:0": "landmarks",
    "RetinaFaceModel/softmax/Softmax:0": "scores",
}
INPUTS: Mapping[str, str] = {"x:0": "x"}
OPSET = 17


class ConvertError(DerivedError):
    """The frozen graph could not be converted (tf2onnx missing, or the graph lacks a tensor)."""


def _nearest_asymmetric(model) -> None:
    """Nearest-neighbour Resize nodes that tf2onnx gives the deprecated
    ``tf_half_pixel_for_nn`` mode (onnxruntime warns at every session start) get
    ``asymmetric``: with ``floor`` rounding both pick source pixel ``x // 2`` at the exact 2x
    upsampling of a feature pyramid whose input is a multiple of 32 (checked against TensorFlow
    by tests/test_retinaface.py)."""
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        for attr in node.attribute:
            if attr.name == "coordinate_transformation_mode" and attr.s == b"tf_half_pixel_for_nn":
                attr.s = b"asymmetric"


def to_onnx(path: str, inputs: Mapping[str, str] = INPUTS,
            outputs: Mapping[str, str] = OUTPUTS):
    """The ONNX model of the frozen graph at ``path`` from the tensors ``inputs`` to
    ``outputs`` (TF tensor name -> ONNX name); the input's shape stays as the graph has it
    (the recipe's ``dynamic_input`` fix names its dims)."""
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as err:
        raise ConvertError(f"converting {path} needs tensorflow and tf2onnx (pinned in "
                           f"requirements.txt; run scripts/setup.sh): {err}") from err
    graph_def = tf.compat.v1.GraphDef()
    with open(path, "rb") as f:
        graph_def.ParseFromString(f.read())
    known = {n.name for n in graph_def.node}
    missing = [t for t in list(inputs) + list(outputs) if t.rsplit(":", 1)[0] not in known]
    if missing:
        raise ConvertError(f"{path}: the graph has no tensor {', '.join(missing)}")
    model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=list(inputs),
                                              output_names=list(outputs), opset=OPSET)
    canonical(model, {**inputs, **outputs})
    _nearest_asymmetric(model)
    model.producer_name, model.producer_version = "beam_anon tf_frozen_graph", tf2onnx.__version__
    return model
