"""Detector contract: a loaded model that turns one BGR image into ``Detections``.

Every family module in this package (``yolo``, ``centerface``, ``yunet``, ``retina``) provides a class with
this contract, built from a registry entry (see ``beam_anon.models``) and a local weight path.
"""
from __future__ import annotations

import abc
from typing import Sequence

import numpy as np

from beam_anon.boxes import Detections


class Detector(abc.ABC):
    """A loaded detector.

    ``detect(image)`` takes an upright 8-bit BGR array (H, W, 3) and returns ``Detections`` in
    pixels of *that* array, with scores at or above ``min_score`` (the caller may filter further).
    Labels: ``face`` or ``plate`` for stage-2 models; COCO names (``person``, ``car``...) for
    stage 1. Implementations must be thread-compatible (one instance per process is shared).
    """

    #: registry name, role (``stage1`` | ``face`` | ``plate``) and sha256 of the weights
    name: str = ""
    role: str = ""
    sha256: str = ""

    @abc.abstractmethod
    def detect(self, image: np.ndarray, min_score: float) -> Detections:
        ...

    def detect_batch(self, images: Sequence[np.ndarray], min_score: float) -> list[Detections]:
        """Detect on several images; families whose runtime gains from batching override this."""
        return [self.detect(image, min_score) for image in images]


def build_detector(spec: dict, model_dir: str) -> Detector:
    """A loaded detector for a registry entry ``spec`` (see ``beam_anon.models.model_info``)
    whose verified files lie under ``model_dir`` (``<model_dir>/<path in archive>``)."""
    family = spec["family"]
    if family in ("yolov8", "yolov8seg"):
        from beam_anon.detectors.yolo import YoloV8 as cls
    elif family == "centerface":
        from beam_anon.detectors.centerface import CenterFace as cls
    elif family == "yunet":
        from beam_anon.detectors.yunet import YuNet as cls
    elif family == "retinaplate":
        from beam_anon.detectors.retina import RetinaPlate as cls
    else:
        raise ValueError(f"model {spec['name']!r}: unknown family {family!r}")
    det = cls(spec, model_dir)
    det.name, det.role, det.sha256 = spec["name"], spec["role"], spec["files"][spec["main_file"]]
    return det


def threads() -> int:
    """Threads per model from ``$BEAM_ANON_THREADS``: default 1, since Beam scales out with one
    worker process per core (Dataflow, ``--direct_num_workers``) and more threads per process
    then only contend; 0 = the runtime's default (all cores), for one process on a whole machine."""
    import os

    return int(os.environ.get("BEAM_ANON_THREADS") or 1)


def ort_session(model):
    """onnxruntime session for a path or serialized model: CUDA if available, else CPU (never
    Azure); intra-op threads from :func:`threads`, no busy-waiting between operators."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads()
    options.inter_op_num_threads = 1
    # spinning threads burn the cores the other workers need
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(model, sess_options=options, providers=providers)
