#!/usr/bin/env bash
# One prepared GPU run of bench/gpu/scoring.py: the embedding scorer (MiniLM shape) and the
# perplexity scorer (SmolLM2-135M shape and winnow's base proxy), random weights built from
# config, bf16 under inference_mode, 16 length-sorted batches each. Sized for < 3 minutes on one
# H200 (the SmolLM2 pass is ~50 TFLOP of work; the floor at 790 TFLOP/s is well under a second,
# so the time is set by kernel efficiency, tokenization and host-to-device copies).
# The GPU image has torch, transformers, sentence-transformers and tokenizers: nothing to carry.
# DEVICE=cpu bash bench/gpu/scoring.sh runs the same path on a small CPU slice (~1.5 minutes).
set -uo pipefail
source "$(dirname "$0")/common.sh" scoring.log
if [ "$DEVICE" = cpu ]; then
  ARGS=(--docs 36 --batches 2 --threads "$(nproc)")
else
  ARGS=(--docs 8192 --batches 16 --threads 8)
  nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv
fi
timeout 280 "$PY" bench/gpu/scoring.py --device "$DEVICE" "${ARGS[@]}"
echo "rc=$?"
