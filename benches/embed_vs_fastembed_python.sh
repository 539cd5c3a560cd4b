#!/usr/bin/env bash
# Benchmark: Kefu's embedder (fastembed-rs on ONNX Runtime 1.24.4) against the Python
# `fastembed` package (pinned to the same ONNX Runtime, 1.24.4) on the same ONNX model file,
# the same texts (the knowledge-base chunks Kefu makes of $KB, with the model's passage
# prefix) and the same thread count, in one run; prints the ratio.
#
#   bash benches/embed_vs_fastembed_python.sh                          # e5, threads 1 and 2
#   MODEL=all-minilm-l6-v2 KB=../shared/data/kb/en bash benches/embed_vs_fastembed_python.sh
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-"1 2"}
export KEFU_HOME=${KEFU_HOME:-$HOME/.cache/kefu}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kefu/target}
VENV=${BENCH_VENV:-$HOME/.cache/kefu-bench/fastembed-venv}
KB=${KB:-../shared/data/kb}
MODEL_NAME=${MODEL:-multilingual-e5-small}

if ! "$VENV/bin/python" -c 'import fastembed' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q fastembed "onnxruntime==1.24.4"
fi
# The whole workspace, as the test script builds it: one feature set, one set of cached artifacts.
cargo build --release --workspace --all-targets >&2
"$CARGO_TARGET_DIR/release/kefu" models fetch "$MODEL_NAME" >&2
"$CARGO_TARGET_DIR/release/kefu" models fetch onnxruntime >&2
MODEL="$KEFU_HOME/models/$MODEL_NAME"
RUNTIME="$KEFU_HOME/models/onnxruntime/libonnxruntime.so"
TEXTS=$(mktemp --suffix .json)

echo "$MODEL_NAME (ONNX), chunks of $KB; $(nproc) cpus; $(date -u +%F)"
printf '%7s %-18s %8s %10s\n' threads engine texts "texts/s"
for t in $THREADS; do
  kefu=$("$CARGO_TARGET_DIR/release/examples/embed_throughput" "$KB" "$MODEL_NAME" "$MODEL" "$RUNTIME" "$t" "$TEXTS")
  peer=$("$VENV/bin/python" - "$MODEL" "$TEXTS" "$t" <<'PY'
import json, sys, time
from fastembed import TextEmbedding
from fastembed.common.model_description import PoolingType, ModelSource
model_dir, texts_file, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
texts = json.load(open(texts_file))
TextEmbedding.add_custom_model(
    model="kefu/bench-model", pooling=PoolingType.MEAN, normalization=True,
    sources=ModelSource(hf="kefu/none"), dim=384, model_file="model.onnx")
model = TextEmbedding(model_name="kefu/bench-model", specific_model_path=model_dir,
                      threads=threads)
list(model.embed(texts[:32], batch_size=32))  # warm-up
start = time.perf_counter()
vectors = list(model.embed(texts, batch_size=32))
seconds = time.perf_counter() - start
assert len(vectors) == len(texts)
print(json.dumps({"texts": len(texts), "seconds": seconds, "texts_per_second": len(texts) / seconds}))
PY
)
  k=$(echo "$kefu" | python3 -c 'import json,sys; print(json.load(sys.stdin)["texts_per_second"])')
  p=$(echo "$peer" | python3 -c 'import json,sys; print(json.load(sys.stdin)["texts_per_second"])')
  n=$(echo "$kefu" | python3 -c 'import json,sys; print(json.load(sys.stdin)["texts"])')
  printf '%7s %-18s %8s %10.1f\n' "$t" kefu "$n" "$k"
  printf '%7s %-18s %8s %10.1f\n' "$t" "fastembed (Python)" "$n" "$p"
  python3 -c "print(f'{\"\":>7} {\"ratio\":<18} {\"\":>8} {$k/$p:>9.2f}x')"
done
rm -f "$TEXTS"
