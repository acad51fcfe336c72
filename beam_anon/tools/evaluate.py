"""Privacy-recall evaluation of a finished run: manifest boxes (regions actually blurred) against
labelled ground truth (the devset ``labels.jsonl`` format; conventions in its README).

``python -m beam_anon.tools.evaluate --labels DEVSET/labels.jsonl --manifest 'RUN/manifest*.jsonl'``

Rules (all boxes in pixels of the orientation-corrected input):

* **covered**: a ground-truth (GT) box is covered when the union of *all* blurred boxes of its
  image (any label) covers at least ``coverage`` (default 0.7) of its area. Areas are exact: the
  union is rasterised on the grid of all box edges inside the GT box, so fractional boxes need
  no rounding.
* **recall** per class = covered / counted GT boxes. ``ignore`` GT boxes count neither way. A
  class counts only on images that list it in ``classes`` (``complete: true`` means both).
  Size buckets use the GT box's short side: ``<16``, ``16-31`` (16 <= s < 32), ``>=32`` px.
* **false boxes**: counted only for classes in an image's ``exhaustive_classes``. A blurred box
  of class c is false unless it *matches* some GT box of class c (``ignore`` ones included);
  match = the blurred box covers >= 50% of the GT box, or the GT box covers >= 30% of the
  blurred box (blurred boxes carry a margin, so IoU would be too strict).
* **blurred area**: union of an image's blurred boxes / image area, averaged over every ``ok``
  manifest record, and over those matched to a labelled image (non-empty ``classes``).
* ``failed`` records wrote no output, so they are no privacy miss: listed and excluded from all
  metrics. Label images absent from the manifest are errors (``--strict`` exits 1).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from beam_anon.boxes import Detections, nested

CLASSES = ("face", "plate")
SIZE_BUCKETS = (("<16", 0.0, 16.0), ("16-31", 16.0, 32.0), (">=32", 32.0, float("inf")))
MATCH_GT_COVERED, MATCH_BLUR_COVERED = 0.5, 0.3
MATCH_RULE = (f"blurred box matches a GT box of its class when it covers >= "
              f"{MATCH_GT_COVERED:.0%} of the GT box or the GT box covers >= "
              f"{MATCH_BLUR_COVERED:.0%} of the blurred box")
_EPS = 1e-9


@dataclass(frozen=True)
class LabelImage:
    """One labels line. ``path``: absolute resolved image path; ``gt``: GT boxes (pixels);
    ``ignore``: (N,) bool aligned with ``gt``; ``classes``: classes whose misses count;
    ``exhaustive``: classes whose false boxes count."""

    image: str
    path: str
    width: int
    height: int
    gt: Detections
    ignore: np.ndarray
    classes: tuple[str, ...]
    exhaustive: tuple[str, ...]


def load_labels(path: str | os.PathLike) -> list[LabelImage]:
    """Read a ``labels.jsonl``; image paths are resolved relative to the file's directory."""
    base = Path(path).resolve().parent
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON: {e}") from None
            boxes = d.get("boxes", [])
            if d.get("complete"):
                classes = CLASSES
            else:
                classes = tuple(d.get("classes", sorted({b["label"] for b in boxes})))
            out.append(LabelImage(
                image=d["image"], path=str((base / d["image"]).resolve()),
                width=int(d["width"]), height=int(d["height"]),
                gt=Detections.from_records(boxes),
                ignore=np.array([bool(b.get("ignore")) for b in boxes], bool),
                classes=classes, exhaustive=tuple(d.get("exhaustive_classes", ()))))
    return out


def _expand(patterns: str | Iterable[str]) -> list[str]:
    patterns = [patterns] if isinstance(patterns, (str, os.PathLike)) else list(patterns)
    files: list[str] = []
    for pattern in map(str, patterns):
        if "://" in pattern and not pattern.startswith("file://"):
            from apache_beam.io.filesystems import FileSystems  # remote manifests (gs://...)
            found = sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
        else:
            found = sorted(glob.glob(pattern.removeprefix("file://")))
        if not found:
            raise FileNotFoundError(f"no manifest file matches {pattern!r}")
        files += [f for f in found if f not in files]
    return files


def _open_text(path: str):
    if "://" in path:
        import io
        from apache_beam.io.filesystems import FileSystems
        return io.TextIOWrapper(FileSystems.open(path), encoding="utf-8")
    return open(path, encoding="utf-8")


def load_manifest(globs: str | Iterable[str]) -> list[dict]:
    """All records of every manifest shard matching ``globs`` (one pattern or several)."""
    records = []
    for path in _expand(globs):
        with _open_text(path) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n}: not JSON: {e}") from None
    return records


def union_area(boxes: np.ndarray, window: Sequence[float]) -> float:
    """Exact area (pixels^2) of the union of xyxy ``boxes`` inside the ``window`` xyxy box."""
    wx0, wy0, wx1, wy1 = map(float, window)
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    b[:, 0::2] = np.clip(b[:, 0::2], wx0, wx1)
    b[:, 1::2] = np.clip(b[:, 1::2], wy0, wy1)
    b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
    if not len(b):
        return 0.0
    xs, ys = np.unique(b[:, 0::2]), np.unique(b[:, 1::2])
    mask = np.zeros((len(ys) - 1, len(xs) - 1), bool)
    for x0, y0, x1, y1 in b:
        mask[np.searchsorted(ys, y0):np.searchsorted(ys, y1),
             np.searchsorted(xs, x0):np.searchsorted(xs, x1)] = True
    return float((np.outer(np.diff(ys), np.diff(xs)) * mask).sum())


def _area(b: np.ndarray) -> float:
    return float(max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0))


def _matches(blur: np.ndarray, gt: np.ndarray) -> bool:
    inter = union_area(blur[None], gt)
    return (inter >= MATCH_GT_COVERED * _area(gt) - _EPS and _area(gt) > 0) or \
        (inter >= MATCH_BLUR_COVERED * _area(blur) - _EPS and _area(blur) > 0)


def _local(path: str) -> str | None:
    """Absolute resolved local path of a manifest ``input``, or None for a remote URI."""
    if "://" in path and not path.startswith("file://"):
        return None
    return str(Path(path.removeprefix("file://")).resolve())


def _match(labels: list[LabelImage], records: list[dict]):
    """-> (label index -> record, records matched to no label, duplicate inputs)."""
    by_path: dict[str, dict] = {}
    duplicates = []
    for r in records:
        key = _local(str(r["input"])) or str(r["input"])
        if key in by_path:
            duplicates.append(str(r["input"]))
            if by_path[key].get("status") == "ok":  # keep an ok record over a failed retry
                continue
        by_path[key] = r
    by_name: dict[str, list[str]] = {}
    for key in by_path:
        by_name.setdefault(key.rsplit("/", 1)[-1], []).append(key)
    label_names = [lab.path.rsplit("/", 1)[-1] for lab in labels]
    matched, used = {}, set()
    for i, lab in enumerate(labels):
        key = lab.path if lab.path in by_path else None
        name = label_names[i]
        if key is None and len(by_name.get(name, ())) == 1 and label_names.count(name) == 1:
            key = by_name[name][0]
        if key is not None:
            matched[i] = by_path[key]
            used.add(key)
    return matched, [r for k, r in by_path.items() if k not in used], duplicates


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def evaluate(labels: list[LabelImage], manifest_records: list[dict],
             coverage: float = 0.7) -> dict:
    """Score a run's manifest against labels; returns a JSON-ready dict (see module doc)."""
    matched, unmatched, duplicates = _match(labels, manifest_records)
    stats = {c: {"gt": 0, "covered": 0, "ignored": 0,
                 "by_size": {name: {"gt": 0, "covered": 0} for name, _, _ in SIZE_BUCKETS}}
             for c in CLASSES}
    false = {c: 0 for c in CLASSES}
    exhaustive_images = {c: 0 for c in CLASSES}
    exhaustive_any = 0
    areas_all, areas_labelled, per_image = [], [], []
    failed, missing = [], []
    for i, lab in enumerate(labels):
        rec = matched.get(i)
        if rec is None:
            missing.append(lab.image)
            continue
        if rec.get("status") != "ok":
            failed.append({"image": lab.image, "error": rec.get("error")})
            continue
        blur = Detections.from_records(rec.get("boxes") or [])
        w, h = int(rec.get("width") or lab.width), int(rec.get("height") or lab.height)
        frac = union_area(blur.xyxy, (0, 0, w, h)) / max(w * h, 1)
        areas_all.append(frac)
        if lab.classes:
            areas_labelled.append(frac)
        missed, false_boxes = [], []
        for k, (g, ign, c) in enumerate(zip(lab.gt.xyxy, lab.ignore, lab.gt.labels)):
            if c not in lab.classes or c not in stats:
                continue
            if ign:
                stats[c]["ignored"] += 1
                continue
            cov = union_area(blur.xyxy, g) / max(_area(g), _EPS)
            hit = cov >= coverage - _EPS
            short = float(min(g[2] - g[0], g[3] - g[1]))
            bucket = next(n for n, lo, hi in SIZE_BUCKETS if lo <= short < hi)
            for s in (stats[c], stats[c]["by_size"][bucket]):
                s["gt"] += 1
                s["covered"] += int(hit)
            if not hit:
                missed.append({"label": c, "box": [round(float(v), 1) for v in g],
                               "covered": round(cov, 3)})
        exhaustive_any += bool(set(lab.exhaustive) & set(CLASSES))
        for c in CLASSES:
            if c not in lab.exhaustive:
                continue
            exhaustive_images[c] += 1
            gts = lab.gt.with_label(c).xyxy
            for b in blur.with_label(c).xyxy:
                if not any(_matches(b, g) for g in gts):
                    false[c] += 1
                    false_boxes.append({"label": c, "box": [round(float(v), 1) for v in b]})
        if missed or false_boxes:
            per_image.append({"image": lab.image, "missed": missed, "false": false_boxes})
    for c in CLASSES:
        s = stats[c]
        s["recall"] = _ratio(s["covered"], s["gt"])
        for b in s["by_size"].values():
            b["recall"] = _ratio(b["covered"], b["gt"])
    total_false = sum(false.values())
    return {
        "coverage": coverage,
        "match_rule": MATCH_RULE,
        "images": {"labels": len(labels), "manifest_records": len(manifest_records),
                   "evaluated": len(areas_all), "failed": len(failed), "failed_list": failed,
                   "missing": len(missing), "missing_list": missing,
                   "not_in_labels": len(unmatched), "duplicate_inputs": len(duplicates)},
        "classes": stats,
        "false_boxes": {
            **{c: {"count": false[c], "images": exhaustive_images[c],
                   "per_image": _ratio(false[c], exhaustive_images[c])} for c in CLASSES},
            "total": {"count": total_false, "images": exhaustive_any,
                      "per_image": _ratio(total_false, exhaustive_any)}},
        "blurred_area": {
            "evaluated": {"images": len(areas_all),
                          "mean_fraction": round(float(np.mean(areas_all)), 4) if areas_all else None},
            "labelled": {"images": len(areas_labelled),
                         "mean_fraction": round(float(np.mean(areas_labelled)), 4)
                         if areas_labelled else None}},
        "per_image": per_image,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def nested_pairs(records: list[dict]) -> int:
    """Pairs of blurred boxes of one label in one record where more than half of the smaller
    lies inside the other (one object blurred twice); 0 when every object has one box."""
    count = 0
    for rec in records:
        if rec.get("status") != "ok":
            continue
        boxes = Detections.from_records(rec.get("boxes") or [])
        for label in set(boxes.labels.astype(str)):
            count += int(np.triu(nested(boxes.with_label(label).xyxy), 1).sum())
    return count


def review_hits(labels: list[LabelImage], result: dict, queue: list[dict]) -> dict:
    """How well a run's review queue (``review.jsonl`` items) points at its real misses:
    ``queued`` images and their ``share`` of the evaluated ones; of the ``misses`` (counted GT
    boxes left uncovered, from ``result["per_image"]``), ``on_queued_image`` (the image is in
    the queue) and ``under_a_queue_box`` (a box the queue points at covers >= 30 % of the
    missed box, or the missed box >= 30 % of it)."""
    queued = [q for q in queue if q.get("status") == "ok"]
    by_name = {q["input"].rsplit("/", 1)[-1]: q for q in queued}
    missed = [(p["image"], m) for p in result["per_image"] for m in p["missed"]]
    on_image = under_box = 0
    for image, miss in missed:
        item = by_name.get(image.rsplit("/", 1)[-1])
        if item is None:
            continue
        on_image += 1
        g = np.asarray(miss["box"], np.float32)
        for b in (b for b in item.get("boxes", ()) if b.get("queued", True)):
            q = np.array([b["x0"], b["y0"], b["x1"], b["y1"]], np.float32)
            inter = union_area(q[None], g)
            if inter >= MATCH_BLUR_COVERED * max(_area(g), _EPS) or \
                    inter >= MATCH_BLUR_COVERED * max(_area(q), _EPS):
                under_box += 1
                break
    evaluated = result["images"]["evaluated"]
    return {"queued": len(queued), "share": _ratio(len(queued), evaluated),
            "misses": len(missed), "on_queued_image": on_image,
            "under_a_queue_box": under_box,
            "failed_or_no_output": len(queue) - len(queued)}


def format_table(result: dict) -> str:
    """Human-readable summary of :func:`evaluate`'s result."""
    im = result["images"]
    lines = [f"images: {im['labels']} labelled lines, {im['manifest_records']} manifest records, "
             f"{im['evaluated']} evaluated, {im['failed']} failed (excluded), "
             f"{im['missing']} MISSING from manifest, {im['not_in_labels']} not in labels",
             f"covered = blurred union covers >= {result['coverage']:.0%} of the GT box", "",
             f"{'class':<6} {'GT':>5} {'covered':>8} {'recall':>7} | "
             + " | ".join(f"{n:>14}" for n, _, _ in SIZE_BUCKETS)]
    for c, s in result["classes"].items():
        buckets = " | ".join(f"{_pct(b['recall']):>6} of {b['gt']:>4}"
                             for b in s["by_size"].values())
        lines.append(f"{c:<6} {s['gt']:>5} {s['covered']:>8} {_pct(s['recall']):>7} | {buckets}"
                     f"   ({s['ignored']} ignore boxes not counted)")
    lines += ["", f"false boxes ({result['match_rule']}):"]
    for name, f in result["false_boxes"].items():
        per = "-" if f["per_image"] is None else f"{f['per_image']:.3f}"
        lines.append(f"  {name:<6} {f['count']:>5} on {f['images']:>4} exhaustive images"
                     f" = {per}/image")
    for name, a in result["blurred_area"].items():
        lines.append(f"blurred area, {name} images ({a['images']}): "
                     f"{_pct(a['mean_fraction'])} of the image on average")
    if im["failed"]:
        lines.append("failed: " + ", ".join(f["image"] for f in im["failed_list"]))
    if im["missing"]:
        lines.append("MISSING: " + ", ".join(im["missing_list"]))
    if "nested_pairs" in result:
        lines.append(f"nested same-label box pairs (one object blurred twice): "
                     f"{result['nested_pairs']}")
    if result.get("review"):
        r = result["review"]
        lines.append(f"review queue: {r['queued']} images ({_pct(r['share'])} of the evaluated); "
                     f"of {r['misses']} misses, {r['on_queued_image']} are on a queued image, "
                     f"{r['under_a_queue_box']} under a queue box")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m beam_anon.tools.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", required=True, help="labels.jsonl (image paths relative to it)")
    p.add_argument("--manifest", required=True, action="append",
                   help="manifest JSON Lines file or glob; repeat for several")
    p.add_argument("--coverage", type=float, default=0.7,
                   help="fraction of a GT box that must be blurred to count as covered")
    p.add_argument("--json", help="also write the result as JSON to this file")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a labelled image is missing from the manifest")
    p.add_argument("--review", default=None, help="the run's review.jsonl (default: next to "
                   "the first manifest, when there): how many misses the queue points at")
    args = p.parse_args(argv)
    labels = load_labels(args.labels)
    records = load_manifest(args.manifest)
    result = evaluate(labels, records, args.coverage)
    result["nested_pairs"] = nested_pairs(records)
    first = (_expand(args.manifest) or [""])[0]
    review_path = args.review or os.path.join(os.path.dirname(first), "review.jsonl")
    if os.path.isfile(review_path):
        with _open_text(review_path) as f:
            queue = [json.loads(line) for line in f if line.strip()]
        result["review"] = review_hits(labels, result, queue)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 1 if args.strict and result["images"]["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
