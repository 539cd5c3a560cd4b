#!/usr/bin/env bash
# Training memory on served-prompt-sized examples: the worker trains on the messages an answer
# was served with (instructions, four passages, the question: about 1,100 tokens with the
# default model). Four such examples made of the longest Debian FAQ chapter; one SFT step at
# each batch size; prints the peak resident memory and the seconds of each run (model load
# included).
#
#   bash benches/train_memory.sh              # batch 1 and 2
#   BATCHES="1" bash benches/train_memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export KEFU_HOME=${KEFU_HOME:-$HOME/.cache/kefu}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kefu/target}
SHARED=${SHARED_DATA:-$(cd .. && pwd)/shared/data}
cargo build --release --workspace --all-targets >&2
KEFU="$CARGO_TARGET_DIR/release/kefu"
"$KEFU" models fetch smollm2-135m-instruct >&2
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
echo "one SFT step, default model, 4 examples of ~1,100 tokens; $(nproc) cpus; $(date -u +%F)"
printf '%6s %14s %9s\n' batch "peak RSS (GB)" seconds
for b in ${BATCHES:-1 2}; do
  /usr/bin/time -f "%M %e" -o "$DIR/time" "$KEFU" train sft --data "$DIR/long.jsonl" \
    --output "$DIR/run-$b" --max-steps 1 --batch "$b" --max-len 2048 --eval-fraction 0 >&2
  read -r kb seconds <"$DIR/time"
  printf '%6s %14.1f %9s\n' "$b" "$(echo "$kb / 1048576" | bc -l)" "$seconds"
done
