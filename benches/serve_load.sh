#!/usr/bin/env bash
# Benchmark: `kefu serve` under 1, 4 and 16 concurrent conversations (load from a second
# process, server/examples/load.rs, over the public SSE API): time to first token, aggregate
# tokens/s, errors, and the server's peak memory. Knowledge base: ../shared/data/kb/en.
#
#   bash benches/serve_load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kefu/target}
MODELS=${KEFU_MODELS:-$HOME/.cache/kefu/models}
cargo build --release --workspace --all-targets >&2
KEFU="$CARGO_TARGET_DIR/release/kefu"
HOME_DIR=$(mktemp -d)
ln -s "$MODELS" "$HOME_DIR/models"
export KEFU_HOME="$HOME_DIR"
"$KEFU" models fetch multilingual-e5-small >&2
"$KEFU" ingest ../shared/data/kb/en >&2
"$KEFU" serve --port 0 --max-tokens 64 --queue 64 > "$HOME_DIR/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$HOME_DIR"' EXIT
for _ in $(seq 1 120); do
  grep -q "listening on" "$HOME_DIR/serve.log" && break
  sleep 1
done
BASE=$(sed -n 's/^kefu: listening on //p' "$HOME_DIR/serve.log")
echo "kefu serve load, default models, max 64 tokens per answer, $(nproc) cpus, $(date -u +%F)"
printf '%11s %8s %7s %14s %14s %11s\n' concurrency requests errors "ttft p50 ms" "ttft p99 ms" "tokens/s"
for c in 1 4 16; do
  q=$(( c == 1 ? 8 : (c == 4 ? 2 : 1) ))
  "$CARGO_TARGET_DIR/release/examples/load" "$BASE" "$c" "$q" | python3 -c "
import json, sys
r = json.load(sys.stdin)
print('%11d %8d %7d %14.0f %14.0f %11.1f' % (r['concurrency'], r['requests'], r['errors'],
      r['ttft_p50_ms'], r['ttft_p99_ms'], r['tokens_per_second']))"
done
echo "server peak memory: $(grep VmHWM /proc/$PID/status | awk '{print $2/1024 " MiB"}')"
