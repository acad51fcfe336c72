"""Bad video inputs through the CLI with the real models: each gets one clear ``failed`` record
and nothing is written for it (no video, no sidecar, no temporary file, no parts), and the good
video beside them is still anonymized. The corpus is generated here."""
from __future__ import annotations

import json
import os
import re

import av
import numpy as np
import pytest

from beam_anon.tools.video_sample import write_video
from beam_anon import cli
from tests.videofakes import leftovers, marker_frames

pytestmark = [pytest.mark.models, pytest.mark.slow]

CASES = {  # key: regex the error must match (None: ok)
    "good.mp4": None,
    "empty.mp4": r"empty file \(0 bytes\)",
    "text.mp4": r"not a video file FFmpeg can read .*Invalid data",
    "truncated.mp4": r"not a video file FFmpeg can read \(damaged, truncated.*Invalid data",
    "truncated_faststart.mp4": r"(video|audio) packet.* (cut off|but the file holds).*truncated",
    "sound.mp4": r"no video stream \(an audio-only file",
    "corrupt_frame.mp4": r"segment 1/1 \(frames 0-11\): undecodable video data at frame \d: "
                         r".*Invalid data",
    "huge.mkv": r"10240x10240 = 104857600 pixels exceed max_pixels=100000000",
    "clip.webm": r"unsupported video container '\.webm'",
}


def _faststart(src: str, dest: str) -> None:
    """``src`` remuxed with the index (moov) first, as cameras that stream write it."""
    with av.open(src) as i, av.open(dest, "w", options={"movflags": "+faststart"}) as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams
                   if s.type in ("video", "audio")}
        for p in i.demux(*[i.streams[k] for k in streams]):
            if p.size:
                p.stream = streams[p.stream.index]
                o.mux(p)


def _corrupt_packet(src: str, dest: str, index: int) -> None:
    """``src`` with the payload of video packet ``index`` overwritten with random bytes."""
    with av.open(src) as c:
        p = [(p.pos, p.size) for p in c.demux(video=0) if p.size][index]
    data = bytearray(open(src, "rb").read())
    data[p[0] + 4:p[0] + p[1]] = np.random.default_rng(4).integers(
        0, 256, p[1] - 4, dtype=np.uint8).tobytes()
    open(dest, "wb").write(bytes(data))


def _huge(dest: str) -> None:
    """One grey 10240 x 10240 MJPEG frame (105 MP; about 1.6 MB on disk)."""
    with av.open(dest, "w") as out:
        s = out.add_stream("mjpeg", rate=1)
        s.width = s.height = 10240
        s.pix_fmt = "yuvj420p"
        frame = av.VideoFrame.from_ndarray(np.full((15360, 10240), 128, np.uint8),
                                           format="yuvj420p")
        frame.pts = 0
        out.mux(s.encode(frame))
        out.mux(s.encode(None))


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_paths):
    root = tmp_path_factory.mktemp("badvideo")
    src, out = root / "in", root / "out"
    src.mkdir()
    frames, _ = marker_frames(12, (96, 64))
    write_video(str(src / "good.mp4"), frames[:6], 10)
    good = (src / "good.mp4").read_bytes()
    (src / "empty.mp4").write_bytes(b"")
    (src / "text.mp4").write_bytes(b"not a video, just some text\n" * 20)
    (src / "truncated.mp4").write_bytes(good[:len(good) // 2])
    _faststart(str(src / "good.mp4"), str(root / "fast.mp4"))
    fast = (root / "fast.mp4").read_bytes()
    (src / "truncated_faststart.mp4").write_bytes(fast[:int(len(fast) * 0.7)])
    with av.open(str(src / "sound.mp4"), "w") as o:
        a = o.add_stream("aac", rate=48000)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 48000), np.float32), format="flt",
                                       layout="mono")
        f.sample_rate, f.pts = 48000, 0
        o.mux(a.encode(f))
        o.mux(a.encode(None))
    write_video(str(root / "twelve.mp4"), frames, 10, gop=4)
    _corrupt_packet(str(root / "twelve.mp4"), str(src / "corrupt_frame.mp4"), 5)
    _huge(str(src / "huge.mkv"))
    (src / "clip.webm").write_bytes(good)
    cli.main(["--input", f"{src}/*", "--output", str(out), "--input_format", "video",
              "--runner=FnApiRunner"])
    with open(out / "manifest.jsonl") as f:
        records = [json.loads(line) for line in f]
    return src, out, records


def test_every_input_gets_exactly_one_record(run):
    _, _, records = run
    assert sorted(r["key"] for r in records) == sorted(CASES)


@pytest.mark.parametrize("key", sorted(CASES))
def test_clear_failure_and_nothing_written(run, key):
    src, out, records = run
    rec = next(r for r in records if r["key"] == key)
    if CASES[key] is None:
        assert rec["status"] == "ok", rec["error"]
        assert os.path.isfile(out / key) and os.path.isfile(out / f"{key}.boxes.jsonl")
        return
    assert rec["status"] == "failed" and rec["output"] is None and rec["error_type"]
    assert re.search(CASES[key], rec["error"]), rec["error"]
    assert not (out / key).exists() and not (out / f"{key}.boxes.jsonl").exists()


def test_no_partial_files_and_failures_in_the_review_queue(run):
    _, out, _ = run
    assert not leftovers(str(out))
    assert sorted(os.listdir(out)) == ["good.mp4", "good.mp4.boxes.jsonl", "manifest.jsonl",
                                       "review.jsonl"]
    with open(out / "review.jsonl") as f:
        failed = {json.loads(line)["key"] for line in f if "failed" in line}
    assert failed == {k for k, v in CASES.items() if v is not None}
