"""Measure video anonymization on the generated clip (``beam_anon.tools.video_sample``): recall of the
known boxes with and without the temporal step, and frames per second through the pipeline.

    python -m beam_anon.tools.video_bench recall [--frames 40] [--fps 10] [--size 480x270]
    python -m beam_anon.tools.video_bench speed  [--frames 40] [--workers 1,2] [--every 1,3] [--presets P,Q]

``recall``: the clip's frames are anonymized once (``Anonymizer.run``, default settings), then
the temporal step is replayed on those detections for several memories and ``detect_every``
values (detection on a subset of frames = the same per-frame boxes, fewer of them). A known box
counts as covered in a frame when the blurred boxes cover >= 70 % of it (as
``beam_anon.tools.evaluate``); only boxes >= 80 % inside the frame count. ``speed``: whole pipeline
runs (``python -m beam_anon.cli``, FnApiRunner, fresh process each), frames/s by wall
clock including model loading, and CPU seconds per frame of all the run's processes (the figure
that does not depend on what else the machine runs); and the decode + encode floor in one
process.
Prints a table; ``--json`` also writes the numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from beam_anon.detection import tracking
from beam_anon.media import video_io
from beam_anon.boxes import Detections
from beam_anon.tools.evaluate import union_area
from beam_anon.media.segments import detect_frame
from beam_anon.tools.video_sample import Clip, make_clip, visible

COVERAGE = 0.7


def frame_coverage(clip: Clip, blurred: dict[int, Detections]) -> dict:
    """Covered / counted visible known boxes, per label and overall, plus the mean blurred
    fraction of the frame."""
    counted, covered, area = {}, {}, []
    w, h = clip.size
    for f, truth in enumerate(clip.truth):
        boxes = blurred.get(f, Detections.empty()).xyxy
        area.append(union_area(boxes, (0, 0, w, h)) / (w * h))
        for label, b in visible(truth, clip.size):
            counted[label] = counted.get(label, 0) + 1
            cov = union_area(boxes, b) / float(np.prod(b[2:] - b[:2]))
            covered[label] = covered.get(label, 0) + (cov >= COVERAGE)
    total = sum(counted.values())
    return {"recall": sum(covered.values()) / max(total, 1), "boxes": total,
            "by_label": {k: covered.get(k, 0) / n for k, n in counted.items()},
            "blurred_fraction": float(np.mean(area))}


def detect_clip(clip: Clip, anonymizer) -> tuple[dict[int, Detections], float]:
    """Per-frame blurred boxes of every frame of ``clip`` and the mean seconds per frame."""
    probe = video_io.probe(clip.path, 10**9)
    dets, t = {}, time.perf_counter()
    for f, img in video_io.decode_range(clip.path, probe.info, 0, probe.info.frames,
                                        probe.pts):
        dets[f] = anonymizer.run(img).boxes
    return dets, (time.perf_counter() - t) / len(dets)


def replay(clip: Clip, dets: dict[int, Detections], memory: int | None, every: int,
           rule: tracking.Linking = tracking.Linking()) -> dict[int, Detections]:
    """What would be blurred with ``detect_every=every`` and track ``memory`` (None: no
    temporal step, only each detected frame's own boxes); other linking parameters: ``rule``."""
    n, (w, h) = clip.frames, clip.size
    seen = {f: d for f, d in dets.items() if detect_frame(f, n, every)}
    if memory is None:
        return seen
    rule = dataclasses.replace(rule, memory=memory)
    return {f: fb.boxes for f, fb in tracking.fill(seen, range(n), rule, n, w, h).items()}


def recall_table(clip: Clip, dets: dict[int, Detections]) -> list[dict]:
    rows = []
    for every in (1, 2, 3, 5):
        for memory in (None, 0, 1, 2, 3, 5, 8):
            if memory is not None and memory < every - 1:
                continue
            if memory is None and every > 1 and every != 3:
                continue
            row = {"detect_every": every, "memory": memory,
                   **frame_coverage(clip, replay(clip, dets, memory, every))}
            rows.append(row)
    return rows


#: tracker variants compared at detect_every 3, memory 2: (name, speed, grow)
VARIANTS = (("plain IoU", 0.0, 0.0), ("+ motion allowance (speed 0.5)", 0.5, 0.0),
            ("+ growing added boxes (grow 0.15): the default", 0.5, 0.15))


def variant_table(clip: Clip, dets: dict[int, Detections], every: int = 3,
                  memory: int = 2) -> list[dict]:
    """Recall of the tracker variants of :data:`VARIANTS` (same detections)."""
    return [{"variant": name, **frame_coverage(clip, replay(
        clip, dets, memory, every, tracking.Linking(memory, 0.2, speed, grow)))}
        for name, speed, grow in VARIANTS]


def _print_recall(rows, seconds, clip):
    print(f"clip: {clip.frames} frames, {clip.fps} fps, {clip.size[0]}x{clip.size[1]}, "
          f"shake_every {clip.shake_every}, "
          f"{rows[0]['boxes']} visible known boxes (face and plate, all frames); "
          f"detection {seconds:.2f} s/frame")
    print("| detect_every | temporal step | recall | faces | plates | blurred area |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        step = "off" if r["memory"] is None else f"memory {r['memory']}"
        lab = r["by_label"]
        print(f"| {r['detect_every']} | {step} | {r['recall']:.3f} | {lab.get('face', 0):.3f} "
              f"| {lab.get('plate', 0):.3f} | {r['blurred_fraction']:.1%} |")


def _pipeline_run(src: str, workers: int, every: int, frames: int,
                  preset: str = "balanced") -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (all processes of the run) and detector runs of one pipeline
    run with ``preset``; with several workers the video is cut into one segment per worker."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "beam_anon.cli", "--input", src, "--output", out,
               "--preset", preset, "--quiet",
               "--runner=FnApiRunner", f"--direct_num_workers={workers}",
               f"--video_detect_every={every}", "--video_segment_frames",
               str(-(-frames // workers) if workers > 1 else 0)]
        if workers > 1:
            cmd.append("--direct_running_mode=multi_threading")  # as the CLI's default
        t, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        rec = json.loads(open(os.path.join(out, "manifest.jsonl")).readline())
        if rec["status"] != "ok":
            raise RuntimeError(f"benchmark run failed: {rec['error']}")
    return seconds, cpu, rec["video"]["detector_runs"]


def _floor_fps(clip: Clip) -> float:
    from beam_anon.media import video_encode
    probe = video_io.probe(clip.path, 10**9)
    info = probe.info
    with video_encode.local_tempdir() as tmp:
        t = time.perf_counter()
        w = video_encode.PartWriter(os.path.join(tmp, "p.mp4"), *info.display_size, info.rate,
                                    info.time_base, info.container, 18, "medium")
        for f, img in video_io.decode_range(clip.path, info, 0, info.frames, probe.pts):
            w.write(img, probe.pts[f], probe.durations[f])
        w.close()
        return info.frames / (time.perf_counter() - t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m beam_anon.tools.video_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("recall", "speed"))
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--fps", type=int, default=10)
    p.add_argument("--size", default="480x270")
    p.add_argument("--shake_every", type=int, default=5, help="smear every n-th frame "
                   "(a camera jolt; 0: none) (default: %(default)s)")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--every", default="1,3")
    p.add_argument("--presets", default="balanced", help="speed: comma-separated presets")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from beam_anon import models
    size = tuple(int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(os.path.join(tmp, "clip.mp4"), models.fetch_samples(), args.frames,
                         args.fps, size, args.shake_every, gop=args.fps)
        if args.what == "recall":
            from beam_anon.detection.anonymize import load_anonymizer
            from beam_anon.settings import Settings
            dets, seconds = detect_clip(clip, load_anonymizer(Settings()))
            result = {"seconds_per_frame": seconds, "rows": recall_table(clip, dets),
                      "variants": variant_table(clip, dets)}
            _print_recall(result["rows"], seconds, clip)
            print("\ntracker variants, detect_every 3, memory 2:\n| variant | recall | "
                  "blurred area |\n|---|---|---|")
            for v in result["variants"]:
                print(f"| {v['variant']} | {v['recall']:.3f} | {v['blurred_fraction']:.1%} |")
        else:
            result = {"floor_fps": _floor_fps(clip), "runs": []}
            print(f"clip: {clip.frames} frames, {clip.size[0]}x{clip.size[1]}; decode + encode "
                  f"floor {result['floor_fps']:.1f} frames/s")
            print(f"load average at the start: {os.getloadavg()[0]:.1f}")
            print("| preset | workers | detect_every | detector runs | wall s | frames/s | "
                  "CPU s/frame |")
            print("|---|---|---|---|---|---|---|")
            for preset in args.presets.split(","):
                for every in map(int, args.every.split(",")):
                    for workers in map(int, args.workers.split(",")):
                        s, cpu, runs = _pipeline_run(clip.path, workers, every, clip.frames,
                                                     preset)
                        result["runs"].append({"preset": preset, "workers": workers,
                                               "detect_every": every, "detector_runs": runs,
                                               "seconds": s, "fps": clip.frames / s,
                                               "cpu_per_frame": cpu / clip.frames})
                        print(f"| {preset} | {workers} | {every} | {runs} | {s:.1f} | "
                              f"{clip.frames / s:.3f} | {cpu / clip.frames:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
