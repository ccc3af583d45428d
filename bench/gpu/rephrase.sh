#!/usr/bin/env bash
# One prepared GPU run of bench/gpu/rephrase.py (< 8 minutes on one H200; not yet run on a GPU):
# batched `transformers.generate` in bf16 through winnow's rephrase backend, SmolLM2-135M shape with
# random weights, 256 generated tokens per request, batch 64 / 128 / 256, 90 s each after a warm-up.
# Output: $OUT/rephrase.log and $OUT/rephrase.jsonl (bench-out/ by default).
# DEVICE=cpu QUICK=1 bash bench/gpu/rephrase.sh is the CPU dry run (a 2-layer model, seconds).
set -uo pipefail
source "$(dirname "$0")/common.sh" rephrase.log
if [ "${QUICK:-0}" = 1 ] || [ "$DEVICE" = cpu ]; then
  timeout 120 "$PY" bench/gpu/rephrase.py --device cpu --quick --out "$OUT/rephrase.jsonl"
else
  timeout 470 "$PY" bench/gpu/rephrase.py --device cuda --batches 64,128,256 --new-tokens 256 --budget-s 90 \
    --out "$OUT/rephrase.jsonl"
fi
echo "rc=$?"
