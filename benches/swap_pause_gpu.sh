#!/usr/bin/env bash
# The swap pause on an NVIDIA GPU machine, step 1 of 2 (here, no GPU needed): builds the CUDA
# kefu (scripts/build-cuda.sh) and gathers into .gpu-swap/ (git-ignored, under the device tool's
# 64 MiB) what the GPU machine needs: the CUDA kefu and ONNX Runtime (compressed), the
# all-MiniLM-L6-v2 embedder (23 MB; the default multilingual-e5-small is 262 MB), the Debian
# FAQ, and a stand-in of the default model (benches/stand_in_gguf.py: Qwen2.5-Coder-0.5B's
# architecture, tokenizer and Q8_0 shapes with repeated random blocks, 5 MB compressed; its
# answers are nonsense of the real cost). Step 2, on the GPU machine, from the repository root:
#
#   bash .gpu-swap/run.sh      (CONCURRENCY=8 BASELINE_S=60 SWAPS=4 MAX_TOKENS=32 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
export KEFU_HOME=${KEFU_HOME:-$HOME/.cache/kefu}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kefu/target}
SHARED=${SHARED_DATA:-$(cd .. && pwd)/shared/data}
OUT=.gpu-swap
mkdir -p "$OUT"
[ -x "$HOME/.cache/kefu/cuda/kefu" ] || scripts/build-cuda.sh "$HOME/.cache/kefu/cuda" >&2
cargo build --release -p server --bin kefu >&2
KEFU="$CARGO_TARGET_DIR/release/kefu"
"$KEFU" models fetch all-minilm-l6-v2 >&2
"$KEFU" models fetch onnxruntime >&2
"$KEFU" models fetch qwen2.5-coder-0.5b-instruct >&2
xz -T2 -6 -c "$HOME/.cache/kefu/cuda/kefu" >"$OUT/kefu.xz"
xz -T2 -6 -c "$KEFU_HOME/models/onnxruntime/libonnxruntime.so" >"$OUT/libonnxruntime.so.xz"
rm -rf "$OUT/all-minilm-l6-v2" "$OUT/kb"
mkdir -p "$OUT/all-minilm-l6-v2"
cp "$KEFU_HOME/models/all-minilm-l6-v2"/*.json "$KEFU_HOME/models/all-minilm-l6-v2/model.onnx" \
  "$OUT/all-minilm-l6-v2/"
cp -r "$SHARED/kb/en/debian-faq" "$OUT/kb"
if [ ! -f "$OUT/model.gguf.xz" ]; then
  venv=$(mktemp -d)
  python3 -m venv "$venv" && "$venv/bin/pip" install -q gguf numpy
  "$venv/bin/python" benches/stand_in_gguf.py \
    "$KEFU_HOME/models/qwen2.5-coder-0.5b-instruct/model.gguf" "$venv/model.gguf"
  xz -T2 -6 -c "$venv/model.gguf" >"$OUT/model.gguf.xz"
  rm -rf "$venv"
fi
cat >"$OUT/run.sh" <<'RUN'
#!/usr/bin/env bash
# Step 2 of benches/swap_pause_gpu.sh, on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")"
DIR=$(pwd)
CUDA_LIB=$(python3 -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export LD_LIBRARY_PATH="$CUDA_LIB:${LD_LIBRARY_PATH:-}"
for f in kefu libonnxruntime.so model.gguf; do
  [ -e "$f" ] || xz -dc "$f.xz" >"$f"
done
chmod +x kefu
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
export KEFU="$DIR/kefu" MODEL="$DIR/model.gguf" DEVICE=cuda KB="$DIR/kb"
export KEFU_EMBEDDER="$DIR/all-minilm-l6-v2" KEFU_ONNXRUNTIME="$DIR/libonnxruntime.so"
export CONCURRENCY=${CONCURRENCY:-8} BASELINE_S=${BASELINE_S:-60} SWAPS=${SWAPS:-4}
bash ../benches/swap_pause.sh
RUN
du -sh "$OUT" >&2
echo "carry .gpu-swap and run: bash .gpu-swap/run.sh" >&2
