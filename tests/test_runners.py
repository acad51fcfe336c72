"""Beam's portable path, as Flink, Spark and Dataflow run it: a local job service and an external
worker pool in separate processes run the real models; the outputs and manifest must equal those
of the in-process FnApiRunner run. (The Dataflow dry run is in test_pipeline.py.)"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import cv2
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARED = ("key", "status", "error", "width", "height", "format", "models", "settings")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("localhost", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def _env() -> dict:
    env = dict(os.environ)
    # the pool starts its workers with the `python` on PATH: it must be this environment's
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["BEAM_ANON_THREADS"] = "1"
    return env


def _run_cli(args: list[str], timeout: float) -> None:
    proc = subprocess.run([sys.executable, "-m", "beam_anon.cli", *args], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


def _results(out_dir) -> dict[str, tuple[dict, bytes | None]]:
    with open(os.path.join(out_dir, "manifest.jsonl")) as f:
        records = [json.loads(line) for line in f]
    result = {}
    for rec in records:
        data = None
        if rec["output"]:
            with open(rec["output"], "rb") as f:
                data = f.read()
        result[rec["key"]] = ({k: rec[k] for k in COMPARED}, rec["boxes"], data)
    return result


@pytest.fixture(scope="module")
def small_samples(tmp_path_factory, sample_paths):
    """Three sample images scaled to at most 480 px, so the real models run quickly."""
    paths = sample_paths
    src = tmp_path_factory.mktemp("in")
    for path in sorted(paths)[:3]:
        image = cv2.imread(path)
        scale = 480 / max(image.shape[:2])
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(src / os.path.basename(path)), small)
    return src


@pytest.mark.models
@pytest.mark.slow
def test_portable_runner_with_external_worker_pool_equals_in_process(small_samples, tmp_path):
    job_port, pool_port = _free_port(), _free_port()
    procs = []
    try:
        for cmd, port in (
                (["apache_beam.runners.portability.local_job_service_main",
                  f"--port={job_port}"], job_port),
                (["apache_beam.runners.worker.worker_pool_main",
                  f"--service_port={pool_port}"], pool_port)):
            procs.append(subprocess.Popen([sys.executable, "-m", *cmd], cwd=ROOT, env=_env(),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))  # own group: kill all
            _wait_port(port, procs[-1])
        common = ["--input", f"{small_samples}/*"]
        _run_cli(common + ["--output", str(tmp_path / "portable"), "--runner=PortableRunner",
                           f"--job_endpoint=localhost:{job_port}", "--environment_type=EXTERNAL",
                           f"--environment_config=localhost:{pool_port}"], timeout=600)
    finally:
        for proc in procs:  # the pool's SDK workers are in its process group
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    _run_cli(common + ["--output", str(tmp_path / "local"), "--runner=FnApiRunner"], timeout=600)
    portable, local = _results(tmp_path / "portable"), _results(tmp_path / "local")
    assert set(portable) == set(local) == {p.name for p in small_samples.iterdir()}
    for key, (record, boxes, data) in local.items():
        assert record["status"] == "ok", record["error"]
        assert portable[key][0] == record
        assert len(portable[key][1]) == len(boxes)
        for a, b in zip(portable[key][1], boxes):
            assert a["label"] == b["label"]
            assert all(abs(a[k] - b[k]) < 1e-3 for k in ("score", "x0", "y0", "x1", "y1"))
        assert portable[key][2] == data, f"{key}: output bytes differ"
    assert sum(len(boxes) for _, boxes, _ in local.values()) > 0  # the models did find things


@pytest.mark.models
def test_local_default_worker_threads_equal_in_process(small_samples, tmp_path):
    """No --runner: the CLI's default local run (a worker thread per core sharing one set of
    models, ``cli.local_defaults``) writes what the single in-process run writes."""
    common = ["--input", f"{small_samples}/*", "--quiet"]
    _run_cli(common + ["--output", str(tmp_path / "threads")], timeout=600)
    _run_cli(common + ["--output", str(tmp_path / "one"), "--runner=FnApiRunner"], timeout=600)
    threads, one = _results(tmp_path / "threads"), _results(tmp_path / "one")
    assert set(threads) == set(one) == {p.name for p in small_samples.iterdir()}
    for key, (record, boxes, data) in one.items():
        assert record["status"] == "ok", record["error"]
        assert threads[key] == (record, boxes, data), f"{key}: differs"
    assert sum(len(boxes) for _, boxes, _ in one.values()) > 0
