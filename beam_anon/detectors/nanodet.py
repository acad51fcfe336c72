"""NanoDet family (``nanodet``): NanoDet-g 416, COCO, converted to ONNX at fetch from TF.js.

Contract (boxes in pixels of the array given): the image is stretched (no letterbox, aspect not
kept) to the model's fixed input (416x416), BGR, normalised ``(x - MEAN) / STD``. Outputs per
stride 8, 16, 32 (cells row-major, ``N = (416 / stride)^2``): ``cls<s>`` ``[1, N, 80]`` class
scores (already sigmoid) and ``box<s>`` ``[1, N, 44]``: for the left, top, right and bottom side
in turn 11 logits over distances 0..10; distance = softmax-weighted bin index times the stride,
measured from the cell centre ``((col + 0.5) * stride, (row + 0.5) * stride)``. Every (cell, class) pair at or above the
minimum score is a candidate (a rider and the motorbike may share a cell); class-aware NMS
(:func:`beam_anon.boxes.nms`) keeps the best of overlapping boxes of one class.

The model takes any image as a whole (no tiling of its own, no canvas packing): the plan gives
stage 1 the whole image, or tiles of it (``Settings.stage1_tile``).
"""
from __future__ import annotations

import cv2
import numpy as np

from beam_anon.detectors import runtime
from beam_anon.boxes import Detections, nms
from beam_anon.detectors.base import Detector

MEAN = np.array([103.53, 116.28, 123.675], np.float32)   # BGR
STD = np.array([57.375, 57.12, 58.395], np.float32)
BLOB_PARAMS = cv2.dnn.Image2BlobParams(scalefactor=tuple(float(1 / s) for s in STD),
                                       mean=tuple(float(m) for m in MEAN), swapRB=False,
                                       ddepth=cv2.CV_32F)
STRIDES = (8, 16, 32)
BINS = 11
#: (cell, class) candidates kept (best scores first) before NMS, to bound the cost at very low
#: thresholds
MAX_CANDIDATES = 3000
NMS_IOU = 0.6   # NanoDet's own test-time NMS


class NanoDet(Detector):
    def __init__(self, spec: dict, model_dir: str, variant: str, device: str):
        self.session = runtime.session(runtime.model_file(spec, model_dir, variant), device)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.size = (int(inp.shape[3]), int(inp.shape[2]))   # (w, h)
        outputs = {o.name for o in self.session.get_outputs()}
        self.output_names = [f"{kind}{s}" for s in STRIDES for kind in ("cls", "box")]
        missing = set(self.output_names) - outputs
        if missing:
            raise ValueError(f"{spec['name']} {variant}: outputs {sorted(missing)} missing")
        self.classes = np.asarray(spec["classes"], dtype=object)
        self.nms_iou = float(spec.get("nms_iou", NMS_IOU))

    def blob(self, image: np.ndarray) -> np.ndarray:
        """(1, 3, H, W) float32 model input of ``image``, stretched to the input size
        bilinearly (as NanoDet's own pre-processing; INTER_AREA costs 5 ms more a frame)."""
        pixels = cv2.resize(image, self.size, interpolation=cv2.INTER_LINEAR)
        return cv2.dnn.blobFromImageWithParams(pixels, BLOB_PARAMS)

    def decode(self, outs: dict[str, np.ndarray], width: int, height: int,
               min_score: float) -> Detections:
        """Model outputs (by name, batch dim removed) -> Detections in pixels of a
        ``width`` x ``height`` image (the stretch undone)."""
        boxes, scores, classes = [], [], []
        for stride in STRIDES:
            cls, box = outs[f"cls{stride}"], outs[f"box{stride}"]
            cells, k = np.nonzero(cls >= min_score)
            if not len(cells):
                continue
            bins = box[cells].reshape(-1, 4, BINS).astype(np.float32)
            bins = np.exp(bins - bins.max(axis=2, keepdims=True))
            dist = (bins * np.arange(BINS, dtype=np.float32)).sum(2) / bins.sum(2) * stride
            cols = self.size[0] // stride
            cx = (cells % cols + 0.5) * stride
            cy = (cells // cols + 0.5) * stride
            boxes.append(np.stack([cx - dist[:, 0], cy - dist[:, 1],
                                   cx + dist[:, 2], cy + dist[:, 3]], axis=1))
            scores.append(cls[cells, k])
            classes.append(k)
        if not boxes:
            return Detections.empty()
        xyxy, score, k = np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes)
        if len(score) > MAX_CANDIDATES:
            top = np.argsort(-score, kind="stable")[:MAX_CANDIDATES]
            xyxy, score, k = xyxy[top], score[top], k[top]
        fx, fy = width / self.size[0], height / self.size[1]
        xyxy = xyxy * np.array([fx, fy, fx, fy], np.float32)
        xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, height)
        dets = Detections(xyxy.astype(np.float32), score.astype(np.float32), self.classes[k])
        dets = dets[(dets.wh > 0).all(axis=1)]
        return nms(dets, self.nms_iou)

    def detect(self, image: np.ndarray, min_score: float) -> Detections:
        h, w = image.shape[:2]
        outs = self.session.run(self.output_names, {self.input_name: self.blob(image)})
        return self.decode({n: o[0] for n, o in zip(self.output_names, outs)}, w, h, min_score)

    def calibration_feeds(self, image: np.ndarray) -> list[dict]:
        return [{self.input_name: self.blob(image)}]

    def input_pixels(self, image: np.ndarray) -> int:
        return self.size[0] * self.size[1]
