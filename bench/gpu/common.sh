# Sourced by the bench/gpu/*.sh scripts: repository root, offline model hubs, output folder and a
# log of everything printed, the Python to use and DEVICE (cuda unless set). $1: the log's name.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT=${OUT:-$PWD/bench-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/$1") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HOME=/tmp/hf
export PYTHONPATH=${PYTHONPATH:-}:$PWD
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
