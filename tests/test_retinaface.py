"""RetinaFace-MobileNetV2: the shared RetinaFace decoder (priors, offsets, NMS), the canonical
form that makes its TF -> ONNX conversion reproducible, and the converted file against the
TensorFlow graph it came from."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from beam_anon import models
from beam_anon.models.convert.canonical import canonical
from beam_anon.detectors import retina


def test_priors_follow_the_network_order():
    pri = retina.priors(64, 96, retina.FACE_SIZES)
    assert pri.shape == (8 * 12 * 2 + 4 * 6 * 2 + 2 * 3 * 2, 4)
    np.testing.assert_array_equal(pri[:3], [[4, 4, 16, 16], [4, 4, 32, 32], [12, 4, 16, 16]])
    assert pri[8 * 12 * 2 - 1].tolist() == [92, 60, 32, 32]       # last of stride 8
    assert pri[8 * 12 * 2].tolist() == [8, 8, 64, 64]              # first of stride 16
    assert pri[-1].tolist() == [80, 48, 512, 512]
    assert retina.priors(33, 33)[0].tolist() == [4, 4, 24, 24]     # ceil grid, plate sizes
    assert len(retina.priors(33, 33)) == (5 * 5 + 3 * 3 + 2 * 2) * 2


def _encode(box, prior):
    """The SSD offsets (variances 0.1/0.2) that decode to ``box`` (xyxy) on ``prior``."""
    (x0, y0, x1, y1), (cx, cy, w, h) = box, prior
    return [((x0 + x1) / 2 - cx) / (0.1 * w), ((y0 + y1) / 2 - cy) / (0.1 * h),
            np.log((x1 - x0) / w) / 0.2, np.log((y1 - y0) / h) / 0.2]


def test_decode_offsets_nms_threshold_and_clipping():
    pri = retina.priors(64, 64, retina.FACE_SIZES)
    deltas = np.zeros((len(pri), 4), np.float32)
    scores = np.zeros(len(pri), np.float32)
    face = (10, 12, 30, 36)
    for k, score in [(0, 0.9), (2, 0.8)]:      # two priors predict the same face: NMS keeps one
        deltas[k] = _encode(face, pri[k])
        scores[k] = score
    deltas[5] = _encode((50, 50, 70, 80), pri[5])   # reaches past the 64x64 image: clipped
    scores[5] = 0.6
    scores[7] = 0.2                                  # below the threshold
    dets = retina.decode(deltas, scores, pri, 64, 64, 0.5, "face")
    assert list(dets.labels) == ["face", "face"]
    np.testing.assert_allclose(dets.xyxy, [[10, 12, 30, 36], [50, 50, 64, 64]], atol=1e-3)
    np.testing.assert_allclose(dets.scores, [0.9, 0.6])
    assert len(retina.decode(deltas, scores, pri, 64, 64, 0.1, "face")) == 3
    assert not len(retina.decode(deltas, scores * 0, pri, 64, 64, 0.5, "face"))


def _graph(first: str, second: str, mul_order: tuple[str, str]):
    """A small graph with a duplicated constant and a commutative op, names and order varying."""
    c1 = helper.make_tensor(first, TensorProto.FLOAT, [1], [2.0])
    c2 = helper.make_tensor(second, TensorProto.FLOAT, [1], [2.0])
    nodes = [helper.make_node("Mul", [mul_order[0], mul_order[1]], ["m"], name="x1"),
             helper.make_node("Add", ["m", second], ["out"], name="x2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "inp", TensorProto.FLOAT, ["N"])], [helper.make_tensor_value_info(
            "out", TensorProto.FLOAT, ["N"])], [c1, c2])
    return helper.make_model(graph)


def test_canonical_form_hides_what_varies_between_conversions():
    a = canonical(_graph("c__1", "c__7", ("inp", "c__1")), {"inp": "x", "out": "y"})
    b = canonical(_graph("k__3", "k__2", ("k__3", "inp")), {"inp": "x", "out": "y"})
    assert a.SerializeToString() == b.SerializeToString()
    assert len(a.graph.initializer) == 1                  # equal constants merged
    assert [i.name for i in a.graph.input] == ["x"] and a.graph.output[0].name == "y"
    onnx.checker.check_model(a)


@pytest.mark.models
@pytest.mark.slow
def test_converted_file_computes_what_the_tensorflow_graph_computes(face_sample):
    """The derived ONNX file against the archive's frozen graph run by TensorFlow, on the face
    sample (H, W multiples of 32), and the faces it finds there."""
    import cv2
    import tensorflow as tf

    from beam_anon.models.convert.tf_frozen_graph import OUTPUTS

    spec = models.model_info("retinaface-mnv2")
    root = models.ensure_model("retinaface-mnv2")
    det = models.get_detector("retinaface-mnv2", precision="float", device="cpu")
    assert det.variant == "fixed" and det.sha256 == spec["derived"]["fixed"]["sha256"]
    image = cv2.resize(cv2.imread(face_sample), (960, 544))
    feed = det.feed(image)
    got = det.session.run(list(OUTPUTS.values()), feed)
    graph_def = tf.compat.v1.GraphDef()
    with open(os.path.join(root, spec["main_file"]), "rb") as f:
        graph_def.ParseFromString(f.read())
    wrapped = tf.compat.v1.wrap_function(
        lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    want = wrapped.prune(["x:0"], list(OUTPUTS))(tf.constant(feed["x"]))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-3, atol=1e-3)
    assert len(det.detect(image, 0.9)) >= 5           # the five faces, at half size


def test_a_failed_conversion_names_the_cause_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    """A converter that fails (here: a graph without the tensors asked for) leaves neither the
    derived file nor a partial one, and ``models fetch`` says why instead of a traceback."""
    import shutil

    from beam_anon.models import derived
    from beam_anon.models.convert import tf_frozen_graph

    src = os.path.join(models.ensure_model("retinaface-mnv2"), "retinaface")
    root = tmp_path / "models" / "retinaface-mnv2"
    shutil.copytree(src, root / "retinaface")
    monkeypatch.setattr(tf_frozen_graph, "OUTPUTS", {"no/such/tensor:0": "deltas"})
    monkeypatch.setattr(tf_frozen_graph.to_onnx, "__defaults__",
                        (tf_frozen_graph.INPUTS, tf_frozen_graph.OUTPUTS))
    with pytest.raises(derived.DerivedError, match="no tensor no/such/tensor:0"):
        derived.produce(models.model_info("retinaface-mnv2"), str(root), (), "fixed")
    assert not (root / "derived").exists() or not os.listdir(root / "derived")
    assert models.main(["fetch", "--models_dir", str(tmp_path / "models"),
                        "retinaface-mnv2"]) == 1
    assert "no tensor no/such/tensor:0" in capsys.readouterr().err
