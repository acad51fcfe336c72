"""Detector contract: a loaded model that turns one BGR image into ``Detections``.

Every family module in this package (``yolo``, ``centerface``, ``yunet``) provides a class with
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
