#!/usr/bin/env bash
# Benchmark: the swap pause. `kefu serve` (default model, Debian FAQ knowledge base) answers two
# conversations that ask one question after another; an admin promotes a second version (the
# default model after one LoRA step, merged and registered), then rolls back. Prints p50 / p99
# of the first token and of the whole answer before the swaps and for the requests that
# overlapped a swap window, failures, and each swap's duration. Goal: pause < 100 ms at p99.
#
#   bash benches/swap_pause.sh   (CONCURRENCY=2 BASELINE_S=30 SWAPS=2 MAX_TOKENS=32 by default)
#
# Environment: KEFU (a kefu binary to use instead of building one), MODEL (the chat model, a
# name or a GGUF path; default: the default model), DEVICE (cpu, cuda), KB (the documents),
# KEFU_EMBEDDER / KEFU_ONNXRUNTIME as for `kefu serve`. On a GPU machine:
# benches/swap_pause_gpu.sh prepares what travels and prints the command.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kefu/target}
MODELS=${KEFU_MODELS:-$HOME/.cache/kefu/models}
if [ -z "${KEFU:-}" ]; then
  cargo build --release -p server --bin kefu >&2
  KEFU="$CARGO_TARGET_DIR/release/kefu"
fi
KB=$(realpath "${KB:-../shared/data/kb/en/debian-faq}")
model=()
if [ -n "${MODEL:-}" ]; then model=(--model "$MODEL"); fi
if [ -n "${DEVICE:-}" ]; then export KEFU_DEVICE="$DEVICE"; fi
HOME_DIR=$(mktemp -d)
ln -s "$MODELS" "$HOME_DIR/models"
export KEFU_HOME="$HOME_DIR"
trap 'kill ${PID:-0} 2>/dev/null || true; rm -rf "$HOME_DIR"' EXIT
"$KEFU" ingest "$KB" >&2
# A second version: one LoRA step on one example, merged and registered.
echo '{"question": "Who answers here?", "answer": "Kefu answers here."}' > "$HOME_DIR/one.jsonl"
"$KEFU" train sft "${model[@]}" --data "$HOME_DIR/one.jsonl" --output "$HOME_DIR/run" --max-steps 1 \
  --eval-fraction 0 >&2
"$KEFU" merge "${model[@]}" --adapter "$HOME_DIR/run/adapter" --output "$HOME_DIR/b.gguf" >&2
VERSION_B=$("$KEFU" models register "$HOME_DIR/b.gguf" | grep -Eo '[0-9a-f]{64}' | head -n 1)
KEFU_PASSWORD="benchmark password" "$KEFU" users add --role admin boss >&2
TOKEN=$("$KEFU" tokens add boss)
"$KEFU" serve "${model[@]}" --port 0 --max-tokens "${MAX_TOKENS:-32}" --follow-ms 100 --trainer off > "$HOME_DIR/serve.log" 2>&1 &
PID=$!
for _ in $(seq 1 120); do
  grep -q "listening on" "$HOME_DIR/serve.log" && break
  sleep 1
done
BASE=$(sed -n 's/^kefu: listening on //p' "$HOME_DIR/serve.log")
echo "kefu swap pause, ${MODEL:-default model}, ${DEVICE:-cpu}, ${MAX_TOKENS:-32} tokens per answer, $(nproc) cpus, $(date -u +%F)"
python3 benches/swap_pause.py "$BASE" "$TOKEN" "$VERSION_B" "${CONCURRENCY:-2}" \
  "${BASELINE_S:-30}" "${SWAPS:-2}"
grep -E "ready in|refused" "$HOME_DIR/serve.log" | sed 's/^/server: /' || true
