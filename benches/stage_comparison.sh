#!/usr/bin/env bash
# Which training stage moves held-out answers? One learning-curve iteration
# (benches/learning_curve.sh: the same questions asked, rated and corrected the same way,
# the same seed) per recipe, each adding one kind of learning to feedback SFT, and a table of
# held-out F1, fact recall, support, abstention and corrected recall before → after.
#
#   bash benches/stage_comparison.sh QA_FILE KB_DIR
#   bash benches/stage_comparison.sh ../shared/data/qa/en.jsonl ../shared/data/kb/en/debian-faq
#   RECIPES="sft knowledge" TRAIN_LIMIT=24 bash benches/stage_comparison.sh ...
#
# Recipes (RECIPES, default all): sft (feedback SFT: benches/learning_curve_recipe.toml),
# knowledge (+ `[knowledge]` examples from the FAQ, the whole test split of QA_FILE excluded so
# no held-out answer is trained on), dpo (+ `[dpo]` on correction pairs), kto (+ `[kto]` on
# every admitted rating), cpt (+ `[cpt]` on the documents). DPO and KTO need eight pairs or
# labelled answers: TRAIN_LIMIT (default 24) questions give enough corrections. Each recipe is
# about half an hour of both cores on the 2-core VM. Figures under OUT (default a new folder).
set -euo pipefail
cd "$(dirname "$0")/.."
QA=$(realpath "${1:?QA_FILE}")
KB=$(realpath "${2:?KB_DIR}")
RECIPES=${RECIPES:-sft knowledge dpo kto cpt}
OUT=$(realpath -m "${OUT:-$(mktemp -d)}")
export TRAIN_LIMIT=${TRAIN_LIMIT:-24} TEST_LIMIT=${TEST_LIMIT:-20} MAX_TOKENS=${MAX_TOKENS:-256}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kefu/target}
if [ -z "${KEFU:-}" ]; then
  cargo build --release -p server --bin kefu >&2
  # A copy, so that a build meanwhile cannot swap the binary under the runs.
  KEFU="$OUT/kefu"
  cp "$CARGO_TARGET_DIR/release/kefu" "$KEFU"
fi
export KEFU
base=benches/learning_curve_recipe.toml
for recipe in $RECIPES; do
  mkdir -p "$OUT/$recipe"
  file="$OUT/$recipe/recipe.toml"
  cp "$base" "$file"
  case $recipe in
    sft) ;;
    knowledge) printf '\n[knowledge]\nabstention = 0.25\nexclude = "%s"\n' "$QA" >>"$file" ;;
    dpo) printf '\n[dpo]\nepochs = 2\nlr = 5e-4\nbatch = 1\nbeta = 0.1\n' >>"$file" ;;
    kto) printf '\n[kto]\nepochs = 2\nlr = 5e-4\nbatch = 1\nbeta = 0.1\n' >>"$file" ;;
    cpt) printf '\n[cpt]\nepochs = 1\nlr = 5e-4\nmax_len = 512\nbatch = 1\n' >>"$file" ;;
    *) echo "unknown recipe $recipe (sft, knowledge, dpo, kto, cpt)" >&2; exit 2 ;;
  esac
  echo "== $recipe" >&2
  OUT="$OUT/$recipe" RECIPE="$file" LABEL="$recipe" \
    bash benches/learning_curve.sh "$QA" "$KB" 1 >"$OUT/$recipe/run.log" 2>&1 ||
    echo "$recipe failed: see $OUT/$recipe/run.log" >&2
done
python3 - "$OUT" $RECIPES <<'PY'
import json, os, sys
out, recipes = sys.argv[1], sys.argv[2:]
fmt = lambda v: "—" if v is None else f"{v:.3f}"
print(f"{'recipe':10} {'F1':>15} {'facts':>15} {'support':>15} {'abstained':>15} "
      f"{'corrected':>9} {'job':>16} {'seconds':>7}")
for recipe in recipes:
    path = os.path.join(out, recipe, "curve.json")
    if not os.path.exists(path):
        print(f"{recipe:10} no figures (see {recipe}/run.log)")
        continue
    curve = json.load(open(path))["curve"]
    if len(curve) < 2:
        print(f"{recipe:10} before only: the job did not finish (see {recipe}/run.log)")
        continue
    before, after = curve[0], curve[-1]
    pair = lambda k: f"{fmt(before[k])}→{fmt(after[k])}"
    job = after["job"] or {}
    verdict = f"{job.get('status')}/{'pass' if job.get('passed') else 'fail'}"
    print(f"{recipe:10} {pair('f1'):>15} {pair('fact_recall'):>15} {pair('support'):>15} "
          f"{pair('abstained'):>15} {fmt(after['corrected_recalled']):>9} {verdict:>16} "
          f"{after['seconds'] or '':>7}")
PY
echo "figures: $OUT/<recipe>/curve.json" >&2
