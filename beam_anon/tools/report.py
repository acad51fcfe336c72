"""A self-contained HTML audit report of a run, to share alongside the anonymized dataset.

    python -m beam_anon.tools.report RUN_DIR [--out RUN_DIR/report.html] [--sample 48] [--seed 0]

One static page, no network needed (inline CSS and SVG, thumbnails as ``data:`` URIs, a CSP that
forbids every fetch): the run's settings, models and licences, counts (ok / failed / in the
review queue / needing review, faces, plates), histograms (box sizes, scores, blurred area per
image), the failures with their reasons, a gallery of the review queue and a seeded random
sample of outputs, blurred boxes outlined.

Privacy: thumbnails are made **only** from the files the manifest lists as ``output``, and each
must lie inside RUN_DIR (checked, else ValueError); ``input`` paths are never opened. Bounded:
at most ``sample`` thumbnails per gallery (long side :data:`THUMB_MAX` px), failure rows capped.
Reads every ``RUN_DIR/manifest*.jsonl`` (sharded manifests).
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import random
import sys
from collections import Counter

import numpy as np
from apache_beam.io.filesystems import FileSystems
from PIL import Image, ImageDraw

from beam_anon.detection import review
from beam_anon.manifest import ManifestRecord

THUMB_MAX = 320
MAX_FAILURE_ROWS = 200
COLOURS = {"face": "#ffd400", "plate": "#00c8ff", "review": "#ff2d2d"}


class OutsideRunDir(ValueError):
    """A manifest's ``output`` points outside the run folder: refused (never read)."""


# --- reading --------------------------------------------------------------------------------

def read_manifests(run_dir: str) -> list[ManifestRecord]:
    """Every record of ``run_dir/manifest*.jsonl`` (in shard order, then line order)."""
    pattern = FileSystems.join(run_dir, "manifest*.jsonl")
    paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    if not paths:
        raise FileNotFoundError(f"no manifest*.jsonl in {run_dir}")
    records = []
    for path in paths:
        with FileSystems.open(path) as f:
            records += [ManifestRecord.from_json(line) for line in
                        f.read().decode("utf-8").splitlines() if line.strip()]
    return records


def inside(path: str, run_dir: str) -> bool:
    """True if ``path`` names a file under ``run_dir`` (local: after resolving links)."""
    if "://" in run_dir or "://" in path:
        root = run_dir.rstrip("/") + "/"
        return path.startswith(root) and ".." not in path[len(root):].split("/")
    root = os.path.realpath(run_dir)
    return os.path.commonpath([root, os.path.realpath(path)]) == root and \
        os.path.realpath(path) != root


def thumbnail(record: ManifestRecord, run_dir: str, extra_boxes=()) -> str:
    """``data:image/jpeg;base64,...`` of the record's OUTPUT (never its input), at most
    THUMB_MAX px, with its blurred boxes (and ``extra_boxes``, red) outlined."""
    path = record.output
    if not path:
        raise ValueError(f"{record.key}: no output")
    if not inside(path, run_dir):  # the one place pixels are read: anonymized outputs only
        raise OutsideRunDir(f"{record.key}: output {path} is not inside {run_dir}")
    with FileSystems.open(path) as f:
        img = Image.open(io.BytesIO(f.read()))
        img.draft("RGB", (THUMB_MAX * 2, THUMB_MAX * 2))
        img = img.convert("RGB")
    width = record.width or img.width
    img.thumbnail((THUMB_MAX, THUMB_MAX))
    s = img.width / width
    draw = ImageDraw.Draw(img)
    for box in list(record.boxes) + [dict(b, label="review") for b in extra_boxes]:
        xy = [box["x0"] * s, box["y0"] * s, max(box["x1"] * s - 1, box["x0"] * s),
              max(box["y1"] * s - 1, box["y0"] * s)]
        draw.rectangle(xy, outline=COLOURS.get(box["label"], "#ffffff"), width=1)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --- statistics -----------------------------------------------------------------------------

def review_queue(records: list[ManifestRecord]) -> list[dict]:
    """The run's review queue as ``review.jsonl`` holds it: riskiest first
    (``beam_anon.detection.review.select`` over the records' candidates)."""
    items = [i for i in (r.review_item() for r in records) if i]
    fraction = max((float((r.settings or {}).get("review_max_fraction") or 0) for r in records),
                   default=0.0)
    return review.select(items, len(records), fraction)


def summarize(records: list[ManifestRecord]) -> dict:
    """Counts shown on the page (also in its ``data-*`` attributes); faces and plates are
    objects (one blurred box each)."""
    labels = Counter(b["label"] for r in records if r.ok for b in r.boxes)
    return {"images": len(records), "ok": sum(r.ok for r in records),
            "failed": sum(not r.ok for r in records),
            "review": len(review_queue(records)),
            "needs_review": sum(bool(r.needs_review) for r in records),
            "faces": labels.get("face", 0), "plates": labels.get("plate", 0)}


def blurred_fraction(record: ManifestRecord, grid: int = 200) -> float:
    """Fraction of the image inside the union of its blurred boxes (on a grid x grid raster)."""
    if not record.width or not record.height or not record.boxes:
        return 0.0
    mask = np.zeros((grid, grid), bool)
    for b in record.boxes:
        x0, x1 = (int(round(v / record.width * grid)) for v in (b["x0"], b["x1"]))
        y0, y1 = (int(round(v / record.height * grid)) for v in (b["y0"], b["y1"]))
        mask[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)] = True
    return float(mask.mean())


def histogram_svg(values, bins, title: str, unit: str, log_x: bool = False) -> str:
    """An inline SVG bar chart of ``values`` over ``bins`` (edges)."""
    w, h, pad = 360, 170, 28
    counts, edges = np.histogram(np.asarray(values, float), bins=bins)
    top = max(int(counts.max()) if len(counts) else 0, 1)
    bar = (w - 2 * pad) / max(len(counts), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
             f'aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>',
             f'<text x="{pad}" y="14" class="t">{html.escape(title)} (n={len(values)})</text>']
    for i, c in enumerate(counts):
        bh = (h - 2 * pad) * c / top
        parts.append(f'<rect x="{pad + i * bar + 1:.1f}" y="{h - pad - bh:.1f}" '
                     f'width="{max(bar - 2, 1):.1f}" height="{bh:.1f}"><title>'
                     f'{edges[i]:.3g}-{edges[i + 1]:.3g} {unit}: {c}</title></rect>')
    parts.append(f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" class="a"/>')
    for i in (0, len(edges) // 2, len(edges) - 1):
        parts.append(f'<text x="{pad + i * bar:.1f}" y="{h - pad + 14}" class="l">'
                     f'{edges[i]:.3g}</text>')
    parts.append(f'<text x="{w - pad}" y="{h - 4}" class="l" text-anchor="end">{unit}</text>'
                 f'<text x="4" y="{pad + 4}" class="l">{top}</text></svg>')
    return "".join(parts)


def plots(records: list[ManifestRecord]) -> list[str]:
    boxes = [b for r in records if r.ok for b in r.boxes]
    sizes = [max(b["x1"] - b["x0"], b["y1"] - b["y0"], 1.0) for b in boxes]
    scores = [b["score"] for b in boxes]
    areas = [100 * blurred_fraction(r) for r in records if r.ok]
    size_bins = np.geomspace(1, max(max(sizes, default=2.0), 2.0) * 1.01, 13)
    return [histogram_svg(sizes, size_bins, "Blurred box size (long side)", "px (log)"),
            histogram_svg(scores, np.linspace(0, 1, 11), "Detection score", "score"),
            histogram_svg(areas, np.linspace(0, max(max(areas, default=1.0), 1.0), 11),
                          "Blurred area per image", "% of image")]


# --- page -----------------------------------------------------------------------------------

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}.counts td{font-size:18px;text-align:right}.gal{display:flex;flex-wrap:wrap;
gap:10px}figure{margin:0;width:330px}figure img{max-width:320px;max-height:320px;display:block;
background:#eee}figcaption{font-size:12px;word-break:break-all}svg{background:#fafafa;
margin:4px}svg rect{fill:#4a78c2}.t{font-size:12px;font-weight:600}.l{font-size:10px}
.a{stroke:#888}code{font-size:12px}details{margin:6px 0}.bad{color:#b00}
.key{display:inline-block;width:10px;height:10px;border:2px solid}"""

SCRIPT = """addEventListener('load',function(){var ims=document.querySelectorAll('img.thumb'),
ok=0;ims.forEach(function(i){var l=i.complete&&i.naturalWidth>0;i.dataset.loaded=l;if(l)ok++});
var e=document.getElementById('thumbs-loaded');e.textContent=ok+'/'+ims.length;
e.dataset.loaded=ok;e.dataset.total=ims.length;});"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _figure(record: ManifestRecord, run_dir: str, caption: str, extra=()) -> str:
    try:
        src = thumbnail(record, run_dir, extra)
        img = f'<img class="thumb" alt="{_e(record.key)}" src="{src}">'
    except OutsideRunDir:
        raise
    except Exception as e:  # unreadable output: say so, never fall back to the input
        img = f'<p class="bad">no thumbnail: {_e(type(e).__name__)}: {_e(e)}</p>'
    return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"


def build_html(run_dir: str, sample: int = 48, seed: int = 0) -> str:
    """The report page for ``run_dir`` as one HTML string (see the module doc)."""
    from beam_anon.models import model_info, source_text

    records = read_manifests(run_dir)
    counts = summarize(records)
    settings = next((r.settings for r in records if r.settings), {})
    model_rows = []
    own = {e["name"]: e for e in map(json.loads, settings.get("model_specs") or ())}
    for m in {m["name"]: m for r in records for m in r.models}.values():
        try:
            info = own.get(m["name"]) or model_info(m["name"])
            role, licence = info["role"], info["licence"]
            source = (f'your own ({info["format"]}): {info["path"]}' if m["name"] in own
                      else source_text(info))
        except Exception:
            role = licence = source = "(not in the registry)"
        model_rows.append(f"<tr><td>{_e(m['name'])}</td><td>{_e(role)}</td><td>{_e(source)}"
                          f"</td><td>{_e(licence)}</td><td><code>{_e(m['sha256'])}</code></td></tr>")
    failures = sorted((r for r in records if not r.ok), key=lambda r: r.key)
    fail_rows = "".join(f"<tr><td>{_e(r.key)}</td><td>{_e(r.error_type)}</td><td>{_e(r.error)}"
                        f"</td></tr>" for r in failures[:MAX_FAILURE_ROWS])
    if len(failures) > MAX_FAILURE_ROWS:
        fail_rows += f"<tr><td colspan=3>... and {len(failures) - MAX_FAILURE_ROWS} more " \
                     f"(see manifest.jsonl)</td></tr>"
    by_key = {r.key: r for r in records}
    queue = [by_key[i["key"]] for i in review_queue(records) if by_key[i["key"]].ok]
    review_figs = [_figure(r, run_dir, f"{_e(r.key)}<br>risk {r.review_item()['risk']:.2f}: "
                           f"{_e(r.review_item()['why'])}",
                           [b for b in r.review["boxes"] if b["reason"] != "verify_reblurred"])
                   for r in queue[:sample]]
    ok = sorted((r for r in records if r.ok and r.output), key=lambda r: r.key)
    picked = sorted(random.Random(seed).sample(ok, min(sample, len(ok))), key=lambda r: r.key)
    sample_figs = [_figure(r, run_dir, f"{_e(r.key)}<br>{len(r.boxes)} blurred") for r in picked]
    count_cells = "".join(f'<tr><th>{_e(label)}</th><td id="count-{k}" data-count="{counts[k]}">'
                          f"{counts[k]}</td></tr>" for k, label in (
                              ("images", "images in the manifest"), ("ok", "ok (written)"),
                              ("failed", "failed (nothing written)"),
                              ("review", "in the review queue (review.jsonl)"),
                              ("needs_review", "needs review (detected after the last re-blur)"),
                              ("faces", "faces blurred (objects, one box each)"),
                              ("plates", "plates blurred (objects, one box each)")))
    reasons = Counter(x for r in records if r.review_item() for x in r.review_item()["reasons"])
    legend = " ".join(f'<span class="key" style="border-color:{c}"></span> {n}'
                      for n, c in COLOURS.items())
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>beam_anon report: {_e(run_dir)}</title><style>{CSS}</style></head><body>
<h1>beam_anon run report</h1><p>Run folder <code>{_e(run_dir)}</code>. Every picture on this
page is a thumbnail of an <b>anonymized output</b>; no original pixels are included.</p>
<h2>Counts</h2><table class="counts" id="counts">{count_cells}</table>
<p>Review reasons: {_e(', '.join(f'{k} {v}' for k, v in sorted(reasons.items())) or 'none')}</p>
<h2>Plots</h2><div>{''.join(plots(records))}</div>
<h2>Failures ({len(failures)})</h2>{'<table><tr><th>key</th><th>error type</th><th>reason</th>'
                                   '</tr>' + fail_rows + '</table>' if failures else '<p>none</p>'}
<h2>Review queue, riskiest first ({len(queue)} with output; showing {len(review_figs)})</h2>
<p>Outlines: {legend} (red: near-threshold detections, not blurred, or still detected after the
last re-blur).</p><div class="gal" id="review">{''.join(review_figs) or '<p>empty</p>'}</div>
<h2>Random sample of outputs ({len(sample_figs)} of {len(ok)}, seed {seed})</h2>
<div class="gal" id="sample">{''.join(sample_figs) or '<p>none</p>'}</div>
<p>Thumbnails loaded: <span id="thumbs-loaded">(script not run)</span></p>
<h2>Models</h2><table><tr><th>name</th><th>role</th><th>from</th><th>licence</th><th>sha256</th>
</tr>{''.join(model_rows)}</table>
<h2>Settings</h2><details open><summary>every setting of the run</summary><table>
{''.join(f'<tr><td>{_e(k)}</td><td><code>{_e(json.dumps(v))}</code></td></tr>'
         for k, v in sorted(settings.items()))}</table></details>
<script>{SCRIPT}</script></body></html>
"""


def write_report(run_dir: str, out: str | None = None, sample: int = 48, seed: int = 0) -> str:
    """Build the report and write it (default ``run_dir/report.html``); returns its path."""
    out = out or FileSystems.join(run_dir, "report.html")
    page = build_html(run_dir, sample, seed).encode("utf-8")
    with FileSystems.create(out, mime_type="text/html") as f:
        f.write(page)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_anon.tools.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="the pipeline's --output folder (has manifest*.jsonl)")
    parser.add_argument("--out", help="where to write the page (default RUN_DIR/report.html)")
    parser.add_argument("--sample", type=int, default=48, help="thumbnails per gallery")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random sample")
    args = parser.parse_args(argv)
    run_dir = args.run_dir if "://" in args.run_dir else os.path.abspath(args.run_dir)
    print(write_report(run_dir, args.out, args.sample, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
