"""Tuning aid: run the Anonymizer in-process (no Beam) over labelled sets for several settings and
print privacy recall, false boxes, CPU seconds and model passes per image for each, as rows for
docs/accuracy.md.

    .venv/bin/python scripts/sweep.py --labels ../shared/devset/labels.jsonl \
        --labels ../shared/devset_streetplates/labels.jsonl \
        --preset balanced --try '{}' --try '{"zoom": false}'

Each --try is a JSON object of Settings overrides applied to ``--preset``. Detection, blur margin
and the verification pass run exactly as in ``beam-anon`` (same Anonymizer,
same decoding), so recall equals what ``beam_anon.tools.evaluate`` reports for a CLI run; this only
skips Beam to iterate faster. CPU seconds are the worker's own (time.process_time) per image.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from multiprocessing import Pool

from beam_anon.tools import evaluate
from beam_anon.detection.anonymize import load_anonymizer
from beam_anon.media.image_io import decode
from beam_anon.detection.presets import preset
from beam_anon.settings import Settings

_anon = None


def _init(settings_json: str) -> None:
    global _anon
    _anon = load_anonymizer(Settings(**_tuples(json.loads(settings_json))))


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _one(path: str) -> dict:
    with open(path, "rb") as f:
        image = decode(f.read(), Settings().max_pixels)
    t = time.process_time()
    result = _anon.run(image.pixels)
    h, w = image.pixels.shape[:2]
    return {"input": path, "status": "ok", "width": w, "height": h,
            "boxes": result.boxes.to_records(), "cpu": time.process_time() - t,
            "passes": sum(result.cost.passes.values()),
            "megapixels": sum(result.cost.megapixels.values()),
            "model_seconds": result.cost.seconds}


def run(label_paths: list[str], settings: Settings, workers: int) -> list[dict]:
    """One result dict per labels file: the evaluator's output plus cost per image."""
    sets = [evaluate.load_labels(p) for p in label_paths]
    paths = list(dict.fromkeys(lab.path for labels in sets for lab in labels))
    with Pool(workers, initializer=_init, initargs=(json.dumps(settings.to_dict()),)) as pool:
        records = dict(zip(paths, pool.map(_one, paths, chunksize=1)))
    out = []
    for labels in sets:
        recs = [records[lab.path] for lab in labels]
        result = evaluate.evaluate(labels, recs)
        for key in ("cpu", "passes", "megapixels"):
            result[key + "_per_image"] = sum(r[key] for r in recs) / len(recs)
        models = {m for r in recs for m in r["model_seconds"]}
        result["model_seconds_per_image"] = {
            m: round(sum(r["model_seconds"].get(m, 0) for r in recs) / len(recs), 3)
            for m in sorted(models)}
        out.append(result)
    return out


def row(name: str, result: dict) -> str:
    """One markdown table row: recall and size buckets of faces and plates, false boxes,
    blurred area, CPU s, passes and megapixels per image."""
    cells = [name]
    for c in ("face", "plate"):
        s = result["classes"][c]
        if not s["gt"]:
            continue
        b = s["by_size"]
        cells.append(f"{c} {s['recall']:.3f} ({' / '.join(_r(b[k]['recall']) for k in b)})")
    fb = result["false_boxes"]["total"]["per_image"]
    cells += [f"false {fb:.2f}" if fb is not None else "false -",
              f"area {100 * result['blurred_area']['evaluated']['mean_fraction']:.1f} %",
              f"{result['cpu_per_image']:.2f} CPU s", f"{result['passes_per_image']:.1f} passes",
              f"{result['megapixels_per_image']:.1f} MP",
              " ".join(f"{m}={v:.2f}" for m, v in result["model_seconds_per_image"].items())]
    return "| " + " | ".join(cells) + " |"


def _r(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--labels", action="append", required=True, help="labels.jsonl (repeatable)")
    ap.add_argument("--preset", default="balanced")
    ap.add_argument("--try", dest="tries", action="append", default=[], help="JSON overrides")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--json", help="append each result as a JSON line to this file")
    args = ap.parse_args()
    for overrides in args.tries or ["{}"]:
        settings = preset(args.preset, **_tuples(json.loads(overrides)))
        for path, result in zip(args.labels, run(args.labels, settings, args.workers)):
            name = f"{args.preset} {overrides} on {os.path.basename(os.path.dirname(path))}"
            print(row(name, result), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({"preset": args.preset, "overrides": json.loads(overrides),
                                        "labels": path, "result": result}) + "\n")


if __name__ == "__main__":
    main()
