#!/usr/bin/env bash
# One prepared GPU run of bench/datarater.py (< 8 minutes on one H200; not yet run on a GPU):
# the planted check and the web comparison with larger inner models than the CPU defaults
# (4 inner LMs of 4 layers x d 256, rater 2 layers x d 128, rows of 256 tokens, 400 meta-steps;
# double backward in fp32 through the math attention kernel), then the seven-arm proxy comparison
# with `small` proxies at 2e14 FLOPs per curated run. Output: $OUT/datarater.log (bench-out/ by
# default), the file README.md's DataRater section names.
# Needs dask/distributed on the GPU image (carry the wheels, ../shared/GPU.md section 2) and
# out/web-quality (carry it: the image has no datatrove to run the rule stages).
# DEVICE=cpu QUICK=1 bash bench/gpu/datarater.sh runs the planted part on CPU with few steps.
set -uo pipefail
source "$(dirname "$0")/common.sh" datarater.log
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
if [ "${QUICK:-0}" = 1 ] || [ "$DEVICE" = cpu ]; then
  timeout 470 "$PY" bench/datarater.py --device cpu --skip-web --meta-steps 20 --out "$OUT/datarater"
else
  # on CUDA the stage's GPU defaults apply (winnow/raters/datarater_scorer.py: GPU_META)
  timeout 470 "$PY" bench/datarater.py --device cuda --meta-steps 400 --size small \
    --seq-len 512 --budget 2e14 --seeds 3 --heldout-tokens 100000 --out "$OUT/datarater"
fi
echo "rc=$?"
