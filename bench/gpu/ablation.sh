#!/usr/bin/env bash
# One prepared GPU run of bench/ablation.py's eval at `small` (or `base`) proxy size: every arm
# (raw; each stage alone; the stages cumulatively), 3 seeds, `pool` and `reference` held-out sets,
# training-only and net multipliers. Not yet run on a GPU.
#
# The GPU image has neither dask nor datatrove, so the arms are built on the CPU box and carried as
# a bundle (bench/ablation_bundle.py: each distinct text once, the arms as references, the stage
# manifests for the curation FLOPs):
#   python bench/ablation.py --build-only --bundle .data/ablation-arms      # CPU, after the CPU run
#   run(command="bash bench/gpu/ablation.sh", carry=[".data/ablation-arms", ".whl"], timeout_s=590)
# The eval path imports pydantic, pyyaml, orjson, regex, dill, scipy, matplotlib, xxhash, pyarrow,
# tokenizers and torch; the preflight below names any the image lacks (carry their wheels in .whl,
# ../shared/GPU.md section 2). Check the carry first: du -sb .data/ablation-arms .whl (< 64 MiB with the tree).
#
# Sizing (small: 10.6M non-embedding params, rows of 1,024, batch 32): 15 curated arms + the
# baseline at 0.25/0.5/1/2/4x = 22.75 budget units a seed; 3 seeds at 2e14 FLOPs a unit = 1.4e16
# FLOPs, ~5 minutes at an effective 50 TFLOP/s (a 10M model is launch-bound far below the bf16
# peak: measure it), plus tokenizing the arms on the CPU (~1-2 minutes). SIZE=base BUDGET=1e15
# SEEDS=2 is 4.6e16 FLOPs: only with a longer window than one 10-minute call.
# DEVICE=cpu QUICK=1 bash bench/gpu/ablation.sh runs the same path (bundle in, eval) tiny on CPU.
set -uo pipefail
source "$(dirname "$0")/common.sh" ablation.log
BUNDLE=${BUNDLE:-.data/ablation-arms}
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
"$PY" - <<'EOF' || { echo "preflight failed: carry the missing wheels in .whl"; exit 3; }
import importlib
missing = [m for m in ("pydantic", "yaml", "orjson", "regex", "dill", "scipy", "matplotlib", "xxhash", "pyarrow",
                       "tokenizers", "torch", "winnow.proxy.evaluate") if importlib.util.find_spec(m.split(".")[0]) is None]
print("missing:", missing) if missing else print("preflight: every module of the eval path imports")
raise SystemExit(1 if missing else 0)
EOF
[ -f "$BUNDLE/arms.json" ] || { echo "no bundle at $BUNDLE: build it on the CPU box (see the header)"; exit 2; }
du -sh "$BUNDLE"
if [ "${QUICK:-0}" = 1 ] || [ "$DEVICE" = cpu ]; then
  ARGS=(--quick --arms rules,fasttext30,cum+minhash --threads 1)
else
  nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv
  ARGS=(--size "${SIZE:-small}" --seq-len 1024 --batch-size 32 --lr 1e-3 --vocab 8192 --budget "${BUDGET:-2e14}"
        --seeds "${SEEDS:-3}" --heldout-tokens 200000 --n-evals 3)
fi
timeout 560 "$PY" bench/ablation.py --from-bundle "$BUNDLE" --device "$DEVICE" --out "$OUT/ablation" "${ARGS[@]}"
echo "rc=$?"
