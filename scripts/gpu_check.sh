#!/usr/bin/env bash
# Proves the GPU path on a machine with an NVIDIA GPU, within 10 minutes: installs what it needs, runs every
# CUDA-marked test (embedder on CUDA, GPU FAISS kinds, a re-index served from the GPU) and the GPU search
# benchmarks, and writes the results into one file.
#
#   scripts/gpu_check.sh [RESULTS_DIR]      # default: $OUT, else gpu_check_results/
#
# Installing: with a package index, `pip install -e '.[dev]' faiss-gpu-cu12` into the running python (PYTHON,
# default python3). Offline, put the wheels in .whl/ first (as for any machine without an index); they are installed
# into /tmp/site. The benchmarks need the default model's cached embeddings of the shared faces
# of three small sets (`python -m benchmarks.open_set embed --models dlib_sface --datasets att celeba yalea`; the
# galleries then follow those three, `search_scale --datasets att celeba yalea`), looked for in BENCH_CACHE
# (default ~/.cache/facedb/open_set); without them the benchmarks are skipped, saying so.
set -uo pipefail
cd "$(dirname "$0")/.."

RESULTS=${1:-${OUT:-gpu_check_results}}
PYTHON=${PYTHON:-python3}
BENCH_CACHE=${BENCH_CACHE:-$HOME/.cache/facedb/open_set}
mkdir -p "$RESULTS"
REPORT="$RESULTS/gpu_check.md"
export PYTHONUNBUFFERED=1

section() { printf '\n## %s\n\n```\n' "$1" >>"$REPORT"; }
end_section() { printf '```\n' >>"$REPORT"; }

{
  echo "# facedb GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} >"$REPORT"

section "device"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$REPORT" 2>&1
else
  echo "nvidia-smi not found: no NVIDIA driver on this machine" >>"$REPORT"
fi
end_section

section "install"
if [ -d .whl ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >>"$REPORT" 2>&1
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  echo "installed .whl/ into /tmp/site" >>"$REPORT"
elif [ "${GPU_CHECK_INSTALL:-1}" = 1 ]; then
  "$PYTHON" -m pip install -q -e '.[dev]' faiss-gpu-cu12 >>"$REPORT" 2>&1 || echo "pip install failed" >>"$REPORT"
fi
"$PYTHON" - >>"$REPORT" 2>&1 <<'PYEOF'
import faiss
import torch

print("torch", torch.__version__, "cuda available:", torch.cuda.is_available())
print("faiss", faiss.__version__, "GPUs seen by faiss:", faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0)
PYEOF
end_section

section "CUDA-marked tests"
timeout 420 "$PYTHON" -m pytest -m cuda -rs -q tests/ >>"$REPORT" 2>&1
echo "pytest exit status: $?" >>"$REPORT"
end_section

section "GPU search benchmarks (benchmarks/search_scale.py, JSON lines)"
if [ ! -f "$BENCH_CACHE/celeba.dlib_sface.npz" ]; then
  echo "skipped: no cached embeddings in $BENCH_CACHE" >>"$REPORT"
elif ! "$PYTHON" -c 'import faiss, sys; sys.exit(0 if faiss.get_num_gpus() > 0 else 1)' 2>/dev/null; then
  echo "skipped: faiss sees no GPU" >>"$REPORT"
else
  for spec in "1000000 gpu_flat" "1000000 gpu_ivf" "10000000 gpu_flat"; do
    set -- $spec
    timeout 150 "$PYTHON" -m benchmarks.search_scale --faces "$1" --kind "$2" --build-threads 16 \
      --cache "$BENCH_CACHE" --datasets att celeba yalea --json 2>>"$RESULTS/benchmark_stderr.txt" | tail -n 1 >>"$REPORT" \
      || echo "$1 $2: failed or timed out" >>"$REPORT"
  done
fi
end_section

echo "results in $REPORT"
