"""Video files in: probe the container, decode a range of frames upright. PyAV (the ``av``
wheel, which bundles FFmpeg); files are read through Beam's FileSystems (local, gs://, ...).

Frame numbers: 0 .. N-1 in presentation order, N = the number of non-empty video packets.
When every packet carries a distinct pts (mp4, mov, mkv) frame ``i`` is the one with the
``i``-th smallest pts, and a range is decoded after a seek to the keyframe before it
(``seekable``). Otherwise (avi: its packets carry decode-order numbers) frames are numbered as the
decoder outputs them from the start, frame ``i`` shows in the ``i``-th time slot (dts) that holds
a frame, and the video is one segment.

Display orientation: the stream's display matrix (rotation and mirroring metadata) is applied to
every frame, so frames are upright as a player shows them; sizes and boxes are in those pixels.
Fail closed: no video stream, an empty, truncated or corrupt file, a corrupt frame, a frame-count
or timestamp mismatch, or frames over ``max_pixels`` raise :class:`VideoError` (or PyAV's error).
"""
from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Sequence

import av
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

#: file extension -> FFmpeg muxer; the output is written in the input's container
CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}


class VideoError(ValueError):
    """A video beam_anon cannot process completely (message says why)."""


def container_for(path: str) -> str:
    """The muxer for ``path``'s extension; VideoError for an unsupported one."""
    ext = "." + path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    if ext not in CONTAINERS:
        raise VideoError(f"unsupported video container {ext or '(no extension)'!r}: "
                         f"expected one of {', '.join(CONTAINERS)}")
    return CONTAINERS[ext]


def is_video_path(path: str) -> bool:
    """Whether ``path`` (a file or a glob) ends in a video extension."""
    return any(path.lower().endswith(ext) for ext in CONTAINERS)


@dataclass(frozen=True)
class Orientation:
    """How stored pixels become display pixels: transpose first, then mirror."""

    transpose: bool = False
    flip_x: bool = False   # mirror left-right
    flip_y: bool = False   # mirror top-bottom

    def apply(self, img: np.ndarray) -> np.ndarray:
        if self.transpose:
            img = img.transpose(1, 0, 2)
        if self.flip_x:
            img = img[:, ::-1]
        if self.flip_y:
            img = img[::-1]
        return np.ascontiguousarray(img)

    def size(self, width: int, height: int) -> tuple[int, int]:
        """Display (width, height) of a stored ``width`` x ``height`` frame."""
        return (height, width) if self.transpose else (width, height)

    @property
    def degrees(self) -> int:
        """Counter-clockwise rotation it applies, ignoring mirroring (for the manifest)."""
        return {(False, False, False): 0, (True, False, True): 90, (False, True, True): 180,
                (True, True, False): 270}.get((self.transpose, self.flip_x, self.flip_y), -1)


def orientation_from_matrix(matrix: bytes | None) -> Orientation:
    """FFmpeg's display matrix (9 int32, 16.16 fixed point; a point (x, y) of the stored frame
    goes to (a*x + c*y, b*x + d*y) on screen) -> the :class:`Orientation` it describes.
    Only multiples of 90 degrees (with or without mirroring) are supported."""
    if not matrix:
        return Orientation()
    a, b, _, c, d, *_ = struct.unpack("<9i", bytes(matrix)[:36])
    a, b, c, d = (round(v / 65536) for v in (a, b, c, d))
    if {abs(a), abs(d)} == {1} and b == c == 0:
        return Orientation(False, a < 0, d < 0)
    if {abs(b), abs(c)} == {1} and a == d == 0:  # x' from y, y' from x: transposed
        return Orientation(True, c < 0, b < 0)
    raise VideoError(f"display matrix {a, b, c, d} is not a multiple of 90 degrees")


@dataclass(frozen=True)
class VideoInfo:
    """What the probe learned. Sizes in stored pixels (``display_size`` for upright ones);
    ``time_base`` of the video stream; ``rate`` its average frame rate (frames/s); ``duration``
    the container's, seconds."""

    container: str
    codec: str
    width: int
    height: int
    frames: int
    time_base: Fraction
    rate: Fraction
    duration: float
    seekable: bool
    keyframes: tuple[int, ...]
    orientation: Orientation
    audio_streams: int
    dropped_streams: tuple[str, ...]   # types of the streams not copied (subtitle, data, ...)

    @property
    def display_size(self) -> tuple[int, int]:
        return self.orientation.size(self.width, self.height)


@dataclass(frozen=True)
class Probe:
    """:class:`VideoInfo` plus each frame's output timestamp and duration (``time_base``
    units, frame order)."""

    info: VideoInfo
    pts: np.ndarray
    durations: np.ndarray


@contextlib.contextmanager
def open_video(path: str):
    """``av`` input container of ``path`` on any Beam filesystem; VideoError for an empty file
    or one FFmpeg cannot open."""
    with FileSystems.open(path, mime_type="application/octet-stream",
                          compression_type=CompressionTypes.UNCOMPRESSED) as f:
        if not f.read(1):
            raise VideoError("empty file (0 bytes)")
        f.seek(0)
        try:
            container = av.open(f, "r")
        except av.FFmpegError as e:
            raise VideoError(f"not a video file FFmpeg can read (damaged, truncated or another "
                             f"format): {e}") from e
        with container:
            yield container


def _read(items, what):
    """Iterate ``items`` (PyAV packets or frames), turning FFmpeg errors into VideoError with
    ``what`` (a string, or a function giving one) in front."""
    try:
        yield from items
    except av.FFmpegError as e:
        raise VideoError(f"{what() if callable(what) else what}: {e}") from e


def _rate(stream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    raise VideoError("the video stream states no frame rate")


def _display_matrix(frame) -> bytes | None:
    for side in frame.side_data:
        if str(side.type).endswith("DISPLAYMATRIX"):
            return bytes(side)
    return None


def probe(path: str, max_pixels: int) -> Probe:
    """Read the container and every video packet (no pixel decoding except the first frame,
    for its display matrix). Raises VideoError for what cannot be processed fully."""
    container = container_for(path)
    with open_video(path) as c:
        if not c.streams.video:
            raise VideoError("no video stream (an audio-only file, or not a video)")
        v = c.streams.video[0]
        width, height = v.codec_context.width, v.codec_context.height
        if width <= 0 or height <= 0:
            raise VideoError(f"video stream has no frame size ({width}x{height})")
        if width * height > max_pixels:
            raise VideoError(f"frames of {width}x{height} = {width * height} pixels exceed "
                             f"max_pixels={max_pixels} (resource guard); nothing decoded")
        rate, time_base = _rate(v), Fraction(v.time_base)
        packets, counts = [], {s.index: 0 for s in c.streams}
        for p in _read(c.demux(), "cannot read the file's packets"):
            if not p.size:
                continue
            if p.is_corrupt:
                raise VideoError(f"{p.stream.type} packet {counts[p.stream.index]} is damaged "
                                 "or cut off (corrupt or truncated file)")
            counts[p.stream.index] += 1
            if p.stream.index == v.index:
                packets.append((p.pts, p.duration, p.is_keyframe, p.dts))
        if not packets:
            raise VideoError("the video stream holds no frames")
        # mp4/mov list every sample in the header (AVI's count includes empty 'drop' chunks)
        for s in c.streams if container in ("mp4", "mov") else ():
            if s.type in ("video", "audio") and s.frames and s.frames != counts[s.index]:
                raise VideoError(f"the header lists {s.frames} {s.type} packets but the file "
                                 f"holds {counts[s.index]} (truncated?)")
        streams = [s.type for s in c.streams if s.index != v.index]
        duration = c.duration / av.time_base if c.duration else 0.0
        codec = v.codec_context.name
    with open_video(path) as c:
        first = next(_read(c.decode(c.streams.video[0]), "the first frame cannot be decoded"),
                     None)
        if first is None:
            raise VideoError("no frame could be decoded")
        orientation = orientation_from_matrix(_display_matrix(first))
    pts = [p[0] for p in packets]
    seekable = container != "avi" and None not in pts and len(set(pts)) == len(pts)
    if seekable:
        order = np.argsort(np.array(pts, np.int64), kind="stable")
        out_pts = np.array(pts, np.int64)[order]
        rank = {int(p): i for i, p in enumerate(out_pts)}
        keyframes = tuple(sorted(rank[p[0]] for p in packets if p[2]))
        step = np.diff(out_pts)
        last = packets[order[-1]][1] or (int(np.median(step)) if len(step) else 1)
        durations = np.append(step, last).astype(np.int64)
    else:  # one frame per time slot (AVI: its chunks, dts), in display order
        dts = [p[3] for p in packets]
        if None in dts or len(set(dts)) != len(dts):
            time_base, dts = 1 / rate, range(len(packets))
        out_pts = np.sort(np.array(dts, np.int64))
        durations = np.append(np.diff(out_pts), 1).astype(np.int64)
        keyframes = (0,)
    if not duration:
        duration = float((out_pts[-1] + durations[-1] - out_pts[0]) * time_base)
    info = VideoInfo(container, codec, width, height, len(packets), time_base, rate, duration,
                     seekable, keyframes, orientation, streams.count("audio"),
                     tuple(t for t in streams if t != "audio"))
    return Probe(info, out_pts, durations)


def decode_range(path: str, info: VideoInfo, lo: int, hi: int,
                 pts: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frame number, upright BGR uint8 frame)`` for frames ``lo .. hi-1``.
    ``pts``: the expected pts of frames ``lo .. hi-1`` (from :func:`probe`), checked for every
    frame when ``info.seekable``. Raises VideoError on a corrupt frame, a missing or unexpected
    frame, or a display matrix that changes; PyAV errors (undecodable data) pass through."""
    if not 0 <= lo < hi <= info.frames or len(pts) != hi - lo:
        raise ValueError(f"bad frame range [{lo}, {hi}) of {info.frames} ({len(pts)} pts)")
    for seek in ((True, False) if info.seekable and lo > 0 else (False,)):
        frames = _decode(path, info, lo, hi, pts, seek)
        first = next(frames, None)
        if first is None:  # the seek landed after the range: decode from the start instead
            continue
        yield first
        yield from frames
        return
    raise VideoError(f"frame {lo} could not be reached")


def _decode(path, info, lo, hi, pts, seek: bool):
    with open_video(path) as c:
        v = c.streams.video[0]
        if seek:
            c.seek(int(pts[0]), stream=v, backward=True, any_frame=False)
        seen, index = 0, lo  # seen: frames decoded (non-seekable videos count from the start)
        for frame in _read(c.decode(v), lambda: f"undecodable video data at frame {index}"):
            if frame.is_corrupt:
                raise VideoError(f"frame {index}: the decoder marked it corrupt")
            if info.seekable:
                if frame.pts is None:
                    raise VideoError(f"frame {index}: decoded without a timestamp")
                if frame.pts < pts[0]:
                    continue
                if index == lo and seek and frame.pts > pts[0]:
                    return  # the seek went past frame lo
                if frame.pts != pts[index - lo]:
                    raise VideoError(f"frame {index}: expected pts {pts[index - lo]}, "
                                     f"decoded {frame.pts} (missing or undecodable frame)")
            else:
                seen += 1
                if seen <= lo:
                    continue
            if orientation_from_matrix(_display_matrix(frame)) not in (info.orientation,
                                                                        Orientation()):
                raise VideoError(f"frame {index}: the display orientation changes mid-stream")
            yield index, info.orientation.apply(frame.to_ndarray(format="bgr24"))
            index += 1
            if index == hi:
                return
        raise VideoError(f"the video ended after frame {index - 1}, expected {hi - 1} "
                         "(truncated or undecodable frames)")
