"""Agreement of two face models as a verifier (``plan.agreement``, ``Settings.agree_thresholds``):
a box below its model's threshold is accepted only where another listed model saw it too."""
from __future__ import annotations

import numpy as np

from beam_anon.detection.anonymize import Anonymizer
from beam_anon.boxes import Detections
from beam_anon.detectors.base import Detector
from beam_anon.detection.plan import agreement
from beam_anon.settings import Settings

AGREE = ("a=0.2", "b=0.1")


def _dets(boxes, scores, model):
    d = Detections.from_boxes(np.array(boxes, np.float32), scores, "face")
    return d.found_by(f"{model}:full_frame")


def test_agreement_needs_another_listed_model_at_the_same_place():
    s = Settings(agree_thresholds=AGREE)
    unsure = Detections.concat([
        _dets([[10, 10, 30, 30], [100, 100, 120, 120], [200, 200, 220, 220]], [0.3, 0.3, 0.15],
              "a"),
        _dets([[50, 50, 70, 70]], [0.5], "c")])             # c is not listed: never agrees
    pool = Detections.concat([
        unsure,
        _dets([[12, 11, 31, 32], [300, 300, 320, 320], [201, 201, 221, 221]], [0.12, 0.9, 0.5],
              "b"),
        _dets([[101, 101, 121, 121]], [0.9], "a"),           # the same model: no second opinion
        _dets([[50, 50, 70, 70]], [0.9], "b")])
    assert agreement(unsure, pool, s).tolist() == [True, False, False, False]
    assert agreement(unsure, pool, Settings()).tolist() == [False] * 4       # off by default
    # b's box is below b's floor: no agreement
    low = _dets([[12, 11, 31, 32]], [0.05], "b")
    assert not agreement(unsure[:1], low, s).any()


class _Fixed(Detector):
    """Returns fixed boxes (image pixels) for a full-frame look of the whole image."""

    def __init__(self, name, boxes, scores):
        self.name, self.boxes, self.scores = name, np.array(boxes, np.float32), scores

    def detect(self, image, min_score):
        d = Detections.from_boxes(self.boxes, self.scores, "face")
        return d[d.scores >= min_score]


def test_anonymizer_admits_only_what_two_models_agree_on():
    a = _Fixed("a", [[10, 10, 40, 40], [100, 10, 130, 40]], [0.25, 0.25])
    b = _Fixed("b", [[12, 12, 41, 41], [200, 10, 230, 40]], [0.2, 0.2])
    base = Settings(stage1_model=None, face_models=("a", "b"), plate_models=(), zoom=False,
                    face_rotations=(), crowd_min_faces=0, verify=False, region_models=(),
                    model_thresholds=("a=0.5", "b=0.5"), review_band=0.0)
    image = np.zeros((64, 256, 3), np.uint8)
    alone = Anonymizer(base, {"a": a, "b": b}).detect(image)[0]
    assert len(alone) == 0                                  # each below its own threshold
    agreed = Anonymizer(base.replace(agree_thresholds=AGREE), {"a": a, "b": b}).detect(image)[0]
    assert len(agreed) == 1 and agreed.xyxy[0, 0] < 15       # only where both saw a face


def test_closer_look_boxes_the_other_model_did_not_confirm_are_not_review_candidates():
    from beam_anon.detection.plan import doubted

    s = Settings(agree_thresholds=AGREE, zoom_models=("a", "b"))
    boxes = Detections.concat([
        _dets([[0, 0, 9, 9]], [0.3], "a").found_by("a:zoom"),
        _dets([[0, 0, 9, 9]], [0.3], "a").found_by("a:crowd"),
        _dets([[0, 0, 9, 9]], [0.3], "a"),                     # a cheap look: stays a candidate
        Detections.from_boxes([[0, 0, 9, 9]], [0.3], "face").found_by("c:zoom")])  # not listed
    assert doubted(boxes, s).tolist() == [True, True, False, False]
    assert not doubted(boxes, s.replace(zoom_models=("a",))).any()   # nobody else looked
