#!/usr/bin/env bash
# The GPU benchmark and correctness checks, step 1 of 2 (on this machine, no GPU needed):
# builds the CUDA kefu and the GPU test binary (scripts/build-cuda.sh), and gathers into .gpu/
# (git-ignored) what the GPU machine needs: both binaries (compressed), each benchmarked model's
# config and tokenizer (SmolLM2-135M-Instruct, the default; Qwen2.5-0.5B-class, the opt-in),
# and SFT / DPO data made of the shared knowledge-base documents. Step 2, on the GPU machine:
#
#   bash benches/gpu_run.sh .gpu      # correctness tests, then benches/gpu_vs_pytorch.py
#
# .gpu/ stays under the device tool's 64 MiB: weights are not carried; the GPU machine draws
# seeded random weights of each real architecture, which both frameworks then load.
set -euo pipefail
cd "$(dirname "$0")/.."
export KEFU_HOME=${KEFU_HOME:-$HOME/.cache/kefu}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kefu/target}
SHARED=${SHARED_DATA:-$(cd .. && pwd)/shared/data}
OUT=.gpu
mkdir -p "$OUT"

cargo build --release -p server --bin kefu >&2
# A copy: the CUDA build below replaces the target folder's kefu until the next plain build.
KEFU=$(mktemp -d)/kefu
cp "$CARGO_TARGET_DIR/release/kefu" "$KEFU"
scripts/build-cuda.sh "$HOME/.cache/kefu/cuda" --tests >&2
xz -T2 -6 -c "$HOME/.cache/kefu/cuda/kefu" >"$OUT/kefu.xz"
xz -T2 -6 -c "$HOME/.cache/kefu/cuda/gpu-tests" >"$OUT/gpu-tests.xz"

for pair in smollm2-135m:smollm2-135m-instruct qwen2.5-0.5b:qwen2.5-coder-0.5b-instruct; do
  name=${pair%%:*} model=${pair#*:}
  if [ ! -f "$OUT/$name/config.json" ]; then
    "$KEFU" models fetch "$model" >&2
    tmp=$(mktemp -d)
    "$KEFU" merge --model "$model" --output "$tmp/hf" >&2
    mkdir -p "$OUT/$name"
    cp "$tmp/hf"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json} "$OUT/$name/"
    rm -rf "$tmp"
  fi
done

# Long answers (each example fills --max-len), the same records for Kefu and PyTorch.
python3 - "$SHARED/kb/en" "$OUT" <<'PY'
import json, os, sys
root, out = sys.argv[1:3]
docs = []
for folder, _, files in sorted(os.walk(root)):
    for f in sorted(files):
        text = open(os.path.join(folder, f), encoding="utf-8", errors="replace").read()
        # Long enough to fill 2,048 tokens (the --lengths 512,2048 runs).
        if len(text) > 6000:
            docs.append((os.path.splitext(f)[0].replace("-", " "), text[:12000]))
with open(f"{out}/sft.jsonl", "w") as sft, open(f"{out}/dpo.jsonl", "w") as dpo:
    for i, (title, text) in enumerate(docs):
        question = f"What does the guide say about {title}?"
        sft.write(json.dumps({"question": question, "answer": text}) + "\n")
        other = docs[(i + 1) % len(docs)][1]
        dpo.write(json.dumps({"prompt": question, "chosen": text, "rejected": other}) + "\n")
print(f"{len(docs)} documents", file=sys.stderr)
PY
du -sh "$OUT" >&2
