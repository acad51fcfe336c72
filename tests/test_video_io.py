"""Video in and out without models (beam_anon.media.video_io, beam_anon.media.video_encode): probing every
container, display orientation, seeking to a frame range, encoding parts and joining them with
the audio copied byte for byte and no metadata or GPS streams. Clips are generated here."""
import av
import numpy as np
import pytest

from beam_anon.media import video_encode, video_io
from beam_anon.tools.video_sample import SECRETS, write_video

FPS = 10


def moving(n=12, w=96, h=64):
    """Frames with a moving square and a gradient: every frame differs."""
    y, x = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        img = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 40)], -1).astype(np.uint8)
        img[10:30, 5 + 5 * i:25 + 5 * i] = (255, 0, 255)
        out.append(img)
    return out


def decode_all(path):
    with av.open(path) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


def packets(path, kind):
    with av.open(path) as c:
        streams = [s for s in c.streams if s.type == kind]
        return [(p.pts, p.dts, bytes(p)) for p in c.demux(*streams) if p.size] if streams else []


@pytest.mark.parametrize("ext, seekable, dropped", [
    ("mp4", True, ("subtitle", "data")), ("mov", True, ("subtitle",)),
    ("mkv", True, ("subtitle",)), ("avi", False, ())])
def test_probe_every_container(tmp_path, ext, seekable, dropped):
    path = str(tmp_path / f"clip.{ext}")
    write_video(path, moving(), FPS, gop=4)
    probe = video_io.probe(path, 10**8)
    info = probe.info
    assert (info.frames, info.rate, info.width, info.height) == (12, FPS, 96, 64)
    assert info.seekable == seekable and info.dropped_streams == dropped
    assert info.audio_streams == 1 and info.codec == "h264"
    assert list(probe.pts) == sorted(probe.pts) and len(set(probe.pts)) == 12
    span = float((probe.pts[-1] + probe.durations[-1] - probe.pts[0]) * info.time_base)
    assert abs(span - 1.2) < 1e-6
    assert info.keyframes == ((0, 4, 8) if seekable else (0,))


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_display_orientation_is_applied(tmp_path, rotation):
    frames = moving()
    path = str(tmp_path / "turned.mp4")
    write_video(path, frames, FPS, rotation=rotation)
    info = video_io.probe(path, 10**8).info
    with av.open(path) as c:
        stored = next(c.decode(video=0))
        assert stored.rotation % 360 == rotation  # PyAV's own reading of the matrix agrees
        assert (stored.width, stored.height) == ((64, 96) if rotation != 180 else (96, 64))
    assert info.orientation.degrees == rotation and info.display_size == (96, 64)
    pts = video_io.probe(path, 10**8).pts
    upright = [img for _, img in video_io.decode_range(path, info, 0, 12, pts)]
    assert all(img.shape == (64, 96, 3) for img in upright)
    err = np.abs(upright[3].astype(int) - frames[3].astype(int)).mean()
    assert err < 4, err  # the same picture, not a turned or mirrored one


def test_mirrored_display_matrices():
    import struct
    one = 65536
    flip = struct.pack("<9i", -one, 0, 0, 0, one, 0, 0, 0, 1 << 30)  # x' = -x
    assert video_io.orientation_from_matrix(flip) == video_io.Orientation(False, True, False)
    odd = struct.pack("<9i", 46341, 46341, 0, -46341, 46341, 0, 0, 0, 1 << 30)  # 45 degrees
    with pytest.raises(video_io.VideoError, match="90 degrees"):
        video_io.orientation_from_matrix(odd)


@pytest.mark.parametrize("ext", ["mp4", "mkv", "mov"])
def test_a_range_after_a_seek_equals_decoding_from_the_start(tmp_path, ext):
    path = str(tmp_path / f"clip.{ext}")
    write_video(path, moving(), FPS, gop=4)
    probe = video_io.probe(path, 10**8)
    whole = dict(video_io.decode_range(path, probe.info, 0, 12, probe.pts))
    part = list(video_io.decode_range(path, probe.info, 5, 10, probe.pts[5:10]))
    assert [i for i, _ in part] == [5, 6, 7, 8, 9]
    assert all(np.array_equal(img, whole[i]) for i, img in part)


def test_wrong_expected_timestamps_fail(tmp_path):
    path = str(tmp_path / "clip.mp4")
    write_video(path, moving(), FPS, gop=4)
    probe = video_io.probe(path, 10**8)
    with pytest.raises(video_io.VideoError, match="expected pts"):
        list(video_io.decode_range(path, probe.info, 2, 6, probe.pts[2:6] + 1))


def _encode_parts(tmp_path, src, bounds, preset=("medium", "medium")):
    probe = video_io.probe(src, 10**8)
    info, frames = probe.info, dict(video_io.decode_range(src, probe.info, 0, 12, probe.pts))
    parts = []
    for k, (lo, hi) in enumerate(bounds):
        path = str(tmp_path / f"part{k}.mp4")
        w = video_encode.PartWriter(path, 96, 64, info.rate, info.time_base, info.container,
                                    18, preset[k % 2])
        for i in range(lo, hi):
            w.write(frames[i], probe.pts[i], probe.durations[i])
        assert w.close() == hi - lo
        parts.append(path)
    return probe, parts


@pytest.mark.parametrize("ext", ["mp4", "mov", "mkv", "avi"])
def test_parts_join_with_same_frames_timing_and_audio(tmp_path, ext):
    src = str(tmp_path / f"clip.{ext}")
    write_video(src, moving(), FPS, gop=4)
    probe, parts = _encode_parts(tmp_path, src, [(0, 4), (4, 9), (9, 12)])
    out = str(tmp_path / f"out.{ext}")
    assert video_encode.join(parts, src, out, probe.info, keep_metadata=False) == 12
    again = video_io.probe(out, 10**8)
    assert again.info.frames == 12 and again.info.rate == FPS
    assert list(again.pts) == list(probe.pts) and list(again.durations) == list(probe.durations)
    assert abs(again.info.duration - probe.info.duration) < 0.05
    assert again.info.dropped_streams == () and again.info.audio_streams == 1
    assert packets(out, "audio") == packets(src, "audio")  # remuxed, not re-encoded
    assert len(decode_all(out)) == 12
    with av.open(out) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert set(c.metadata) <= {"encoder", "major_brand", "minor_version",
                                   "compatible_brands", "software", "ENCODER"}
        assert not any("creation_time" in s.metadata for s in c.streams)
    data = open(out, "rb").read()
    assert not [s for s in SECRETS if s in data]


def test_keep_metadata_keeps_only_the_allow_list(tmp_path):
    src = str(tmp_path / "clip.mp4")
    write_video(src, moving(), FPS, gop=4)
    probe, parts = _encode_parts(tmp_path, src, [(0, 12)])
    out = str(tmp_path / "out.mp4")
    video_encode.join(parts, src, out, probe.info, keep_metadata=True)
    with av.open(out) as c:
        assert c.metadata["creation_time"].startswith("2024-01-02T03:04:05")
        assert "title" not in c.metadata and "location" not in c.metadata
    data = open(out, "rb").read()
    assert not [s for s in SECRETS if s in data]


def test_parts_with_other_codec_parameters_are_refused(tmp_path):
    src = str(tmp_path / "clip.mp4")
    write_video(src, moving(), FPS, gop=4)
    probe, parts = _encode_parts(tmp_path, src, [(0, 4), (4, 12)], ("medium", "ultrafast"))
    with pytest.raises(video_io.VideoError, match="other codec parameters"):
        video_encode.join(parts, src, str(tmp_path / "out.mp4"), probe.info, False)


def test_a_missing_frame_is_refused_by_the_join(tmp_path):
    src = str(tmp_path / "clip.mp4")
    write_video(src, moving(), FPS, gop=4)
    probe, parts = _encode_parts(tmp_path, src, [(0, 4), (5, 12)])
    with pytest.raises(video_io.VideoError, match="joined 11 video frames"):
        video_encode.join(parts, src, str(tmp_path / "out.mp4"), probe.info, False)


def test_probe_refusals(tmp_path):
    audio_only = str(tmp_path / "sound.mp4")
    with av.open(audio_only, "w") as out:
        a = out.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4800), np.float32), format="flt",
                                           layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        out.mux(a.encode(frame))
        out.mux(a.encode(None))
    with pytest.raises(video_io.VideoError, match="no video stream"):
        video_io.probe(audio_only, 10**8)
    clip = str(tmp_path / "clip.mp4")
    write_video(clip, moving(), FPS)
    with pytest.raises(video_io.VideoError, match="exceed max_pixels"):
        video_io.probe(clip, 96 * 64 - 1)
    with pytest.raises(video_io.VideoError, match="unsupported video container"):
        video_io.probe(str(tmp_path / "clip.webm"), 10**8)


def test_audio_that_cannot_be_remuxed_unchanged_is_refused(tmp_path):
    """AAC in AVI: FFmpeg's AVI muxer would index the copied packets as constant-size audio,
    changing their timing; the join checks and refuses instead of writing it."""
    src = str(tmp_path / "clip.avi")
    write_video(src, moving(), FPS, audio_codec="aac")
    probe, parts = _encode_parts(tmp_path, src, [(0, 12)])
    with pytest.raises(video_io.VideoError, match="audio could not be copied unchanged"):
        video_encode.join(parts, src, str(tmp_path / "out.avi"), probe.info, False)
