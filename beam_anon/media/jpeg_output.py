"""How an anonymized image is written: JPEG lossless outside the blurred blocks (default), or
re-encoded whole; and the checks that prove what changed (the pipeline's and ``verify_jpeg``'s).

Policy (``Settings.jpeg_mode``, recorded per image in the manifest's ``jpeg`` and
``jpeg_reason``):

* ``lossless`` (default): a JPEG input is written by :func:`beam_anon.media.jpeg_lossless.rewrite`:
  only the MCUs touched by a blurred box (or holding a pixel the blur changed) are replaced, every
  other coefficient is the input's. An image with no box keeps all its coefficients.
* ``reencoded`` with the reason: ``--jpeg_mode reencode``; an EXIF orientation other than 1 on
  an upright output (re-encoded upright as before, quality ``jpeg_quality``). The blocks live
  in the stored orientation: the 90-degree turns (5-8, phones) need a transposed block grid the
  library cannot write; the mirrors (2-4) can be done on the coefficients (tried: block order
  and odd-frequency signs), but libjpeg's integer IDCT and chroma upsampling round differently
  on mirrored blocks, so such an output would decode 1 level off the input almost everywhere
  and the pixel-exact check below would not hold. Rare in dashcam and street data; a file the coefficient library cannot rewrite (CMYK, YCCK, RGB-coded,
  12-bit, lossless, damaged: ``jpeg_lossless.Unsupported``); or a lossless output that failed
  its self-check. TFRecord images keep their stored orientation, so every orientation is
  lossless there.
* Fail closed: the lossless output is decoded again before it is used; if a box's pixels are
  not the blurred ones (within quantization) the blurred picture is re-encoded instead. Either
  way only blurred pixels leave; an error in the re-encode fails the image as before.
PNG is always re-encoded (it is lossless anyway): ``jpeg`` is null.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from beam_anon.media import image_io, jpeg_lossless

LOSSLESS, REENCODED = "lossless", "reencoded"
MODES = ("lossless", "reencode")
#: a box fails the self-check when its decoded pixels are closer (mean absolute difference) to
#: the input's than to the blurred ones, and more than this many levels off the blurred ones
BOX_TOLERANCE = 1.5
log = logging.getLogger(__name__)


class SelfCheckError(RuntimeError):
    """A lossless output does not hold the blurred pixels (message says where)."""


@dataclass(frozen=True)
class Output:
    data: bytes
    jpeg: str | None = None      # LOSSLESS | REENCODED | None (not a JPEG)
    reason: str | None = None    # why REENCODED


def decode_pixels(data: bytes) -> np.ndarray:
    """JPEG bytes -> BGR as stored (no orientation applied), as ``image_io.decode`` decodes."""
    out = cv2.imdecode(np.frombuffer(data, np.uint8),
                       cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if out is None:
        raise SelfCheckError("the JPEG does not decode")
    return out


def outside_differences(reference: np.ndarray, decoded: np.ndarray, mask: np.ndarray,
                        mcu: tuple[int, int], margin: int = jpeg_lossless.MARGIN_MCUS) -> int:
    """Pixels that differ between ``reference`` and ``decoded`` outside the MCUs of ``mask``
    grown by ``margin`` MCUs."""
    height, width = reference.shape[:2]
    inside = jpeg_lossless.pixel_mask(mask, mcu, width, height, margin)
    differ = jpeg_lossless.changed_pixels(reference, decoded) > 0
    return int((differ & ~inside).sum())


def _half(image: np.ndarray, rect) -> np.ndarray:
    """``image``'s pixels under the half-resolution rectangle ``rect``, shrunk to it."""
    x0, y0, x1, y1 = rect
    return cv2.resize(image[2 * y0:2 * y1, 2 * x0:2 * x1], (x1 - x0, y1 - y0),
                      interpolation=cv2.INTER_AREA)


def self_check(out: bytes, reference: np.ndarray, blurred: np.ndarray, xyxy: np.ndarray) -> None:
    """Raise :class:`SelfCheckError` unless every box of ``out`` decodes closer to ``blurred``'s
    pixels than to ``reference``'s (the input's; see :data:`BOX_TOLERANCE`). Compared at half
    resolution (libjpeg's scaled decode costs half a full one; a blur is smooth)."""
    decoded = cv2.imdecode(np.frombuffer(out, np.uint8),
                           cv2.IMREAD_REDUCED_COLOR_2 | cv2.IMREAD_IGNORE_ORIENTATION)
    height, width = blurred.shape[:2]
    if decoded is None or decoded.shape[:2] != ((height + 1) // 2, (width + 1) // 2):
        raise SelfCheckError(f"output does not decode to {width}x{height}")
    error, allowed = [], []
    for x0, y0, x1, y1 in jpeg_lossless.pixel_rects(xyxy, width, height):
        rect = (x0 // 2, y0 // 2, max((x1 + 1) // 2, x0 // 2 + 1), max((y1 + 1) // 2, y0 // 2 + 1))
        expected = _half(blurred, rect)
        got = decoded[rect[1]:rect[3], rect[0]:rect[2]]
        if got.shape != expected.shape:  # a box of no pixels
            continue
        error.append(cv2.absdiff(got, expected).mean())
        allowed.append(max(BOX_TOLERANCE, cv2.absdiff(got, _half(reference, rect)).mean()))
    error, allowed = np.array(error), np.array(allowed)
    bad = np.nonzero(error > allowed)[0]
    if len(bad):
        raise SelfCheckError(f"{len(bad)} box(es) not blurred in the lossless output (mean "
                             f"error {error[bad].max():.1f} > {allowed[bad].min():.1f})")


def encode_output(data: bytes, img: image_io.DecodedImage, image: np.ndarray,
                  xyxy: np.ndarray, reference: np.ndarray, settings, stored: bool) -> Output:
    """The output bytes of one anonymized image (module doc). ``image``: the blurred picture,
    ``xyxy`` the blurred boxes and ``reference`` the decoded input, all three in the output's
    orientation: stored (``stored``, TFRecords) or upright (image files)."""
    if settings.jpeg_mode not in MODES:
        raise ValueError(f"unknown jpeg_mode {settings.jpeg_mode!r}: {' or '.join(MODES)}")
    metadata = img.output_metadata(settings.keep_metadata)
    if img.format != "jpeg":
        return Output(image_io.encode(image, img.alpha, img.format, settings.jpeg_quality,
                                      metadata))
    reason = None
    if settings.jpeg_mode == "reencode":
        reason = "jpeg_mode=reencode"
    elif not stored and img.orientation != 1:
        reason = (f"EXIF orientation {img.orientation}: the output is upright and its blocks "
                  "cannot be turned or mirrored pixel-exactly")
    else:
        try:
            out, _, _ = jpeg_lossless.rewrite(data, image, xyxy, image_io.jpeg_segments(metadata),
                                              reference)
            self_check(out, reference, image, xyxy)
            return Output(out, LOSSLESS)
        except (jpeg_lossless.Unsupported, SelfCheckError) as e:
            reason = str(e)
        except Exception as e:  # anything else in the lossless path: the re-encode still works
            log.warning("lossless JPEG writer failed, re-encoding: %s: %s", type(e).__name__, e)
            reason = f"lossless writer error: {type(e).__name__}: {e}"
    return Output(image_io.encode(image, None, "jpeg", settings.jpeg_quality, metadata),
                  REENCODED, reason)
