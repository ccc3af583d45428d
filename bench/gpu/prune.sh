#!/usr/bin/env bash
# One prepared GPU run of bench/prune.py (< 8 minutes on one H200; not yet run on a GPU): Q-Tuning vs
# random pruning vs full SFT on GSM8K with a `small` proxy (10.6M non-embedding parameters, rows of
# 512 tokens) pre-trained at 2e15 FLOPs, SFT budget 2e14 per pruned run, 3 seeds; the base model is
# its own reference for pruning (as in the paper). Output: $OUT/prune.log (bench-out/ by default).
# Needs dask/distributed/datasets wheels on the GPU image (../shared/GPU.md section 2) and the data:
# ../shared is not on the GPU machine, so copy what it reads into an ignored folder and carry it:
#   mkdir -p .data && cp -r ../shared/data/sft ../shared/data/reference ../shared/data/web .data/
#   run(command="bash bench/gpu/prune.sh", carry=[".whl", ".data"])
# DEVICE=cpu QUICK=1 bash bench/gpu/prune.sh is the CPU dry run (bench/prune.py --quick).
set -uo pipefail
source "$(dirname "$0")/common.sh" prune.log
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
[ -d .data ] && export WINNOW_SHARED_DATA=$PWD/.data
if [ "${QUICK:-0}" = 1 ] || [ "$DEVICE" = cpu ]; then
  timeout 470 "$PY" bench/prune.py --quick --device cpu --out "$OUT/prune"
else
  timeout 470 "$PY" bench/prune.py --device cuda --size small --seq-len 512 --base-flops 2e15 --budget 2e14 \
    --seeds 3 --out "$OUT/prune"
fi
echo "rc=$?"
