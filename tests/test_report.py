"""The HTML report from a real small run (sample images, real models, FnApiRunner, --report):
counts match the manifest, no original pixels are embedded, outputs outside the run folder are
refused, sharded manifests and sampling work, and headless Chromium shows the page."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from beam_anon.tools import report
from beam_anon.manifest import ManifestRecord
from beam_anon import cli

DATA_URI = re.compile(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_paths):
    """A real run over the sample images plus one corrupt file, with --report."""
    samples = sample_paths
    root = tmp_path_factory.mktemp("report")
    src, out = root / "in", root / "out"
    src.mkdir()
    for path in samples:
        shutil.copy(path, src / os.path.basename(path))
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cli.main(["--input", f"{src}/*", "--output", str(out), "--runner=FnApiRunner",
              "--face_full_frame_scales", "1", "--report"])
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return src, out, records, (out / "report.html").read_text()


def _counts(page: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r'id="count-(\w+)" data-count="(\d+)"', page)}


@pytest.mark.models
@pytest.mark.slow
def test_counts_match_the_manifest(run):
    src, out, records, page = run
    ok = [r for r in records if r["status"] == "ok"]
    review = [json.loads(line) for line in (out / "review.jsonl").read_text().splitlines()]
    assert _counts(page) == {
        "images": len(records), "ok": len(ok), "failed": len(records) - len(ok),
        "review": len(review), "needs_review": sum(r["needs_review"] for r in records),
        "faces": sum(b["label"] == "face" for r in ok for b in r["boxes"]),
        "plates": sum(b["label"] == "plate" for r in ok for b in r["boxes"])}
    assert _counts(page)["failed"] == 1 and "broken.jpg" in page and "ImageError" in page
    assert _counts(page)["faces"] >= 5 and _counts(page)["plates"] >= 1
    assert {"broken.jpg"} <= {r["key"] for r in review}
    assert page.count("<svg") == 3 and "Apache-2.0" in page and "yunet" in page
    # nothing on the page can fetch anything
    assert "default-src 'none'" in page
    assert not re.search(r'(src|href)="(?!data:)', page)


@pytest.mark.models
@pytest.mark.slow
def test_no_original_pixels_are_embedded(run):
    src, out, records, page = run
    by_key = {r["key"]: r for r in records}
    thumbs = re.findall(r'<img class="thumb" alt="([^"]+)" src="data:image/jpeg;base64,'
                        r'([A-Za-z0-9+/=]+)"', page)
    assert len(thumbs) >= 4
    checked, distances = 0, []
    for key, b64 in thumbs:
        shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("L"), float)
        h, w = shown.shape

        def same_size(path):
            return np.asarray(Image.open(path).convert("L").resize((w, h), Image.BILINEAR), float)

        original, output = same_size(src / key), same_size(out / key)
        s = w / by_key[key]["width"]
        boxes = by_key[key]["boxes"]
        for b in boxes:
            others = [o for o in boxes if o is not b]
            if any(o["x0"] < b["x1"] and b["x0"] < o["x1"] and o["y0"] < b["y1"]
                   and b["y0"] < o["y1"] for o in others):
                continue      # another box's outline crosses this one on the thumbnail
            x0, y0 = int(b["x0"] * s) + 2, int(b["y0"] * s) + 2  # inside the outline
            x1, y1 = int(b["x1"] * s) - 2, int(b["y1"] * s) - 2
            if x1 - x0 < 6 or y1 - y0 < 6:
                continue
            to_input = np.abs(shown[y0:y1, x0:x1] - original[y0:y1, x0:x1]).mean()
            to_output = np.abs(shown[y0:y1, x0:x1] - output[y0:y1, x0:x1]).mean()
            # the thumbnail is of the blurred output, clearly not of the original
            assert to_input > to_output, (key, b, to_input, to_output)
            distances.append((to_input, to_output))
            checked += 1
    assert checked >= 5
    to_input, to_output = np.sum(distances, axis=0)
    assert to_input > 3 * to_output, (to_input, to_output)   # clearly the output, not the input
    # and no input file's bytes appear base64-encoded anywhere on the page
    for path in src.iterdir():
        data = path.read_bytes()
        for offset in (0, 1, 2, len(data) // 2, len(data) // 2 + 1, len(data) // 2 + 2):
            chunk = base64.b64encode(data[offset:offset + 48]).decode()
            if len(chunk) == 64:
                assert chunk not in page, path.name


@pytest.mark.models
@pytest.mark.slow
def test_outputs_outside_the_run_dir_are_refused(run, tmp_path):
    src, out, records, _ = run
    bad = [dict(r) for r in records]
    victim = next(r for r in bad if r["status"] == "ok")
    victim["output"] = str(src / victim["key"])  # the ORIGINAL: must never be read
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(report.OutsideRunDir):
        report.build_html(str(tmp_path))
    victim["output"] = str(tmp_path / ".." / src.name / victim["key"])
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(report.OutsideRunDir):
        report.build_html(str(tmp_path))


@pytest.mark.models
@pytest.mark.slow
def test_sharded_manifests_and_bounded_sample(run, tmp_path):
    _, out, records, page = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "manifest.jsonl").unlink()
    moved = [dict(r, output=r["output"] and r["output"].replace(str(out), str(copy), 1))
             for r in records]
    half = len(moved) // 2
    for i, part in enumerate((moved[:half], moved[half:])):
        (copy / f"manifest-0000{i}-of-00002.jsonl").write_text(
            "".join(ManifestRecord.from_dict(r).to_json() + "\n" for r in part))
    assert report.main([str(copy), "--sample", "1", "--out", str(tmp_path / "r.html")]) == 0
    small = (tmp_path / "r.html").read_text()
    assert _counts(small) == _counts(page)
    sample = small.split('id="sample"')[1].split("</div>")[0]
    assert sample.count('class="thumb"') == 1 and len(DATA_URI.findall(small)) <= 2
    for uri in DATA_URI.findall(small):
        assert max(Image.open(io.BytesIO(base64.b64decode(uri))).size) <= report.THUMB_MAX


@pytest.mark.models
@pytest.mark.slow
def test_headless_chromium_shows_counts_and_thumbnails(run, tmp_path):
    browser = shutil.which("chromium")
    if not browser:
        pytest.skip("chromium not installed (scripts/setup.sh installs it as root with apt)")
    _, out, records, page = run
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", (out / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120).stdout
    assert _counts(dom) == _counts(page) and _counts(dom)["images"] == len(records)
    loaded = re.search(r'id="thumbs-loaded" data-loaded="(\d+)" data-total="(\d+)"', dom)
    assert loaded, "the page's script did not run"
    assert int(loaded.group(1)) == int(loaded.group(2)) >= 4
    assert 'data-loaded="false"' not in dom
