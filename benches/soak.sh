#!/usr/bin/env bash
# Soak: MINUTES (default 10) of mixed traffic against one `kefu serve` — customers asking
# (streamed answers) and rating, an agent taking conversations over, replying and handing
# them back, an admin uploading documents, staff signing in (and now and then with a wrong
# password) — sampling the server's resident memory and open files every 10 s. Prints
# requests by status, 5xx errors, memory and open files at the start, the middle and the end.
#
#   bash benches/soak.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kefu/target}
MODELS=${KEFU_MODELS:-$HOME/.cache/kefu/models}
cargo build --release --bin kefu >&2
KEFU="$CARGO_TARGET_DIR/release/kefu"
HOME_DIR=$(mktemp -d)
ln -s "$MODELS" "$HOME_DIR/models"
export KEFU_HOME="$HOME_DIR"
"$KEFU" ingest ../shared/data/kb/en/debian-faq >&2
KEFU_PASSWORD="correct horse battery" "$KEFU" users add --role admin boss >&2
KEFU_PASSWORD="correct horse battery" "$KEFU" users add --role agent ann >&2
TOKEN=$("$KEFU" tokens add boss)
"$KEFU" serve --port 0 --model "${MODEL_NAME:-smollm2-135m-instruct}" --max-tokens 48 \
  --trainer off > "$HOME_DIR/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$HOME_DIR"' EXIT
for _ in $(seq 1 120); do
  grep -q "listening on" "$HOME_DIR/serve.log" && break
  sleep 1
done
BASE=$(sed -n 's/^kefu: listening on //p' "$HOME_DIR/serve.log")
echo "kefu soak: ${MINUTES} min of mixed traffic, model ${MODEL_NAME:-smollm2-135m-instruct}, $(nproc) cpus, $(date -u +%F)"
python3 benches/soak.py "$BASE" "$PID" "$TOKEN" "$MINUTES" ../shared/data/qa/en.jsonl
