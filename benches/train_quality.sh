#!/usr/bin/env bash
# Does training help? The trainer's three stages on the default model (SmolLM2-135M-Instruct)
# and the shared data, each within a bounded budget, each compared with the model it started
# from on held-out data (the step-0 evaluation of the same run):
#   SFT on the train split of qa/en.jsonl → answer loss on its test split;
#   DPO on the train split of pairs/en.jsonl → reward accuracy on its test split;
#   CPT on kb/en (packed blocks, 10 % held out) → held-out perplexity.
#
#   bash benches/train_quality.sh                 # about 30 minutes on 2 cores
#   SFT_STEPS=20 DPO_STEPS=10 CPT_STEPS=10 bash benches/train_quality.sh
#   STAGES="dpo cpt" bash benches/train_quality.sh    # some stages only
set -euo pipefail
cd "$(dirname "$0")/.."
SFT_STEPS=${SFT_STEPS:-60}
DPO_STEPS=${DPO_STEPS:-40}
CPT_STEPS=${CPT_STEPS:-40}
EVAL_LIMIT=${EVAL_LIMIT:-120}
STAGES=${STAGES:-sft dpo cpt}
export KEFU_HOME=${KEFU_HOME:-$HOME/.cache/kefu}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kefu/target}
SHARED=${SHARED_DATA:-$(cd .. && pwd)/shared/data}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

cargo build --release -p server >&2
KEFU="$CARGO_TARGET_DIR/release/kefu"
"$KEFU" models fetch smollm2-135m-instruct >&2

common=(--batch 4 --max-len 256 --lr 5e-4 --eval-limit "$EVAL_LIMIT")
run() {
  local name=$1; shift
  local started=$SECONDS
  "$KEFU" train "$@" --output "$OUT/$name" "${common[@]}" | tee "$OUT/$name.txt"
  echo "$name: $((SECONDS - started)) s" | tee -a "$OUT/$name.txt"
}
for stage in $STAGES; do
  case $stage in
    sft) run sft sft --data "$SHARED/qa/en.jsonl" --split train --eval-split test --max-steps "$SFT_STEPS" ;;
    dpo) run dpo dpo --data "$SHARED/pairs/en.jsonl" --split train --eval-split test --max-steps "$DPO_STEPS" ;;
    cpt) run cpt cpt --data "$SHARED/kb/en" --eval-fraction 0.1 --max-steps "$CPT_STEPS" ;;
    *) echo "unknown stage $stage (sft, dpo, cpt)" >&2; exit 2 ;;
  esac
done
echo "outputs in $OUT"
