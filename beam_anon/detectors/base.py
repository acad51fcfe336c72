"""The detector contract every family module implements (kept apart from the package's factory,
so families import it without importing the package that imports them)."""
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

    #: registry name, role (``stage1`` | ``face`` | ``plate``), variant (``beam_anon.detectors.runtime``),
    #: sha256 of the weights file that runs (of a SavedModel directory's files) and licence
    name: str = ""
    role: str = ""
    variant: str = "original"
    sha256: str = ""
    licence: str = "unknown"

    @abc.abstractmethod
    def detect(self, image: np.ndarray, min_score: float) -> Detections:
        ...

    def detect_batch(self, images: Sequence[np.ndarray], min_score: float) -> list[Detections]:
        """Detect on several images; families whose runtime gains from batching override this."""
        return [self.detect(image, min_score) for image in images]

    #: (w, h) of a fixed model input that crops are packed into (``beam_anon.detection.looks``); None
    #: for models that take any size
    canvas: tuple[int, int] | None = None
    #: trim shared canvases to multiples of this (models of dynamic input size that pad to it)
    trim: int = 0
    #: long side the model was trained at, for models that want inputs of that size (YOLO);
    #: None for models that take any size as it is
    input_size: int | None = None

    def input_pixels(self, image: np.ndarray) -> int:
        """Pixels the model computes on for ``image`` (after its own resizing or padding)."""
        return int(image.shape[0] * image.shape[1])

    def calibration_feeds(self, image: np.ndarray) -> list[dict]:
        """Model input dicts for ``image`` exactly as :meth:`detect` prepares them (INT8
        calibration, ``beam_anon.models.derived``); empty for models that are not ONNX graphs."""
        return []
