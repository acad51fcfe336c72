#!/usr/bin/env bash
# Recall of each preset through the real CLI and the evaluate command, on both development sets
# (docs/accuracy.md, docs/verification.md). Usage: bash scripts/devset_runs.sh [PRESET ...]
# Writes out/devset-<preset>/ and out/streetplates-<preset>/, each with eval.txt and eval.json,
# and verify_jpeg.txt (lossless JPEG outputs: pixels outside the boxes' blocks unchanged).
# Options on top of the preset: RUN_OPTS="--stage1_model nanodet-g-coco" RUN_TAG=nanodet (the
# tag is appended to the output folders' names).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${BEAM_ANON_SHARED:-../shared}
presets=("$@"); [ ${#presets[@]} -gt 0 ] || presets=(fast balanced thorough)
for preset in "${presets[@]}"; do
  for set in devset streetplates; do
    dir=$SHARED/devset; [ "$set" = streetplates ] && dir=$SHARED/devset_streetplates
    out=out/$set-$preset${RUN_TAG:+-$RUN_TAG}
    start=$(date +%s)
    # shellcheck disable=SC2086  # RUN_OPTS is a list of options
    .venv/bin/python -m beam_anon.cli --preset "$preset" --quiet ${RUN_OPTS:-} \
      --input "$dir/images/*.jpg" --output "$out"
    echo "$preset on $set: $(( $(date +%s) - start )) s wall" | tee "$out/wall.txt"
    .venv/bin/python -m beam_anon.tools.evaluate --labels "$dir/labels.jsonl" \
      --manifest "$out/manifest*.jsonl" --json "$out/eval.json" | tee "$out/eval.txt"
    .venv/bin/python -m beam_anon.tools.evaluate --labels "$dir/labels.jsonl" --coverage 0.95 \
      --manifest "$out/manifest*.jsonl" > "$out/eval-whole.txt"
    .venv/bin/python -m beam_anon.tools.verify_jpeg --manifest "$out/manifest*.jsonl" \
      --json "$out/verify_jpeg.json" | tee "$out/verify_jpeg.txt"
  done
done
