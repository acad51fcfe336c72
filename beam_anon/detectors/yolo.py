"""YOLOv8 family (Ultralytics ONNX export, no NMS in the graph): ``yolov8`` and ``yolov8seg``.

Pre-processing: letterbox to the model's input size (aspect kept, centred, pad 114), RGB / 255,
NCHW, float16 or float32 as the model's input demands. Output0 ``[B, 4 + nc (+ nm), N]``:
``cx, cy, w, h`` in letterbox pixels, then ``nc`` class scores; segmentation mask coefficients
and prototypes are ignored. Decode keeps the best class per anchor, per-class NMS, maps back to
pixels of the input image. Labels are ``spec["classes"]`` (COCO names; ``plate`` for platedet).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from beam_anon import runtime
from beam_anon.boxes import Detections
from beam_anon.detectors import Detector

#: anchors kept (best scores first) before NMS, to bound the cost at very low thresholds
MAX_CANDIDATES = 3000


class YoloV8(Detector):
    def __init__(self, spec: dict, model_dir: str, variant: str, device: str):
        # the fixed variant is cut to output0: a segmentation model's mask-prototype branch is
        # otherwise computed on every run and thrown away
        self.session = runtime.session(runtime.model_file(spec, model_dir, variant), device)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        self.dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        h, w = inp.shape[2:]
        self.input_hw = (int(h), int(w)) if isinstance(h, int) and isinstance(w, int) else (640, 640)
        self.dynamic_batch = not isinstance(inp.shape[0], int)
        self.canvas = self.input_hw[::-1]
        self.classes = np.asarray(spec["classes"], dtype=object)
        self.nms_iou = float(spec.get("nms_iou", 0.45))

    def letterbox(self, image: np.ndarray) -> tuple[np.ndarray, float, tuple[float, float]]:
        """``(blob (3, H, W) model dtype, scale r (letterbox px per image px), (pad_x, pad_y))``."""
        th, tw = self.input_hw
        h, w = image.shape[:2]
        r = min(th / h, tw / w)
        nw, nh = max(1, int(round(w * r))), max(1, int(round(h * r)))
        resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        dw, dh = (tw - nw) / 2, (th - nh) / 2
        top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
        canvas = np.full((th, tw, 3), 114, np.uint8)
        canvas[top:top + nh, left:left + nw] = resized
        blob = cv2.dnn.blobFromImage(canvas, scalefactor=1 / 255.0, swapRB=True)[0]
        return blob.astype(self.dtype, copy=False), r, (left, top)

    def decode(self, out: np.ndarray, r: float, pad: tuple[float, float], width: int,
               height: int, min_score: float) -> Detections:
        """``out`` (4 + nc (+ nm), N) for one image -> Detections in image pixels."""
        nc = len(self.classes)
        out = out.astype(np.float32, copy=False)
        cls_scores = out[4:4 + nc]
        cls = cls_scores.argmax(axis=0)
        scores = cls_scores[cls, np.arange(cls_scores.shape[1])]
        idx = np.flatnonzero(scores >= min_score)
        if len(idx) > MAX_CANDIDATES:
            idx = idx[np.argsort(-scores[idx], kind="stable")[:MAX_CANDIDATES]]
        if not len(idx):
            return Detections.empty()
        cx, cy, bw, bh = out[:4, idx]
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
        return self.input_hw[0] * self.input_hw[1]

    def detect(self, image: np.ndarray, min_score: float) -> Detections:
        blob, r, pad = self.letterbox(image)
        out = self.session.run([self.output_name], {self.input_name: blob[None]})[0]
        return self.decode(out[0], r, pad, image.shape[1], image.shape[0], min_score)

    def detect_batch(self, images: Sequence[np.ndarray], min_score: float) -> list[Detections]:
        """One batched run when the model has a dynamic batch dimension, else a loop."""
        if not self.dynamic_batch or len(images) < 2:
            return [self.detect(image, min_score) for image in images]
        prepared = [self.letterbox(image) for image in images]
        out = self.session.run([self.output_name],
                               {self.input_name: np.stack([p[0] for p in prepared])})[0]
        return [self.decode(o, r, pad, im.shape[1], im.shape[0], min_score)
                for o, (_, r, pad), im in zip(out, prepared, images)]
