"""Metadata policy on files carrying XMP, IPTC, GPS, maker data and comments: nothing of it is
written, with or without keep_metadata (which keeps only the allow-listed EXIF, never GPS)."""
import io

import numpy as np
import pytest
from PIL import Image

from beam_anon.media.image_io import EXIF_ALLOW_LIST, decode, encode
from tests.badinputs import SECRETS, jpeg_bytes, pattern, private_exif, with_private_metadata


def _segments(jpeg: bytes) -> list[bytes]:
    """(marker, first bytes of payload) of every JPEG segment before the scan."""
    pos, out = 2, []
    while jpeg[pos] == 0xFF and jpeg[pos + 1] != 0xDA:
        n = int.from_bytes(jpeg[pos + 2:pos + 4], "big")
        out.append(jpeg[pos + 1:pos + 2] + jpeg[pos + 4:pos + 4 + 14])
        pos += 2 + n
    return out


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("orientation", [1, 6])
def test_xmp_iptc_gps_comment_never_written(keep, orientation):
    data = with_private_metadata(jpeg_bytes(pattern(), exif=private_exif(orientation)))
    assert all(s in data for s in SECRETS if s != b"SECRET-PNG")
    assert any(s.startswith(b"\xedPhotoshop") for s in _segments(data))  # IPTC really there
    img = decode(data, 10**8)
    out = encode(img.pixels, img.alpha, img.format, 90, img.output_metadata(keep))
    assert not [s for s in SECRETS if s in out]
    segs = _segments(out)
    assert not [s for s in segs if s[:1] in (b"\xed", b"\xfe")]           # no IPTC, no COM
    assert not [s for s in segs if b"http://ns.adobe" in s]               # no XMP
    back = Image.open(io.BytesIO(out))
    exif = back.getexif()
    assert not exif.get_ifd(0x8825) and 0x8825 not in exif                # no GPS
    assert 0x0112 not in exif and back.size == (img.width, img.height)    # upright, no tag
    if keep:
        assert set(exif) <= set(EXIF_ALLOW_LIST) | {0x8769}
        assert exif[0x0132] == "2024:01:02 03:04:05"
    else:
        assert not len(exif) and not [s for s in segs if s[:1] == b"\xe1"]


def test_png_text_and_exif_never_written_even_with_keep_metadata():
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "SECRET-PNG")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>SECRET-XMP</x:xmpmeta>", zip=True)
    buf = io.BytesIO()
    Image.fromarray(pattern()[:, :, ::-1]).save(buf, "PNG", pnginfo=info, exif=private_exif())
    img = decode(buf.getvalue(), 10**8)
    out = encode(img.pixels, None, "png", metadata=img.output_metadata(True))
    assert not [s for s in SECRETS if s in out]
    assert not [c for c in (b"tEXt", b"zTXt", b"iTXt") if c in out]
    back = Image.open(io.BytesIO(out))
    assert set(back.getexif()) <= set(EXIF_ALLOW_LIST) | {0x8769}
    assert np.array_equal(np.asarray(back)[:, :, ::-1], img.pixels)
