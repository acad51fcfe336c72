"""Detectors of the user's own (``--model_spec``, :mod:`beam_anon.detectors.user_spec`) with
the TF Object Detection API's outputs: boxes [1, N, 4] normalized ``ymin, xmin, ymax, xmax``
of the model's input (the whole image, resized without letterbox), classes [1, N], scores
[1, N], count [1]. :class:`SSDDetector` holds what every format shares (pre-processing,
decoding); this module's :class:`OnnxSSD` and :mod:`beam_anon.detectors.tf_ssd` run the model.
"""
from __future__ import annotations

import abc

import cv2
import numpy as np

from beam_anon.detectors import runtime
from beam_anon.boxes import Detections
from beam_anon.detectors.base import Detector


class SSDDetector(Detector):
    """Subclasses load the model in :meth:`load` (setting ``input_dtype`` and, for a fixed
    input, ``fixed_hw``) and run it in :meth:`infer`."""

    input_dtype: np.dtype = np.dtype(np.uint8)
    fixed_hw: tuple[int, int] | None = None

    def __init__(self, spec: dict, model_dir: str, variant: str, device: str):
        self.spec = spec
        self.load(runtime.model_file(spec, model_dir, "original"), device)
        size = spec.get("input_size")
        self.size = tuple(size) if size else self.fixed_hw
        if self.fixed_hw and self.size != self.fixed_hw:
            raise ValueError(f"model {spec['name']!r}: input_size {list(self.size)} but the "
                             f"model's input is fixed at {list(self.fixed_hw)}")
        if self.size:  # small crops are packed into canvases of the model's own input
            self.canvas, self.trim = (self.size[1], self.size[0]), 0
        self.shift = 1 - spec["class_base"]
        self.class_ids = np.array(spec["class_ids"], np.int64)
        labels = {int(k): v for k, v in spec.get("labels", {}).items()}
        self.label_of = {i: labels.get(i, spec["role"]) for i in spec["class_ids"]}

    @abc.abstractmethod
    def load(self, path: str, device: str) -> None:
        ...

    @abc.abstractmethod
    def infer(self, blob: np.ndarray) -> dict[str, np.ndarray]:
        """``{boxes, classes, scores, count}`` for one (1, H, W, 3) input."""

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """(1, H, W, 3) of ``input_dtype``: resized to the model's input size (if any), channels
        as the spec says, floats mapped to its ``input_range``, int8 centred on 0."""
        if self.size and image.shape[:2] != self.size:
            h, w = self.size
            shrink = h * w < image.shape[0] * image.shape[1]
            image = cv2.resize(image, (w, h),
                               interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if self.spec["channel_order"] == "rgb":
            image = image[:, :, ::-1]
        if self.input_dtype == np.uint8:
            blob = image
        elif self.input_dtype == np.int8:
            blob = (image.astype(np.int16) - 128).astype(np.int8)
        else:
            lo, hi = self.spec["input_range"]
            blob = image.astype(np.float32) * ((hi - lo) / 255.0) + lo
        return np.ascontiguousarray(blob[None], dtype=self.input_dtype)

    def input_pixels(self, image: np.ndarray) -> int:
        return int(self.size[0] * self.size[1]) if self.size else super().input_pixels(image)

    def detect(self, image: np.ndarray, min_score: float) -> Detections:
        height, width = image.shape[:2]
        return self.decode(self.infer(self.preprocess(image)), width, height, min_score)

    def decode(self, out: dict[str, np.ndarray], width: int, height: int,
               min_score: float) -> Detections:
        """The four outputs -> boxes in pixels of an image of ``width`` x ``height``, of this
        spec's classes, scoring at least ``min_score``. Raises on outputs of the wrong shape."""
        boxes = np.asarray(out["boxes"], np.float32)
        if boxes.ndim not in (2, 3) or boxes.shape[-1] != 4:
            raise ValueError(f"model {self.spec['name']!r}: boxes output of shape "
                             f"{list(boxes.shape)}, expected [1, N, 4] (see \"outputs\")")
        boxes = boxes.reshape(-1, 4)
        scores = np.asarray(out["scores"], np.float32).reshape(-1)
        classes = np.asarray(out["classes"], np.float32).reshape(-1)
        count = np.asarray(out["count"]).reshape(-1)
        if len(scores) != len(boxes) or len(classes) != len(boxes) or len(count) != 1:
            raise ValueError(f"model {self.spec['name']!r}: {len(boxes)} boxes, {len(scores)} "
                             f"scores, {len(classes)} classes, count of {len(count)} values "
                             "(are the outputs mapped right? see \"outputs\")")
        n = min(len(boxes), max(0, int(round(float(count[0])))))
        ids = np.round(classes[:n]).astype(np.int64) + self.shift
        keep = np.isin(ids, self.class_ids) & (scores[:n] >= min_score)
        yxyx = boxes[:n][keep]
        xyxy = np.stack([yxyx[:, 1] * width, yxyx[:, 0] * height,
                         yxyx[:, 3] * width, yxyx[:, 2] * height], axis=1)
        labels = np.array([self.label_of[int(i)] for i in ids[keep]], dtype=object)
        dets = Detections(xyxy, scores[:n][keep], labels)
        return dets[(dets.wh > 0).all(axis=1)] if len(dets) else dets


_ONNX_TYPES = {"tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(float)": np.float32}


class OnnxSSD(SSDDetector):
    """An ONNX graph with one image input (NHWC, or NCHW: transposed here; uint8, int8 or
    float) and the four outputs named in the spec (default: the OD API's names)."""

    def load(self, path: str, device: str) -> None:
        self.session = runtime.session(path, device)
        inputs = self.session.get_inputs()
        names = [o.name for o in self.session.get_outputs()]
        missing = [v for v in self.spec["outputs"].values() if v not in names]
        if len(inputs) != 1 or inputs[0].type not in _ONNX_TYPES or len(inputs[0].shape) != 4:
            raise ValueError(f"model {self.spec['name']!r}: expected one image input [1, H, W, "
                             f"3] or [1, 3, H, W] of uint8, int8 or float; got "
                             f"{[(i.name, i.shape, i.type) for i in inputs]}")
        if missing:
            raise ValueError(f"model {self.spec['name']!r}: no output named {missing}; its "
                             f"outputs are {names} (map them with \"outputs\")")
        self.input_name, shape = inputs[0].name, inputs[0].shape
        self.input_dtype = np.dtype(_ONNX_TYPES[inputs[0].type])
        self.nchw = shape[1] == 3 and shape[3] != 3
        hw = shape[2:] if self.nchw else shape[1:3]
        self.fixed_hw = tuple(hw) if all(isinstance(v, int) and v > 0 for v in hw) else None

    def infer(self, blob: np.ndarray) -> dict[str, np.ndarray]:
        if self.nchw:
            blob = np.ascontiguousarray(blob.transpose(0, 3, 1, 2))
        keys = list(self.spec["outputs"])
        values = self.session.run([self.spec["outputs"][k] for k in keys],
                                  {self.input_name: blob})
        return dict(zip(keys, values))
