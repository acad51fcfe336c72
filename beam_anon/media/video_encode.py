"""Video files out: encode a segment's frames to H.264, join the segments in order with the
source's audio copied unchanged, publish the file atomically.

* Parts: each segment is encoded on its own (:class:`PartWriter`, libx264 when the bundled FFmpeg
  has it, else the first H.264 encoder it has, else MPEG-4 part 2) into an MP4 file with the
  source's time base and each frame's own pts and duration, so frame rate, frame count and
  duration carry over exactly (variable frame rate too). Every part starts with a keyframe, so
  parts join without re-encoding; :func:`join` refuses parts whose codec headers differ.
* Join: one output in the input's container, holding the video (packets of the parts, in order)
  and every audio stream of the source, packets remuxed byte for byte (no re-encode), interleaved
  by time. Subtitle, data (GPS, telemetry) and attachment streams are dropped, and so is all
  metadata: container and stream tags, chapters. ``keep_metadata`` keeps only the tags in
  :data:`CONTAINER_TAGS_KEPT` and :data:`STREAM_TAGS_KEPT` (never location, device or names). The
  muxer writes its own ``encoder`` tag. Frames are written upright, without a display matrix.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import heapq
import shutil
import tempfile
from fractions import Fraction
from typing import Iterator, Sequence

import av
import av.bitstream
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_anon.media.video_io import VideoError, VideoInfo, open_video

#: tags copied with ``keep_metadata``: the capture time and the audio/video language
CONTAINER_TAGS_KEPT = ("creation_time",)
STREAM_TAGS_KEPT = ("language", "creation_time")
PART_FORMAT = "mp4"
_ENCODERS = ("libx264", "libopenh264", "h264_v4l2m2m", "mpeg4")


@functools.lru_cache(maxsize=1)
def encoder_name() -> str:
    """The video encoder used: libx264 if the bundled FFmpeg has it, else the next available of
    ``_ENCODERS``."""
    for name in _ENCODERS:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise VideoError("the bundled FFmpeg has no H.264 or MPEG-4 encoder")


def encoder_options(name: str, crf: int, preset: str) -> dict[str, str]:
    """Encoder options for quality ``crf`` (libx264: constant rate factor, lower is better,
    18 ~ visually lossless) and speed ``preset``."""
    if name == "libx264":
        return {"crf": str(crf), "preset": preset}
    return {"qscale": str(max(1, min(31, crf // 4)))} if name == "mpeg4" else {}


class PartWriter:
    """Encode upright BGR frames (all ``width`` x ``height``) into ``path`` (local), with the
    pts and duration given per frame in ``time_base`` units."""

    def __init__(self, path: str, width: int, height: int, rate: Fraction, time_base: Fraction,
                 container: str, crf: int, preset: str):
        self.out = av.open(path, "w", format=PART_FORMAT)
        name = encoder_name()
        self.stream = self.out.add_stream(name, rate=rate,
                                          options=encoder_options(name, crf, preset))
        if container == "avi":  # AVI stores no pts: frames must be in decode order
            self.stream.codec_context.max_b_frames = 0
        self.stream.width, self.stream.height = width, height
        # 4:2:0 needs even sizes; odd ones keep full chroma rather than lose a pixel row
        self.stream.pix_fmt = "yuv420p" if width % 2 == height % 2 == 0 else "yuv444p"
        self.stream.time_base = time_base
        self.stream.codec_context.time_base = time_base
        self.time_base = time_base
        self.frames = 0

    def write(self, bgr: np.ndarray, pts: int, duration: int) -> None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr), format="bgr24")
        frame.pts, frame.duration, frame.time_base = int(pts), int(duration), self.time_base
        self.out.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> int:
        """Flush and close; returns the number of frames written."""
        self.out.mux(self.stream.encode(None))
        self.out.close()
        return self.frames

    def abort(self) -> None:
        try:
            self.out.close()
        except Exception:
            pass


def _time(packet) -> Fraction:
    ts = packet.dts if packet.dts is not None else packet.pts
    return Fraction(ts if ts is not None else -(1 << 62)) * packet.time_base


def _part_packets(parts: Sequence[str], out_stream, annexb: bool) -> Iterator:
    """The video packets of ``parts`` in order, re-targeted to ``out_stream``; checks that every
    part has the codec header of the first. ``annexb``: H.264 turned into start-code form (AVI
    has no place for the MP4-style header)."""
    header = None
    for k, path in enumerate(parts):
        with open_video(path) as c:
            v = c.streams.video[0]
            extradata = bytes(v.codec_context.extradata or b"")
            if header is not None and extradata != header:
                raise VideoError(f"part {path} was encoded with other codec parameters")
            header = extradata
            bsf = (av.bitstream.BitStreamFilterContext(
                "h264_mp4toannexb", v, out_stream if k == 0 else None) if annexb else None)
            for packet in c.demux(v):
                if not packet.size:
                    continue
                for p in bsf.filter(packet) if bsf else (packet,):
                    p.stream = out_stream
                    yield p


def join(parts: Sequence[str], source: str, dest: str, info: VideoInfo,
         keep_metadata: bool) -> int:
    """Write ``dest`` (local path, in ``info.container``) from the video ``parts`` (in order)
    and the audio streams of ``source``. Returns the number of video frames written; raises
    VideoError unless it is ``info.frames``."""
    if not parts:
        raise VideoError("no video parts to join")
    with open_video(parts[0]) as first, open_video(source) as src:
        with av.open(dest, "w", format=info.container) as out:
            video = out.add_stream_from_template(first.streams.video[0])
            video.time_base = info.time_base  # the source's (AVI: one tick per frame slot)
            video.codec_context.framerate = info.rate  # muxers that store a frame rate (mkv)
            audio = {s.index: out.add_stream_from_template(s) for s in src.streams.audio}
            if keep_metadata:
                _copy_tags(src.metadata, out.metadata, CONTAINER_TAGS_KEPT)
                _copy_tags(src.streams.video[0].metadata, video.metadata, STREAM_TAGS_KEPT)
                for s in src.streams.audio:
                    _copy_tags(s.metadata, audio[s.index].metadata, STREAM_TAGS_KEPT)

            def audio_packets():
                for packet in src.demux(*src.streams.audio) if src.streams.audio else ():
                    if packet.size:
                        packet.stream = audio[packet.stream.index]
                        yield packet

            frames = 0
            annexb = (info.container == "avi"
                      and first.streams.video[0].codec_context.name == "h264")
            for packet in heapq.merge(_part_packets(parts, video, annexb), audio_packets(),
                                      key=_time):
                frames += packet.stream is video
                out.mux(packet)
    if frames != info.frames:
        raise VideoError(f"joined {frames} video frames, the input has {info.frames}")
    if _audio_packets(dest) != _audio_packets(source):
        raise VideoError(f"the audio could not be copied unchanged into {info.container} "
                         "(its packets or their timing would change)")
    return frames


def _audio_packets(path: str) -> list[tuple[int, float, bytes]]:
    """``(stream number, time in s to 0.1 ms, sha256)`` of every audio packet, in file order per
    stream: what "copied unchanged" compares."""
    with open_video(path) as c:
        streams = list(c.streams.audio)
        number = {s.index: k for k, s in enumerate(streams)}
        found = [(number[p.stream.index], round(float(_time(p)), 4),
                  hashlib.sha256(bytes(p)).digest())
                 for p in (c.demux(*streams) if streams else ()) if p.size]
    return sorted(found, key=lambda x: x[0])  # stable: file order within a stream


def _copy_tags(src, dst, names) -> None:
    for name in names:
        if name in src:
            dst[name] = src[name]


def upload(local: str, dest: str) -> None:
    """Copy a local file to ``dest`` on any Beam filesystem (no rename: for parts only)."""
    with open(local, "rb") as f, FileSystems.create(
            dest, mime_type="application/octet-stream",
            compression_type=CompressionTypes.UNCOMPRESSED) as out:
        shutil.copyfileobj(f, out, 1 << 20)


@contextlib.contextmanager
def local_tempdir() -> Iterator[str]:
    """A private local scratch directory, removed afterwards (parts and the joined file are
    anonymized, but they are removed all the same)."""
    path = tempfile.mkdtemp(prefix="beam_anon_video_")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
