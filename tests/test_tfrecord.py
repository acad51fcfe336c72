"""TFRecord datasets in and out on the FnApiRunner: only the image bytes change, failed records
are accounted for (and dead-lettered), gzip in -> gzip out; then the real models on real images."""
from __future__ import annotations

import dataclasses
import glob
import io
import json
import os
import struct

import numpy as np
import pytest
from apache_beam.io.tfrecordio import _TFRecordUtil
from PIL import Image

from beam_anon.pipeline import tfrecord_reader, tfrecords
from beam_anon.boxes import Detections
from beam_anon.media.image_io import apply_orientation, decode, encode
from beam_anon.settings import Settings
from beam_anon import cli
from test_pipeline import FakeAnonymizer, _manifest, fake_factory  # fake: blacks the centre out

tf = pytest.importorskip("tensorflow")
RUNNER = "--runner=FnApiRunner"
DEVSET = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "devset")


def _jpeg(pixels: np.ndarray, quality=95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels[:, :, ::-1]).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels[:, :, ::-1]).save(buf, "PNG")
    return buf.getvalue()


def _example(image: bytes | None, name: str | None = None, source_id: str | None = None,
             image_key="image/encoded", **extra) -> tf.train.Example:
    """An Example with the usual detection-dataset features besides the image."""
    f = tf.train
    feature = {
        "image/height": f.Feature(int64_list=f.Int64List(value=[48])),
        "image/width": f.Feature(int64_list=f.Int64List(value=[64])),
        "image/format": f.Feature(bytes_list=f.BytesList(value=[b"jpeg"])),
        "image/object/bbox/xmin": f.Feature(float_list=f.FloatList(value=[0.1, 0.5])),
        "image/object/bbox/ymax": f.Feature(float_list=f.FloatList(value=[0.3, 0.9])),
        "image/object/class/label": f.Feature(int64_list=f.Int64List(value=[1, 3])),
        "image/object/class/text": f.Feature(bytes_list=f.BytesList(value=[b"person", b"car"])),
        "scores": f.Feature(float_list=f.FloatList(value=[0.25, 1e-7, -3.5])),
    }
    if image is not None:
        feature[image_key] = f.Feature(bytes_list=f.BytesList(value=[image]))
    if name is not None:
        feature["image/filename"] = f.Feature(bytes_list=f.BytesList(value=[name.encode()]))
    if source_id is not None:
        feature["image/source_id"] = f.Feature(bytes_list=f.BytesList(value=[source_id.encode()]))
    for k, v in extra.items():
        feature[k] = f.Feature(bytes_list=f.BytesList(value=v))
    return f.Example(features=f.Features(feature=feature))


def _write_tfrecord(path, examples, compression=None) -> list[bytes]:
    raws = [e.SerializeToString() if not isinstance(e, bytes) else e for e in examples]
    with tf.io.TFRecordWriter(str(path), options=compression) as w:
        for raw in raws:
            w.write(raw)
    return raws


def _read_tfrecords(pattern, compression=None) -> list[bytes]:
    files = sorted(glob.glob(str(pattern)))
    assert files, pattern
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type=compression)]


def _assert_only_image_changed(raw_in: bytes, raw_out: bytes, image_keys=("image/encoded",),
                               added=()):
    a, b = tf.train.Example.FromString(raw_in), tf.train.Example.FromString(raw_out)
    fa, fb = a.features.feature, b.features.feature
    assert set(fb) == set(fa) | set(added)
    for k in fa:
        if k in image_keys:
            assert fa[k].bytes_list.value != fb[k].bytes_list.value
            assert len(fa[k].bytes_list.value) == len(fb[k].bytes_list.value)
        else:  # byte-for-byte the same feature
            assert fa[k].SerializeToString() == fb[k].SerializeToString(), k


def _flip_data_byte(raws: list[bytes], path, index: int) -> None:
    """Corrupt one byte in the data of record ``index`` of an uncompressed shard."""
    offset = sum(16 + len(r) for r in raws[:index]) + 12 + len(raws[index]) // 2
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0xFF
    open(path, "wb").write(bytes(data))


@pytest.fixture
def dataset(tmp_path):
    """One uncompressed shard: 3 good Examples, then a data-CRC-corrupt one, one without the
    image key, one with undecodable image bytes, one that makes the detector raise, one good
    Example without names, and a truncated record at the end."""
    grey = np.full((48, 64, 3), 200, np.uint8)
    grey[:, :, 0] = np.arange(64, dtype=np.uint8)[None, :] * 2
    good = [_example(_jpeg(grey), "a.jpg"), _example(_png(grey), None, "src-b"),
            _example(_jpeg(grey[:, :40]), "c.jpg", "src-c")]
    bad = [_example(_jpeg(grey), "corrupt.jpg"), _example(None, "noimage.jpg"),
           _example(b"\xff\xd8\xffnot really a jpeg", "undecodable.jpg"),
           _example(_jpeg(grey[:, :13]), "explodes.jpg")]
    anonymous = _example(_jpeg(grey))
    path = tmp_path / "in" / "shard-00000.tfrecord"
    path.parent.mkdir()
    raws = _write_tfrecord(path, good + bad + [anonymous])
    _flip_data_byte(raws, path, 3)
    length = struct.pack("<Q", 1000)
    with open(path, "ab") as f:  # a record cut short: valid header, 20 of 1000 bytes
        f.write(length + struct.pack("<I", _TFRecordUtil._masked_crc32c(length)) + b"\0" * 20)
    return tmp_path / "in", raws


def test_only_images_change_failures_accounted_for_and_dead_lettered(dataset, tmp_path):
    src, raws = dataset
    out = tmp_path / "out"
    cli.main(["--input_format", "tfrecord", "--input", f"{src}/*.tfrecord", "--output",
              str(out), "--num_shards", "2", "--dead_letter", RUNNER],
             anonymizer_factory=fake_factory)
    records = _manifest(out)
    assert set(records) == {"a.jpg", "src-b", "c.jpg", "shard-00000.tfrecord#3", "noimage.jpg",
                            "undecodable.jpg", "explodes.jpg", "shard-00000.tfrecord#7",
                            "shard-00000.tfrecord#8"}
    ok = {k for k, r in records.items() if r.ok}
    assert ok == {"a.jpg", "src-b", "c.jpg", "shard-00000.tfrecord#7"}
    assert records["shard-00000.tfrecord#3"].error == "corrupt record data (CRC mismatch)"
    assert "truncated" in records["shard-00000.tfrecord#8"].error
    assert "no image bytes under feature 'image/encoded'" in records["noimage.jpg"].error
    assert records["undecodable.jpg"].error_type == "ImageError"
    assert records["explodes.jpg"].error == "detector exploded"
    assert records["a.jpg"].input == f"{src}/shard-00000.tfrecord#0"
    assert records["src-b"].format == "png" and records["a.jpg"].format == "jpeg"
    data_files = sorted(glob.glob(f"{out}/data-*-of-00002.tfrecord"))
    assert len(data_files) == 2
    for r in records.values():
        assert r.output == (f"{out}/data-*.tfrecord" if r.ok else None)
    written = _read_tfrecords(f"{out}/data-*.tfrecord")
    assert len(written) == len(ok)
    by_index = {0: "a.jpg", 1: "src-b", 2: "c.jpg", 7: "shard-00000.tfrecord#7"}
    outputs = {}
    for raw in written:
        ex = tf.train.Example.FromString(raw)
        f = ex.features.feature
        name = (f["image/filename"].bytes_list.value[0].decode() if "image/filename" in f else
                f["image/source_id"].bytes_list.value[0].decode() if "image/source_id" in f
                else "shard-00000.tfrecord#7")
        outputs[name] = raw
    for index, name in by_index.items():
        _assert_only_image_changed(raws[index], outputs[name])
        before = decode(tf.train.Example.FromString(raws[index]).features.feature[
            "image/encoded"].bytes_list.value[0], 10**8)
        after = decode(tf.train.Example.FromString(outputs[name]).features.feature[
            "image/encoded"].bytes_list.value[0], 10**8)
        assert after.format == before.format and after.pixels.shape == before.pixels.shape
        h, w = after.pixels.shape[:2]
        assert after.pixels[h // 2, w // 2].max() < 20  # the fake's box is blacked out
        assert np.abs(after.pixels[1, 1].astype(int) - before.pixels[1, 1]).max() < 8
    dead = _read_tfrecords(f"{out}/dead_letter-*.tfrecord")
    corrupt = bytearray(raws[3])
    corrupt[len(corrupt) // 2] ^= 0xFF
    assert sorted(dead) == sorted([bytes(corrupt), raws[4], raws[5], raws[6]])


REVIEW = {"reasons": ["verify_survived"],
          "boxes": [{"label": "face", "score": 0.7, "x0": 1.0, "y0": 2.0, "x1": 5.0, "y1": 6.0,
                     "reason": "verify_survived"}]}


class ReviewingFake(FakeAnonymizer):
    """The fake, plus: a 17-pixel-wide image comes back with a ``review`` (as verify would)."""

    def run(self, image, keep_debug=False):
        result = super().run(image, keep_debug)
        return dataclasses.replace(result, review=REVIEW) if image.shape[1] == 17 else result


def reviewing_factory(settings, models_dir):
    return ReviewingFake()


def test_review_queue_holds_failed_and_flagged_images(tmp_path):
    """OUTPUT/review.jsonl is written for TFRecord runs as for image folders: failed images
    (including the siblings of a failed image in the same Example) and images with a review."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    grey = np.full((24, 40, 3), 150, np.uint8)
    _write_tfrecord(src / "s.tfrecord", [
        _example(_jpeg(grey), "fine.jpg"), _example(_jpeg(grey[:, :17]), "flagged.jpg"),
        _example(_jpeg(grey[:, :13]), "explodes.jpg"), _example(None, "noimage.jpg"),
        _example(None, "pair.jpg", **{"image/encoded": [_jpeg(grey), _jpeg(grey[:, :13])]})])
    cli.main(["--input_format", "tfrecord", "--input", f"{src}/*", "--output", str(out), RUNNER],
             anonymizer_factory=reviewing_factory)
    records = _manifest(out)
    assert records["flagged.jpg"].ok and records["flagged.jpg"].needs_review
    assert not records["fine.jpg"].needs_review
    items = [json.loads(line) for line in (out / "review.jsonl").read_text().splitlines()]
    by_key = {i["key"]: i for i in items}
    assert len(by_key) == len(items)
    assert set(by_key) == {"flagged.jpg", "explodes.jpg", "noimage.jpg",
                           "pair.jpg|image/encoded[0]", "pair.jpg|image/encoded[1]"}
    flagged = by_key["flagged.jpg"]
    assert (flagged["status"], flagged["reasons"], flagged["boxes"], flagged["error"]) == (
        "ok", ["verify_survived"], REVIEW["boxes"], None)
    assert flagged["output"] == f"{out}/data-*.tfrecord"
    assert flagged["input"] == f"{src}/s.tfrecord#1"
    for key in ("explodes.jpg", "noimage.jpg", "pair.jpg|image/encoded[0]",
                "pair.jpg|image/encoded[1]"):
        item = by_key[key]
        assert (item["status"], item["reasons"], item["output"]) == ("failed", ["failed"], None)
        assert item["error"] == records[key].error
    assert by_key["explodes.jpg"]["error"] == "detector exploded"
    assert "no image bytes under feature" in by_key["noimage.jpg"]["error"]
    assert "Example not written" in by_key["pair.jpg|image/encoded[0]"]["error"]


def test_gzip_in_gzip_out_and_boxes_added(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    pixels = np.full((60, 80, 3), 90, np.uint8)
    raws = _write_tfrecord(src / "part-0.tfrecord.gz",
                           [_example(_jpeg(pixels), f"{i}.jpg") for i in range(3)], "GZIP")
    cli.main(["--input_format", "tfrecord", "--input", f"{src}/*", "--output", str(out),
              "--tfrecord_add_boxes", "--num_shards", "1", RUNNER],
             anonymizer_factory=fake_factory)
    assert sorted(r.ok for r in _manifest(out).values()) == [True] * 3
    assert glob.glob(f"{out}/data-00000-of-00001.tfrecord.gz")
    assert not glob.glob(f"{out}/dead_letter-*")
    written = _read_tfrecords(f"{out}/data-*.tfrecord.gz", "GZIP")
    assert len(written) == 3
    added = [f"image/anonymized/bbox/{c}" for c in ("xmin", "ymin", "xmax", "ymax")]
    by_name = {tf.train.Example.FromString(r).features.feature["image/filename"]
               .bytes_list.value[0]: r for r in written}
    for raw in raws:
        name = tf.train.Example.FromString(raw).features.feature["image/filename"]
        out_raw = by_name[name.bytes_list.value[0]]
        _assert_only_image_changed(raw, out_raw, added=added + ["image/anonymized/label"])
        f = tf.train.Example.FromString(out_raw).features.feature
        box = [f[k].float_list.value[0] for k in added]
        assert np.allclose(box, [0.25, 0.25, 0.75, 0.75])
        assert list(f["image/anonymized/label"].bytes_list.value) == [b"face"]


def test_multiple_image_keys_and_unlisted_images(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    pixels = np.full((40, 40, 3), 120, np.uint8)
    img = _jpeg(pixels)
    two = _example(img, "two.jpg", **{"cam/right/encoded": [img, _png(pixels)]})
    thumb = _example(img, "thumb.jpg", **{"image/thumbnail": [img]})
    raws = _write_tfrecord(src / "s.tfrecord", [two, thumb])
    out = tmp_path / "out"
    cli.main(["--input_format", "tfrecord", "--input", f"{src}/*", "--output", str(out),
              "--image_keys", "image/encoded,cam/right/encoded", "--tfrecord_add_boxes", RUNNER],
             anonymizer_factory=fake_factory)
    records = _manifest(out)
    assert {k for k, r in records.items() if r.ok} == {
        "two.jpg|image/encoded[0]", "two.jpg|cam/right/encoded[0]",
        "two.jpg|cam/right/encoded[1]"}
    assert "no image bytes under feature 'cam/right/encoded'" in \
        records["thumb.jpg"].error  # every listed key must be present
    [raw_out] = _read_tfrecords(f"{out}/data-*.tfrecord")
    added = [f"{p}anonymized/{n}" for p in ("image/", "cam/right/")
             for n in ("bbox/xmin", "bbox/ymin", "bbox/xmax", "bbox/ymax", "label")]
    _assert_only_image_changed(raws[0], raw_out, ("image/encoded", "cam/right/encoded"),
                               added + ["cam/right/anonymized/bbox/image_index"])
    f = tf.train.Example.FromString(raw_out).features.feature
    assert list(f["cam/right/anonymized/bbox/image_index"].int64_list.value) == [0, 1]
    # a photo under a key that is not listed fails closed, unless the operator says otherwise
    out2 = tmp_path / "out2"
    cli.main(["--input_format", "tfrecord", "--input", f"{src}/*", "--output", str(out2), RUNNER],
             anonymizer_factory=fake_factory)
    records = _manifest(out2)
    assert "'image/thumbnail' holds a JPEG/PNG image" in records["thumb.jpg"].error
    assert "'cam/right/encoded' holds a JPEG/PNG image" in records["two.jpg"].error
    out3 = tmp_path / "out3"
    cli.main(["--input_format", "tfrecord", "--input", f"{src}/*", "--output", str(out3),
              "--tfrecord_keep_other_images", RUNNER], anonymizer_factory=fake_factory)
    assert all(r.ok for r in _manifest(out3).values())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_boxes_map_back_to_the_stored_orientation(orientation):
    stored = np.zeros((30, 50), np.uint8)
    stored[5:12, 20:45] = 255  # rows 5-11, columns 20-44
    upright = apply_orientation(stored, orientation)
    ys, xs = np.nonzero(upright)
    h, w = upright.shape
    box = tfrecords.boxes_to_stored([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], w, h,
                                    orientation)
    assert np.allclose(box[0], [20 / 50, 5 / 30, 45 / 50, 12 / 30], atol=1e-6)


def test_read_records_stops_cleanly_on_a_corrupt_length():
    good = tf.train.Example().SerializeToString() + b"x"
    buf = io.BytesIO()
    _TFRecordUtil.write_record(buf, good)
    _TFRecordUtil.write_record(buf, good)
    data = bytearray(buf.getvalue())
    data[16 + len(good) + 1] ^= 1  # second record's length
    out = list(tfrecord_reader.read_records(io.BytesIO(bytes(data))))
    assert out[0] == (good, None) and out[1][0] is None and "corrupt record length" in out[1][1]
    assert len(out) == 2


# --- real models ---------------------------------------------------------------------------------

def _small_images(limit_devset=2, long_side=480) -> list[tuple[str, bytes]]:
    from beam_anon import models
    try:
        paths = models.fetch_samples()
    except Exception as e:
        pytest.skip(f"sample images cannot be fetched: {type(e).__name__}: {e}")
    if os.path.isdir(DEVSET):
        paths += sorted(glob.glob(os.path.join(DEVSET, "images", "*.jpg")))[:limit_devset]
    out = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        im.thumbnail((long_side, long_side))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=92)
        out.append((os.path.basename(p), buf.getvalue()))
    return out


def _changed_only_inside(before_bytes: bytes, after_bytes: bytes, boxes: Detections,
                         quality: int, lossless: bool) -> None:
    """``after`` differs from ``before`` only near ``boxes``: not at all beyond their JPEG
    blocks + 1 (16-px) block when ``lossless``, else beyond 16 px by no more than JPEG noise
    (``before`` re-encoded at ``quality``)."""
    original = decode(before_bytes, 10**8).pixels
    before = (original if lossless else decode(encode(original, None, "jpeg", quality),
                                               10**8).pixels).astype(np.int16)
    after = decode(after_bytes, 10**8).pixels.astype(np.int16)
    diff = np.abs(after - before).max(axis=2)
    near = np.zeros(diff.shape, bool)
    g = 32 if lossless else 16
    for x0, y0, x1, y1 in boxes.xyxy:
        near[max(0, int(y0) - g):int(y1) + g, max(0, int(x0) - g):int(x1) + g] = True
        inside = diff[int(np.ceil(y0)):int(y1), int(np.ceil(x0)):int(x1)]
        assert inside.size == 0 or inside.mean() > 2, (x0, y0, x1, y1, inside.mean())
    if (~near).any() and lossless:
        assert not diff[~near].any(), (diff[~near] > 0).sum()
    elif (~near).any():
        assert diff[~near].mean() < 0.05, diff[~near].mean()


@pytest.mark.models
@pytest.mark.slow
def test_real_models_on_real_images(tmp_path):
    images = _small_images()
    src = tmp_path / "in"
    src.mkdir()
    examples = [_example(data, name, extra_ids=[b"id-%d" % i]) for i, (name, data)
                in enumerate(images)]
    raws = _write_tfrecord(src / "real.tfrecord", examples)
    out = tmp_path / "out"
    cli.main(["--input_format", "tfrecord", "--input", f"{src}/*.tfrecord", "--output", str(out),
              RUNNER])
    records = _manifest(out)
    assert set(records) == {name for name, _ in images}
    written = {tf.train.Example.FromString(r).features.feature["image/filename"]
               .bytes_list.value[0].decode(): r for r in _read_tfrecords(f"{out}/data-*")}
    assert len(written) == len(images)
    total = 0
    for (name, data), raw in zip(images, raws):
        rec = records[name]
        assert rec.ok, rec.error
        _assert_only_image_changed(raw, written[name])
        new = tf.train.Example.FromString(written[name]).features.feature["image/encoded"]
        boxes = Detections.from_records(rec.boxes)
        total += len(boxes)
        assert rec.jpeg == "lossless", rec.jpeg_reason
        _changed_only_inside(data, new.bytes_list.value[0], boxes, Settings().jpeg_quality,
                             lossless=True)
    assert total >= 5 and any(b["label"] == "plate" for r in records.values() for b in r.boxes)


def test_exif_rotated_image_keeps_its_stored_orientation(tmp_path):
    """tf.io.decode_jpeg ignores EXIF: the output must keep the stored pixel layout, or the
    dataset's own boxes would no longer match."""
    src = tmp_path / "in"
    src.mkdir()
    stored = np.full((30, 80, 3), 200, np.uint8)
    stored[:, :10] = 0  # a dark left edge as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    _write_tfrecord(src / "r.tfrecord", [_example(buf.getvalue(), "rot.jpg")])
    out = tmp_path / "out"
    cli.main(["--input_format", "tfrecord", "--input", f"{src}/*", "--output", str(out), RUNNER],
             anonymizer_factory=fake_factory)
    rec = _manifest(out)["rot.jpg"]
    assert rec.ok and (rec.width, rec.height) == (30, 80)  # the manifest speaks upright pixels
    assert rec.jpeg == "lossless"  # stored orientation kept: no block needs turning
    [raw] = _read_tfrecords(f"{out}/data-*")
    img = tf.io.decode_jpeg(tf.train.Example.FromString(raw).features.feature[
        "image/encoded"].bytes_list.value[0]).numpy()
    assert img.shape == (30, 80, 3) and img[15, 3].max() < 40 and img[15, 70].min() > 150
