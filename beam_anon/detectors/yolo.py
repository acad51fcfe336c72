"""YOLOv8 family (Ultralytics ONNX export, no NMS in the graph): ``yolov8`` and ``yolov8seg``.

Two graph forms, one contract (boxes in pixels of the array given):

* **as exported** (``original``): a static 640x640 input, letterboxed (aspect kept, centred,
  pad 114); output0 ``[1, 4 + nc (+ nm), 8400]`` = ``cx, cy, w, h`` in letterbox pixels and
  ``nc`` class scores (mask coefficients ignored).
* **raw head** (``fixed``/``int8`` variants made at fetch, ``beam_anon.models.graphs.cut_at``): the graph
  cut before its box decoding, input dims dynamic. Outputs per stride (8, 16, 32) a box tensor
  ``[1, 64, h, w]`` (4 sides x 16 distance bins) and a class tensor ``[1, nc, h, w]`` (logits);
  decoded here in float: distance = softmax-weighted bin index, box = anchor centre minus/plus
  the distances, times the stride, as Ultralytics' DFL does. The image is not resized unless
  its long side exceeds :data:`INPUT_SIZE`; it is padded bottom/right to multiples of 32, so a
  1280x720 frame shrunk to 640x360 costs 640x384 instead of 640x640.

Callers (``beam_anon.detection.plan``) resize crops to at most :data:`INPUT_SIZE` themselves. Decode keeps
the best class per anchor and runs per-class NMS. Labels: ``spec["classes"]``.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from beam_anon.detectors import runtime
from beam_anon.boxes import Detections
from beam_anon.detectors.base import Detector

#: anchors kept (best scores first) before NMS, to bound the cost at very low thresholds
MAX_CANDIDATES = 3000
INPUT_SIZE = 640        # long side the models were trained at
STRIDES = (8, 16, 32)
BINS = 16               # DFL distance bins per box side


class YoloV8(Detector):
    input_size = INPUT_SIZE

    def __init__(self, spec: dict, model_dir: str, variant: str, device: str):
        self.session = runtime.session(runtime.model_file(spec, model_dir, variant), device)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.raw_head = len(self.output_names) == 2 * len(STRIDES)
        self.dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        h, w = inp.shape[2:]
        self.input_hw = (int(h), int(w)) if isinstance(h, int) and isinstance(w, int) else None
        self.dynamic_batch = not isinstance(inp.shape[0], int)
        self.canvas = (INPUT_SIZE, INPUT_SIZE)   # crops are packed into canvases this large
        self.trim = 32 if self.input_hw is None else 0  # a dynamic graph gets trimmed canvases
        self.classes = np.asarray(spec["classes"], dtype=object)
        self.nms_iou = float(spec.get("nms_iou", 0.45))

    def letterbox(self, image: np.ndarray) -> tuple[np.ndarray, float, tuple[float, float]]:
        """``(blob (3, H, W) model dtype, scale r (model px per image px), (pad_x, pad_y))``."""
        h, w = image.shape[:2]
        if self.input_hw is None:   # dynamic: shrink only to fit, pad right/bottom to /32
            r = min(1.0, INPUT_SIZE / max(h, w))
            nw, nh = max(1, int(round(w * r))), max(1, int(round(h * r)))
            th, tw = -(-nh // 32) * 32, -(-nw // 32) * 32
            top = left = 0
        else:                       # static: fill the fixed input, centred
            th, tw = self.input_hw
            r = min(th / h, tw / w)
            nw, nh = max(1, int(round(w * r))), max(1, int(round(h * r)))
            top, left = int(round((th - nh) / 2 - 0.1)), int(round((tw - nw) / 2 - 0.1))
        resized = image if (nw, nh) == (w, h) else cv2.resize(image, (nw, nh),
                                                               interpolation=cv2.INTER_LINEAR)
        canvas = np.full((th, tw, 3), 114, np.uint8)
        canvas[top:top + nh, left:left + nw] = resized
        blob = cv2.dnn.blobFromImage(canvas, scalefactor=1 / 255.0, swapRB=True)[0]
        return blob.astype(self.dtype, copy=False), r, (left, top)

    def _candidates(self, outs: list[np.ndarray], min_score: float):
        """``(cx, cy, w, h) (N, 4), class scores (nc, N)`` in model pixels, either form."""
        if not self.raw_head:
            out = outs[0].astype(np.float32, copy=False)
            return out[:4].T, out[4:4 + len(self.classes)]
        boxes, scores = [], []
        for stride, box, logits in zip(STRIDES, outs[0::2], outs[1::2]):
            box, logits = box.astype(np.float32), logits.astype(np.float32)
            _, h, w = logits.shape
            floor = np.log(min_score / (1 - min_score)) if 0 < min_score < 1 else -np.inf
            keep = np.flatnonzero(logits.reshape(len(logits), -1).max(axis=0) >= floor)
            if not len(keep):
                continue
            bins = box.reshape(4, BINS, h * w)[:, :, keep]
            bins = np.exp(bins - bins.max(axis=1, keepdims=True))
            dist = (bins * np.arange(BINS, dtype=np.float32)[None, :, None]).sum(1) / bins.sum(1)
            ax, ay = keep % w + 0.5, keep // w + 0.5
            x0, y0, x1, y1 = ax - dist[0], ay - dist[1], ax + dist[2], ay + dist[3]
            boxes.append(np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], 1) * stride)
            scores.append(1 / (1 + np.exp(-logits.reshape(len(logits), -1)[:, keep])))
        if not boxes:
            return np.zeros((0, 4), np.float32), np.zeros((len(self.classes), 0), np.float32)
        return np.concatenate(boxes), np.concatenate(scores, axis=1)

    def decode(self, outs: list[np.ndarray], r: float, pad: tuple[float, float], width: int,
               height: int, min_score: float) -> Detections:
        """One image's model outputs (batch dim removed) -> Detections in image pixels."""
        cxcywh, cls_scores = self._candidates(outs, min_score)
        if not cls_scores.shape[1]:
            return Detections.empty()
        cls = cls_scores.argmax(axis=0)
        scores = cls_scores[cls, np.arange(cls_scores.shape[1])]
        idx = np.flatnonzero(scores >= min_score)
        if len(idx) > MAX_CANDIDATES:
            idx = idx[np.argsort(-scores[idx], kind="stable")[:MAX_CANDIDATES]]
        if not len(idx):
            return Detections.empty()
        cx, cy, bw, bh = cxcywh[idx].T
        xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        xyxy = (xyxy - np.array([pad[0], pad[1], pad[0], pad[1]], np.float32)) / r
        xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, height)
        scores, cls = scores[idx], cls[idx]
        keep = cv2.dnn.NMSBoxesBatched(
            np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1).tolist(),
            scores.tolist(), cls.tolist(), float(min_score), self.nms_iou)
        keep = np.sort(np.asarray(keep, dtype=int).reshape(-1))
        dets = Detections(xyxy[keep], scores[keep], self.classes[cls[keep]])
        return dets[(dets.wh > 0).all(axis=1)] if len(dets) else dets

    def calibration_feeds(self, image: np.ndarray) -> list[dict]:
        return [{self.input_name: self.letterbox(image)[0][None]}]

    def input_pixels(self, image: np.ndarray) -> int:
        if self.input_hw is not None:
            return int(np.prod(self.input_hw))
        h, w = image.shape[:2]
        r = min(1.0, INPUT_SIZE / max(h, w))
        return -(-int(round(h * r)) // 32) * 32 * -(-int(round(w * r)) // 32) * 32

    def detect(self, image: np.ndarray, min_score: float) -> Detections:
        blob, r, pad = self.letterbox(image)
        outs = self.session.run(self.output_names, {self.input_name: blob[None]})
        return self.decode([o[0] for o in outs], r, pad, image.shape[1], image.shape[0],
                           min_score)

    def detect_batch(self, images: Sequence[np.ndarray], min_score: float) -> list[Detections]:
        """One batched run when the model has a dynamic batch and a fixed input size, else a
        loop (a dynamic-size graph sees each canvas at its own size)."""
        if not self.dynamic_batch or self.input_hw is None or len(images) < 2:
            return [self.detect(image, min_score) for image in images]
        prepared = [self.letterbox(image) for image in images]
        outs = self.session.run(self.output_names,
                                {self.input_name: np.stack([p[0] for p in prepared])})
        return [self.decode([o[k] for o in outs], r, pad, im.shape[1], im.shape[0], min_score)
                for k, ((_, r, pad), im) in enumerate(zip(prepared, images))]
