"""python -m beam_anon.tools.bench: the image sets, and one tiny real run printing the table."""
from __future__ import annotations

import os

import cv2
import pytest

from beam_anon.tools import bench


def test_default_images_spread_over_the_devset(tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    names = [f"wider_{i:03d}.jpg" for i in range(20)] + ["dashcam_0.jpg", "dashcam_1.jpg"]
    for name in names:
        (images / name).write_bytes(b"")
    monkeypatch.setenv("BEAM_ANON_DEVSET", str(tmp_path))
    chosen = [os.path.basename(p) for p in bench.default_images(5)]
    assert chosen[:2] == ["dashcam_0.jpg", "dashcam_1.jpg"]
    assert chosen[2:] == ["wider_000.jpg", "wider_005.jpg", "wider_010.jpg", "wider_014.jpg",
                          "wider_019.jpg"]
    assert len(bench.default_images(0)) == 22


def test_hd_set_is_the_1280x720_images_and_dashcam_set_the_raw_frames(tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    import numpy as np
    cv2.imwrite(str(images / "a.jpg"), np.zeros((720, 1280, 3), np.uint8))
    cv2.imwrite(str(images / "b.jpg"), np.zeros((700, 1280, 3), np.uint8))
    monkeypatch.setenv("BEAM_ANON_DEVSET", str(tmp_path))
    assert [os.path.basename(p) for p in bench.hd_images(str(tmp_path))] == ["a.jpg"]
    assert bench.dashcam_frames(str(tmp_path)) == bench.hd_images(str(tmp_path))  # no frames
    cv2.imwrite(str(images / "dashcam_1.jpg"), np.zeros((1080, 1920, 3), np.uint8))
    assert [os.path.basename(p) for p in bench.dashcam_frames(str(tmp_path))] == ["dashcam_1.jpg"]


def test_after_startup_takes_the_one_image_run_off_each_configuration(monkeypatch):
    def runs(wall):
        return [{"wall": wall, "cpu": wall, "records": []}]

    assert bench.after_startup(101, runs(14.0), runs(4.0)) == pytest.approx(10.0)
    assert bench.after_startup(101, runs(14.0), None) is None
    assert bench.after_startup(101, runs(3.0), runs(4.0)) is None   # noise: no rate
    monkeypatch.setattr(bench, "breakdown", lambda records: "")
    results = {"dashcam": {"images": 101, "describe": "d", "peer": {"opencv": runs(20.5)},
                           "presets": {"fast": runs(14.0)}, "floor": 1.0},
               "startup": {"images": 1, "describe": "s", "peer": {"opencv": runs(0.5)},
                           "presets": {"fast": runs(4.0)}, "floor": 1.0}}
    last = bench.report(results, "m").splitlines()[-1]
    assert last == ("set dashcam after start-up (wall less the startup set's), images/s: "
                    "deface 5.00, fast 10.00 (2.00x)")
    del results["startup"]
    assert "after start-up" not in bench.report(results, "m")


@pytest.mark.models
@pytest.mark.slow
def test_bench_runs_the_pipeline_and_prints_the_table(tmp_path, capsys, sample_paths):
    image = cv2.imread(sample_paths[0])
    cv2.imwrite(str(tmp_path / "small.jpg"), cv2.resize(image, (240, 180)))
    assert bench.main(["--images", str(tmp_path / "*.jpg"), "--repeat", "1", "--presets",
                       "fast", "--no-peer", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "beam_anon --preset fast" in out and "floor" in out and "model passes" in out
    assert "failed records" not in out
    assert (tmp_path / "r.json").stat().st_size > 0


def test_peer_timing_counts_a_run_and_refuses_missing_outputs(tmp_path):
    from beam_anon.tools import peer
    fake = tmp_path / "deface"
    fake.write_text("#!/bin/sh\nfor f in \"$@\"; do case $f in --*|opencv) ;; "
                    "*) cp \"$f\" \"${f%.jpg}_anonymized.jpg\";; esac; done\n")
    fake.chmod(0o755)
    img = tmp_path / "a.jpg"
    img.write_bytes(b"x")
    got = peer.time_deface(str(fake), [str(img), str(img)], "opencv")
    assert got["wall"] > 0 and got["cpu"] >= 0
    fake.write_text("#!/bin/sh\nexit 0\n")
    with pytest.raises(RuntimeError, match="0/1 written"):
        peer.time_deface(str(fake), [str(img)], "opencv")


@pytest.mark.models
def test_model_times_cover_every_model_and_variant(tmp_path, sample_paths):
    from beam_anon import models
    from beam_anon.detectors import runtime
    image = cv2.resize(cv2.imread(sample_paths[0]), (320, 180))
    cv2.imwrite(str(tmp_path / "f.jpg"), image)
    rows = bench.model_times(str(tmp_path / "f.jpg"), 1)
    want = {(n, v) for n in models.detector_names() for v in runtime.variants(models.model_info(n))}
    assert ("nanodet-g-coco", "original") not in want   # its original is a TF.js graph
    assert {(r["model"], r["variant"]) for r in rows} == want
    assert all(r["ms"] > 0 and r["input_pixels"] > 0 for r in rows)
    assert "int8" in bench.model_report(rows, "f.jpg")


def test_breakdown_means_per_step_and_per_image_size():
    def rec(w, h, faces, plates):
        return {"status": "ok", "width": w, "height": h, "passes": {"m": 2},
                "megapixels": {"m": 1.0}, "timings": {"faces": faces, "plates": plates}}
    records = [rec(1280, 720, 0.070, 0.080)] * 3 + [rec(1920, 1080, 0.230, 0.150)] * 3
    text = bench.breakdown(records)
    assert "ms per image (mean): faces=150  plates=115" in text   # not a bimodal median
    assert "1280x720 (3): faces=70  plates=80" in text and "1920x1080 (3): faces=230" in text
    assert bench.breakdown(records[:3]).count("x720") == 0          # one size: no size lines
