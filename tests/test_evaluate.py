"""Tests of beam_anon.tools.evaluate on hand-made labels and manifests (no images needed), plus one
run over the devset labels with a synthetic perfect manifest."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from beam_anon.tools.evaluate import evaluate, format_table, load_labels, load_manifest, main, union_area

DEVSET = Path(__file__).resolve().parents[2] / "shared" / "devset"


def box(label, x0, y0, x1, y1, **extra):
    return {"label": label, "x0": x0, "y0": y0, "x1": x1, "y1": y1, **extra}


def write_labels(tmp_path, lines, sub="data"):
    d = tmp_path / sub
    d.mkdir(parents=True, exist_ok=True)
    p = d / "labels.jsonl"
    p.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return p


def label_line(image, boxes, classes=("face", "plate"), exhaustive=("face", "plate"),
               width=100, height=100, complete=False):
    return {"image": image, "width": width, "height": height, "boxes": boxes,
            "complete": complete, "classes": list(classes), "exhaustive_classes": list(exhaustive)}


def rec(path, boxes=(), status="ok", width=100, height=100):
    return {"input": str(path), "output": None if status != "ok" else "out.jpg",
            "status": status, "error": None if status == "ok" else "boom",
            "width": width, "height": height,
            "boxes": [dict(b, score=0.9) for b in boxes]}


def run(tmp_path, lines, records_for, coverage=0.7):
    """``records_for(dir)`` builds manifest records given the labels directory."""
    p = write_labels(tmp_path, lines)
    return evaluate(load_labels(p), records_for(p.parent), coverage)


# --- coverage ---------------------------------------------------------------------------------

@pytest.mark.parametrize("x1, covered", [(16.9, 0), (17.0, 1), (17.1, 1)])
def test_coverage_threshold_boundary(tmp_path, x1, covered):
    # GT 10x10 at (10,10); blurred box spans x 10..x1 -> 69%, 70%, 71% of the GT box
    lines = [label_line("images/a.jpg", [box("face", 10, 10, 20, 20)])]
    r = run(tmp_path, lines, lambda d: [rec(d / "images/a.jpg", [box("face", 0, 0, x1, 30)])])
    assert r["classes"]["face"]["gt"] == 1
    assert r["classes"]["face"]["covered"] == covered


def test_coverage_option_changes_threshold(tmp_path):
    lines = [label_line("images/a.jpg", [box("face", 10, 10, 20, 20)])]
    recs = lambda d: [rec(d / "images/a.jpg", [box("face", 0, 0, 15, 30)])]  # 50%
    assert run(tmp_path, lines, recs, coverage=0.7)["classes"]["face"]["recall"] == 0.0
    assert run(tmp_path, lines, recs, coverage=0.5)["classes"]["face"]["recall"] == 1.0


def test_union_of_two_partial_boxes_covers_one_face(tmp_path):
    lines = [label_line("images/a.jpg", [box("face", 10, 10, 30, 30)])]
    # each half alone covers 50%, and they overlap: the union covers 80%, any label counts
    halves = [box("face", 0, 0, 20, 30), box("plate", 14, 0, 26, 40)]
    r = run(tmp_path, lines, lambda d: [rec(d / "images/a.jpg", halves)])
    assert r["classes"]["face"]["covered"] == 1
    one = run(tmp_path, lines, lambda d: [rec(d / "images/a.jpg", halves[:1])])
    assert one["classes"]["face"]["covered"] == 0


def test_union_area_exact_with_overlap_and_fractions():
    assert union_area([[0, 0, 10, 10], [5, 5, 15, 15]], (0, 0, 100, 100)) == 175.0
    assert union_area([[0, 0, 10, 10], [0, 0, 10, 10]], (0, 0, 100, 100)) == 100.0
    assert union_area([[0.5, 0, 1.5, 2]], (0, 0, 1, 1)) == pytest.approx(0.5)
    assert union_area([[-5, -5, 5, 5]], (0, 0, 100, 100)) == 25.0
    assert union_area([], (0, 0, 10, 10)) == 0.0


# --- ignore boxes and class conventions -------------------------------------------------------

def test_ignore_box_counts_neither_as_miss_nor_false(tmp_path):
    lines = [label_line("images/a.jpg", [box("face", 10, 10, 20, 20),
                                          box("face", 50, 50, 60, 60, ignore=True)],
                        exhaustive=("face",))]
    # ignore box not blurred: no miss
    r = run(tmp_path, lines, lambda d: [rec(d / "images/a.jpg", [box("face", 8, 8, 22, 22)])])
    f = r["classes"]["face"]
    assert (f["gt"], f["covered"], f["ignored"], f["recall"]) == (1, 1, 1, 1.0)
    # ignore box blurred: not a false box, and not a hit either
    r = run(tmp_path, lines, lambda d: [rec(d / "images/a.jpg", [box("face", 8, 8, 22, 22),
                                                                box("face", 48, 48, 62, 62)])])
    assert (r["classes"]["face"]["gt"], r["false_boxes"]["face"]["count"]) == (1, 0)


def test_false_boxes_only_for_exhaustive_classes(tmp_path):
    stray = [box("face", 70, 70, 80, 80), box("plate", 0, 90, 20, 100)]
    lines = [label_line("images/wider.jpg", [box("face", 10, 10, 20, 20)],
                        classes=("face",), exhaustive=("face",)),
             label_line("images/alpr.jpg", [box("plate", 10, 10, 40, 20)],
                        classes=("plate",), exhaustive=()),
             label_line("images/full.jpg", [box("plate", 10, 10, 40, 20)], classes=(),
                        exhaustive=("face", "plate"), complete=True)]

    def recs(d):
        return [rec(d / "images/wider.jpg", [box("face", 10, 10, 20, 20)] + stray),
                rec(d / "images/alpr.jpg", [box("plate", 10, 10, 40, 20)] + stray),
                rec(d / "images/full.jpg", [box("plate", 8, 8, 42, 22)] + stray)]
    r = run(tmp_path, lines, recs)
    fb = r["false_boxes"]
    # wider: 1 stray face false (plates not exhaustive); alpr: none; full: 1 face + 1 plate
    assert (fb["face"]["count"], fb["face"]["images"]) == (2, 2)
    assert (fb["plate"]["count"], fb["plate"]["images"]) == (1, 1)
    assert (fb["total"]["count"], fb["total"]["images"], fb["total"]["per_image"]) == (3, 2, 1.5)
    assert r["classes"]["plate"]["gt"] == 2  # complete:true counts plates without `classes`


def test_tolerant_match_rule(tmp_path):
    lines = [label_line("images/a.jpg", [box("face", 40, 40, 50, 50)], exhaustive=("face",))]

    def false_count(blur):
        return run(tmp_path, lines, lambda d: [rec(d / "images/a.jpg", [blur])]
                   )["false_boxes"]["face"]["count"]
    # GT box 10x10 = 100 px^2
    assert false_count(box("face", 20, 20, 70, 70)) == 0      # covers 100% of GT (GT is 4% of it)
    assert false_count(box("face", 45, 40, 55, 50)) == 0      # covers 50% of GT
    assert false_count(box("face", 46, 40, 56, 50)) == 0      # 40% of GT, but GT is 40% of it
    assert false_count(box("face", 47, 40, 57, 50)) == 0      # 30% / 30%: second rule, boundary
    assert false_count(box("face", 47.5, 40, 57.5, 50)) == 1  # 25% / 25%
    assert false_count(box("plate", 40, 40, 50, 50)) == 0     # plates not exhaustive here


def test_misses_only_for_listed_classes_and_unlabelled_images_ignored(tmp_path):
    lines = [label_line("images/a.jpg", [box("plate", 10, 10, 40, 20),
                                          box("face", 50, 50, 60, 60)],
                        classes=("plate",), exhaustive=()),
             label_line("images/u.jpg", [], classes=(), exhaustive=())]
    r = run(tmp_path, lines, lambda d: [rec(d / "images/a.jpg"),
                                        rec(d / "images/u.jpg", [box("face", 0, 0, 50, 100)])])
    assert r["classes"]["plate"]["gt"] == 1 and r["classes"]["face"]["gt"] == 0
    assert r["classes"]["face"]["recall"] is None
    assert r["false_boxes"]["total"]["count"] == 0
    assert r["blurred_area"]["evaluated"] == {"images": 2, "mean_fraction": 0.25}
    assert r["blurred_area"]["labelled"] == {"images": 1, "mean_fraction": 0.0}


def test_size_buckets(tmp_path):
    faces = [box("face", 0, 0, 15.9, 40),      # short side 15.9 -> <16
             box("face", 20, 0, 36, 16),       # 16 -> 16-31
             box("face", 40, 0, 71.9, 80),     # 31.9 -> 16-31
             box("face", 0, 50, 32, 82)]       # 32 -> >=32
    lines = [label_line("images/a.jpg", faces, width=200, height=200)]
    blurred = [faces[0], faces[3]]
    r = run(tmp_path, lines, lambda d: [rec(d / "images/a.jpg", blurred, width=200, height=200)])
    bs = r["classes"]["face"]["by_size"]
    assert {k: (v["gt"], v["covered"]) for k, v in bs.items()} == {
        "<16": (1, 1), "16-31": (2, 0), ">=32": (1, 1)}
    assert bs["16-31"]["recall"] == 0.0 and r["classes"]["face"]["recall"] == 0.5


# --- images: failed, missing, matching ---------------------------------------------------------

def test_failed_image_excluded_and_counted(tmp_path):
    lines = [label_line("images/a.jpg", [box("face", 10, 10, 20, 20)]),
             label_line("images/b.jpg", [box("face", 10, 10, 20, 20)])]
    r = run(tmp_path, lines, lambda d: [rec(d / "images/a.jpg", [box("face", 10, 10, 20, 20)]),
                                        rec(d / "images/b.jpg", status="failed")])
    assert r["classes"]["face"]["gt"] == 1 and r["classes"]["face"]["recall"] == 1.0
    assert r["images"]["failed"] == 1 and r["images"]["failed_list"][0]["image"] == "images/b.jpg"
    assert r["images"]["evaluated"] == 1 and r["images"]["missing"] == 0
    assert "failed: images/b.jpg" in format_table(r)


def test_missing_image_reported_and_strict_exit(tmp_path):
    lines = [label_line("images/a.jpg", [box("face", 10, 10, 20, 20)]),
             label_line("images/b.jpg", [box("face", 10, 10, 20, 20)])]
    p = write_labels(tmp_path, lines)
    man = tmp_path / "run" / "manifest-00000-of-00001.jsonl"
    man.parent.mkdir()
    man.write_text(json.dumps(rec(p.parent / "images/a.jpg", [box("face", 10, 10, 20, 20)])))
    r = evaluate(load_labels(p), load_manifest(str(tmp_path / "run" / "manifest*.jsonl")))
    assert (r["images"]["missing"], r["images"]["missing_list"]) == (1, ["images/b.jpg"])
    assert r["classes"]["face"]["gt"] == 1
    args = ["--labels", str(p), "--manifest", str(man), "--json", str(tmp_path / "r.json")]
    assert main(args) == 0
    assert main(args + ["--strict"]) == 1
    assert json.loads((tmp_path / "r.json").read_text())["images"]["missing"] == 1


def test_path_matching_relative_to_labels_dir(tmp_path, monkeypatch):
    lines = [label_line("images/a.jpg", [box("face", 10, 10, 20, 20)]),
             label_line("other/a.jpg", [box("face", 10, 10, 20, 20)]),
             label_line("images/c.jpg", [box("face", 10, 10, 20, 20)])]
    hit = [box("face", 10, 10, 20, 20)]

    def recs(d):
        monkeypatch.chdir(d.parent)  # a relative input resolves against the cwd
        return [rec(d / "images" / ".." / "images" / "a.jpg", hit),  # same file, other spelling
                rec("data/other/a.jpg"),                                # relative input, missed
                rec("gs://bucket/elsewhere/c.jpg", hit)]               # basename fallback
    r = run(tmp_path, lines, recs)
    assert r["images"]["missing"] == 0 and r["images"]["not_in_labels"] == 0
    assert (r["classes"]["face"]["gt"], r["classes"]["face"]["covered"]) == (3, 2)
    assert r["per_image"][0]["image"] == "other/a.jpg"


def test_ambiguous_basename_not_matched(tmp_path):
    lines = [label_line("images/a.jpg", []), label_line("other/a.jpg", [])]
    r = run(tmp_path, lines, lambda d: [rec("gs://bucket/a.jpg")])
    assert r["images"]["missing"] == 2 and r["images"]["not_in_labels"] == 1


def test_blurred_area_overlap_not_double_counted(tmp_path):
    lines = [label_line("images/a.jpg", [], classes=("face",), exhaustive=())]
    boxes = [box("face", 0, 0, 50, 50), box("plate", 25, 25, 75, 75), box("face", 0, 0, 50, 50)]
    r = run(tmp_path, lines, lambda d: [rec(d / "images/a.jpg", boxes)])
    assert r["blurred_area"]["evaluated"]["mean_fraction"] == pytest.approx(0.4375)


def test_load_manifest_several_shards_and_errors(tmp_path):
    for i in range(2):
        (tmp_path / f"m-{i}.jsonl").write_text(json.dumps(rec(f"/x/{i}.jpg")) + "\n\n")
    assert len(load_manifest(str(tmp_path / "m-*.jsonl"))) == 2
    assert len(load_manifest([str(tmp_path / "m-0.jsonl"), str(tmp_path / "m-*.jsonl")])) == 2
    with pytest.raises(FileNotFoundError):
        load_manifest(str(tmp_path / "nothing*.jsonl"))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_manifest(str(tmp_path / "bad.jsonl"))


# --- devset ------------------------------------------------------------------------------------

@pytest.mark.skipif(not (DEVSET / "labels.jsonl").exists(), reason="devset not present")
def test_devset_perfect_manifest(tmp_path, capsys):
    labels = load_labels(DEVSET / "labels.jsonl")
    man = tmp_path / "manifest.jsonl"
    man.write_text("".join(json.dumps(rec(lab.path, lab.gt.to_records(), width=lab.width,
                                              height=lab.height)) + "\n" for lab in labels))
    out = tmp_path / "r.json"
    assert main(["--labels", str(DEVSET / "labels.jsonl"), "--manifest", str(man),
                 "--json", str(out), "--strict"]) == 0
    r = json.loads(out.read_text())
    assert r["images"]["evaluated"] == len(labels) and r["images"]["missing"] == 0
    for c in ("face", "plate"):
        assert r["classes"][c]["gt"] > 0 and r["classes"][c]["recall"] == 1.0
        assert r["false_boxes"][c]["count"] == 0 and r["false_boxes"][c]["images"] > 0
    assert r["false_boxes"]["total"]["count"] == 0
    assert "100.0%" in capsys.readouterr().out
