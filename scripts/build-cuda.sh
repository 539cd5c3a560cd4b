#!/usr/bin/env bash
# Builds a CUDA kefu (`--features cuda`) for NVIDIA Hopper GPUs (sm_90; CUDA 13.0, driver 580)
# on a machine without a GPU or a CUDA install: nvcc and the CUDA libraries come from PyPI
# wheels in a venv under ~/.cache, and the driver library (libcuda, which only a GPU host has)
# is replaced at link time by a stub of empty functions. The binary loads the real libcuda at
# run time, so it only starts where a driver is installed; ship it beside the CPU build.
#
# Usage: scripts/build-cuda.sh [OUTPUT_DIR] [--tests]   (default: ~/.cache/kefu/cuda)
# Writes OUTPUT_DIR/kefu (stripped) and, with --tests, OUTPUT_DIR/gpu-tests (the trainer's GPU
# correctness tests, trainer/tests/cuda.rs). Environment: CUDA_COMPUTE_CAP (default 90), TOOLS (where
# the venv lives), CARGO_TARGET_DIR (default: the test suite's).
set -euo pipefail
cd "$(dirname "$0")/.."
OUTPUT=${1:-$HOME/.cache/kefu/cuda}
TESTS=${2:-}
TOOLS=${TOOLS:-$HOME/.cache/kefu/cuda-tools}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kefu/target}"

[ -x "$TOOLS/venv/bin/pip" ] || python3 -m venv "$TOOLS/venv"
# nvcc, nvvm and crt pinned to 13.0 so the PTX they emit loads on driver 580; the libraries
# are the versions PyTorch's CUDA 13 wheels use, so one LD_LIBRARY_PATH serves both.
"$TOOLS/venv/bin/pip" install -q \
  "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-crt==13.0.88" "nvidia-nvvm==13.0.88" \
  "nvidia-cuda-cccl==13.0.85" "nvidia-cuda-runtime==13.0.96" "nvidia-cublas==13.1.0.3" \
  "nvidia-cuda-nvrtc==13.0.88" "nvidia-curand==10.4.0.35"
CUDA=$("$TOOLS/venv/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')

# The linker looks for unversioned names.
for lib in cublas cublasLt cudart nvrtc; do ln -sf "lib$lib.so.13" "$CUDA/lib/lib$lib.so"; done
ln -sf libcurand.so.10 "$CUDA/lib/libcurand.so"

# The libcuda stub: one empty function for every driver entry point cudarc declares.
cargo fetch --quiet
CUDARC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | sort -V | tail -n 1)
mkdir -p "$CUDA/lib/stubs"
grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$CUDARC/src/driver/sys/mod.rs" |
  awk '{ print "void " $4 "(void) {}" }' | sort -u >"$TOOLS/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA/lib/stubs/libcuda.so" "$TOOLS/libcuda_stub.c"

export PATH="$CUDA/bin:$PATH" CUDA_ROOT="$CUDA" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}"
cargo build --release -p server --bin kefu --features cuda
mkdir -p "$OUTPUT"
strip -o "$OUTPUT/kefu" "$CARGO_TARGET_DIR/release/kefu"
if [ "$TESTS" = --tests ]; then
  tests=$(cargo test --release -p trainer --features cuda --test cuda --no-run \
    --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        print(m["executable"])')
  strip -o "$OUTPUT/gpu-tests" "$tests"
fi
# The shared target folder's kefu is the CPU build again at the next plain `cargo build`.
touch server/src/main.rs
echo "CUDA kefu: $OUTPUT/kefu ($(du -h "$OUTPUT/kefu" | cut -f1))"
