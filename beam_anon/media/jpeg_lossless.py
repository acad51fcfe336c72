"""JPEG output that changes only the blocks (MCUs) holding blurred pixels: every other DCT
coefficient of the input is copied bit for bit (``pyjpegio``, libjpeg-turbo inside).

How (:func:`rewrite`): the input's coefficients are read; the set of MCUs to rewrite is decided
once, on the MCU grid, from *all* blurred boxes together plus every pixel the blur changed
(:func:`mcu_mask`); each block of those MCUs is replaced by the forward DCT of the final blurred
image (one image, blurred before any block is chosen, so overlapping or neighbouring boxes are
one region and no block is written from two sources: the sgblur #102 failure cannot happen, and
a box over the whole frame rewrites the whole frame, #42). The forward transform is JFIF's:
YCbCr, chroma box-averaged to the component's sampling, minus 128, orthonormal 8x8 DCT, divided
by the file's own quantization table, rounded. Subsampling, quantization tables, progressive
mode and restart interval are the input's; so are the Huffman tables when they can code any
block (:func:`keeps_huffman_tables`, the common case: one pass, no size change from coding),
else they are re-optimized (the input's may lack codes the new blocks need).
Decoding the output gives the input's pixels outside the rewritten MCUs; decoders with "fancy"
chroma upsampling (libjpeg, OpenCV, Pillow) may change a 1-pixel ring around them in subsampled
files (:data:`MARGIN_MCUS` covers it).

Metadata: markers are rebuilt, never copied: JFIF APP0 (density only, no thumbnail), Adobe
APP14 (colour transform only) when the input had them, then the caller's ``segments`` (ICC,
allow-listed EXIF; ``beam_anon.media.image_io.jpeg_segments``). Everything else (EXIF with its
thumbnail, XMP, IPTC, comments, MPF, other APPn) is dropped.

Not rewritable (raises :class:`Unsupported`, the caller re-encodes): CMYK/YCCK, RGB-coded and
12-bit files, lossless/arithmetic-coded or damaged files the library cannot read, unusual
sampling, an image whose size differs from the coefficients'. Units: pixels, xyxy boxes.
"""
from __future__ import annotations

import contextlib
import os
import struct
import tempfile

import cv2
import numpy as np

#: the margin, in MCUs, around rewritten MCUs where decoded pixels may differ (upsampling)
MARGIN_MCUS = 1
_GREY, _YCC = 1, 3              # libjpeg J_COLOR_SPACE values of the files we rewrite
_NAMES = {2: "RGB-coded", 4: "CMYK", 5: "YCCK"}


class Unsupported(ValueError):
    """This JPEG cannot be rewritten block by block (message says why): re-encode it."""


def _dct_matrix() -> np.ndarray:
    k, n = np.arange(8)[:, None], np.arange(8)[None, :]
    d = np.cos((2 * n + 1) * k * np.pi / 16) * np.sqrt(2 / 8)
    d[0] /= np.sqrt(2)
    return d.astype(np.float32)


_DCT = _dct_matrix()


def pixel_rects(xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 4) float boxes -> int rectangles containing them, clipped (as ``beam_anon.detection.blur``)."""
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    r = np.stack([np.floor(b[:, 0]), np.floor(b[:, 1]), np.ceil(b[:, 2]), np.ceil(b[:, 3])], 1)
    return np.clip(r, 0, [width, height, width, height]).astype(np.int64)


def changed_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(H, W) uint8, non-zero where the BGR images ``a`` and ``b`` differ in any channel."""
    channels = cv2.split(cv2.absdiff(a, b))
    out = channels[0]
    for c in channels[1:]:
        out = cv2.bitwise_or(out, c)
    return out


def mcu_mask(xyxy: np.ndarray, width: int, height: int, mcu: tuple[int, int]) -> np.ndarray:
    """(rows, cols) bool on the MCU grid (``mcu`` = (w, h) pixels): every MCU a box touches."""
    mw, mh = mcu
    mask = np.zeros((-(-height // mh), -(-width // mw)), bool)
    for x0, y0, x1, y1 in pixel_rects(xyxy, width, height):
        if x1 > x0 and y1 > y0:
            mask[y0 // mh:-(-y1 // mh), x0 // mw:-(-x1 // mw)] = True
    return mask


def changed_mcus(a: np.ndarray, b: np.ndarray, mcu: tuple[int, int]) -> np.ndarray:
    """(rows, cols) bool: the MCUs where the uint8 pictures ``a`` and ``b`` (H, W[, C]) differ
    in some sample; compared 8 bytes at a time when a row is a whole number of 8-byte words."""
    mw, mh = mcu
    height, width = a.shape[:2]
    rows, cols = -(-height // mh), -(-width // mw)
    per_pixel = a.size // (height * width)
    if (width * per_pixel) % 8 == 0:
        words = [np.ascontiguousarray(x).reshape(height, -1).view(np.uint64) for x in (a, b)]
        differ, unit = words[0] != words[1], mw * per_pixel // 8   # unit: words per MCU row
    else:
        differ, unit = (a != b).reshape(height, -1), mw * per_pixel
    grid = np.zeros((rows * mh, cols * unit), bool)
    grid[:height, :differ.shape[1]] = differ
    return grid.reshape(rows, mh, cols, unit).any(axis=(1, 3))


def pixel_mask(mask: np.ndarray, mcu: tuple[int, int], width: int, height: int,
               margin: int = 0) -> np.ndarray:
    """(H, W) bool: the pixels of the MCUs in ``mask``, grown by ``margin`` MCUs each side."""
    if margin:
        grown = mask.copy()
        for dy in range(-margin, margin + 1):
            for dx in range(-margin, margin + 1):
                grown |= np.roll(np.pad(mask, margin), (dy, dx), (0, 1))[
                    margin:margin + mask.shape[0], margin:margin + mask.shape[1]]
        mask = grown
    full = np.repeat(np.repeat(mask, mcu[1], 0), mcu[0], 1)
    return full[:height, :width]


def _ycc(bgr: np.ndarray, grey: bool) -> list[np.ndarray]:
    """JFIF colour conversion of uint8 BGR -> float32 [Y] or [Y, Cb, Cr], minus 128."""
    b, g, r = (bgr[..., i].astype(np.float32) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b - 128
    if grey:
        return [y]
    return [y, -0.168736 * r - 0.331264 * g + 0.5 * b, 0.5 * r - 0.418688 * g - 0.081312 * b]


def _tiles(image: np.ndarray, my: np.ndarray, mx: np.ndarray, mw: int, mh: int) -> np.ndarray:
    """(N, mh, mw, 3) copies of the MCUs (my, mx) of ``image``, edge pixels repeated past its
    right and bottom border (as libjpeg pads)."""
    height, width = image.shape[:2]
    full_rows, full_cols = height // mh, width // mw
    inner = (my < full_rows) & (mx < full_cols)
    tiles = np.empty((len(my), mh, mw, 3), image.dtype)
    grid = image[:full_rows * mh, :full_cols * mw].reshape(full_rows, mh, full_cols, mw, 3)
    tiles[inner] = grid[my[inner], :, mx[inner]]
    for i in np.nonzero(~inner)[0]:
        y, x = my[i] * mh, mx[i] * mw
        part = image[y:y + mh, x:x + mw]
        tiles[i] = cv2.copyMakeBorder(part, 0, mh - part.shape[0], 0, mw - part.shape[1],
                                      cv2.BORDER_REPLICATE)
    return tiles


def _downsample(plane: np.ndarray, sy: int, sx: int) -> np.ndarray:
    """(N, h, w) -> (N, h / sy, w / sx): the mean of each sy x sx cell (chroma subsampling)."""
    if sy == sx == 1:
        return plane
    total = sum(plane[:, dy::sy, dx::sx] for dy in range(sy) for dx in range(sx))
    return total * np.float32(1.0 / (sy * sx))


def replace_blocks(coefs: list[np.ndarray], sampling: list[tuple[int, int]],
                   quant: list[np.ndarray], image: np.ndarray, mask: np.ndarray) -> int:
    """Overwrite, in place, every block of the MCUs in ``mask`` in ``coefs`` (per component,
    (rows, cols) int arrays of 8x8 blocks in natural order, as libjpeg keeps them) with the
    quantized forward DCT of ``image`` (uint8 BGR, the size of the JPEG; edge pixels repeated
    into the padding MCUs). Returns the number of MCUs rewritten."""
    my, mx = np.nonzero(mask)
    if not len(my):
        return 0
    hmax, vmax = max(h for h, _ in sampling), max(v for _, v in sampling)
    mw, mh = 8 * hmax, 8 * vmax
    tiles = _tiles(image, my, mx, mw, mh)
    planes = _ycc(tiles, len(sampling) == 1)
    n = len(my)
    for comp, plane, (h, v), q in zip(coefs, planes, sampling, quant):
        sy, sx = vmax // v, hmax // h
        plane = _downsample(plane, sy, sx)
        blocks = plane.reshape(n, v, 8, h, 8).transpose(0, 1, 3, 2, 4)   # (N, v, h, 8, 8)
        gy = (my[:, None, None] * v + np.arange(v)[None, :, None]).repeat(h, 2)
        gx = (mx[:, None, None] * h + np.arange(h)[None, None, :]).repeat(v, 1)
        keep = (gy < comp.shape[0] // 8) & (gx < comp.shape[1] // 8)  # padding blocks: libjpeg's
        dct = _DCT @ blocks[keep] @ _DCT.T
        values = np.clip(np.rint(dct / q.astype(np.float32)), -1024, 1023).astype(comp.dtype)
        view = comp.reshape(comp.shape[0] // 8, 8, comp.shape[1] // 8, 8).transpose(0, 2, 1, 3)
        view[gy[keep], gx[keep]] = values
    return n


def header_segments(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """``([(marker, payload)], offset of the first SOS)`` of a JPEG's header."""
    segments, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:
            return segments, pos
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        segments.append((marker, data[pos + 4:pos + 2 + length]))
        pos += 2 + length
    return segments, len(data)


def quant_slots(data: bytes) -> dict[int, np.ndarray]:
    """{slot: 8x8 table in natural order} of the DQT segments before the first scan."""
    tables, zigzag = {}, _zigzag()
    for marker, body in header_segments(data)[0]:
        p = 0
        while marker == 0xDB and p < len(body):
            precision, slot = body[p] >> 4, body[p] & 15
            n = 128 if precision else 64
            raw = np.frombuffer(body[p + 1:p + 1 + n], ">u2" if precision else np.uint8)
            table = np.zeros(64, np.int64)
            table[zigzag] = raw.astype(np.int64)
            tables[slot] = table.reshape(8, 8)
            p += 1 + n
    return tables


_DC_SYMBOLS = set(range(12))
_AC_SYMBOLS = {0x00, 0xF0} | {run << 4 | size for run in range(16) for size in range(1, 11)}


def keeps_huffman_tables(data: bytes, progressive: bool) -> bool:
    """True when the file's own Huffman tables can code any 8-bit block: a baseline file whose
    tables (all defined before its first scan, none redefined later) hold every DC and AC
    symbol, as the standard tables of most cameras and libjpeg do. Otherwise the tables must be
    re-optimized (libjpeg-turbo would write a missing code silently wrong)."""
    segments, sos = header_segments(data)
    if progressive or data.find(b"\xff\xc4", sos) >= 0:
        return False
    found = False
    for marker, body in segments:
        p = 0
        while marker == 0xC4 and p + 17 <= len(body):
            kind, counts = body[p] >> 4, body[p + 1:p + 17]
            symbols = set(body[p + 17:p + 17 + sum(counts)])
            if not symbols >= (_AC_SYMBOLS if kind else _DC_SYMBOLS):
                return False
            found = True
            p += 17 + sum(counts)
    return found


def _zigzag() -> np.ndarray:
    """Natural-order index of each zig-zag position."""
    order = sorted(((i, j) for i in range(8) for j in range(8)),
                   key=lambda ij: (ij[0] + ij[1], ij[0] if (ij[0] + ij[1]) % 2 else ij[1]))
    return np.array([i * 8 + j for i, j in order])


def _markers(jpeg, segments: list[tuple[int, bytes]]) -> list[dict]:
    """The output's markers, rebuilt: JFIF (no thumbnail), Adobe (transform), then segments."""
    out = []
    if jpeg.saw_jfif_marker:
        out.append({"type": 0xE0, "data": b"JFIF\x00" + struct.pack(
            ">BBBHHBB", 1, min(jpeg.jfif_minor_version, 2), jpeg.density_unit,
            max(1, jpeg.x_density), max(1, jpeg.y_density), 0, 0)})
    if jpeg.saw_adobe_marker:
        out.append({"type": 0xEE, "data": b"Adobe" + struct.pack(">HHHB", 100, 0, 0,
                                                                  jpeg.adobe_transform)})
    return out + [{"type": m, "data": bytes(d)} for m, d in segments]


def _read(path: str):
    import jpegio  # imported here: only JPEG outputs need the library
    try:
        return jpegio.read(path)
    except Exception as e:  # libjpeg's fatal errors: lossless/damaged/unknown files
        raise Unsupported(f"the coefficient reader refused the file: {e}") from e


def _check_layout(jpeg, data: bytes, image: np.ndarray):
    """(sampling, quant tables per component) or :class:`Unsupported`."""
    if jpeg.data_precision != 8:
        raise Unsupported(f"{jpeg.data_precision}-bit samples")
    space, n = jpeg.jpeg_color_space, jpeg.num_components
    if (space, n) not in ((_GREY, 1), (_YCC, 3)):
        raise Unsupported(f"{_NAMES.get(space, f'colour space {space}')} with {n} components")
    if (jpeg.image_height, jpeg.image_width) != image.shape[:2]:
        raise Unsupported(f"coefficients are {jpeg.image_width}x{jpeg.image_height}, the "
                          f"image {image.shape[1]}x{image.shape[0]}")
    sampling = [(c.h_samp_factor, c.v_samp_factor) for c in jpeg.comp_info]
    hmax, vmax = max(h for h, _ in sampling), max(v for _, v in sampling)
    if len(sampling) == 1:
        sampling = [(1, 1)]  # one component is not interleaved: its MCU is one block
    elif any(hmax % h or vmax % v for h, v in sampling):
        raise Unsupported(f"sampling factors {sampling}")
    slots = quant_slots(data)
    ordered = [slots[s] for s in sorted(slots)]
    if len(ordered) != len(jpeg.quant_tables) or not all(
            np.array_equal(a, b) for a, b in zip(ordered, jpeg.quant_tables)):
        raise Unsupported("quantization tables differ from the header's (redefined per scan?)")
    try:
        quant = [slots[c.quant_tbl_no] for c in jpeg.comp_info]
    except KeyError as e:
        raise Unsupported(f"component uses undefined quantization table {e}") from e
    return sampling, quant


@contextlib.contextmanager
def _scratch_files():
    """Two paths for the coefficient library, which reads and writes files only: anonymous
    memory (``memfd``, Linux) so no copy of an un-anonymized input can outlive the process,
    else a private temporary folder."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds = [os.memfd_create(f"beam_anon_jpeg_{n}") for n in ("in", "out")]
        try:
            yield [f"/proc/self/fd/{fd}" for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="beam_anon_jpeg_") as tmp:
        yield os.path.join(tmp, "in.jpg"), os.path.join(tmp, "out.jpg")


def rewrite(data: bytes, image: np.ndarray, xyxy: np.ndarray,
            segments: list[tuple[int, bytes]], reference: np.ndarray | None = None
            ) -> tuple[bytes, np.ndarray, tuple[int, int]]:
    """The JPEG ``data`` with the MCUs of ``xyxy`` (boxes, pixels of the stored orientation),
    and those where ``image`` differs from ``reference`` (the decoded input), replaced by
    ``image``'s (uint8 BGR, stored orientation, the blurred picture); every other coefficient
    copied, markers rebuilt (module doc).
    Returns ``(bytes, MCU mask, (mcu width, mcu height))``; raises :class:`Unsupported`."""
    with _scratch_files() as (src, dst):
        with open(src, "wb") as f:
            f.write(data)
        jpeg = _read(src)
        sampling, quant = _check_layout(jpeg, data, image)
        mcu = (8 * max(h for h, _ in sampling), 8 * max(v for _, v in sampling))
        height, width = image.shape[:2]
        mask = mcu_mask(xyxy, width, height, mcu)
        if reference is not None:
            mask |= changed_mcus(image, reference, mcu)
        replace_blocks(jpeg.coef_arrays, sampling, quant, image, mask)
        jpeg.optimize_coding = not keeps_huffman_tables(data, bool(jpeg.progressive_mode))
        jpeg.markers = _markers(jpeg, segments)
        try:
            jpeg.write(dst)
        except Exception as e:
            raise Unsupported(f"the coefficient writer failed: {e}") from e
        with open(dst, "rb") as f:
            return f.read(), mask, mcu
