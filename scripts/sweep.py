"""Tuning aid: run the Anonymizer in-process (no Beam) over a labelled set for several settings and
print the privacy-recall numbers of each, as rows for docs/accuracy.md.

    .venv/bin/python scripts/sweep.py --labels ../shared/devset/labels.jsonl \
        --try '{}' --try '{"full_frame": false}'

Each --try is a JSON object of Settings overrides applied to the defaults. The numbers equal what
`python -m pipelines.anonymize` + `python -m beam_anon.evaluate` report for the same settings
(same Anonymizer, same image decoding); this only skips Beam to iterate faster.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from multiprocessing import Pool

from beam_anon import evaluate
from beam_anon.anonymize import load_anonymizer
from beam_anon.boxes import clip, expand
from beam_anon.image_io import decode
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
    t = time.perf_counter()
    found, _, timings = _anon.detect(image.pixels)
    h, w = image.pixels.shape[:2]
    boxes = clip(expand(found, _anon.settings.blur_margin_fraction, 1.0), w, h)
    return {"input": path, "status": "ok", "width": w, "height": h,
            "boxes": boxes.to_records(), "seconds": time.perf_counter() - t}


def run(labels_path: str, overrides: dict, workers: int) -> dict:
    labels = evaluate.load_labels(labels_path)
    settings = Settings().replace(**_tuples(overrides))
    with Pool(workers, initializer=_init, initargs=(json.dumps(settings.to_dict()),)) as pool:
        records = pool.map(_one, [lab.path for lab in labels], chunksize=1)
    result = evaluate.evaluate(labels, records)
    result["seconds_per_image"] = sum(r["seconds"] for r in records) / len(records)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--try", dest="tries", action="append", default=[], help="JSON overrides")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--json", help="append each result as a JSON line to this file")
    args = ap.parse_args()
    for overrides in args.tries or ["{}"]:
        result = run(args.labels, json.loads(overrides), args.workers)
        print(f"### {overrides}  ({result['seconds_per_image']:.2f} s/image, "
              f"{args.workers} worker processes)")
        print(evaluate.format_table(result), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"overrides": json.loads(overrides), "result": result}) + "\n")


if __name__ == "__main__":
    main()
