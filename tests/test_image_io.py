"""image_io: decoding corner cases, orientation, bomb guard, and that no metadata leaks."""
import io

import numpy as np
import pytest
from PIL import Image, ImageOps, PngImagePlugin

from beam_anon.media.image_io import (EXIF_ALLOW_LIST, ImageError, ImageMetadata, decode, encode,
                                apply_orientation)

MAX = 50_000_000


def _pattern(h=48, w=80):
    """An asymmetric RGB test picture (so every flip/rotation is distinguishable)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 3) % 256, (y * 5) % 256, ((x + 2 * y) * 2) % 256], -1).astype(np.uint8)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _exif(orientation=None, gps=False, serial=False, with_keepers=False) -> Image.Exif:
    ex = Image.Exif()
    if orientation:
        ex[0x0112] = orientation
    ex[0x010F] = "AcmeCam"           # Make
    ex[0x0110] = "Model X"           # Model
    ex[0x013B] = "Jane Doe"          # Artist
    if with_keepers:
        ex[0x0132] = "2024:01:02 03:04:05"
        ex.get_ifd(0x8769)[0x829D] = 2.8          # FNumber
    if serial:
        ex.get_ifd(0x8769)[0xA431] = "SN123456"   # BodySerialNumber
    if gps:
        ex.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)})
    return ex


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_lands_upright(orientation):
    rgb = _pattern()
    # store the picture as a camera would: raw pixels such that exif_transpose gives ``rgb``
    inverse = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
               6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_270}[orientation]
    stored = Image.fromarray(rgb)
    if inverse is not None:
        stored = stored.transpose(inverse)
    data = _save(stored, "PNG", exif=_exif(orientation).tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.array_equal(expected, rgb)  # sanity of the test itself
    img = decode(data, MAX)
    assert img.orientation == orientation
    assert np.array_equal(img.pixels[:, :, ::-1], rgb)
    assert (img.width, img.height) == (80, 48)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_jpeg_orientation_and_upright_output(orientation):
    rgb = np.zeros((60, 100, 3), np.uint8)
    rgb[:20, :30] = 255  # white block top-left of the upright picture
    stored = Image.fromarray(rgb).transpose(
        {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
         8: Image.Transpose.ROTATE_270}[orientation])
    img = decode(_save(stored, "JPEG", quality=95, exif=_exif(orientation).tobytes()), MAX)
    assert img.pixels.shape == (60, 100, 3)
    assert img.pixels[5:15, 5:25].mean() > 240 and img.pixels[40:, 60:].mean() < 15
    out = encode(img.pixels, img.alpha, img.format, 95, img.output_metadata(True))
    back = Image.open(io.BytesIO(out))
    assert back.size == (100, 60) and 0x0112 not in back.getexif()


def test_grayscale_palette_and_cmyk_become_bgr():
    rgb = _pattern()
    gray = decode(_save(Image.fromarray(rgb).convert("L"), "PNG"), MAX)
    assert gray.pixels.shape == (48, 80, 3) and gray.alpha is None and gray.format == "png"
    assert np.array_equal(gray.pixels[:, :, 0], gray.pixels[:, :, 2])
    gray_jpeg = decode(_save(Image.fromarray(rgb).convert("L"), "JPEG"), MAX)
    assert gray_jpeg.pixels.shape == (48, 80, 3) and gray_jpeg.format == "jpeg"
    pal = Image.fromarray(rgb).quantize(16)
    img = decode(_save(pal, "PNG"), MAX)
    assert np.array_equal(img.pixels[:, :, ::-1], np.asarray(pal.convert("RGB")))
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255
    cmyk = decode(_save(Image.fromarray(red).convert("CMYK"), "JPEG", quality=95), MAX)
    assert cmyk.format == "jpeg" and cmyk.pixels.shape == (32, 32, 3)
    assert np.abs(cmyk.pixels[16, 16].astype(int) - [0, 0, 255]).max() < 8  # BGR red


def test_sixteen_bit_png_scaled_to_8_bit():
    g16 = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    img = decode(_save(Image.fromarray(g16), "PNG"), MAX)
    assert img.pixels.dtype == np.uint8 and img.pixels.shape == (64, 64, 3)
    assert np.abs(img.pixels[:, :, 1].astype(int) - np.round(g16 / 257.0)).max() <= 1


def test_alpha_kept_apart_and_reattached():
    rgba = np.dstack([_pattern(), np.tile(np.arange(80, dtype=np.uint8) * 3, (48, 1))])
    img = decode(_save(Image.fromarray(rgba, "RGBA"), "PNG"), MAX)
    assert img.pixels.shape == (48, 80, 3) and np.array_equal(img.alpha, rgba[:, :, 3])
    out = Image.open(io.BytesIO(encode(img.pixels, img.alpha, "png")))
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out), rgba)
    # grey + transparent colour (tRNS), which OpenCV would drop
    g = np.full((10, 10), 100, np.uint8)
    g[:5] = 7
    img = decode(_save(Image.fromarray(g), "PNG", transparency=7), MAX)
    assert img.alpha is not None and (img.alpha[:5] == 0).all() and (img.alpha[5:] == 255).all()


@pytest.mark.parametrize("data, match", [
    (b"", "empty"),
    (b"hello, this is a text file\n" * 10, "not a recognised image"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00garbage" * 3, "."),
])
def test_corrupt_inputs_raise_image_error(data, match):
    with pytest.raises(ImageError, match=match):
        decode(data, MAX)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_raise(fmt):
    data = _save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3),
                                                                    dtype=np.uint8)), fmt)
    with pytest.raises(ImageError):
        decode(data[: len(data) * 2 // 3], MAX)


def test_unsupported_format_refused():
    with pytest.raises(ImageError, match="unsupported image format GIF"):
        decode(_save(Image.fromarray(_pattern()).convert("P"), "GIF"), MAX)


def test_bomb_refused_from_the_header():
    # a real 1x1 PNG whose IHDR claims 30000 x 30000 pixels: refused without decoding
    import struct
    import zlib
    png = _save(Image.new("RGB", (1, 1)), "PNG")
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    png = png[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[33:]
    with pytest.raises(ImageError, match="max_pixels"):
        decode(png, max_pixels=100_000_000)
    with pytest.raises(ImageError, match="decompression"):
        decode(_save(Image.new("RGB", (100, 100)), "JPEG"), max_pixels=9_999)


def _segments(jpeg: bytes) -> list[bytes]:
    """Marker bytes of every JPEG segment before the scan data."""
    pos, out = 2, []
    while pos < len(jpeg) and jpeg[pos] == 0xFF:
        marker = jpeg[pos + 1]
        if marker == 0xDA:
            break
        out.append(bytes([marker]))
        pos += 2 + int.from_bytes(jpeg[pos + 2:pos + 4], "big")
    return out


def test_metadata_stripped_from_jpeg():
    from PIL import ImageCms
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = Image.fromarray(_pattern())
    data = _save(src, "JPEG", exif=_exif(gps=True, serial=True, with_keepers=True).tobytes(),
                 comment=b"shot by Jane Doe at home", icc_profile=icc)
    assert b"Jane Doe" in data and b"AcmeCam" in data  # the input does carry it
    img = decode(data, MAX)
    for keep in (False, True):
        out = encode(img.pixels, img.alpha, img.format, 90, img.output_metadata(keep))
        assert b"Jane Doe" not in out and b"AcmeCam" not in out and b"SN123456" not in out
        assert b"Model X" not in out
        back = Image.open(io.BytesIO(out))
        assert "comment" not in back.info
        ex = back.getexif()
        assert 0x8825 not in ex and not ex.get_ifd(0x8825)       # no GPS
        assert back.info.get("icc_profile") == icc               # colour profile kept
        markers = _segments(out)
        assert b"\xfe" not in markers and b"\xed" not in markers  # no COM, no IPTC
        if keep:
            assert set(ex) <= set(EXIF_ALLOW_LIST) | {0x8769}
            assert ex[0x0132] == "2024:01:02 03:04:05"
            assert float(ex.get_ifd(0x8769)[0x829D]) == 2.8
            assert 0xA431 not in ex.get_ifd(0x8769)
        else:
            assert not len(ex) and b"\xe1" not in markers
    no_meta = encode(img.pixels, None, "jpeg", 90, None)
    assert _segments(no_meta) and b"\xe2" not in _segments(no_meta)


def _exif_with_thumbnail(thumb: bytes) -> bytes:
    """Hand-built little-endian EXIF: IFD0 {DateTime}, IFD1 {JPEG thumbnail offset, length}."""
    import struct
    date = b"2024:01:02 03:04:05\x00"
    ifd0 = 8
    date_at = ifd0 + 2 + 12 + 4
    ifd1 = date_at + len(date)
    thumb_at = ifd1 + 2 + 2 * 12 + 4
    tiff = b"II*\x00" + struct.pack("<I", ifd0)
    tiff += struct.pack("<H", 1) + struct.pack("<HHII", 0x0132, 2, len(date), date_at)
    tiff += struct.pack("<I", ifd1) + date
    tiff += struct.pack("<H", 2) + struct.pack("<HHII", 0x0201, 4, 1, thumb_at)
    tiff += struct.pack("<HHII", 0x0202, 4, 1, len(thumb)) + struct.pack("<I", 0) + thumb
    return b"Exif\x00\x00" + tiff


def test_exif_thumbnail_never_copied():
    """The EXIF thumbnail is an un-anonymized copy of the picture: never kept, even with
    keep_metadata."""
    thumb = _save(Image.fromarray(_pattern(16, 16)), "JPEG", comment=b"THUMBNAIL")
    data = _save(Image.fromarray(_pattern()), "JPEG", exif=_exif_with_thumbnail(thumb))
    assert b"THUMBNAIL" in data and data.count(b"\xff\xd8") == 2
    img = decode(data, MAX)
    out = encode(img.pixels, None, "jpeg", 90, img.output_metadata(True))
    assert out.count(b"\xff\xd8") == 1 and b"THUMBNAIL" not in out
    assert Image.open(io.BytesIO(out)).getexif()[0x0132] == "2024:01:02 03:04:05"


def test_metadata_stripped_from_png():
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe")
    info.add_itxt("Comment", "home address", zip=True)
    info.add_text("XML:com.adobe.xmp", "<x:xmpmeta>secret</x:xmpmeta>", zip=True)
    data = _save(Image.fromarray(_pattern()), "PNG", pnginfo=info,
                 exif=_exif(gps=True, orientation=1).tobytes())
    assert b"Jane Doe" in data
    img = decode(data, MAX)
    out = encode(img.pixels, img.alpha, img.format, metadata=img.output_metadata(False))
    for kind in (b"tEXt", b"zTXt", b"iTXt", b"eXIf"):
        assert kind not in out
    back = Image.open(io.BytesIO(out))
    back.load()
    assert not back.text and "exif" not in back.info
    assert np.array_equal(np.asarray(back)[:, :, ::-1], img.pixels)


def test_encode_jpeg_quality_and_roundtrip():
    px = np.ascontiguousarray(_pattern()[:, :, ::-1])
    hi = encode(px, None, "jpeg", 95)
    lo = encode(px, None, "jpeg", 30)
    assert len(lo) < len(hi)
    back = decode(hi, MAX)
    assert np.abs(back.pixels.astype(int) - px).mean() < 3
    with pytest.raises(ImageError):
        encode(px, None, "gif")


def test_apply_orientation_matches_pillow():
    rgb = _pattern(5, 7)
    ops = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
           6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}
    for o, op in ops.items():
        assert np.array_equal(apply_orientation(rgb, o), np.asarray(Image.fromarray(rgb).transpose(op))), o
    assert ImageMetadata().exif is None
