#!/usr/bin/env bash
# Benchmark: Kefu's LoRA training (SFT and DPO) against PyTorch + PEFT (SFT: a plain PyTorch
# loop; DPO: TRL's DPOTrainer with the reference log-probabilities precomputed, as Kefu does)
# on the same CPU, weights (the default model exported by `kefu merge` as f32 safetensors),
# examples, batch size, sequence length, LoRA configuration and thread count, in one run.
# Prints training tokens/s (median over steps after the first), peak memory (max RSS of each
# process) and the Kefu / PyTorch ratios. Kefu runs twice: on the same f32 base as PyTorch, and
# on its default Q8_0 base (QLoRA-style; also run on the 4-bit base for the memory figure).
#
#   bash benches/train_vs_peft.sh                 # 8 steps, batch 4, 256 tokens
#   STEPS=4 BATCH=2 MAX_LEN=128 bash benches/train_vs_peft.sh
#   STAGES=dpo BASES="f32 q8_0" bash benches/train_vs_peft.sh     # some rows only
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-8}
BATCH=${BATCH:-4}
MAX_LEN=${MAX_LEN:-256}
THREADS=${THREADS:-$(nproc)}
MODEL_NAME=${MODEL_NAME:-smollm2-135m-instruct}
STAGES=${STAGES:-sft dpo}
BASES=${BASES:-f32 q8_0 q4}
export KEFU_HOME=${KEFU_HOME:-$HOME/.cache/kefu}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kefu/target}
VENV=${BENCH_VENV:-$HOME/.cache/kefu-bench/train-venv}
SHARED=${SHARED_DATA:-$(cd .. && pwd)/shared/data}

if ! "$VENV/bin/python" -c 'import torch, peft, trl, transformers' 2>/dev/null; then
  echo "installing torch, peft, trl and transformers into $VENV (several GB)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch peft trl transformers accelerate
fi

cargo build --release --workspace --all-targets >&2
KEFU="$CARGO_TARGET_DIR/release/kefu"
"$KEFU" models fetch "$MODEL_NAME" >&2
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# The shipped model as f32 Hugging Face weights: both trainers start from this folder.
"$KEFU" merge --model "$MODEL_NAME" --output "$WORK/hf" >&2

"$VENV/bin/python" - "$KEFU" "$WORK" "$SHARED" "$STEPS" "$BATCH" "$MAX_LEN" "$THREADS" "$MODEL_NAME" \
  "$STAGES" "$BASES" <<'PY'
import json, os, platform, statistics, subprocess, sys, time

kefu, work, shared, steps, batch, max_len, threads, model_name, stages, bases = sys.argv[1:11]
steps, batch, max_len, threads = int(steps), int(batch), int(max_len), int(threads)
hf = os.path.join(work, "hf")
rank, alpha = 8, 16
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# The same records for both: Debian FAQ answers (SFT) and Bitext support pairs (DPO), train split.
def lines(path, keep, n):
    out = []
    for line in open(path):
        record = json.loads(line)
        if record.get("split") == "train" and keep(record):
            out.append(record)
        if len(out) == n:
            break
    return out

n = steps * batch
sft = lines(f"{shared}/qa/en.jsonl", lambda r: r["id"].startswith("debian-faq:"), n)
pairs = lines(f"{shared}/pairs/en.jsonl", lambda r: "bitext" in r["source"], n)
with open(f"{work}/sft.jsonl", "w") as f:
    for r in sft:
        f.write(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n")
with open(f"{work}/dpo.jsonl", "w") as f:
    for r in pairs:
        f.write(json.dumps({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}) + "\n")

def measured(cmd):
    """Runs cmd; its wall time and peak RSS in MiB."""
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    if status != 0:
        sys.exit(f"{cmd[:3]} failed:\n{err[-3000:]}")
    return out, time.time() - start, usage.ru_maxrss / 1024

def run_kefu(stage, data, base):
    out_dir = f"{work}/kefu-{stage}-{base}"
    # The f32 export is the shipped 4-bit file dequantized: the q4 run reads that file itself.
    model = model_name if base == "q4" else hf
    cmd = [kefu, "train", stage, "--model", model, "--data", data, "--output", out_dir,
           "--base-weights", base, "--max-steps", str(steps), "--batch", str(batch),
           "--max-len", str(max_len), "--rank", str(rank), "--alpha", str(alpha),
           "--eval-fraction", "0", "--lr", "1e-4", "--warmup-ratio", "0"]
    _, _, peak = measured(cmd)
    rates = [json.loads(l)["tokens_per_second"] for l in open(f"{out_dir}/metrics.jsonl")
             if "tokens_per_second" in l]
    return statistics.median(rates[1:] or rates), peak

PEER = r'''
import json, statistics, sys, time
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
stage, hf, data, steps, batch, max_len, threads, rank, alpha = sys.argv[1:10]
steps, batch, max_len, threads, rank, alpha = map(int, (steps, batch, max_len, threads, rank, alpha))
torch.set_num_threads(threads)
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(hf)
model = AutoModelForCausalLM.from_pretrained(hf, torch_dtype=torch.float32)
lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
records = [json.loads(l) for l in open(data)]
rates = []
if stage == "sft":
    model = get_peft_model(model, lora)
    examples = []
    for r in records:
        prompt = tok.apply_chat_template([{"role": "user", "content": r["question"]}], tokenize=True, add_generation_prompt=True)
        full = tok.apply_chat_template([{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}], tokenize=True)
        if hasattr(prompt, "input_ids"): prompt, full = prompt["input_ids"], full["input_ids"]
        full = full[:max_len]
        labels = [-100] * len(prompt) + full[len(prompt):]
        examples.append((full, labels[:len(full)]))
    examples.sort(key=lambda e: len(e[0]))  # length-bucketed, as Kefu batches
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    for step in range(steps):
        chunk = examples[step * batch:(step + 1) * batch]
        width = max(len(e[0]) for e in chunk)
        ids = torch.tensor([e[0] + [0] * (width - len(e[0])) for e in chunk])
        labels = torch.tensor([e[1] + [-100] * (width - len(e[1])) for e in chunk])
        mask = torch.tensor([[1] * len(e[0]) + [0] * (width - len(e[0])) for e in chunk])
        start = time.time()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); opt.zero_grad()
        rates.append(sum(len(e[0]) for e in chunk) / (time.time() - start))
else:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                             "chosen": [{"role": "assistant", "content": r["chosen"]}],
                             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in records])
    times = []
    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw): self.t = time.time()
        def on_step_end(self, args, state, control, **kw): times.append(time.time() - self.t)
    config = DPOConfig(output_dir="/tmp/kefu-bench-dpo", per_device_train_batch_size=batch, max_steps=steps,
                       learning_rate=1e-4, beta=0.1, max_length=max_len, precompute_ref_log_probs=True,
                       logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                       dataloader_num_workers=0, gradient_checkpointing=False, warmup_steps=0)
    trainer = DPOTrainer(model=model, args=config, train_dataset=ds, processing_class=tok,
                         peft_config=lora, callbacks=[Clock()])
    trainer.train()
    # Tokens a step runs: chosen and rejected sequences of `batch` pairs, at the data's mean length.
    lengths = []
    for r in records:
        for answer in ("chosen", "rejected"):
            ids = tok.apply_chat_template([{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r[answer]}], tokenize=True)
            if hasattr(ids, "input_ids"): ids = ids["input_ids"]
            lengths.append(min(len(ids), max_len))
    per_step = statistics.mean(lengths) * 2 * batch
    rates = [per_step / t for t in times]
print(json.dumps({"rate": statistics.median(rates[1:] or rates)}))
'''

def run_peer(stage, data):
    out, _, peak = measured([sys.executable, "-c", PEER, stage, hf, data, str(steps), str(batch),
                             str(max_len), str(threads), str(rank), str(alpha)])
    return json.loads(out.strip().splitlines()[-1])["rate"], peak

print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} threads; "
      f"{steps} steps, batch {batch}, max length {max_len}, LoRA r={rank} alpha={alpha} on all 7 projections")
print(f"{'stage':5} {'trainer':22} {'tokens/s':>9} {'peak MiB':>9} {'tok/s ratio':>12} {'memory ratio':>13}")
for stage in stages.split():
    data = f"{work}/{stage}.jsonl"
    peer_rate, peer_peak = run_peer(stage, data)
    print(f"{stage:5} {'pytorch+peft' + ('+trl' if stage == 'dpo' else ''):22} {peer_rate:9.1f} {peer_peak:9.0f} {'1.00':>12} {'1.00':>13}", flush=True)
    for base in bases.split():
        rate, peak = run_kefu(stage, data, base)
        print(f"{stage:5} {'kefu (' + base + ' base)':22} {rate:9.1f} {peak:9.0f} {rate / peer_rate:11.2f}x {peak / peer_peak:12.2f}x", flush=True)
PY
