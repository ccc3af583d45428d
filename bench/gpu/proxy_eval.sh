#!/usr/bin/env bash
# One prepared GPU run of bench/proxy_eval.py: `small` proxies (~10.6M non-embedding params),
# 1,024-token rows, raw vs curated web, 2 seeds, baseline at 0.5x/1x/2x. Sized for < 8 minutes on
# one H200 (~50-150 TFLOP/s effective for this size: 2e15 FLOPs per 1x run, 9 runs).
# DEVICE=cpu QUICK=1 bash bench/gpu/proxy_eval.sh runs the same path tiny and slow on CPU.
# The GPU image lacks dask/datatrove: the web pipeline's output (out/web) must travel with the
# tree (carry it), or the script runs configs/web.yaml first where winnow is installed.
set -uo pipefail
source "$(dirname "$0")/common.sh" run.log
if [ "${QUICK:-0}" = 1 ] || [ "$DEVICE" = cpu ]; then
  ARGS=(--size tiny --seq-len 256 --budget 5e11 --seeds 1)
else
  ARGS=(--size small --seq-len 1024 --batch-size 32 --lr 2e-3 --budget 2e15 --seeds 2 --vocab 8192)
fi
timeout 470 "$PY" bench/proxy_eval.py --device "$DEVICE" --out "$OUT/proxy-eval" "${ARGS[@]}"
echo "rc=$?"
