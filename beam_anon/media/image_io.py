"""Decode image bytes to upright 8-bit BGR and encode them back, without leaking metadata.

Contract
* :func:`decode` reads the header with Pillow first (no pixel decoding) and refuses images larger
  than ``max_pixels`` (decompression-bomb guard), then decodes with OpenCV (Pillow only for CMYK
  JPEG and grey PNG with a transparent colour). It applies the EXIF orientation (all 8 values), so
  ``pixels`` is upright; grey and palette images become 3-channel BGR, 16-bit PNG is scaled to
  8 bits, an alpha channel is kept apart in ``alpha``. Formats: JPEG (also MPO: only its first
  picture) and PNG (only its first frame). Anything else, or empty/corrupt/truncated bytes, raises
  :class:`ImageError`.
* :func:`encode` writes the same format, upright (no orientation tag), and re-attaches ``alpha``
  (PNG only). It writes no metadata except what ``metadata`` carries.

Metadata policy (what can reach an output file)
* Always dropped: GPS, maker notes, serial numbers, owner/artist/copyright, descriptions and
  comments, XMP, IPTC, the EXIF thumbnail (an un-anonymized copy of the picture), JPEG COM
  segments, PNG text chunks (tEXt/zTXt/iTXt), every other APPn/ancillary chunk, and the
  orientation tag (pixels are written upright).
* Kept by default: the ICC colour profile (iCCP / APP2 ICC_PROFILE), so colours do not shift.
  It describes a colour space, not the scene or the person; pass ``metadata=None`` to drop it.
* Kept only with ``keep_metadata`` (Settings): the EXIF tags in :data:`EXIF_ALLOW_LIST`, i.e.
  the capture time (without time-zone offset) and exposure parameters. Camera make/model, lens,
  software, serial numbers and anything else that can single out a device or a person are not
  in the list.
"""
from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

#: EXIF tags copied when ``keep_metadata`` is on: {tag id: name}; IFD0 and Exif sub-IFD.
EXIF_IFD0_ALLOW = {0x0132: "DateTime"}
EXIF_SUBIFD_ALLOW = {
    0x9003: "DateTimeOriginal", 0x9004: "DateTimeDigitized",
    0x829A: "ExposureTime", 0x829D: "FNumber", 0x8822: "ExposureProgram",
    0x8827: "ISOSpeedRatings", 0x9201: "ShutterSpeedValue", 0x9202: "ApertureValue",
    0x9204: "ExposureBiasValue", 0x9207: "MeteringMode", 0x9209: "Flash",
    0x920A: "FocalLength", 0xA405: "FocalLengthIn35mmFilm", 0xA402: "ExposureMode",
    0xA403: "WhiteBalance", 0xA001: "ColorSpace",
}
EXIF_ALLOW_LIST = {**EXIF_IFD0_ALLOW, **EXIF_SUBIFD_ALLOW}
_EXIF_IFD = 0x8769
_ORIENTATION = 0x0112
_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png"}


class ImageError(ValueError):
    """The bytes are not an image beam_anon can process (message says why)."""


@dataclass(frozen=True)
class ImageMetadata:
    """Metadata that may be written back: an ICC profile and allow-listed EXIF (TIFF bytes)."""

    icc_profile: bytes | None = None
    exif: bytes | None = None


@dataclass(frozen=True)
class DecodedImage:
    """``pixels`` upright uint8 BGR (H, W, 3); ``alpha`` uint8 (H, W) or None; ``format``
    ``jpeg`` | ``png``; ``orientation`` the EXIF value that was applied (1 = none);
    ``metadata`` what :func:`encode` may write back (see the module docstring)."""

    pixels: np.ndarray
    alpha: np.ndarray | None
    format: str
    orientation: int = 1
    metadata: ImageMetadata = ImageMetadata()

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    def output_metadata(self, keep_metadata: bool) -> ImageMetadata:
        """What to write back: the ICC profile always, allow-listed EXIF if ``keep_metadata``."""
        return ImageMetadata(self.metadata.icc_profile,
                             self.metadata.exif if keep_metadata else None)


def decode(data: bytes, max_pixels: int) -> DecodedImage:
    """Bytes of a JPEG or PNG -> :class:`DecodedImage`; raises :class:`ImageError`."""
    if not data:
        raise ImageError("empty file")
    header, fmt = _open_header(data, max_pixels)
    exif = _read_exif(header, data, fmt)
    orientation = int(exif.get(_ORIENTATION, 1) or 1) if exif is not None else 1
    if orientation not in range(1, 9):
        orientation = 1
    if fmt == "jpeg" and header.mode != "CMYK":
        arr = cv2.imdecode(np.frombuffer(data, np.uint8),
                           cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    elif fmt == "png" and ("transparency" not in header.info or header.mode.startswith("I")):
        arr = cv2.imdecode(np.frombuffer(data, np.uint8),
                           cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    else:  # CMYK JPEG (Adobe inversion), 8-bit PNG with a tRNS transparent colour
        arr = _decode_with_pillow(header)
    if arr is None:
        raise ImageError(f"corrupt or truncated {fmt.upper()} data")
    pixels, alpha = _to_bgr8(arr)
    if (pixels.shape[1], pixels.shape[0]) != header.size:
        raise ImageError(f"decoded size {pixels.shape[1]}x{pixels.shape[0]} does not match "
                         f"header size {header.size[0]}x{header.size[1]}")
    pixels = apply_orientation(pixels, orientation)
    alpha = apply_orientation(alpha, orientation) if alpha is not None else None
    meta = ImageMetadata(header.info.get("icc_profile") or None, _allowed_exif(exif))
    return DecodedImage(pixels, alpha, fmt, orientation, meta)


def encode(pixels: np.ndarray, alpha: np.ndarray | None, format: str, jpeg_quality: int = 95,
           metadata: ImageMetadata | None = None) -> bytes:
    """Upright uint8 BGR (+ optional alpha for PNG) -> JPEG/PNG bytes with only ``metadata``."""
    if format == "jpeg":
        ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    elif format == "png":
        image = pixels if alpha is None else np.dstack([pixels, alpha])
        ok, buf = cv2.imencode(".png", image)
    else:
        raise ImageError(f"cannot encode format {format!r} (jpeg or png)")
    if not ok:
        raise ImageError(f"OpenCV failed to encode {format}")
    out = buf.tobytes()
    if metadata is None or not (metadata.icc_profile or metadata.exif):
        return out
    return (_jpeg_with_metadata if format == "jpeg" else _png_with_metadata)(out, metadata)


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image stored with EXIF ``orientation`` (1-8) upright (same as Pillow's
    ``ImageOps.exif_transpose``)."""
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(image), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


# --- decoding helpers -------------------------------------------------------------------------

def _open_header(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's own guard must not be stricter than ours
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageError(f"image too large, above max_pixels={max_pixels}; refused "
                         f"(decompression-bomb guard): {e}")
    except UnidentifiedImageError:
        raise ImageError(f"not a recognised image ({len(data)} bytes, starts {data[:8]!r})")
    except Exception as e:  # Pillow raises many types on damaged headers
        raise ImageError(f"unreadable image header: {type(e).__name__}: {e}")
    fmt = _FORMATS.get(header.format or "")
    if fmt is None:
        raise ImageError(f"unsupported image format {header.format} (only JPEG and PNG)")
    w, h = header.size
    if w <= 0 or h <= 0:
        raise ImageError(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(f"image is {w}x{h} = {w * h} pixels, above max_pixels={max_pixels}; "
                         "refused (decompression-bomb guard, raise --max_pixels to allow)")
    return header, fmt


def _read_exif(header: Image.Image, data: bytes, fmt: str) -> Image.Exif | None:
    """Parsed EXIF without decoding pixels (Pillow's PNG getexif() would decode the image)."""
    try:
        if fmt == "jpeg":
            return header.getexif()
        raw = header.info.get("exif") or _png_chunk(data, b"eXIf")
        if not raw:
            return None
        exif = Image.Exif()
        exif.load(raw if raw.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + raw)
        return exif
    except Exception:  # unreadable EXIF: treat as absent, the pixels still decode
        return None


def _png_chunk(data: bytes, ctype: bytes) -> bytes | None:
    """Payload of the first PNG chunk of type ``ctype`` (walks chunk headers only)."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == ctype:
            return data[pos + 8:pos + 8 + length]
        if kind == b"IEND":
            return None
        pos += 12 + length
    return None


def _decode_with_pillow(header: Image.Image) -> np.ndarray | None:
    try:
        mode = "RGBA" if "transparency" in header.info or "A" in header.mode else "RGB"
        rgb = np.asarray(header.convert(mode))
    except Exception as e:
        raise ImageError(f"corrupt image data: {type(e).__name__}: {e}")
    return cv2.cvtColor(rgb, cv2.COLOR_RGBA2BGRA if mode == "RGBA" else cv2.COLOR_RGB2BGR)


def _to_bgr8(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """OpenCV's decoded array (1/3/4 channels, 8 or 16 bit) -> (BGR uint8, alpha or None)."""
    if arr.dtype == np.uint16:
        arr = cv2.convertScaleAbs(arr, alpha=255.0 / 65535.0)
    elif arr.dtype != np.uint8:
        raise ImageError(f"unsupported sample type {arr.dtype}")
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR), None
    if arr.shape[2] == 3:
        return arr, None
    if arr.shape[2] == 4:
        return np.ascontiguousarray(arr[:, :, :3]), np.ascontiguousarray(arr[:, :, 3])
    raise ImageError(f"unsupported channel count {arr.shape[2]}")


def _allowed_exif(exif: Image.Exif | None) -> bytes | None:
    """TIFF-style EXIF bytes holding only :data:`EXIF_ALLOW_LIST` tags (no thumbnail)."""
    if exif is None:
        return None
    out = Image.Exif()
    for tag in EXIF_IFD0_ALLOW:
        if tag in exif:
            out[tag] = exif[tag]
    try:
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:
        sub = {}
    kept = {tag: sub[tag] for tag in EXIF_SUBIFD_ALLOW if tag in sub}
    if kept:
        out.get_ifd(_EXIF_IFD).update(kept)
    if not len(out) and not kept:
        return None
    return out.tobytes()  # starts with b"Exif\0\0"


# --- writing metadata into encoded bytes ------------------------------------------------------

def jpeg_segments(meta: ImageMetadata) -> list[tuple[int, bytes]]:
    """``[(marker, payload)]`` of the JPEG segments that carry ``meta``: APP1 Exif (allow-listed
    tags only) and APP2 ICC_PROFILE chunks; built from ``meta``, never copied from a file."""
    segments = []
    if meta.exif:
        exif = meta.exif if meta.exif.startswith(b"Exif") else b"Exif\x00\x00" + meta.exif
        if len(exif) <= 65533:
            segments.append((0xE1, exif))
    if meta.icc_profile:
        icc = meta.icc_profile
        chunks = [icc[i:i + 65519] for i in range(0, len(icc), 65519)]
        for n, chunk in enumerate(chunks, 1):
            segments.append((0xE2, b"ICC_PROFILE\x00" + bytes([n, len(chunks)]) + chunk))
    return segments


def _jpeg_with_metadata(jpeg: bytes, meta: ImageMetadata) -> bytes:
    """Insert the :func:`jpeg_segments` after SOI/APP0 of OpenCV's JPEG."""
    segments = b"".join(bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body
                        for marker, body in jpeg_segments(meta))
    pos = 2
    if jpeg[2:4] == b"\xff\xe0":  # keep JFIF APP0 first
        pos = 4 + struct.unpack(">H", jpeg[4:6])[0]
    return jpeg[:pos] + segments + jpeg[pos:]


def _png_chunk_bytes(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def _png_with_metadata(png: bytes, meta: ImageMetadata) -> bytes:
    """Insert iCCP and eXIf chunks right after IHDR of OpenCV's PNG."""
    chunks = b""
    if meta.icc_profile:
        chunks += _png_chunk_bytes(b"iCCP", b"ICC\x00\x00" + zlib.compress(meta.icc_profile))
    if meta.exif:
        exif = meta.exif[6:] if meta.exif.startswith(b"Exif\x00\x00") else meta.exif
        chunks += _png_chunk_bytes(b"eXIf", exif)
    ihdr_end = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    return png[:ihdr_end] + chunks + png[ihdr_end:]
