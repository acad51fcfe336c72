"""YuNet (libfacedetection) through the ``yuface`` CPython 3.11 x86_64 extension.

The extension and its libraries are loaded from the models dir (``<dir>/yuface/*.so``, RPATH
``$ORIGIN:$ORIGIN/../yuface.libs``), never pip-installed. The network runs on the image as given
(no resizing): ``detect`` returns int16 rows ``[score 0-100, x, y, w, h, 10 landmark coords, _]``
in pixels of the input, so images must be under 32768 px per side. The library keeps only
scores above its own built-in floor (about 0.2).
"""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np

from beam_anon.boxes import Detections
from beam_anon.detectors.base import Detector
from beam_anon.detectors.runtime import threads


class YuNet(Detector):
    def __init__(self, spec: dict, model_dir: str, variant: str, device: str):
        ext = [rel for rel in spec["files"] if ".cpython-" in rel]
        if len(ext) != 1:
            raise ValueError(f"{spec['name']}: expected one CPython extension in the registry")
        if sys.version_info[:2] != (3, 11) or sys.platform != "linux":
            raise RuntimeError(f"{spec['name']}: the yuface extension needs CPython 3.11 on "
                               f"Linux x86_64, this is {sys.version.split()[0]} on {sys.platform}")
        path = os.path.join(model_dir, ext[0])
        # the init function is PyInit_yuface, so the module's last name component is "yuface"
        mod_spec = importlib.util.spec_from_file_location("beam_anon_vendor.yuface", path)
        # its bundled OpenMP reads OMP_NUM_THREADS once, when loaded (module_from_spec);
        # busy-waiting OpenMP threads slow it several times over on a shared or oversubscribed machine
        saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
        if saved["OMP_NUM_THREADS"] is None and threads() > 0:
            os.environ["OMP_NUM_THREADS"] = str(threads())
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self._detect = module.detect

    def detect(self, image: np.ndarray, min_score: float) -> Detections:
        h, w = image.shape[:2]
        if max(h, w) >= 32768:
            raise ValueError(f"yunet: image {w}x{h} too large (int16 coordinates)")
        rows = np.asarray(self._detect(np.ascontiguousarray(image, dtype=np.uint8)))
        if not rows.size:
            return Detections.empty()
        rows = rows.reshape(len(rows), -1).astype(np.float32)
        scores = rows[:, 0] / 100.0
        x, y, bw, bh = rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4]
        xyxy = np.stack([x, y, x + bw, y + bh], axis=1)
        xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, w)
        xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, h)
        dets = Detections.from_boxes(xyxy, scores, "face")
        return dets[(scores >= min_score) & (dets.wh > 0).all(axis=1)]
