"""python -m beam_anon.bench: the image set and one tiny real run printing the table."""
from __future__ import annotations

import os

import cv2
import pytest

from beam_anon import bench


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


@pytest.mark.models
@pytest.mark.slow
def test_bench_runs_the_pipeline_and_prints_the_table(tmp_path, capsys, sample_paths):
    sample = sample_paths[0]
    image = cv2.imread(sample)
    cv2.imwrite(str(tmp_path / "small.jpg"), cv2.resize(image, (240, 180)))
    assert bench.main(["--images", str(tmp_path / "*.jpg"), "--repeat", "1", "--workers", "1",
                       "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "pipeline, FnApiRunner, 1 worker" in out and "floor" in out and "peer" in out
    assert "failed records" not in out
    assert (tmp_path / "r.json").stat().st_size > 0
