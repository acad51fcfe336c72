"""Verification pass and review entries: exact behaviour with stand-in detectors, then the real
face detectors on a real sample face (a near-zero blur is caught, the default blur is not)."""
import cv2
import numpy as np
import pytest

from beam_anon.detection import verify
from beam_anon.detection.anonymize import Anonymizer
from beam_anon.boxes import Detections
from beam_anon.detectors import Detector
from beam_anon.settings import Settings

def checker(h, w, cell=4):
    y, x = np.mgrid[0:h, 0:w]
    return (((y // cell + x // cell) % 2) * 255).astype(np.uint8)[..., None]


def texture(image):
    """Local mean of |Laplacian| of the grey image: high on the checkerboard, ~0 once blurred."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return cv2.blur(np.abs(cv2.Laplacian(grey, cv2.CV_32F)), (9, 9))


class Checkers(Detector):
    """Finds checkerboard 'faces' as long as their fine texture survives (a gaussian sigma of
    about 1 px keeps it, 2 px destroys it); ``score`` for each; counts its calls."""

    def __init__(self, score=0.9, name="f"):
        self.name, self.role, self.sha256, self.score = name, "face", "0" * 64, score
        self.calls = 0

    def detect(self, image, min_score):
        self.calls += 1
        mask = (texture(image) > 30).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        boxes = [[x, y, x + w, y + h] for x, y, w, h, area in stats[1:] if area >= 64]
        dets = Detections.from_boxes(boxes, np.full(len(boxes), self.score), "face")
        return dets[dets.scores >= min_score]


def scene():
    img = np.full((360, 480, 3), 128, np.uint8)
    img[100:180, 100:180] = checker(80, 80)
    return img


def anonymizer(detector, **settings):
    base = Settings(stage1_model=None, face_models=(detector.name,), plate_models=(),
                    model_thresholds=(), full_frame_max_side=480, face_full_frame_scales=(1.0,),
                    face_rotations=(), zoom=False, crowd_min_faces=0)
    return Anonymizer(base.replace(**settings), {detector.name: detector})


def test_default_blur_passes_verification_with_one_check():
    det = Checkers()
    result = anonymizer(det).run(scene())
    assert len(result.boxes) == 1 and result.review is None
    assert "verify" in result.timings
    assert det.calls == 2  # the detection pass and one verification pass (nothing to re-blur)


def test_weak_blur_is_reblurred_then_needs_review():
    # pixelate cells of 2 px (the floor) keep a 4 px checkerboard: every round still detects it
    det = Checkers()
    result = anonymizer(det, blur_mode="pixelate", blur_strength=0.001, verify_rounds=2
                        ).run(scene())
    assert result.review["reasons"][:2] == [verify.VERIFY_SURVIVED, verify.VERIFY_REBLURRED]
    survived = [b for b in result.review["boxes"] if b["reason"] == verify.VERIFY_SURVIVED]
    assert len(survived) == 1 and survived[0]["x0"] <= 101 and survived[0]["x1"] >= 179
    assert det.calls == 1 + 3  # detection + check, re-blur, check, re-blur, check


def test_weak_blur_fixed_by_stronger_rounds_is_not_needs_review():
    # strength 0.005 -> sigma 1 px (detected); doubled up to 0.02 -> 2 px destroys the texture
    det = Checkers()
    result = anonymizer(det, blur_strength=0.005, verify_rounds=3).run(scene())
    assert result.review["reasons"] == [verify.VERIFY_REBLURRED]
    assert texture(result.image)[110:170, 110:170].max() < 30


def test_verification_off():
    det = Checkers()
    result = anonymizer(det, blur_strength=0.001, verify=False).run(scene())
    assert result.review is None and "verify" not in result.timings and det.calls == 1


def test_new_detection_after_blur_is_blurred_and_added():
    img = scene()
    img[250:300, 300:350] = checker(50, 50)  # a second face the first pass did not blur
    first = Detections.from_boxes([[90, 90, 190, 190]], [0.9], "face")
    from beam_anon.detection.blur import blur_boxes
    blurred = blur_boxes(img, first, "gaussian", 0.25)
    # by default only the blurred boxes and their surroundings are checked again: far away,
    # the second face is not (the first pass owns full-frame recall)
    near = verify.verify_blur(anonymizer(Checkers()), blurred, first)
    assert len(near.boxes) == 1 and near.rounds == 0
    result = verify.verify_blur(anonymizer(Checkers(), verify_full_frame=True), blurred, first)
    assert len(result.boxes) == 2 and result.rounds == 1 and not result.needs_review
    assert texture(result.image).max() < 30


def test_recheck_crops_shrink_large_boxes_and_pack_into_one_pass():
    det = Checkers()
    anon = anonymizer(det)
    boxes = Detections.from_boxes([[90, 90, 190, 190], [300, 300, 320, 320], [10, 300, 30, 330]],
                                  [0.9] * 3, "face")
    crops = verify.recheck_crops(boxes, 640, 480, anon.settings)
    assert [round(max(c.xyxy[2] - c.xyxy[0], c.xyxy[3] - c.xyxy[1]) * c.scale) for c in crops][0] \
        <= 2 * verify.RECHECK_BOX_SIZE
    assert crops[0].scale < 1 < crops[1].scale
    det.calls = 0
    verify.detect_again(anon, scene(), boxes)
    assert det.calls == 1  # three re-check crops, one canvas


def test_near_threshold_detections_are_reviewed_not_blurred():
    img = scene()
    det = Checkers(score=0.45)  # threshold 0.5, band 0.1: a near miss
    result = anonymizer(det, face_threshold=0.5, review_band=0.1).run(img)
    assert len(result.boxes) == 0 and np.array_equal(result.image, img)
    assert result.review["reasons"] == [verify.NEAR_THRESHOLD]
    assert anonymizer(Checkers(score=0.45), review_band=0.0).run(img).review is None
    assert anonymizer(Checkers(score=0.35), review_band=0.1).run(img).review is None


def test_big_images_are_verified_on_a_shrunk_copy():
    img = cv2.resize(scene(), (1920, 1440), interpolation=cv2.INTER_NEAREST)
    det = Checkers()
    result = anonymizer(det, blur_mode="pixelate", blur_strength=0.001,
                        detect_max_pixels=480 * 360).run(img)
    boxes = [b for b in result.review["boxes"] if b["reason"] == verify.VERIFY_SURVIVED]
    assert boxes and boxes[0]["x0"] <= 401 and boxes[0]["x1"] >= 719  # full-resolution pixels


# --- real face detectors on a real face -----------------------------------------------------

@pytest.fixture(scope="module")
def faces(face_sample):
    from beam_anon import models
    dets = {n: models.get_detector(n) for n in ("yunet", "centerface")}
    image = cv2.imread(face_sample)
    return image[:, :960], dets  # the left half: 2-3 faces, half the cost


@pytest.mark.models
def test_real_detectors_catch_a_near_zero_blur(faces):
    image, dets = faces
    settings = Settings(stage1_model=None, face_models=("centerface",), plate_models=(),
                        face_full_frame_scales=(1.0,))
    weak = Anonymizer(settings.replace(blur_strength=0.001), dets).run(image)
    assert len(weak.boxes.with_label("face")) >= 2
    assert weak.review and verify.VERIFY_SURVIVED in weak.review["reasons"], weak.review
    survived = [b for b in weak.review["boxes"] if b["reason"] == verify.VERIFY_SURVIVED]
    assert all(b["label"] == "face" and b["score"] >= 0.6 for b in survived)

    normal = Anonymizer(settings, dets).run(image)
    reasons = (normal.review or {}).get("reasons", [])
    assert verify.VERIFY_SURVIVED not in reasons and verify.VERIFY_REBLURRED not in reasons
    assert len(normal.boxes) >= 2


@pytest.mark.models
def test_real_plate_detector_catches_a_near_zero_blur(sample_paths):
    """beamplate's scores on plain plates stay under the default 0.6: its own verification
    score (``verify_thresholds``) lets the plate re-check find a plate the blur left readable,
    and still passes the default blur."""
    from beam_anon import models
    image = cv2.imread(next(p for p in sample_paths if "alpr-test" in p))
    settings = Settings(stage1_model=None, face_models=(), plate_models=("beamplate",),
                        region_models=(), zoom_models=(), plate_check_model=None)
    dets = {"beamplate": models.get_detector("beamplate", precision=settings.precision)}
    weak = Anonymizer(settings.replace(blur_strength=0.001), dets).run(image)
    assert len(weak.boxes.with_label("plate")) >= 2
    survived = [b for b in weak.review["boxes"] if b["reason"] == verify.VERIFY_SURVIVED]
    assert {b["label"] for b in survived} == {"plate"}
    assert all(b["score"] >= settings.verify_hit("beamplate", "plate") for b in survived)

    normal = Anonymizer(settings, dets).run(image)
    reasons = (normal.review or {}).get("reasons", [])
    assert verify.VERIFY_SURVIVED not in reasons and verify.VERIFY_REBLURRED not in reasons
