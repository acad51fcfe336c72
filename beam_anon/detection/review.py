"""The review queue: which images a person should look at, ranked by risk, short by default.

Every record's ``review`` (manifest) is ``{risk, queued, reasons, boxes}``; ``OUTPUT/review.jsonl``
holds the queued ones, riskiest first (:func:`select`). Reasons and their risk (0-1):

* ``failed`` (1.0): nothing was written: always queued;
* ``verify_survived`` (0.9): still detected after the last re-blur round: always queued;
* ``near_threshold`` (0.3-0.8): a detection outside every blurred box scoring within
  ``review_band`` below its threshold, not blurred. Queued only when more than one weak signal
  saw it (two models, or two looks at different scales: its ``sources``) or when it scored within
  ``review_just_below`` of the threshold; risk grows with its score and its signals. A plate
  candidate on a stage-1 vehicle that already has a confidently found plate (score >=
  :data:`PLATED_MIN_SCORE`) is listed but not queued (``on_plated_vehicle``): a car's badge,
  lamp or grille beside its plate. With a plate check (``plate_check_model``), a plate candidate
  is queued only when the check scores it at least ``review_plate_check`` (its ``check`` in
  the record): beamplate leaves a dozen candidates on nearly every street photo, lamps,
  badges and lettering the check tells from plates;
* ``verify_reblurred`` (0.2): verification found something and blurred it again: fixed, so only
  listed when ``review_max_fraction`` asks for more.

``review_max_fraction`` > 0 fills the queue with the riskiest other entries up to that share of
all images (queued ones are never dropped). Boxes are xyxy pixels, as in the manifest. A record
lists every queued box but at most :data:`MAX_UNQUEUED_LISTED` others (the riskiest; a noisy
model can leave hundreds just below its threshold), with ``unlisted``: how many it left out.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from beam_anon.boxes import Detections, centres_inside, covered_fraction

FAILED = "failed"
VERIFY_SURVIVED = "verify_survived"
NEAR_THRESHOLD = "near_threshold"
VERIFY_REBLURRED = "verify_reblurred"
MAX_UNQUEUED_LISTED = 10
#: a blurred plate scoring this much tells that its vehicle's plate was found (a weak one may
#: be the vehicle's badge, and its real plate the candidate)
PLATED_MIN_SCORE = 0.5
RISK = {FAILED: 1.0, VERIFY_SURVIVED: 0.9, VERIFY_REBLURRED: 0.2}
WORDS = {FAILED: "failed: nothing was written",
         VERIFY_SURVIVED: "still detected after the last re-blur round",
         VERIFY_REBLURRED: "verification found something and blurred it (again)",
         NEAR_THRESHOLD: "not blurred: scored just below its threshold"}


def unblurred(near: Detections, boxes: Detections) -> Detections:
    """Near-threshold detections not already mostly inside a blurred box (those are duplicates
    of something blurred, not candidates for review)."""
    if not len(near) or not len(boxes):
        return near
    return near[covered_fraction(near.xyxy, boxes.xyxy).max(axis=1) < 0.5]


def plated_vehicles(vehicles: Detections, blurred: Detections) -> np.ndarray:
    """(M, 4) the ``vehicles`` boxes that hold the centre of a blurred plate scoring at least
    :data:`PLATED_MIN_SCORE`."""
    plates = blurred.with_label("plate")
    plates = plates.xyxy[plates.scores >= PLATED_MIN_SCORE]
    return vehicles.xyxy[centres_inside(plates, vehicles.xyxy).any(axis=0)].reshape(-1, 4)


def near_entries(near: Detections, settings, plated: np.ndarray | None = None,
                 plate_check: Callable[[np.ndarray], np.ndarray] | None = None) -> list[dict]:
    """Box records of near-threshold detections with ``reason``, ``signals`` (distinct looks
    that saw it), ``risk`` and ``queued`` (see the module doc); ``plated``: (M, 4) vehicle
    boxes that already have a blurred plate; ``plate_check``: (K, 4) plate boxes -> (K,) the
    plate check's probabilities, asked only about the plate boxes that would be queued."""
    out = []
    on_plated = centres_inside(near.xyxy, plated if plated is not None else []).any(axis=1)
    for i, record in enumerate(near.to_records()):
        models = near.models(i) or [""]
        threshold = min(settings.threshold(m, record["label"]) for m in models)
        below = max(0.0, threshold - record["score"])
        closeness = 1.0 - min(1.0, below / max(settings.review_band, 1e-6))
        signals = max(1, len(near.sources[i]))
        queued = signals > 1 or below <= settings.review_just_below
        risk = min(0.8, 0.3 + 0.4 * closeness + 0.1 * min(signals - 1, 2))
        extra = {}
        if record["label"] == "plate" and on_plated[i]:
            queued, extra = False, {"on_plated_vehicle": True}
        out.append(dict(record, reason=NEAR_THRESHOLD, signals=signals,
                        risk=round(risk, 3), queued=queued, **extra))
    asked = [i for i, e in enumerate(out) if e["queued"] and e["label"] == "plate"]
    if plate_check is not None and asked:
        for i, p in zip(asked, plate_check(near.xyxy[asked])):
            out[i]["check"] = round(float(p), 3)
            out[i]["queued"] = bool(p >= settings.review_plate_check)
    return out


def _listed(boxes: list[dict]) -> tuple[list[dict], int]:
    """``boxes`` riskiest first, every queued one and at most :data:`MAX_UNQUEUED_LISTED` others;
    and how many were left out."""
    boxes = sorted(boxes, key=lambda b: -b["risk"])
    unqueued = [i for i, b in enumerate(boxes) if not b["queued"]][MAX_UNQUEUED_LISTED:]
    dropped = set(unqueued)
    return [b for i, b in enumerate(boxes) if i not in dropped], len(dropped)


def _review(boxes: list[dict], risk: float, queued: bool, reasons: list[str],
            unlisted: int = 0) -> dict:
    listed, more = _listed(boxes)
    out = {"risk": risk, "queued": queued, "reasons": reasons, "boxes": listed}
    if unlisted + more:
        out["unlisted"] = unlisted + more
    return out


def entry(near: Detections, survived: Detections | None, fixed: Detections | None,
          settings, plated: np.ndarray | None = None,
          plate_check: Callable[[np.ndarray], np.ndarray] | None = None) -> dict | None:
    """The manifest's ``review`` value for one image, or None when nothing needs a look
    (``plated``, ``plate_check``: see :func:`near_entries`)."""
    boxes = [dict(r, reason=VERIFY_SURVIVED, risk=RISK[VERIFY_SURVIVED], queued=True)
             for r in (survived.to_records() if survived is not None else [])]
    boxes += [dict(r, reason=VERIFY_REBLURRED, risk=RISK[VERIFY_REBLURRED], queued=False)
              for r in (fixed.to_records() if fixed is not None else [])]
    boxes += near_entries(near, settings, plated, plate_check)
    if not boxes:
        return None
    boxes.sort(key=lambda b: -b["risk"])
    reasons = list(dict.fromkeys(b["reason"] for b in boxes))
    return _review(boxes, boxes[0]["risk"], any(b["queued"] for b in boxes), reasons)


def merge(reviews: list[dict]) -> dict | None:
    """One review of several (e.g. a video's frames): the highest risk, queued if any is."""
    reviews = [r for r in reviews if r]
    if not reviews:
        return None
    return _review([b for r in reviews for b in r.get("boxes", ())],
                   max(r.get("risk", 0.0) for r in reviews), any(r.get("queued") for r in reviews),
                   list(dict.fromkeys(x for r in reviews for x in r.get("reasons", ()))),
                   sum(r.get("unlisted", 0) for r in reviews))


def why(item: dict) -> str:
    """The reasons of a queue item in words, for people (report, review.jsonl ``why``)."""
    parts = []
    for reason in item.get("reasons", ()):
        text = WORDS.get(reason, reason)
        boxes = [b for b in item.get("boxes", ()) if b.get("reason") == reason]
        if reason == FAILED and item.get("error"):
            text += f" ({item['error']})"
        if reason == NEAR_THRESHOLD and boxes:
            b = boxes[0]
            check = f", plate check {b['check']:.2f}" if "check" in b else ""
            text = (f"a {b['label']} scored {b['score']:.2f}, just below its threshold, seen by "
                    f"{b.get('signals', 1)} look(s) ({', '.join(b.get('models', [])) or '?'})"
                    f"{check}; not blurred")
        parts.append(text)
    return "; ".join(parts)


def select(items: list[dict], total: int, max_fraction: float = 0.0) -> list[dict]:
    """The queue from all candidate items of a run (``{risk, queued, ...}``), riskiest first:
    every queued item, plus the riskiest others while the queue holds fewer than
    ``max_fraction`` of ``total`` images."""
    items = sorted(items, key=lambda i: (-i.get("risk", 0.0), i.get("key", "")))
    queue = [i for i in items if i.get("queued")]
    room = int(max_fraction * total) - len(queue)
    if room > 0:
        queue += [i for i in items if not i.get("queued")][:room]
        queue.sort(key=lambda i: (-i.get("risk", 0.0), i.get("key", "")))
    return queue
