#!/usr/bin/env bash
# Benchmark: query latency (embed the question + vector search + BM25 + fusion) with the
# default embedder and the in-process Qdrant store grown to N points (default 100,000) from
# the real chunks of ../shared/data/kb, over every Debian FAQ question (en + zh, each 4 times).
# Goal (knowledge-base issue): p99 under 50 ms on the 2-core machine.
#
#   bash benches/query_latency.sh            # N=100000
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
export KEFU_HOME=${KEFU_HOME:-$HOME/.cache/kefu}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kefu/target}
# The whole workspace, as the test script builds it: one feature set, one set of cached artifacts.
cargo build --release --workspace --all-targets >&2
"$CARGO_TARGET_DIR/release/kefu" models fetch multilingual-e5-small >&2
"$CARGO_TARGET_DIR/release/kefu" models fetch onnxruntime >&2
echo "query latency, $N points, multilingual-e5-small, $(nproc) cpus, $(date -u +%F)"
"$CARGO_TARGET_DIR/release/examples/query_latency" ../shared/data/kb \
  "$KEFU_HOME/models/multilingual-e5-small" "$KEFU_HOME/models/onnxruntime/libonnxruntime.so" \
  "$N" ../shared/data/qa/en.jsonl ../shared/data/qa/zh.jsonl
