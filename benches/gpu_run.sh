#!/usr/bin/env bash
# The GPU benchmark and correctness checks, step 2 of 2, on the GPU machine (see
# benches/gpu_vs_pytorch.sh for step 1): unpacks the binaries, runs the GPU correctness tests
# on a tiny model and on both catalog models' architectures (SmolLM2-135M, Qwen2.5-0.5B),
# then the benchmark table.
#   bash benches/gpu_run.sh .gpu [benchmark options, e.g. --steps 10 --only sft]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.gpu}; shift || true
# candle's CUDA build links the CUDA 13 libraries that PyTorch's wheels ship.
CUDA_LIB=$(python3 -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export LD_LIBRARY_PATH="$CUDA_LIB:${LD_LIBRARY_PATH:-}"
for bin in kefu gpu-tests; do
  [ -x "$DIR/$bin" ] || { xz -dc "$DIR/$bin.xz" >"$DIR/$bin" && chmod +x "$DIR/$bin"; }
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 benches/gpu_vs_pytorch.py "$DIR" --only none  # draws the random weights
echo "== GPU correctness: tiny random llama"
"$DIR/gpu-tests" --test-threads 1 --nocapture
for model in smollm2-135m qwen2.5-0.5b; do
  echo "== GPU correctness: $model architecture"
  KEFU_CUDA_TEST_MODEL="$DIR/$model" "$DIR/gpu-tests" --test-threads 1 --nocapture
done
echo "== benchmark"
python3 benches/gpu_vs_pytorch.py "$DIR" "$@"
