"""GPU throughput of beam_anon's ONNX detectors, executed through PyTorch (onnx2torch).

For a machine with CUDA PyTorch but no onnxruntime-gpu (the lent device here). Two parts:

1. raw model throughput per batch size: yolov8n-coco and platedet-yolov8s at 640x640 (platedet in
   its own fp16), CenterFace on 1280x736 frames; images/s = batch / median time of a batch.
2. the detector set end to end on real images: ``beam_anon.detection.anonymize.Anonymizer`` (real crop
   plan, decode and NMS) with stage 1 = yolov8n-coco, faces = centerface, plates =
   platedet-yolov8s; YOLO crops go in one batch per image. YuNet is left out: it is a CPython
   3.11 extension with no GPU code. The same set on CPU onnxruntime (when installed) runs on the
   same images for the ratio.

    python scripts/gpu_bench.py --images DIR --models DIR [--device cuda] [--batches 1,8,32]

``--models DIR`` holds ``yolov8n.onnx``, ``platedet.onnx`` and ``centerface.onnx`` (copies of
the registry's files). Needs torch, onnx, onnx2torch, numpy, opencv; run from the repo root.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time

import cv2
import numpy as np
import onnx
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # beam_anon
from beam_anon.detection.anonymize import Anonymizer  # noqa: E402
from beam_anon.detectors.centerface import INPUT as CF_INPUT, OUTPUTS as CF_OUTPUTS  # noqa: E402
from beam_anon.detectors.centerface import CenterFace, _dynamic_model  # noqa: E402
from beam_anon.detectors.yolo import YoloV8, _first_output_only  # noqa: E402
from beam_anon.settings import Settings  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "models", "registry.json")) as _f:
    COCO = next(m["classes"] for m in json.load(_f)["models"] if m["name"] == "yolov8n-coco")


def batchable(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reshape targets with a fixed leading 1 -> 0 (copy the batch dim), input batch dynamic."""
    from onnx import numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]]).copy()
            if shape.size and shape[0] == 1:
                shape[0] = 0
                inits[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
    for v in list(model.graph.input) + list(model.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "B"
    del model.graph.value_info[:]
    return model


def _alias_newer_opsets() -> None:
    """onnx2torch 1.5.15 knows ops up to about opset 18; yolov8n-coco is opset 22, whose newer
    op versions (Conv-22, Reshape-21...) only widen the accepted types: map each to the newest
    version onnx2torch registered."""
    from onnx import defs
    from onnx2torch.node_converters import registry as reg
    newest: dict = {}
    for desc in list(reg._CONVERTER_REGISTRY):
        key = (desc.domain, desc.operation_type)
        if desc.version > newest.get(key, (0, None))[0]:
            newest[key] = (desc.version, reg._CONVERTER_REGISTRY[desc])
    for (domain, op), (version, converter) in newest.items():
        for v in range(version + 1, 23):
            try:
                since = defs.get_schema(op, max_inclusive_version=v, domain=domain).since_version
            except Exception:
                continue
            desc = reg.OperationDescription(domain, op, since)
            reg._CONVERTER_REGISTRY.setdefault(desc, converter)


def to_torch(model: onnx.ModelProto, device: str, half: bool):
    from onnx2torch import convert
    _alias_newer_opsets()
    module = convert(model).eval().to(device)
    return module.half() if half else module.float()


class TorchSession:
    """The slice of onnxruntime.InferenceSession the detectors use, backed by a torch module."""

    class _Arg:
        def __init__(self, name, type_, shape):
            self.name, self.type, self.shape = name, type_, shape

    def __init__(self, model: onnx.ModelProto, device: str, half: bool, input_type: str):
        self.device, self.half = device, half
        self.module = to_torch(model, device, half)
        inp = model.graph.input[0]
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        self.inputs = [self._Arg(inp.name, input_type, dims)]
        self.outputs = [self._Arg(o.name, "tensor(float)", []) for o in model.graph.output]

    def get_inputs(self):
        return self.inputs

    def get_outputs(self):
        return self.outputs

    @torch.inference_mode()
    def run(self, names, feeds):
        x = torch.from_numpy(np.ascontiguousarray(feeds[self.inputs[0].name])).to(self.device)
        x = x.half() if self.half else x.float()
        out = self.module(x)
        out = out if isinstance(out, (list, tuple)) else [out]
        order = [o.name for o in self.outputs]
        return [out[order.index(n)].float().cpu().numpy() for n in names]


class TorchYolo(YoloV8):
    def __init__(self, path: str, classes, device: str, half: bool, nms_iou: float = 0.45):
        model = batchable(onnx.load_from_string(_first_output_only_bytes(path)))
        self.session = TorchSession(model, device, half,
                                    "tensor(float16)" if half else "tensor(float)")
        self.input_name, self.output_name = self.session.inputs[0].name, "output0"
        self.dtype = np.float16 if half else np.float32
        self.input_hw, self.dynamic_batch = (640, 640), True
        self.classes = np.asarray(classes, dtype=object)
        self.nms_iou = nms_iou


class TorchCenterFace(CenterFace):
    def __init__(self, path: str, device: str):
        model = onnx.load_from_string(_dynamic_model(path, CF_INPUT))
        self.session = TorchSession(model, device, False, "tensor(float)")


def _first_output_only_bytes(path: str) -> bytes:
    out = _first_output_only(path)
    if isinstance(out, str):
        with open(out, "rb") as f:
            return f.read()
    return out


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_it(fn, device, repeat: int) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def raw(models_dir: str, device: str, batches: list[int], repeat: int) -> None:
    specs = [("yolov8n-coco", "yolov8n.onnx", (3, 640, 640), False, True),
             ("platedet-yolov8s", "platedet.onnx", (3, 640, 640), device != "cpu", True),
             ("centerface", "centerface.onnx", (3, 736, 1280), False, False)]
    print(f"raw model throughput on {device} (images/s; batch: value)")
    for name, file, shape, half, yolo in specs:
        path = os.path.join(models_dir, file)
        model = (batchable(onnx.load_from_string(_first_output_only_bytes(path))) if yolo
                 else onnx.load_from_string(_dynamic_model(path, CF_INPUT)))
        module = to_torch(model, device, half)
        cells = []
        for b in batches:
            x = torch.rand((b, *shape), device=device)
            x = x.half() if half else x
            with torch.inference_mode():
                dt = time_it(lambda: module(x), device, repeat)
            cells.append(f"{b}: {b / dt:8.1f}")
        print(f"  {name:18} {'fp16' if half else 'fp32'}  " + "   ".join(cells), flush=True)


def end_to_end(images: list[np.ndarray], detectors: dict, repeat: int) -> tuple[float, int]:
    settings = Settings().replace(face_models=("centerface",), plate_models=("platedet-yolov8s",))
    anonymizer = Anonymizer(settings, detectors)
    boxes = sum(len(anonymizer.run(im).boxes) for im in images)  # warm-up, and a box count
    walls = []
    for _ in range(repeat):
        t = time.perf_counter()
        for im in images:
            anonymizer.run(im)
        walls.append(time.perf_counter() - t)
    return len(images) / statistics.median(walls), boxes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True)
    parser.add_argument("--models", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images")
    parser.add_argument("--cpu-ort", action="store_true",
                        help="also run the detector set on CPU onnxruntime for the ratio")
    args = parser.parse_args()
    device = args.device
    if device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
        torch.backends.cudnn.benchmark = True
    else:
        print(f"device: cpu ({os.cpu_count()} cores), torch {torch.__version__}")
    raw(args.models, device, [int(b) for b in args.batches.split(",")], args.repeat)
    torch.backends.cudnn.benchmark = False  # crops vary in size: no per-shape tuning
    paths = sorted(glob.glob(os.path.join(args.images, "*")))[:args.limit or None]
    images = [cv2.imread(p) for p in paths]
    px = sum(im.shape[0] * im.shape[1] for im in images) / len(images) / 1e6
    half = device != "cpu"
    torch_dets = {
        "yolov8n-coco": TorchYolo(os.path.join(args.models, "yolov8n.onnx"), COCO, device, False),
        "platedet-yolov8s": TorchYolo(os.path.join(args.models, "platedet.onnx"), ["plate"],
                                      device, half, 0.45),
        "centerface": TorchCenterFace(os.path.join(args.models, "centerface.onnx"), device)}
    for name, det in torch_dets.items():
        det.name, det.sha256 = name, ""
    ips, boxes = end_to_end(images, torch_dets, max(1, args.repeat // 2))
    print(f"detector set (yolov8n + centerface + platedet, real crop plan), {len(images)} images "
          f"of {px:.2f} Mpx on average: {ips:.2f} images/s on {device} (torch), {boxes} boxes")
    if args.cpu_ort:
        import onnxruntime as ort  # noqa: F401  (CPU only there)
        from beam_anon.detectors.centerface import CenterFace as OrtCF
        from beam_anon.detectors.yolo import YoloV8 as OrtYolo
        os.environ.setdefault("BEAM_ANON_THREADS", "0")
        ort_dets = {
            "yolov8n-coco": OrtYolo({"main_file": "yolov8n.onnx", "classes": COCO}, args.models),
            "platedet-yolov8s": OrtYolo({"main_file": "platedet.onnx", "classes": ["plate"]},
                                        args.models),
            "centerface": OrtCF({"main_file": "centerface.onnx"}, args.models)}
        for name, det in ort_dets.items():
            det.name, det.sha256 = name, ""
        cpu_ips, cpu_boxes = end_to_end(images, ort_dets, 1)
        print(f"same set on CPU onnxruntime ({os.cpu_count()} cores, all threads): "
              f"{cpu_ips:.2f} images/s, {cpu_boxes} boxes; GPU/CPU = {ips / cpu_ips:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
