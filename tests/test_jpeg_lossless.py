"""JPEG outputs lossless outside the blurred MCUs (issue 18), through the real pipeline (CLI,
real blur, a detector stand-in with fixed boxes) on generated JPEGs of every layout, and the
writer's pieces on their own."""
from __future__ import annotations

import io
import os
import struct

import cv2
import jpegio
import numpy as np
import pytest
from PIL import Image, ImageCms

from beam_anon.media import jpeg_lossless, jpeg_output
from beam_anon.tools import verify_jpeg
from beam_anon.detection.anonymize import AnonymizeResult
from beam_anon.detection.blur import blur_boxes
from beam_anon.boxes import Detections
from beam_anon.media.image_io import decode
from beam_anon.manifest import ManifestRecord
from beam_anon import cli
from tests.badinputs import SECRETS, private_exif, with_private_metadata

WHOLE_FRAME_WIDTH, NO_BOX_WIDTH = 123, 99


def boxes_for(width: int, height: int) -> np.ndarray:
    """A box on the top-left border, two boxes one pixel apart; the whole frame for width
    WHOLE_FRAME_WIDTH; none for NO_BOX_WIDTH."""
    if width == NO_BOX_WIDTH:
        return np.zeros((0, 4))
    if width == WHOLE_FRAME_WIDTH:
        return np.array([[0.0, 0.0, width, height]])
    w, h = width, height
    return np.array([[0, 0, 0.2 * w, 0.3 * h], [0.4 * w, 0.4 * h, 0.55 * w, 0.7 * h],
                     [0.55 * w + 1, 0.4 * h, 0.7 * w, 0.7 * h]])


class BoxAnonymizer:
    """Blurs :func:`boxes_for` with the real blur (gaussian, as the default settings)."""

    def run(self, image, keep_debug=False):
        xyxy = boxes_for(image.shape[1], image.shape[0])
        boxes = Detections(xyxy.astype(np.float32), np.full(len(xyxy), 0.9, np.float32),
                           np.array(["face"] * len(xyxy)))
        return AnonymizeResult(blur_boxes(image, boxes), boxes, None, {})

    def models(self):
        return [{"name": "boxes", "sha256": "0" * 64}]


def texture(w: int, h: int, seed: int = 0) -> np.ndarray:
    """BGR picture with detail everywhere (a blur changes every box)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, (x * y) % 256], -1).astype(np.int32)
    cv2.circle(img, (w // 2, h // 2), min(w, h) // 4, (20, 200, 240), -1)
    return np.clip(img + rng.integers(-40, 40, img.shape), 0, 255).astype(np.uint8)


def pillow_jpeg(bgr, mode="RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])).convert(mode).save(
        buf, "JPEG", **{"quality": 90, **kw})
    return buf.getvalue()


def exif_with_thumbnail(orientation: int, thumbnail: bytes) -> bytes:
    """APP1 payload: IFD0 (orientation), IFD1 pointing at an embedded JPEG thumbnail."""
    ifd0 = struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 1, orientation) + \
        struct.pack("<I", 26)
    ifd1 = struct.pack("<H", 2) + struct.pack("<HHII", 0x0201, 4, 1, 56) + \
        struct.pack("<HHII", 0x0202, 4, 1, len(thumbnail)) + struct.pack("<I", 0)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd0 + ifd1 + thumbnail


def insert_app1(jpeg: bytes, payload: bytes) -> bytes:
    pos = 2 + (2 + struct.unpack(">H", jpeg[4:6])[0] if jpeg[2:4] == b"\xff\xe0" else 0)
    return jpeg[:pos] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[pos:]


THUMB = pillow_jpeg(texture(32, 24), comment=b"SECRET-THUMB")
ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
LOSSLESS_CASES = {
    "s420.jpg": pillow_jpeg(texture(240, 135), subsampling=2),
    "s444.jpg": pillow_jpeg(texture(200, 120, 1), subsampling=0),
    "s422.jpg": pillow_jpeg(texture(210, 77, 2), subsampling=1),
    "grey.jpg": pillow_jpeg(texture(150, 101, 3), mode="L"),
    "progressive.jpg": pillow_jpeg(texture(256, 128, 4), progressive=True),
    "restart.jpg": cv2.imencode(".jpg", texture(170, 90, 5), [cv2.IMWRITE_JPEG_QUALITY, 85,
                                                              cv2.IMWRITE_JPEG_RST_INTERVAL, 3])[1]
    .tobytes(),
    "whole_frame.jpg": pillow_jpeg(texture(WHOLE_FRAME_WIDTH, 70, 6)),
    "optimized_tables.jpg": pillow_jpeg(texture(180, 100, 13), optimize=True),
    "no_box.jpg": pillow_jpeg(texture(NO_BOX_WIDTH, 64, 7)),
    "metadata.jpg": insert_app1(with_private_metadata(pillow_jpeg(
        texture(160, 112, 8), icc_profile=ICC, comment=b"SECRET-COMMENT")),
        exif_with_thumbnail(1, THUMB)),
}
OTHER_CASES = {
    "orientation6.jpg": insert_app1(pillow_jpeg(texture(96, 64, 9)), exif_with_thumbnail(6, THUMB)),
    "cmyk.jpg": pillow_jpeg(texture(80, 48, 10), mode="CMYK"),
    "rgb_coded.jpg": pillow_jpeg(texture(80, 48, 14), keep_rgb=True),
    "truncated.jpg": pillow_jpeg(texture(400, 300, 11))[:3000],
}


def run_cli(tmp_path, cases, *extra) -> dict[str, ManifestRecord]:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir(exist_ok=True)
    for name, data in cases.items():
        (src / name).write_bytes(data)
    cli.main(["--input", f"{src}/*.jpg", "--output", str(out), "--quiet",
              "--runner=FnApiRunner", *extra], anonymizer_factory=lambda s, m: BoxAnonymizer())
    with open(out / "manifest.jsonl") as f:
        return {r.key: r for r in map(ManifestRecord.from_json, f)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lossless")
    return tmp, run_cli(tmp, {**LOSSLESS_CASES, **OTHER_CASES})


def segments(jpeg: bytes) -> list[tuple[int, bytes]]:
    pos, out = 2, []
    while jpeg[pos] == 0xFF and jpeg[pos + 1] != 0xDA:
        n = struct.unpack(">H", jpeg[pos + 2:pos + 4])[0]
        out.append((jpeg[pos + 1], jpeg[pos + 4:pos + 2 + n]))
        pos += 2 + n
    return out


def coefficients(data: bytes, tmp) -> list[np.ndarray]:
    path = os.path.join(tmp, "c.jpg")
    with open(path, "wb") as f:
        f.write(data)
    return [np.array(c) for c in jpegio.read(path).coef_arrays]


@pytest.mark.parametrize("name", sorted(LOSSLESS_CASES))
def test_lossless_outside_the_blurred_mcus(run, name):
    tmp, records = run
    record = records[name]
    assert (record.status, record.jpeg, record.jpeg_reason) == ("ok", "lossless", None)
    source, output = LOSSLESS_CASES[name], open(record.output, "rb").read()
    xyxy = verify_jpeg.manifest_boxes(record)
    check = verify_jpeg.check_pair(source, output, xyxy, margin=1)
    assert check["outside"] == 0 and check["unchanged_boxes"] == []
    # bit-exact coefficients outside the boxes' MCUs, every block of them rewritten
    before, after = coefficients(source, tmp), coefficients(output, tmp)
    img = Image.open(io.BytesIO(source))
    layers = img.layer if len(img.layer) > 1 else [(0, 1, 1, 0)]
    mcu = verify_jpeg.mcu_size(source)
    mask = jpeg_lossless.mcu_mask(xyxy, img.width, img.height, mcu)
    for (_, h, v, _), a, b in zip(layers, before, after):
        blocks = np.repeat(np.repeat(mask, v, 0), h, 1)[:a.shape[0] // 8, :a.shape[1] // 8]
        same = (a == b).reshape(a.shape[0] // 8, 8, a.shape[1] // 8, 8).all(axis=(1, 3))
        assert same[~blocks].all()
        if name != "no_box.jpg":
            assert not same[blocks].all()
    # the boxes hold the blurred pixels (quantized), not the input's
    pixels, out = decode(source, 10**8).pixels, decode(output, 10**8).pixels
    blurred = BoxAnonymizer().run(pixels).image
    for x0, y0, x1, y1 in jpeg_lossless.pixel_rects(xyxy, *pixels.shape[1::-1]):
        box = (slice(y0, y1), slice(x0, x1))
        assert np.abs(out[box].astype(int) - blurred[box]).mean() < 5
        assert np.abs(out[box].astype(int) - pixels[box]).mean() > 10
    # same layout: sampling, quantization tables, progressive mode, restart interval
    back = Image.open(io.BytesIO(output))
    assert back.layer == img.layer and back.quantization == img.quantization
    assert bool(back.info.get("progressive")) == bool(img.info.get("progressive"))
    assert [s for m, s in segments(output) if m == 0xDD] == \
        [s for m, s in segments(source) if m == 0xDD]


def test_no_box_keeps_every_coefficient(run):
    tmp, records = run
    output = open(records["no_box.jpg"].output, "rb").read()
    before, after = coefficients(LOSSLESS_CASES["no_box.jpg"], tmp), coefficients(output, tmp)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_metadata_rewritten_not_copied(run):
    _, records = run
    output = open(records["metadata.jpg"].output, "rb").read()
    assert not [s for s in SECRETS + (b"SECRET-THUMB",) if s in output]
    assert output.count(b"\xff\xd8") == 1                 # no embedded thumbnail JPEG
    markers = [m for m, _ in segments(output)]
    assert 0xE1 not in markers and 0xED not in markers and 0xFE not in markers
    assert Image.open(io.BytesIO(output)).info.get("icc_profile") == ICC


def test_keep_metadata_writes_only_the_allow_list(tmp_path):
    data = pillow_jpeg(texture(64, 48), exif=private_exif(1))
    records = run_cli(tmp_path, {"k.jpg": data}, "--keep_metadata")
    output = open(records["k.jpg"].output, "rb").read()
    assert records["k.jpg"].jpeg == "lossless"
    assert b"SECRET-GPS" not in output and b"AcmeCam" not in output
    assert Image.open(io.BytesIO(output)).getexif()[0x0132] == "2024:01:02 03:04:05"


def test_fallbacks_are_recorded(run):
    _, records = run
    rotated = records["orientation6.jpg"]
    assert (rotated.status, rotated.jpeg) == ("ok", "reencoded")
    assert "orientation 6" in rotated.jpeg_reason
    output = open(rotated.output, "rb").read()
    assert b"SECRET-THUMB" not in output and output.count(b"\xff\xd8") == 1
    assert Image.open(io.BytesIO(output)).size == (64, 96)          # upright
    cmyk = records["cmyk.jpg"]
    assert (cmyk.status, cmyk.jpeg) == ("ok", "reencoded") and "CMYK" in cmyk.jpeg_reason
    rgb = records["rgb_coded.jpg"]
    assert (rgb.status, rgb.jpeg) == ("ok", "reencoded") and "RGB-coded" in rgb.jpeg_reason
    truncated = records["truncated.jpg"]
    assert truncated.status == "failed" and truncated.output is None and truncated.jpeg is None


def test_reencode_mode(tmp_path):
    records = run_cli(tmp_path, {"r.jpg": LOSSLESS_CASES["s420.jpg"]}, "--jpeg_mode",
                      "reencode")
    assert (records["r.jpg"].jpeg, records["r.jpg"].jpeg_reason) == \
        ("reencoded", "jpeg_mode=reencode")


def test_a_writer_that_skips_blocks_is_caught_and_reencoded(monkeypatch):
    """Fail closed: a lossless output whose boxes are not blurred never leaves."""
    data = LOSSLESS_CASES["s420.jpg"]
    img = decode(data, 10**8)
    result = BoxAnonymizer().run(img.pixels)
    monkeypatch.setattr(jpeg_lossless, "replace_blocks", lambda *a, **k: 0)
    from beam_anon.settings import Settings
    out = jpeg_output.encode_output(data, img, result.image, result.boxes.xyxy, img.pixels,
                                    Settings(), stored=False)
    assert out.jpeg == "reencoded" and "not blurred" in out.reason
    back = decode(out.data, 10**8).pixels
    x0, y0, x1, y1 = jpeg_lossless.pixel_rects(result.boxes.xyxy, 240, 135)[1]
    assert np.abs(back[y0:y1, x0:x1].astype(int) - result.image[y0:y1, x0:x1]).mean() < 3


def test_neighbouring_boxes_are_one_region():
    """Boxes one pixel apart share MCUs: the mask is their union, each MCU is written once
    from the one blurred picture (the sgblur #102 failure cannot happen)."""
    mask = jpeg_lossless.mcu_mask(np.array([[20, 20, 40.5, 30], [41.5, 20, 60, 30]]), 100, 50,
                                  (16, 16))
    expected = np.zeros((4, 7), bool)
    expected[1, 1:4] = True
    assert np.array_equal(mask, expected)
    full = jpeg_lossless.mcu_mask(np.array([[0, 0, 100, 50]]), 100, 50, (16, 16))
    assert full.all() and full.shape == (4, 7)
    changed = np.zeros((50, 100, 3), np.uint8)
    changed[49, 99, 2] = 1
    assert np.argwhere(jpeg_lossless.changed_mcus(changed, changed * 0, (16, 16))).tolist() == [[3, 6]]


@pytest.mark.parametrize("subsampling", [0, 2])
def test_forward_transform_reproduces_the_files_coefficients(tmp_path, subsampling):
    """Re-encoding the decoded pixels with the file's own tables gives back its coefficients
    (within rounding): the colour conversion, chroma averaging and DCT are libjpeg's."""
    data = pillow_jpeg((texture(64, 48) * 0.6 + 50).astype(np.uint8), quality=75,
                       subsampling=subsampling)  # no clipping in the decoder
    (tmp_path / "a.jpg").write_bytes(data)
    jpeg = jpegio.read(str(tmp_path / "a.jpg"))
    original = [np.array(c) for c in jpeg.coef_arrays]
    pixels = decode(data, 10**8).pixels
    sampling = [(c.h_samp_factor, c.v_samp_factor) for c in jpeg.comp_info]
    quant = [jpeg_lossless.quant_slots(data)[c.quant_tbl_no] for c in jpeg.comp_info]
    mcu = (8 * max(h for h, _ in sampling), 8 * max(v for _, v in sampling))
    mask = np.ones((-(-48 // mcu[1]), -(-64 // mcu[0])), bool)
    assert jpeg_lossless.replace_blocks(jpeg.coef_arrays, sampling, quant, pixels, mask) == mask.size
    for new, old in zip(jpeg.coef_arrays, original):  # luma; chroma (decoded upsampled: +-1)
        error = np.abs(np.array(new) - old)
        assert error.max() <= 1 and (error == 0).mean() > 0.95


def test_tfrecord_images_stay_stored_and_lossless_for_every_orientation(tmp_path):
    """TFRecord images keep their stored orientation: the upright boxes are mapped back onto
    the stored block grid, so an EXIF-rotated image is lossless too, blurred where it should."""
    import tensorflow as tf
    from test_tfrecord import _example, _read_tfrecords, _write_tfrecord

    stored = texture(96, 64, 12)
    data = pillow_jpeg(stored, exif=private_exif(6))     # upright: 64 wide, 96 tall
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _write_tfrecord(src / "r.tfrecord", [_example(data, "rot.jpg")])
    cli.main(["--input_format", "tfrecord", "--input", f"{src}/*", "--output", str(out),
              "--quiet", "--runner=FnApiRunner"], anonymizer_factory=lambda s, m: BoxAnonymizer())
    with open(out / "manifest.jsonl") as f:
        record = ManifestRecord.from_json(f.readline())
    assert (record.jpeg, record.width, record.height) == ("lossless", 64, 96)
    [raw] = _read_tfrecords(f"{out}/data-*")
    output = tf.train.Example.FromString(raw).features.feature["image/encoded"].bytes_list.value[0]
    upright = decode(data, 10**8)
    blurred = BoxAnonymizer().run(upright.pixels).image
    expected = cv2.rotate(blurred, cv2.ROTATE_90_COUNTERCLOCKWISE)  # back to stored layout
    written, source = decode(output, 10**8), jpeg_output.decode_pixels(data)
    assert written.orientation == 1 and written.pixels.shape == stored.shape
    xyxy = verify_jpeg.manifest_boxes(record)
    # stored box = upright box turned back (orientation 6: stored x = upright y, ...)
    stored_xyxy = np.stack([xyxy[:, 1], 64 - xyxy[:, 2], xyxy[:, 3], 64 - xyxy[:, 0]], 1)
    check = verify_jpeg.check_pair(data, output, stored_xyxy, margin=1)
    assert check["outside"] == 0 and check["unchanged_boxes"] == []
    for x0, y0, x1, y1 in jpeg_lossless.pixel_rects(stored_xyxy, 96, 64):
        box = (slice(y0, y1), slice(x0, x1))
        assert np.abs(written.pixels[box].astype(int) - expected[box]).mean() < 5
        assert np.abs(written.pixels[box].astype(int) - source[box]).mean() > 10


def test_huffman_tables_kept_only_when_they_can_code_any_block():
    standard = pillow_jpeg(texture(64, 48))
    assert jpeg_lossless.keeps_huffman_tables(standard, progressive=False)
    assert not jpeg_lossless.keeps_huffman_tables(standard, progressive=True)
    assert not jpeg_lossless.keeps_huffman_tables(pillow_jpeg(texture(64, 48), optimize=True),
                                                  progressive=False)


@pytest.mark.parametrize("seed", range(40))
def test_changed_pixels_mark_their_mcus(seed):
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(1, 80, 2))  # widths of 8k: 8-byte words
    mcu = [(8, 8), (16, 16), (16, 8), (32, 16)][seed % 4]
    before = rng.integers(0, 255, (height, width, 3)).astype(np.uint8)
    after = before.copy()
    for _ in range(int(rng.integers(0, 4))):
        after[rng.integers(0, height), rng.integers(0, width), rng.integers(0, 3)] ^= 8
    rows, cols = -(-height // mcu[1]), -(-width // mcu[0])
    expected = np.zeros((rows, cols), bool)
    for y, x in zip(*np.nonzero((before != after).any(axis=2))):
        expected[y // mcu[1], x // mcu[0]] = True
    assert np.array_equal(jpeg_lossless.changed_mcus(before, after, mcu), expected)


@pytest.mark.parametrize("memfd", [True, False])
def test_scratch_files_leave_nothing_behind(monkeypatch, tmp_path, memfd):
    """The coefficient library reads files: anonymous memory where there is memfd, else a
    private temporary folder, removed after the write either way."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    if not memfd:
        monkeypatch.delattr(os, "memfd_create", raising=False)
    data = LOSSLESS_CASES["s444.jpg"]
    pixels = decode(data, 10**8).pixels
    out, mask, mcu = jpeg_lossless.rewrite(data, pixels, np.array([[0, 0, 10, 10]]), [])
    assert mcu == (8, 8) and mask.sum() == 4 and decode(out, 10**8).width == 200
    assert list(tmp_path.iterdir()) == []
