#!/usr/bin/env bash
# The learning curve: does feedback make Kefu's answers better? A fresh data directory with the
# documents of KB_DIR ingested, `kefu serve` with its embedded worker; each iteration simulated
# customers ask the train-split questions of QA_FILE through the public API, a simulated agent
# rates every answer with Kefu's scorer against the reference (good: thumbs up; bad: a correction
# with the reference answer), a share of customers clicks thumbs at random (noise), then a
# training job through the admin API (worker, gate, hot swap) and `kefu eval answers` on the test
# split and on the corrected questions. Prints the figures per iteration; writes curve.json and
# curve.svg under OUT.
#
#   bash benches/learning_curve.sh QA_FILE KB_DIR [ITERATIONS]
#   bash benches/learning_curve.sh ../shared/data/qa/en.jsonl ../shared/data/kb/en/debian-faq 3
#   TRAIN_LIMIT=40 TEST_LIMIT=20 MAX_TOKENS=96 RECIPE=my-recipe.toml bash benches/learning_curve.sh ...
#
# Environment: MODEL (the chat model, default: the default model), RECIPE (a recipe.toml for
# the worker; default: the built-in one), MAX_TOKENS (answer length, 256), TRAIN_LIMIT /
# TEST_LIMIT (questions per iteration / evaluated; all by default), GOOD_F1 (0.5), NOISE (0.1),
# DEVICE (cpu, cuda), OUT (where the figures go), KEFU (a kefu binary to use as it is; default:
# the workspace's release build, built first).
set -euo pipefail
cd "$(dirname "$0")/.."
QA=$(realpath "${1:?QA_FILE}")
KB=$(realpath "${2:?KB_DIR}")
ITERATIONS=${3:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kefu/target}
MODELS=${KEFU_MODELS:-$HOME/.cache/kefu/models}
OUT=$(realpath -m "${OUT:-$(mktemp -d)}")
mkdir -p "$OUT"
if [ -z "${KEFU:-}" ]; then
  cargo build --release --workspace --all-targets >&2
  KEFU="$CARGO_TARGET_DIR/release/kefu"
fi
export KEFU
HOME_DIR=$(mktemp -d)
mkdir -p "$MODELS"
ln -s "$MODELS" "$HOME_DIR/models"
export KEFU_HOME="$HOME_DIR"
unset KEFU_DATABASE_URL
trap 'kill ${PID:-0} 2>/dev/null || true; wait ${PID:-0} 2>/dev/null || true; rm -rf "$HOME_DIR"' EXIT
"$KEFU" models fetch ${MODEL:+"$MODEL"} >&2
"$KEFU" ingest "$KB" >&2
if [ -n "${RECIPE:-}" ]; then cp "$RECIPE" "$HOME_DIR/recipe.toml"; fi
KEFU_PASSWORD="benchmark password" "$KEFU" users add --role admin boss >&2
KEFU_PASSWORD="benchmark password" "$KEFU" users add --role agent ann >&2
ADMIN=$("$KEFU" tokens add boss)
AGENT=$("$KEFU" tokens add ann)
# Answers as long in the evaluation as in serving.
export KEFU_MAX_TOKENS=${MAX_TOKENS:-256}
serve=("$KEFU" serve --port 0 --follow-ms 500)
if [ -n "${MODEL:-}" ]; then serve+=(--model "$MODEL"); fi
if [ -n "${DEVICE:-}" ]; then export KEFU_DEVICE="$DEVICE"; fi
"${serve[@]}" > "$OUT/serve.log" 2>&1 &
PID=$!
for _ in $(seq 1 300); do
  grep -q "listening on" "$OUT/serve.log" && break
  kill -0 "$PID" 2>/dev/null || { cat "$OUT/serve.log" >&2; exit 1; }
  sleep 1
done
BASE=$(sed -n 's/^kefu: listening on //p' "$OUT/serve.log")
echo "kefu learning curve: $(basename "$QA") on $(basename "$KB"), model ${MODEL:-default}," \
  "recipe ${RECIPE:-built-in}, $(nproc) cpus, ${DEVICE:-cpu}, $(date -u +%F)"
python3 benches/learning_curve.py "$BASE" "$ADMIN" "$AGENT" "$QA" "$KB" "$ITERATIONS" "$OUT"
echo "figures: $OUT/curve.json, plot: $OUT/curve.svg"
