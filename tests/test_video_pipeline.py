"""The video pipeline on the FnApiRunner with the marker detector (tests/videofakes.py): output
container, frames, timing, audio and streams; the temporal step in the output pixels; segments
equal a whole-video run; rotation; CLI options; progress. Real models: test_video.py."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os

import apache_beam as beam
import av
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_anon.media import video_io
from beam_anon.tools.video_sample import SECRETS, write_video
from beam_anon import cli
from beam_anon.tools.evaluate import union_area
from tests.videofakes import blurred, leftovers, marker_factory, marker_frames, read_sidecar

RUNNER = "--runner=FnApiRunner"
N, FPS = 30, 10


def _run(src, out, *extra, factory=marker_factory):
    return cli.main(["--input", str(src), "--output", str(out), RUNNER, *extra],
                    anonymizer_factory=factory)


def _records(out) -> dict[str, dict]:
    with open(os.path.join(out, "manifest.jsonl")) as f:
        return {r["key"]: r for r in map(json.loads, f)}


def _decoded(path):
    probe = video_io.probe(path, 10**9)
    return probe, [img for _, img in video_io.decode_range(path, probe.info, 0,
                                                            probe.info.frames, probe.pts)]


def _audio(path):
    with av.open(path) as c:
        return [(p.pts, bytes(p)) for p in c.demux(*c.streams.audio) if p.size]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("markers")
    frames, objects = marker_frames(N)
    src = root / "in" / "drive" / "a.mp4"
    write_video(str(src), frames, FPS, gop=5)
    return root, src, objects


@pytest.fixture(scope="module")
def split(clip):
    root, src, _ = clip
    out = root / "split"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        _run(root / "in" / "**.mp4", out, "--video_segment_frames", "10")
    (root / "split_summary.txt").write_text(printed.getvalue())
    return out


def test_output_keeps_container_frames_timing_audio_and_drops_the_rest(clip, split):
    root, src, _ = clip
    rec = _records(split)["drive/a.mp4"]
    assert rec["status"] == "ok", rec["error"]
    out = split / "drive" / "a.mp4"
    assert rec["output"] == str(out) and rec["format"] == "mp4"
    assert (rec["width"], rec["height"]) == (160, 96) and rec["boxes"] == []
    v = rec["video"]
    assert (v["frames"], v["fps"], v["segments"], v["rotation"]) == (N, FPS, 3, 0)
    assert abs(v["duration"] - N / FPS) < 1e-6
    assert v["audio_streams"] == 1 and v["dropped_streams"] == ["subtitle", "data"]
    assert v["tracks"] == {"face": 3, "plate": 1}  # the 4-frame gap is longer than memory 3
    assert v["frames_detected"] == N and v["detector_runs"] > N  # context detected twice
    assert v["sidecar"] == str(out) + ".boxes.jsonl" and v["settings"]["track_memory"] == 3
    assert {"decode", "encode", "track", "join", "write", "probe"} <= set(rec["timings"])
    src_probe, dst_probe = video_io.probe(str(src), 10**9), video_io.probe(str(out), 10**9)
    assert dst_probe.info.frames == N and dst_probe.info.rate == FPS
    assert list(dst_probe.pts) == list(src_probe.pts)
    assert list(dst_probe.durations) == list(src_probe.durations)
    assert abs(dst_probe.info.duration - src_probe.info.duration) < 1e-3
    assert dst_probe.info.dropped_streams == () and dst_probe.info.audio_streams == 1
    assert _audio(str(out)) == _audio(str(src))
    data = out.read_bytes()
    assert not [s for s in SECRETS if s in data]
    assert not leftovers(str(split))
    summary = (root / "split_summary.txt").read_text()
    assert "beam_anon: 1 videos, 1 ok, 0 failed, 30 frames in 3 segments" in summary


def test_every_object_is_blurred_in_every_frame_missed_ones_too(clip, split):
    root, src, objects = clip
    _, before = _decoded(str(src))
    _, after = _decoded(str(split / "drive" / "a.mp4"))
    sidecar = read_sidecar(str(split / "drive" / "a.mp4.boxes.jsonl"))
    assert [line["frame"] for line in sidecar] == list(range(N))
    assert [line["t"] for line in sidecar] == [f / FPS for f in range(N)]
    for o in objects:
        for f, box in enumerate(o["boxes"]):
            assert blurred(before[f], after[f], box), (o["label"], f)
            added = [[b[k] for k in ("x0", "y0", "x1", "y1")] for b in sidecar[f]["boxes"]
                     if b["source"] != "detected"]
            if f in o["missed"]:  # the temporal step's boxes cover it
                x0, y0, x1, y1 = box
                assert union_area(np.array(added), box) >= 0.7 * (x1 - x0) * (y1 - y0), (
                    o["label"], f, added)
    far = np.abs(after[5][80:, :110].astype(int) - before[5][80:, :110]).mean()
    assert far < 3  # away from the objects the picture is unchanged (up to compression)
    a_missed = [b for b in sidecar[7]["boxes"] if b["source"] == "interpolated"]
    assert a_missed and a_missed[0]["track"] == sidecar[6]["boxes"][0]["track"]
    assert set(sidecar[0]["boxes"][0]) == {"label", "score", "track", "x0", "y0", "x1", "y1",
                                           "source"}


def test_segments_equal_a_whole_video_run_frame_for_frame(clip, split):
    root, _, _ = clip
    whole = root / "whole"
    _run(root / "in" / "**.mp4", whole, "--video_segment_frames", "0")
    assert _records(whole)["drive/a.mp4"]["video"]["segments"] == 1
    a = read_sidecar(str(whole / "drive" / "a.mp4.boxes.jsonl"))
    b = read_sidecar(str(split / "drive" / "a.mp4.boxes.jsonl"))
    assert a == b
    assert sum(len(line["boxes"]) for line in a) > 3 * N


def test_detect_every_third_frame_still_blurs_every_object(clip):
    root, src, objects = clip
    out = root / "every3"
    _run(src, out, "--video_detect_every", "3", "--video_segment_frames", "12")
    rec = _records(out)["a.mp4"]
    assert rec["status"] == "ok" and rec["video"]["frames_detected"] == 11  # 0, 3, .., 27, 29
    _, before = _decoded(str(src))
    _, after = _decoded(str(out / "a.mp4"))
    for o in objects:
        for f, box in enumerate(o["boxes"]):
            if not (o["label"] == "face" and 20 <= f <= 23):  # 4 missed + skipped frames
                assert blurred(before[f], after[f], box), (o["label"], f)


@pytest.mark.parametrize("ext", ["mov", "mkv", "avi"])
def test_other_containers_round_trip(tmp_path, ext):
    frames, objects = marker_frames(12)
    src = tmp_path / "in" / f"b.{ext}"
    write_video(str(src), frames, FPS, gop=4)
    out = tmp_path / "out"
    _run(tmp_path / "in" / f"*.{ext}", out, "--video_segment_frames", "4")
    rec = _records(out)[f"b.{ext}"]
    assert rec["status"] == "ok", rec["error"]
    assert rec["video"]["segments"] == (1 if ext == "avi" else 3)  # AVI: no pts, not split
    with av.open(str(out / f"b.{ext}")) as c:
        assert c.format.name == av.open(str(src)).format.name
        assert [s.type for s in c.streams] == ["video", "audio"]
    assert _audio(str(out / f"b.{ext}")) == _audio(str(src))
    _, before = _decoded(str(src))
    _, after = _decoded(str(out / f"b.{ext}"))
    assert len(after) == 12
    assert all(blurred(before[f], after[f], objects[0]["boxes"][f]) for f in range(12))


def test_rotation_is_applied_and_boxes_are_in_upright_pixels(tmp_path):
    frames, objects = marker_frames(8)
    src = tmp_path / "in" / "turned.mp4"
    write_video(str(src), frames, FPS, rotation=90)
    out = tmp_path / "out"
    _run(src, out)
    rec = _records(out)["turned.mp4"]
    assert rec["status"] == "ok" and rec["video"]["rotation"] == 90
    assert (rec["width"], rec["height"]) == (160, 96)
    with av.open(str(out / "turned.mp4")) as c:
        frame = next(c.decode(video=0))
        assert (frame.width, frame.height, frame.rotation) == (160, 96, 0)  # upright, no matrix
    sidecar = read_sidecar(str(out / "turned.mp4.boxes.jsonl"))
    first = [b for b in sidecar[0]["boxes"] if b["source"] == "detected"]
    x0, y0, x1, y1 = objects[0]["boxes"][0]
    assert any(abs(b["x0"] - x0) < 3 and abs(b["y1"] - y1) < 3 for b in first), first
    _, after = _decoded(str(out / "turned.mp4"))
    assert all(blurred(frames[f], after[f], objects[0]["boxes"][f]) for f in range(8))


def test_keep_metadata_keeps_the_capture_time_only(tmp_path):
    frames, _ = marker_frames(4)
    write_video(str(tmp_path / "in" / "m.mp4"), frames, FPS)
    _run(tmp_path / "in" / "m.mp4", tmp_path / "out", "--keep_metadata")
    with av.open(str(tmp_path / "out" / "m.mp4")) as c:
        assert c.metadata["creation_time"].startswith("2024-01-02")
        assert "title" not in c.metadata and "location" not in c.metadata
    data = (tmp_path / "out" / "m.mp4").read_bytes()
    assert not [s for s in SECRETS if s in data]


def test_progress_is_logged(tmp_path, caplog):
    frames, _ = marker_frames(6)
    write_video(str(tmp_path / "in" / "p.mp4"), frames, FPS)
    with caplog.at_level(logging.INFO, logger="beam_anon.progress"):
        _run(tmp_path / "in" / "p.mp4", tmp_path / "out")
    lines = [r.getMessage() for r in caplog.records if r.name == "beam_anon.progress"]
    assert any("p.mp4: segment 1/1 (frames 0-5 of 6): 6/6 frames" in m and "frames/s" in m
               for m in lines), lines


def test_input_format_and_option_checks(tmp_path):
    frames, _ = marker_frames(4)
    write_video(str(tmp_path / "in" / "clip.MOV"), frames, FPS, container="mov")
    out = tmp_path / "out"
    _run(tmp_path / "in" / "*", out, "--input_format", "video")  # no video extension in glob
    assert _records(out)["clip.MOV"]["status"] == "ok"
    for bad, message in ((["--video_detect_every", "3", "--video_track_memory", "1"],
                          "track_memory"), (["--skip_existing"], "skip_existing"),
                         (["--video_crf", "60"], "crf")):
        with pytest.raises(SystemExit, match=message):
            _run(tmp_path / "in" / "clip.MOV", tmp_path / "out2", "--input_format", "video",
                 *bad)


def test_dataflow_graph_for_videos_builds_offline(capsys):
    argv = ["--input", "gs://bkt/drives/**.mp4", "--output", "gs://bkt/anon",
            "--runner=DataflowRunner", "--project=my-project", "--region=us-central1",
            "--temp_location=gs://bkt/tmp", "--dry_run=True"]
    options = PipelineOptions(argv)
    pipeline = beam.Pipeline(options=options)
    cli.build(pipeline, options.view_as(cli.AnonymizeOptions))
    labels = {t.unique_name for t in pipeline.to_runner_api().components.transforms.values()}
    assert {"AnonymizeVideos/Segments", "AnonymizeVideos/ByVideo", "AnonymizeVideos/Finish",
            "WriteRecords/WriteManifest"} <= labels
    assert cli.main(argv) is not None
    assert "gs://bkt/anon/manifest.jsonl" in capsys.readouterr().out
