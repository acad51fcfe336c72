"""Reruns after a crash: the CLI is killed (SIGKILL) midway, rerun with --skip_existing, and
every input ends up in the manifest exactly once; finished images are not processed again."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from beam_anon.media.image_io import decode
from beam_anon.pipeline.records import record_path
from tests.test_pipeline import FakeAnonymizer, _jpeg, _manifest, _write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 12


class SlowLoggingAnonymizer(FakeAnonymizer):
    """FakeAnonymizer that takes 0.4 s per image and logs each image's width (its identity)."""

    def run(self, image, keep_debug=False):
        with open(os.environ["RERUN_LOG"], "a") as f:
            f.write(f"{image.shape[1]}\n")
        time.sleep(0.4)
        return super().run(image, keep_debug)


def main():  # the CLI with the slow stand-in; run as a subprocess by the test
    from beam_anon import cli as anonymize
    anonymize.main(sys.argv[1:], anonymizer_factory=lambda s, m: SlowLoggingAnonymizer())


def _cli(src, out, log, *extra):
    return subprocess.Popen(
        [sys.executable, "-c", "from tests.test_reruns import main; main()",
         "--input", f"{src}/*.jpg", "--output", str(out), "--runner=FnApiRunner", *extra],
        cwd=ROOT, env={**os.environ, "RERUN_LOG": str(log)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _widths(log) -> list[int]:
    return [int(x) for x in open(log).read().split()] if os.path.exists(log) else []


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates_or_holes(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    width = {f"img {i:02d}.jpg": 40 + i for i in range(N)}  # spaces in names on purpose
    for name, w in width.items():
        _write(src / name, _jpeg(w, 30))
    log1, log2 = tmp_path / "run1.log", tmp_path / "run2.log"

    first = _cli(src, out, log1)
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None:
        done = [k for k in width if (out / k).exists() and os.path.exists(record_path(str(out), k))]
        if len(done) >= 3:
            break
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before it could be killed:\n" + \
        first.communicate()[0]
    first.send_signal(signal.SIGKILL)  # a real crash: no cleanup runs
    first.wait(30)
    assert not (out / "manifest.jsonl").exists()  # the crash left no manifest
    kept = {k: open(record_path(str(out), k), "rb").read() for k in width
            if os.path.exists(record_path(str(out), k))}
    assert 3 <= len(kept) < N
    stamps = {k: (out / k).stat().st_mtime_ns for k in kept}

    second = _cli(src, out, log2, "--skip_existing")
    text = second.communicate(timeout=180)[0]
    assert second.returncode == 0, text
    assert f"beam_anon: {N} images, {N} ok ({len(kept)} skipped), 0 failed" in text, text

    records = _manifest(out)  # asserts one line per key
    assert set(records) == set(width)
    assert all(r.status == "ok" and r.output == str(out / k) for k, r in records.items())
    # skipped: not processed again, output untouched, record passed on unchanged
    reprocessed = _widths(log2)
    assert sorted(reprocessed) == sorted(width[k] for k in width if k not in kept)
    for k in kept:
        assert (out / k).stat().st_mtime_ns == stamps[k]
        assert json.loads(kept[k]) == records[k].to_dict()
    for k, r in records.items():  # outputs intact and anonymized
        img = decode((out / k).read_bytes(), 10**8)
        assert (img.width, img.height) == (width[k], 30)
        assert img.pixels[15, width[k] // 2].max() < 20
    assert not [f for _, _, fs in os.walk(out) for f in fs if f.endswith(".tmp")]

    # other settings: nothing may be reused
    third = _cli(src, out, tmp_path / "run3.log", "--skip_existing", "--face_threshold", "0.3")
    text = third.communicate(timeout=180)[0]
    assert third.returncode == 0, text
    assert sorted(_widths(tmp_path / "run3.log")) == sorted(width.values())
    assert all(r.settings["face_threshold"] == 0.3 for r in _manifest(out).values())
