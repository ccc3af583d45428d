#!/usr/bin/env bash
# One prepared GPU run of bench/proxy_eval.py: `base` proxies (~57M non-embedding params), rows of
# 1,024 tokens, bf16, fused AdamW, rows resident on the GPU and no host sync between evaluations.
# Arms raw / rules / rules+fastText (configs/web-quality.yaml's output), 1e16 FLOPs per curated run,
# baseline at 0.5x, 1x and 2x: 3 + 2 = 5 runs and 5.5e16 FLOPs per seed, 2 seeds = 10 runs, 1.1e17 FLOPs.
# Sized for < 8 minutes on one H200 at >= 250 TFLOP/s effective (a 57M model at 1,024 tokens
# reaches roughly 30-40% of the 989 TFLOP/s bf16 peak; measure it, this was not yet run on a GPU).
# DEVICE=cpu QUICK=1 bash bench/gpu/proxy_eval.sh runs the same path tiny and slow on CPU.
# The GPU image lacks dask/datatrove: out/web-quality must travel with the tree (carry it), or the
# script runs configs/web-quality.yaml first where winnow is installed.
set -uo pipefail
source "$(dirname "$0")/common.sh" run.log
if [ "${QUICK:-0}" = 1 ] || [ "$DEVICE" = cpu ]; then
  ARGS=(--size tiny --seq-len 256 --budget 3e11 --seeds 2 --baseline-budgets 0.5,1,2 --heldout-tokens 20000 --n-evals 1)
else
  ARGS=(--size base --seq-len 1024 --batch-size 64 --lr 1e-3 --budget 1e16 --seeds 2 --vocab 8192
        --baseline-budgets 0.5,1,2 --n-evals 3)
fi
timeout 470 "$PY" bench/proxy_eval.py --device "$DEVICE" --out "$OUT/proxy-eval" "${ARGS[@]}"
echo "rc=$?"
