"""Tiny detectors with known outputs in the real export layouts, for ``--model_spec`` tests:
a TF Object Detection API style SavedModel, a TF2-style .tflite (outputs
StatefulPartitionedCall:0..3 = count, scores, classes, boxes), an ONNX graph with the OD API
output names. Every model returns fixed detections (normalized ymin, xmin, ymax, xmax) whatever
the image; a variable times the image mean keeps the input (and the TF2 names) alive."""
from __future__ import annotations

import json
import os

import numpy as np

#: (box, score, class as the model outputs it); SavedModel/ONNX classes are 1-based
FACE_SURE = ([0.05, 0.05, 0.35, 0.25], 0.9, 1)
FACE_LOW = ([0.55, 0.55, 0.85, 0.75], 0.3, 1)
OTHER_CLASS = ([0.05, 0.55, 0.35, 0.75], 0.95, 2)
PAST_COUNT = ([0.55, 0.05, 0.85, 0.25], 0.99, 1)   # after num_detections: not a detection
FACE_ROWS = [FACE_SURE, FACE_LOW, OTHER_CLASS, PAST_COUNT]
FACE_COUNT = 3
#: TFLite classes are 0-based (0 = label-map id 1)
PLATE_SURE = ([0.40, 0.30, 0.50, 0.50], 0.8, 0)
PLATE_LOW = ([0.40, 0.80, 0.50, 0.95], 0.1, 0)
PLATE_ROWS = [PLATE_SURE, PLATE_LOW]


def _arrays(rows, count):
    boxes = np.array([[r[0] for r in rows]], np.float32)
    scores = np.array([[r[1] for r in rows]], np.float32)
    classes = np.array([[r[2] for r in rows]], np.float32)
    return boxes, scores, classes, np.array([count], np.float32)


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    return tf


def saved_model(path: str, outputs=None, fail: bool = False, dtype: str = "uint8") -> str:
    """An OD API style SavedModel: serving_default(input_tensor [1, H, W, 3]) -> the four
    outputs (``outputs``: other names for them; ``fail``: raises on every image)."""
    tf = _tf()
    boxes, scores, classes, count = _arrays(FACE_ROWS, FACE_COUNT)
    names = outputs or ["detection_boxes", "detection_scores", "detection_classes",
                        "num_detections"]

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.zero = tf.Variable(0.0)

        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], getattr(tf, dtype),
                                                    name="input_tensor")])
        def serve(self, input_tensor):
            if fail:
                tf.debugging.assert_less(tf.shape(input_tensor)[1], 0, "probe must fail")
            s = tf.reduce_mean(tf.cast(input_tensor, tf.float32)) * self.zero
            return dict(zip(names, [tf.constant(a) + s for a in (boxes, scores, classes,
                                                                 count)]))

    model = Model()
    tf.saved_model.save(model, path, signatures={"serving_default": model.serve})
    return path


def tflite(path: str) -> str:
    """A .tflite whose outputs are named as TF2 exports name them: StatefulPartitionedCall:0..3
    = count, scores, classes, boxes (signature keys sort in that order); float input
    [1, 96, 96, 3]."""
    tf = _tf()
    boxes, scores, classes, count = _arrays(PLATE_ROWS, len(PLATE_ROWS))

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.zero = tf.Variable(0.0)

        @tf.function(input_signature=[tf.TensorSpec([1, 96, 96, 3], tf.float32)])
        def serve(self, x):
            s = tf.reduce_mean(x) * self.zero
            return {"a_count": tf.constant(count) + s, "b_scores": tf.constant(scores) + s,
                    "c_classes": tf.constant(classes) + s, "d_boxes": tf.constant(boxes) + s}

    model = Model()
    saved = path + ".savedmodel"
    tf.saved_model.save(model, saved, signatures={"serving_default": model.serve})
    with open(path, "wb") as f:
        f.write(tf.lite.TFLiteConverter.from_saved_model(saved).convert())
    return path


def onnx_model(path: str, rows=FACE_ROWS, count=FACE_COUNT) -> str:
    """An ONNX graph: input_tensor uint8 [1, H, W, 3] -> the OD API's four outputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    arrays = dict(zip(["detection_boxes", "detection_scores", "detection_classes",
                       "num_detections"], _arrays(rows, count)))
    nodes = [helper.make_node("Shape", ["input_tensor"], ["shape"])]
    nodes += [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(a, name))
              for name, a in arrays.items()]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape))
               for n, a in arrays.items()]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(
        "input_tensor", TensorProto.UINT8, [1, "h", "w", 3])], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def write_spec(spec_file: str, **fields) -> str:
    with open(spec_file, "w") as f:
        json.dump(fields, f)
    return spec_file
