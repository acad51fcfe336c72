"""The plate-detector training pipeline (``training/``): data checks, seeded augmentation,
CenterNet targets in the decoder's contract; model, loss and export where torch is installed."""
from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from beam_anon.detectors.centerface import CenterFace
from tests.trainsets import line, toy_set, write_set
from training import augment, data, mining, targets


def test_training_fixes_the_cpu_kernels():
    """oneDNN's instruction set decides the last bits of every convolution (docs/model_beamplate.md):
    importing ``training`` pins it to the shipped weights' unless the user set it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    code = "import os, training; print(os.environ['ONEDNN_MAX_CPU_ISA'], training.CPU_KERNELS)"

    def pinned(extra):
        return subprocess.run([sys.executable, "-c", code], env={**env, **extra}, cwd=root,
                              capture_output=True, text=True, check=True).stdout.split()

    assert pinned({}) == ["AVX512_CORE", "AVX512_CORE"]
    assert pinned({"ONEDNN_MAX_CPU_ISA": "AVX2"}) == ["AVX2", "AVX2"]


def test_load_and_split(tmp_path):
    folder = write_set(tmp_path, {"a.jpg": (64, 48), "b.jpg": (64, 48)},
                       [line("a.jpg", 64, 48, [(1, 2, 30, 12)], dataset="x"),
                        line("b.jpg", 64, 48, [], video="dayride_type1_002")])
    samples = data.load(folder)
    assert [s.boxes.shape for s in samples] == [(1, 4), (0, 4)]
    assert samples[0].path.endswith("a.jpg") and samples[0].dataset == "x"
    train, val = data.split(samples)
    assert [s.path for s in val] == [samples[1].path] and train == [samples[0]]
    assert data.read_image(samples[0]).shape == (48, 64, 3)


def test_image_without_labels_is_an_error(tmp_path):
    folder = write_set(tmp_path, {"a.jpg": (64, 48), "extra.jpg": (64, 48)},
                       [line("a.jpg", 64, 48, [(1, 2, 30, 12)])])
    with pytest.raises(data.DataError, match="no line in .*extra.jpg"):
        data.load(folder)


def test_box_outside_its_image_is_an_error(tmp_path):
    folder = write_set(tmp_path, {"a.jpg": (64, 48)}, [line("a.jpg", 64, 48, [(40, 2, 70, 12)])])
    with pytest.raises(data.DataError, match=r"labels.jsonl:1: box .* outside its 64x48 image"):
        data.load(folder)
    folder = write_set(tmp_path / "flat", {"a.jpg": (64, 48)},
                       [line("a.jpg", 64, 48, [(10, 5, 10, 12)])])
    with pytest.raises(data.DataError, match="no area"):
        data.load(folder)


def test_empty_or_missing_dataset_is_an_error(tmp_path):
    with pytest.raises(data.DataError, match="no labels.jsonl"):
        data.load(str(tmp_path))
    folder = write_set(tmp_path / "empty", {}, [])
    with pytest.raises(data.DataError, match="no labelled images"):
        data.load(folder)
    folder = write_set(tmp_path / "gone", {}, [line("a.jpg", 64, 48, [])])
    with pytest.raises(data.DataError, match="image images/a.jpg does not exist"):
        data.load(folder)


def test_size_mismatch_is_an_error(tmp_path):
    folder = write_set(tmp_path, {"a.jpg": (64, 48)}, [line("a.jpg", 80, 48, [])])
    with pytest.raises(data.DataError, match="64x48 pixels, the labels say 80x48"):
        data.read_image(data.load(folder)[0])


def test_dedupe_drops_copies_at_other_sizes():
    rng = np.random.default_rng(1)
    a = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    b = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    copy = cv2.resize(a, (160, 120))
    samples = [data.Sample(n, w, h, np.zeros((0, 4), np.float32)) for n, w, h in
               [("a", 80, 60), ("b", 80, 60), ("copy", 160, 120)]]
    kept = data.dedupe(samples, [data.average_hash(i) for i in (a, b, copy)])
    assert [s.path for s in kept] == ["a", "b"]


def test_crop_moves_boxes_with_the_pixels():
    image = np.zeros((200, 300, 3), np.uint8)
    image[50:70, 100:160] = 255                      # a white "plate" at (100, 50, 160, 70)
    boxes = np.array([[100, 50, 160, 70]], np.float32)
    out, moved = augment.crop(image, boxes, 0.5, 80.0, 40.0, 64)
    np.testing.assert_allclose(moved, [[10, 5, 40, 15]], atol=1e-4)
    assert out[8:13, 14:36].min() > 200 and out[20:, :].max() == 0
    flipped_img, flipped = augment.flip(out, moved)
    np.testing.assert_allclose(flipped, [[24, 5, 54, 15]], atol=1e-4)
    assert flipped_img[8:13, 28:50].min() > 200


def test_crop_drops_boxes_mostly_outside_or_too_small():
    boxes = np.array([[0, 0, 40, 10], [50, 50, 51, 60]], np.float32)
    _, moved = augment.crop(np.zeros((100, 100, 3), np.uint8), boxes, 1.0, 30.0, 0.0, 64)
    assert len(moved) == 0   # first: three quarters outside; second: 1 px wide


def test_sample_is_seeded_and_scales_plates_down():
    image = np.full((720, 1280, 3), 100, np.uint8)
    boxes = np.array([[600, 400, 760, 440]], np.float32)     # a 40 px close-up
    cfg = augment.CropConfig(size=128, around_plate=1.0)
    a = augment.sample(image, boxes, np.random.default_rng(7), cfg)
    b = augment.sample(image, boxes, np.random.default_rng(7), cfg)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    shorts = []
    for seed in range(60):
        _, out = augment.sample(image, boxes, np.random.default_rng(seed), cfg)
        assert len(out) <= 1
        shorts += list((out[:, 2:] - out[:, :2]).min(axis=1))
    assert min(shorts) < 8 and max(shorts) <= cfg.plate_sizes[1] + 1e-3
    assert np.median(shorts) < 20          # mostly distant plates


def test_crops_centre_on_hard_negatives_near_their_mining_scale():
    image = np.full((720, 1280, 3), 100, np.uint8)
    plates = np.array([[100, 100, 140, 110]], np.float32)
    negatives = np.array([[900, 500, 980, 530, 0.5]], np.float32)   # mined at half size
    cfg = augment.CropConfig(size=128, around_negative=1.0)
    for seed in range(20):
        scale, x0, y0 = augment.choose_view(plates, 1280, 720, np.random.default_rng(seed), cfg,
                                            negatives)
        assert 0.5 * 0.7 - 1e-6 <= scale <= 0.5 * 1.4 + 1e-6
        side = cfg.size / scale
        assert x0 <= 900 and x0 + side >= 980 and y0 <= 500 and y0 + side >= 530
    # without negatives (or a zero share) the plate crops are drawn as before
    a = augment.choose_view(plates, 1280, 720, np.random.default_rng(3), augment.CropConfig())
    b = augment.choose_view(plates, 1280, 720, np.random.default_rng(3),
                            augment.CropConfig(around_negative=0.0), negatives)
    assert a == b


@pytest.mark.parametrize("squeeze,turn", [(0.5, 0.0), (1.0, 12.0), (0.4, -15.0)])
def test_oblique_crop_moves_boxes_with_the_pixels(squeeze, turn):
    image = np.zeros((300, 400, 3), np.uint8)
    cv2.rectangle(image, (150, 120), (229, 149), (255, 255, 255), -1)   # 80 x 30 "plate"
    boxes = np.array([[150, 120, 230, 150]], np.float32)
    out, moved = augment.crop(image, boxes, 1.0, 60.0, 40.0, 192, squeeze=squeeze, turn=turn)
    ys, xs = np.nonzero(out[..., 0] > 127)
    seen = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    np.testing.assert_allclose(moved[0], seen, atol=2.0)
    assert moved[0, 2] - moved[0, 0] < 80 * squeeze + 30 * abs(np.sin(np.radians(turn))) + 3


def test_oblique_views_only_when_asked():
    cfg = augment.CropConfig(size=128, oblique=1.0, squeeze=(0.4, 1.0), max_turn=10.0)
    for seed in range(20):
        squeeze, turn, shift = augment.oblique_view(np.random.default_rng(seed), cfg, 0.5)
        assert 0.4 <= squeeze <= 1.0 and abs(turn) <= 10.0
        assert 0.0 <= shift <= 256 / squeeze - 256     # the view's extra width, image pixels
    rng, ref = np.random.default_rng(1), np.random.default_rng(1)
    assert augment.oblique_view(rng, augment.CropConfig(), 0.5) == (1.0, 0.0, 0.0)
    assert rng.random() == ref.random()                 # share 0 draws nothing


def test_square_plates_are_oversampled_only_when_asked():
    boxes = np.array([[0, 0, 40, 10], [0, 0, 30, 25], [0, 0, 12, 10]], np.float32)
    assert list(augment.is_square(boxes)) == [False, True, True]
    probs = np.array([0.5, 0.3, 0.2])
    square_probs = np.array([0.0, 0.6, 0.4])      # image 0 has no square plate
    asked = augment.CropConfig(square_share=1.0)
    picks = [augment.pick(probs, square_probs, np.random.default_rng(i), asked) for i in range(50)]
    assert all(square and i in (1, 2) for i, square in picks)
    # share 0: one draw, the same as before the option existed
    for seed in range(10):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        assert augment.pick(probs, square_probs, a, augment.CropConfig()) == (
            int(b.choice(3, p=probs)), False)
        assert a.random() == b.random()


def test_square_crops_hold_a_square_plate(tmp_path):
    torch = pytest.importorskip("torch")  # noqa: F841  (training.train imports it)
    from training import train
    lines = [line("wide.jpg", 320, 240, [(20, 20, 80, 35)], dataset="x"),
             line("square.jpg", 320, 240, [(20, 20, 80, 35), (200, 150, 240, 185)],
                  dataset="x")]
    folder = write_set(tmp_path, {"wide.jpg": (320, 240), "square.jpg": (320, 240)}, lines)
    samples = data.load(folder)
    probs = train.source_probs(samples)
    square_probs = train.square_weights(samples, probs)
    assert square_probs[[s.path.endswith("wide.jpg") for s in samples]].sum() == 0
    cfg = augment.CropConfig(size=128, square_share=1.0)
    batch = train.make_batch(samples, probs, np.random.default_rng(0), cfg, 8,
                             square_probs=square_probs)
    peaks = batch["heat"].flatten(1).eq(1).sum(1)
    assert (peaks >= 1).all()     # every crop centred on the square plate holds it
    with pytest.raises(ValueError, match="square"):
        train.square_weights(samples[:1] if samples[0].path.endswith("wide.jpg")
                             else samples[1:], probs[:1])


def test_mined_negatives_keep_clear_of_plates_and_doubt():
    plates = np.array([[100, 100, 200, 130]], np.float32)
    boxes = np.array([[210, 100, 300, 130],     # touches the plate grown by half its size
                      [400, 400, 480, 430],     # clear, plate-like: a hard negative
                      [500, 500, 508, 504],     # clear but tiny: may be an unlabelled plate
                      [600, 600, 700, 630],     # clear but confident: may be a missed label
                      [700, 100, 780, 130]],    # clear, below the mining score
                     np.float32)
    scores = np.array([0.3, 0.3, 0.3, 0.9, 0.05], np.float32)
    assert list(mining.clear_of(boxes, plates)) == [False, True, True, True, True]
    picked = mining.select(boxes, scores, plates, 0.5)
    np.testing.assert_array_equal(picked, [[400, 400, 480, 430, 0.5]])


def test_mining_runs_the_model_on_each_view():
    # a fake model that sees a plate-shaped blob at the same place in every view
    def predict(blob):
        h, w = blob.shape[2] // 4, blob.shape[3] // 4
        heat = np.zeros((1, 1, h, w), np.float32)
        heat[0, 0, h // 2, w // 2] = 0.3
        size = np.zeros((1, 2, h, w), np.float32)
        size[0, 0], size[0, 1] = np.log(h / 4), np.log(w / 4)   # a quarter of the view
        return heat, size, np.zeros((1, 2, h, w), np.float32)
    rows = mining.mine_image(predict, np.zeros((1000, 2000, 3), np.uint8),
                             np.zeros((0, 4), np.float32))
    assert len(rows) == 2 and sorted(rows[:, 4]) == [0.16, 0.512]
    np.testing.assert_allclose(rows[:, :4] / [2000, 1000, 2000, 1000], [[0.375, 0.375, 0.625, 0.625]] * 2, atol=0.02)


def test_targets_decode_back_to_the_boxes():
    boxes = np.array([[30.5, 40.2, 90.1, 58.7], [150, 100, 158, 104]], np.float32)
    t = targets.encode(boxes, (128, 192))
    assert t["heat"].shape == (1, 32, 48) and t["count"] == 2
    assert t["heat"].max() == 1 and (t["heat"] == 1).sum() == 2
    dets = CenterFace.decode(t["heat"][0], t["scale"], t["offset"], 192, 128, 0.99, "plate")
    order = np.argsort(dets.xyxy[:, 0])
    np.testing.assert_allclose(dets.xyxy[order], boxes, atol=1e-3)
    assert set(dets.labels.astype(str)) == {"plate"}
    # neighbour cells that fire predict the same box
    on = t["weight"][0] > 0
    assert on.sum() > 2
    dets = CenterFace.decode(np.where(on, 0.9, 0.0).astype(np.float32), t["scale"], t["offset"],
                             192, 128, 0.5, "plate")
    assert len(dets) == 2


def test_targets_of_no_boxes_are_empty():
    t = targets.encode(np.zeros((0, 4), np.float32), (64, 64))
    assert t["heat"].max() == 0 and t["weight"].max() == 0 and t["count"] == 0


# ---- torch parts (skipped where training/requirements.txt is not installed) -------------

def test_model_loss_and_export(tmp_path):
    torch = pytest.importorskip("torch")
    from training import export, model, train

    net = model.PlateNet("mobilenetv2", width=16)
    heat, size, offset = net(torch.rand(2, 3, 64, 96) * 255)
    assert heat.shape == (2, 1, 16, 24) and size.shape == offset.shape == (2, 2, 16, 24)
    gt = torch.zeros(1, 1, 8, 8)
    gt[0, 0, 3, 3] = 1.0
    good, bad = torch.full((1, 1, 8, 8), -6.0), torch.full((1, 1, 8, 8), -6.0)
    good[0, 0, 3, 3] = 6.0
    assert float(train.focal_loss(good, gt)) < 0.01 < float(train.focal_loss(bad, gt))
    onnx_bytes = export.to_onnx(net)      # raises if onnxruntime and torch disagree
    import onnxruntime as ort
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [export.INPUT]
    outs = sess.run(list(export.OUTPUTS), {export.INPUT: np.zeros((1, 3, 64, 96), np.float32)})
    assert [o.shape for o in outs] == [(1, 1, 16, 24), (1, 2, 16, 24), (1, 2, 16, 24)]


def test_pretrained_state_dict_must_fit(tmp_path):
    torch = pytest.importorskip("torch")
    from training import model

    net = model.PlateNet("mobilenetv2", width=16)
    path = str(tmp_path / "wrong.pth")
    torch.save({"features.0.0.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="does not fit mobilenetv2"):
        net.load_pretrained(path)
    torch.save(net.backbone.state_dict(), path)
    net.load_pretrained(path)


def test_training_command_rejects_bad_data(tmp_path):
    pytest.importorskip("torch")
    from training import train

    folder = write_set(tmp_path / "d", {"a.jpg": (64, 48)},
                       [line("a.jpg", 64, 48, [(40, 2, 70, 12)])])
    with pytest.raises(data.DataError, match="outside"):
        train.main(["--out", str(tmp_path / "run"), "--data", folder, "--val_street", ""])


def test_training_reproduces_with_mining_and_resume(tmp_path, monkeypatch):
    """Same command, same weights: crops are seeded per (seed, epoch, step), mining is
    deterministic, and a run stopped after an epoch and resumed ends where an uninterrupted
    one does (the model card's reproducibility claim, at toy size)."""
    torch = pytest.importorskip("torch")
    from training import model, train

    folder = toy_set(tmp_path / "d")
    cache = tmp_path / "cache"
    os.makedirs(cache)
    torch.manual_seed(1)
    torch.save(model.PlateNet("mobilenetv2", 16).backbone.state_dict(),
               cache / os.path.basename(model.PRETRAINED["mobilenetv2"][1]))
    # an untrained toy model scores everything low and small: mine those anyway
    monkeypatch.setattr(mining, "MIN_SCORE", 0.001)
    monkeypatch.setattr(mining, "MIN_SIDE", 2.0)
    common = ["--data", str(folder), "--val_street", "", "--width", "16", "--crop", "64",
              "--batch", "2", "--steps", "2", "--epochs", "3", "--mine_at", "1",
              "--threads", "1", "--pretrained_cache", str(cache)]
    assert train.main(["--out", str(tmp_path / "a"), *common]) == 0
    assert train.main(["--out", str(tmp_path / "b"), *common, "--stop_after", "2"]) == 0
    assert train.main(["--out", str(tmp_path / "b"), *common, "--resume"]) == 0
    a, b = (torch.load(tmp_path / r / "last.pt", weights_only=False) for r in "ab")
    assert a["epoch"] == b["epoch"] == 3
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert len(a["negatives"]) == 3 and a["negatives"].keys() == b["negatives"].keys()


def test_recipe_chains_its_stages():
    pytest.importorskip("torch")
    from training import recipe

    runs = recipe.stage_args("R", ["--threads", "4"])
    assert [r[1] for r in runs] == ["R/base", "R/negatives", "R/shapes"]
    assert "--init" not in runs[0] and runs[1][runs[1].index("--init") + 1] == "R/base/last.pt"
    assert runs[2][runs[2].index("--init") + 1] == "R/negatives/last.pt"
    assert all(r[-2:] == ["--threads", "4"] for r in runs) and "--mine_at" in runs[1]
    assert "--square_share" in runs[2] and "--oblique" in runs[2]
