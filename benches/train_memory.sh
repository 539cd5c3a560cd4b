#!/usr/bin/env bash
# Training memory on served-prompt-sized examples: the worker trains on the messages an answer
# was served with (instructions, four passages, the question: about 1,100 tokens). Four such
# examples made of the longest Debian FAQ chapter; one SFT step at each batch size, with and
# without activation checkpointing per layer (--checkpoint-layers); prints the peak resident
# memory and the seconds of each run (model load included).
#
#   bash benches/train_memory.sh              # batch 1 and 2, checkpointing off and on
#   BATCHES="1" CHECKPOINT="on" MODEL=qwen2.5-coder-0.5b-instruct bash benches/train_memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export KEFU_HOME=${KEFU_HOME:-$HOME/.cache/kefu}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kefu/target}
SHARED=${SHARED_DATA:-$(cd .. && pwd)/shared/data}
cargo build --release --workspace --all-targets >&2
KEFU="$CARGO_TARGET_DIR/release/kefu"
MODEL=${MODEL:-smollm2-135m-instruct}
"$KEFU" models fetch "$MODEL" >&2
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
python3 - "$SHARED/kb/en/debian-faq" "$DIR/long.jsonl" <<'PY'
import glob, json, os, sys
longest = max(glob.glob(os.path.join(sys.argv[1], "*.md")), key=os.path.getsize)
words = open(longest).read().split()
with open(sys.argv[2], "w") as f:
    for i in range(4):
        f.write(json.dumps({"question": "Passages:\n[1] " + " ".join(words[:750])
                            + f"\n\nQuestion {i}?",
                            "answer": " ".join(words[800 + 60 * i:860 + 60 * i])}) + "\n")
PY
echo "one SFT step, $MODEL, 4 examples of ~1,100 tokens; $(nproc) cpus; $(date -u +%F)"
printf '%6s %13s %14s %9s\n' batch checkpointing "peak RSS (GB)" seconds
for c in ${CHECKPOINT:-off on}; do
  for b in ${BATCHES:-1 2}; do
    flag=(); [ "$c" = on ] && flag=(--checkpoint-layers)
    /usr/bin/time -f "%M %e" -o "$DIR/time" "$KEFU" train sft --model "$MODEL" \
      --data "$DIR/long.jsonl" --output "$DIR/run-$c-$b" --max-steps 1 --batch "$b" \
      --max-len 2048 --eval-fraction 0 "${flag[@]}" >&2 || echo "failed (killed for memory?)" >&2
    read -r kb seconds <"$DIR/time" || true
    printf '%6s %13s %14.1f %9s\n' "$b" "$c" "$(echo "$kb / 1048576" | bc -l)" "$seconds"
  done
done
