"""Progress of a local run: items done of total, items/s and ETA, printed to stderr.

Workers tick a shared folder (one file per worker process, one byte per item done, whatever its
outcome: ok, failed or skipped); the launching process polls the folder's total size every
``interval`` seconds and prints one line when it changed. Works for every local runner,
multi-process included, because it needs only a local folder; on Dataflow the Beam counters
(``beam_anon`` namespace) are the progress. A terminal gets the line rewritten in place; a log
file or pipe gets one line per update.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time


class Ticker:
    """Worker side: ``tick()`` records one item done in ``folder`` (cheap: one byte appended to
    this process's own file). Picklable; a missing or unwritable folder is ignored (progress
    never fails a run)."""

    def __init__(self, folder: str):
        self.folder = folder

    def tick(self, count: int = 1) -> None:
        try:
            with open(os.path.join(self.folder, f"{os.getpid()}.tick"), "ab") as f:
                f.write(b"." * count)
        except OSError:
            pass


def passing(element, ticker: Ticker | None):
    """For ``beam.Map``: tick once for ``element`` and pass it on unchanged."""
    if ticker is not None:
        ticker.tick()
    return element


def done(folder: str) -> int:
    """Items ticked in ``folder`` so far."""
    try:
        return sum(e.stat().st_size for e in os.scandir(folder) if e.name.endswith(".tick"))
    except OSError:
        return 0


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds} s"


def line(count: int, total: int | None, elapsed: float, unit: str = "images") -> str:
    """``beam_anon: 120/304 images (39 %), 2.1 images/s, ETA 1 min 28 s`` (no total: no ETA)."""
    rate = count / elapsed if elapsed > 0 else 0.0
    if total:
        eta = _duration((total - count) / rate) if rate > 0 and count < total else (
            "0 s" if count >= total else "unknown")
        return (f"beam_anon: {count}/{total} {unit} ({100 * count // total} %), "
                f"{rate:.1f} {unit}/s, ETA {eta}")
    return f"beam_anon: {count} {unit} done, {rate:.1f} {unit}/s"


class Progress:
    """Launcher side, a context manager: makes the tick folder (``ticker()`` for the workers)
    and, while the pipeline runs, prints a progress line at most every ``interval`` seconds."""

    def __init__(self, total: int | None, unit: str = "images", interval: float = 5.0,
                 stream=None):
        self.total, self.unit, self.interval = total, unit, interval
        self.stream = stream or sys.stderr
        self.folder = tempfile.mkdtemp(prefix="beam_anon-progress-")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.start = time.monotonic()
        self.printed = 0
        self._last = -1

    def ticker(self) -> Ticker:
        return Ticker(self.folder)

    def _print(self, final: bool = False) -> None:
        count = done(self.folder)
        if count == self._last and not final:
            return
        self._last = count
        text = line(count, self.total, time.monotonic() - self.start, self.unit)
        tty = getattr(self.stream, "isatty", lambda: False)()
        end = "\n" if final or not tty else "\r"
        self.stream.write(("\r" if tty else "") + text + end)
        self.stream.flush()
        self.printed += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._print()

    def __enter__(self) -> "Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.printed:  # a run shorter than one interval prints nothing but its summary
            self._print(final=True)
        shutil.rmtree(self.folder, ignore_errors=True)
