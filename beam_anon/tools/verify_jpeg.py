"""Check a finished run's lossless JPEG outputs against their inputs, from the manifest alone.

``python -m beam_anon.tools.verify_jpeg --manifest 'OUT/manifest*.jsonl' [--json FILE]``

For every ``ok`` record with ``jpeg: lossless`` (image folders; TFRecord images are skipped),
the input and the output are decoded (as stored: lossless image outputs come only from inputs
without an EXIF rotation) and compared on the output's MCU grid:

* **outside**: pixels that differ outside the MCUs touched by the record's boxes grown by
  ``--margin`` MCUs (default 1: fancy chroma upsampling may touch a 1-pixel ring around a
  rewritten MCU). Must be 0. ``outside_strict`` counts them with no margin (information only).
* **unchanged boxes**: boxes whose pixels are identical in input and output although the input
  is not flat there (standard deviation above 1 level). Must be none.

Also the output/input size ratio and the reasons of the ``reencoded`` records. Exit status 1
when a lossless output breaks either rule.
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import sys
from collections import Counter

import numpy as np
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from beam_anon.media import jpeg_lossless
from beam_anon.media.jpeg_output import LOSSLESS, REENCODED, decode_pixels, outside_differences
from beam_anon.manifest import ManifestRecord

FLAT_STD = 1.0


def mcu_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a JPEG's MCU from its frame header (8x8 for one component)."""
    layers = getattr(Image.open(io.BytesIO(data)), "layer", None) or []
    if len(layers) <= 1:
        return 8, 8
    return 8 * max(h for _, h, _, _ in layers), 8 * max(v for _, _, v, _ in layers)


def manifest_boxes(record: ManifestRecord) -> np.ndarray:
    """(N, 4) xyxy of a record's boxes, each grown by the manifest's rounding (2 decimals), so a
    box edge at 463.996 written as 464.0 still covers pixel row 463 as the blur did."""
    xyxy = np.array([[b["x0"], b["y0"], b["x1"], b["y1"]] for b in record.boxes],
                    np.float64).reshape(-1, 4)
    return xyxy + [-0.005, -0.005, 0.005, 0.005]


def _read(path: str) -> bytes:
    with FileSystems.open(path) as f:
        return f.read()


def check_pair(source: bytes, output: bytes, xyxy: np.ndarray, margin: int) -> dict:
    """``{outside, outside_strict, unchanged_boxes, size_ratio, mcu}`` for one input/output,
    compared as stored (EXIF orientation not applied: lossless image outputs come from inputs
    with orientation 1, TFRecord images keep theirs); ``xyxy`` in stored pixels."""
    before, after = decode_pixels(source), decode_pixels(output)
    if before.shape != after.shape:
        raise ValueError(f"output is {after.shape}, input {before.shape}")
    height, width = before.shape[:2]
    mcu = mcu_size(output)
    mask = jpeg_lossless.mcu_mask(xyxy, width, height, mcu)
    unchanged = []
    for i, (x0, y0, x1, y1) in enumerate(jpeg_lossless.pixel_rects(xyxy, width, height)):
        a, b = before[y0:y1, x0:x1], after[y0:y1, x0:x1]
        if a.size and np.array_equal(a, b) and a.std() > FLAT_STD:
            unchanged.append(i)
    return {"outside": outside_differences(before, after, mask, mcu, margin),
            "outside_strict": outside_differences(before, after, mask, mcu, 0),
            "unchanged_boxes": unchanged, "size_ratio": round(len(output) / len(source), 4),
            "mcu": list(mcu)}


def verify(records: list[ManifestRecord], margin: int = jpeg_lossless.MARGIN_MCUS) -> dict:
    """Summary and per-image results of :func:`check_pair` over the lossless records."""
    images, reasons, bad = [], Counter(), []
    for r in records:
        if not r.ok or r.jpeg is None:
            continue
        if r.jpeg == REENCODED:
            reasons[r.jpeg_reason or "?"] += 1
            continue
        if r.jpeg != LOSSLESS or "#" in r.input:  # TFRecord images: no file to compare
            continue
        try:
            result = check_pair(_read(r.input), _read(r.output), manifest_boxes(r), margin)
        except Exception as e:
            result = {"error": f"{type(e).__name__}: {e}"}
        result["key"] = r.key
        images.append(result)
        if result.get("error") or result["outside"] or result["unchanged_boxes"]:
            bad.append(r.key)
    ratios = [i["size_ratio"] for i in images if "size_ratio" in i]
    return {"lossless": len(images), "reencoded": sum(reasons.values()),
            "reencoded_reasons": dict(reasons), "bad": bad,
            "outside_pixels": sum(i.get("outside", 0) for i in images),
            "outside_strict_pixels": sum(i.get("outside_strict", 0) for i in images),
            "size_ratio": ([round(min(ratios), 3), round(float(np.median(ratios)), 3),
                            round(max(ratios), 3)] if ratios else None),
            "images": images}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_anon.tools.verify_jpeg",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="manifest file(s), a glob")
    parser.add_argument("--margin", type=int, default=jpeg_lossless.MARGIN_MCUS,
                        help="MCUs around the boxes' MCUs where differences are allowed")
    parser.add_argument("--json", help="write the full result (per image) here")
    args = parser.parse_args(argv)
    paths = sorted(glob.glob(args.manifest))
    if not paths:
        parser.error(f"no manifest matches {args.manifest!r}")
    records = [ManifestRecord.from_json(line) for p in paths
               for line in open(p, encoding="utf-8") if line.strip()]
    result = verify(records, args.margin)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    print(f"lossless JPEG outputs: {result['lossless']}, differing pixels outside their boxes' "
          f"MCUs (+{args.margin} MCU): {result['outside_pixels']} (no margin: "
          f"{result['outside_strict_pixels']}); size output/input min/median/max: "
          f"{result['size_ratio']}")
    print(f"re-encoded: {result['reencoded']} {result['reencoded_reasons'] or ''}")
    for key in result["bad"]:
        item = next(i for i in result["images"] if i["key"] == key)
        print(f"FAILED {key}: {item}")
    return 1 if result["bad"] else 0


if __name__ == "__main__":
    sys.exit(main())
