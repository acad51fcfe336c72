"""Detector contract: a loaded model that turns one BGR image into ``Detections``.

Every family module in this package (``yolo``, ``nanodet``, ``centerface``, ``yunet``,
``retina``: plates and RetinaFace; ``crop_check``: crop classifiers that check another
model's boxes; for the user's own detectors of ``--model_spec``: ``ssd``
(ONNX) and ``tf_ssd`` (SavedModel, TFLite)) provides a class with the contract of
:class:`beam_anon.detectors.base.Detector`, built from a registry entry (see
``beam_anon.models``; a spec's, see ``user_spec``) and a local weight path by
:func:`build_detector`.
"""
from __future__ import annotations

from beam_anon.detectors.base import Detector

__all__ = ["Detector", "build_detector"]


def build_detector(spec: dict, model_dir: str, variant: str = "original",
                   device: str = "auto") -> Detector:
    """A loaded detector for a registry entry ``spec`` (see ``beam_anon.models.model_info``)
    whose verified files lie under ``model_dir`` (``<model_dir>/<path in archive>``, derived
    files under ``<model_dir>/derived/``); ``variant`` and ``device`` as in
    :mod:`beam_anon.detectors.runtime`."""
    family = spec["family"]
    if family in ("yolov8", "yolov8seg"):
        from beam_anon.detectors.yolo import YoloV8 as cls
    elif family == "centerface":
        from beam_anon.detectors.centerface import CenterFace as cls
    elif family == "yunet":
        from beam_anon.detectors.yunet import YuNet as cls
    elif family == "nanodet":
        from beam_anon.detectors.nanodet import NanoDet as cls
    elif family == "retinaplate":
        from beam_anon.detectors.retina import RetinaPlate as cls
    elif family == "onnx":
        from beam_anon.detectors.ssd import OnnxSSD as cls
    elif family == "tf_saved_model":
        from beam_anon.detectors.tf_ssd import SavedModelSSD as cls
    elif family == "tflite":
        from beam_anon.detectors.tf_ssd import TFLiteSSD as cls
    elif family == "retinaface":
        from beam_anon.detectors.retina import RetinaFace as cls
    elif family == "crop_check":
        from beam_anon.detectors.crop_check import CropCheck as cls
    else:
        raise ValueError(f"model {spec['name']!r}: unknown family {family!r}")
    det = cls(spec, model_dir, variant, device)
    det.name, det.role, det.variant = spec["name"], spec["role"], variant
    det.sha256 = ((spec.get("sha256") or spec["files"][spec["main_file"]]) if variant == "original"
                  else spec["derived"][variant]["sha256"])
    det.licence = spec.get("licence") or "unknown"
    return det
