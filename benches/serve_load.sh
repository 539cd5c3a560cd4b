#!/usr/bin/env bash
# Benchmark: `kefu serve` under 1, 4 and 16 concurrent conversations (load from a second
# process, server/examples/load.rs, over the public SSE API): time to first token, aggregate
# tokens/s, errors, and the server's peak memory. Knowledge base: ../shared/data/kb/en.
#
#   bash benches/serve_load.sh
#   MODEL=smollm2-135m-instruct LEVELS="1 16" PREFILL_CHUNK=128 bash benches/serve_load.sh
#   QA=../shared/data/qa/en.jsonl bash benches/serve_load.sh   # every conversation asks other
#                                                              # Debian FAQ questions
#
# Each level: C conversations asking one question after another (1 x 8, 4 x 2, 16 x 1 unless
# QUESTIONS is set); time to first token and to the complete answer, gaps between streamed
# pieces, aggregate tokens/s, and the prompt tokens the model ran per turn of a conversation
# (a follow-up continues its conversation's prompt; the prefix cache supplies the rest).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kefu/target}
MODELS=${KEFU_MODELS:-$HOME/.cache/kefu/models}
# KEFU: a kefu binary to measure as it is (default: the workspace's release build, built first).
if [ -z "${KEFU:-}" ]; then
  cargo build --release --workspace --all-targets >&2
  KEFU="$CARGO_TARGET_DIR/release/kefu"
fi
HOME_DIR=$(mktemp -d)
ln -s "$MODELS" "$HOME_DIR/models"
export KEFU_HOME="$HOME_DIR"
"$KEFU" models fetch multilingual-e5-small >&2
"$KEFU" ingest ../shared/data/kb/en >&2
MODEL=${MODEL:-}
LEVELS=${LEVELS:-"1 4 16"}
SERVE_ARGS=(--port 0 --max-tokens "${MAX_TOKENS:-64}" --queue 64 --trainer off)
[ -n "$MODEL" ] && SERVE_ARGS+=(--model "$MODEL")
[ -n "${PREFILL_CHUNK:-}" ] && SERVE_ARGS+=(--prefill-chunk "$PREFILL_CHUNK")
[ -n "${PREFIX_CACHE_MB:-}" ] && SERVE_ARGS+=(--prefix-cache-mb "$PREFIX_CACHE_MB")
"$KEFU" serve "${SERVE_ARGS[@]}" > "$HOME_DIR/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$HOME_DIR"' EXIT
for _ in $(seq 1 120); do
  grep -q "listening on" "$HOME_DIR/serve.log" && break
  sleep 1
done
BASE=$(sed -n 's/^kefu: listening on //p' "$HOME_DIR/serve.log")
# With QA (a question file of ../shared/data/qa), the Debian FAQ questions of it, shuffled
# with a fixed seed, so that conversations ask different questions (none repeats another's
# prompt, so the prefix cache helps only within a conversation).
POOL=
if [ -n "${QA:-}" ]; then
  POOL="$HOME_DIR/questions.jsonl"
  python3 - "$QA" "$POOL" <<'PY'
import json, random, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rows = [r for r in rows if (r.get("source_doc") or "").startswith("kb/en/debian-faq")]
random.Random(7).shuffle(rows)
with open(sys.argv[2], "w") as out:
    for r in rows:
        out.write(json.dumps({"question": r["question"]}) + "\n")
PY
fi
echo "kefu serve load, model ${MODEL:-default}, ${SERVE_ARGS[*]}, $(nproc) cpus, $(date -u +%F)"
printf '%5s %5s %6s %9s %9s %11s %11s %8s %8s %9s  %s\n' conv req errors "ttft p50" "ttft p99" \
  "answer p50" "answer p99" "gap p50" "gap p99" "tokens/s" "prefilled tokens per turn (of prompt)"
for c in $LEVELS; do
  q=${QUESTIONS:-$(( c == 1 ? 8 : (c == 4 ? 2 : 1) ))}
  "$CARGO_TARGET_DIR/release/examples/load" "$BASE" "$c" "$q" ${POOL:+"$POOL"} | python3 -c "
import json, sys
r = json.load(sys.stdin)
turns = ' '.join('%d (%d)' % (t['prefilled_tokens'], t['prompt_tokens']) for t in r['per_turn'])
print('%5d %5d %6d %9.0f %9.0f %11.0f %11.0f %8.0f %8.0f %9.2f  %s' % (r['concurrency'],
      r['requests'], r['errors'], r['ttft_p50_ms'], r['ttft_p99_ms'], r['complete_p50_ms'],
      r['complete_p99_ms'], r['gap_p50_ms'], r['gap_p99_ms'], r['tokens_per_second'], turns))"
done
echo "server peak memory: $(grep VmHWM /proc/$PID/status | awk '{print $2/1024 " MiB"}')"
