"""Kefu on an NVIDIA GPU against PyTorch on the same card, weights, batch, sequence length and
LoRA configuration: decode tokens/s at batch 1 and 8 (transformers' `generate`), LoRA SFT
tokens/s (PEFT) and LoRA DPO tokens/s (PEFT with TRL's sigmoid loss and the reference
log-probabilities precomputed, as Kefu does), peak GPU memory of each process, and each ratio.

Runs on the GPU machine and builds nothing there: `benches/gpu_vs_pytorch.sh` gathers what it
needs (the CUDA kefu, each model's config and tokenizer, the data) into one folder, which
`benches/gpu_run.sh` hands to this script. Random weights of each real architecture are drawn
here (seeded, bf16 safetensors) and both frameworks load that same folder.

    python3 benches/gpu_vs_pytorch.py DIR [--steps N] [--only sft,dpo,decode] [--lengths 512,2048]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

RANK, ALPHA = 8, 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def gpu_memory_mib():
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def measured(cmd, env=None):
    """Runs cmd while sampling the GPU's memory; returns stdout, stderr and the peak MiB the
    process added to what was in use before it started."""
    base = gpu_memory_mib()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], gpu_memory_mib())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    finally:
        done.set()
        sampler.join()
    if proc.returncode != 0:
        raise Failed(f"{' '.join(cmd[:4])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout, proc.stderr, peak[0] - base


class Failed(Exception):
    """A run that exited with an error (out of memory, most often): a row says so."""


# ---------------------------------------------------------------- PyTorch side (subprocesses)

def peer_main(task, model_dir, data, steps, batch, max_len):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    # PyTorch's fastest attention here: SDPA (its flash / memory-efficient kernels on this GPU).
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16,
                                                 attn_implementation="sdpa").cuda()
    print(f"peer attention: {model.config._attn_implementation}", file=sys.stderr, flush=True)
    if task.startswith("decode"):
        prompt = chat_ids(tok, [{"role": "user", "content": "Tell me about your return policy."}], True)
        ids = torch.tensor([prompt] * batch, device="cuda")
        mask = torch.ones_like(ids)

        def run(new):
            torch.cuda.synchronize()
            start = time.time()
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                           min_new_tokens=new, do_sample=False, pad_token_id=tok.eos_token_id)
            torch.cuda.synchronize()
            return time.time() - start

        run(8)  # warm-up
        full, first = run(max_len), run(1)
        print(json.dumps({"rate": batch * (max_len - 1) / (full - first)}))
        return
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    records = [json.loads(line) for line in open(data)]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    rates = []

    def sequence(prompt, answer):
        head = chat_ids(tok, [{"role": "user", "content": prompt}], True)
        full = chat_ids(tok, [{"role": "user", "content": prompt},
                              {"role": "assistant", "content": answer}], False)[:max_len]
        return full, len(head)

    def logprobs(ids, starts):
        """Summed log-probabilities of each row's tokens from its answer start."""
        logits = model(input_ids=ids).logits[:, :-1].float()
        picked = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:].unsqueeze(2)).squeeze(2)
        positions = torch.arange(ids.shape[1] - 1, device="cuda").unsqueeze(0)
        keep = positions >= (torch.tensor(starts, device="cuda").unsqueeze(1) - 1)
        return (picked * keep).sum(1)

    model.train()
    if task == "sft":
        examples = [sequence(r["question"], r["answer"]) for r in records]
        for step in range(steps):
            chunk = [examples[(step * batch + i) % len(examples)] for i in range(batch)]
            width = max(len(e[0]) for e in chunk)
            ids = torch.tensor([e[0] + [0] * (width - len(e[0])) for e in chunk], device="cuda")
            labels = torch.tensor([[-100] * e[1] + e[0][e[1]:] + [-100] * (width - len(e[0]))
                                   for e in chunk], device="cuda")
            torch.cuda.synchronize()
            start = time.time()
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            loss.item()
            torch.cuda.synchronize()
            rates.append(sum(len(e[0]) for e in chunk) / (time.time() - start))
    else:
        pairs = [(sequence(r["prompt"], r["chosen"]), sequence(r["prompt"], r["rejected"]))
                 for r in records]
        beta = 0.1

        def stacked(chunk):
            rows = [c for pair in chunk for c in pair]
            width = max(len(r[0]) for r in rows)
            ids = torch.tensor([r[0] + [0] * (width - len(r[0])) for r in rows], device="cuda")
            return ids, [r[1] for r in rows], sum(len(r[0]) for r in rows)

        # The reference log-probabilities, once, with the adapter off (TRL's precompute option).
        reference = {}
        with torch.no_grad(), model.disable_adapter():
            for step in range(steps):
                chunk = [pairs[(step * batch + i) % len(pairs)] for i in range(batch)]
                ids, starts, _ = stacked(chunk)
                reference[step] = logprobs(ids, starts)
        for step in range(steps):
            chunk = [pairs[(step * batch + i) % len(pairs)] for i in range(batch)]
            ids, starts, tokens = stacked(chunk)
            torch.cuda.synchronize()
            start = time.time()
            policy = logprobs(ids, starts)
            ref = reference[step]
            margin = (policy[0::2] - ref[0::2]) - (policy[1::2] - ref[1::2])
            loss = -torch.nn.functional.logsigmoid(beta * margin).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            loss.item()
            torch.cuda.synchronize()
            rates.append(tokens / (time.time() - start))
    print(json.dumps({"rate": statistics.median(rates[1:] or rates),
                      "max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20}))


def chat_ids(tok, messages, generation_prompt):
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    if hasattr(ids, "input_ids") or isinstance(ids, dict):
        ids = ids["input_ids"]
    return list(ids)


# ---------------------------------------------------------------------------- the driver

def random_weights(model_dir):
    """Seeded random bf16 weights for the architecture in model_dir/config.json."""
    if any(f.endswith(".safetensors") for f in os.listdir(model_dir)):
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(model_dir, safe_serialization=True)
    print(f"# {os.path.basename(model_dir)}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M "
          f"parameters, random weights (seed 0)", flush=True)


def kefu_decode(kefu, model_dir, batch, tokens):
    _, err, peak = measured([kefu, "generate", "--model", model_dir, "--device", "cuda",
                             "--prompt", "Tell me about your return policy.", "--ignore-eos",
                             "--max-tokens", str(tokens), "--repetition-penalty", "1",
                             "--batch", str(batch), "--verbose"])
    rate = float(re.findall(r"decode ([0-9.]+) tok/s", err)[-1])
    return rate, peak


def kefu_train(kefu, stage, model_dir, data, steps, batch, max_len, work):
    out = os.path.join(work, f"kefu-{stage}-{os.path.basename(model_dir)}")
    _, _, peak = measured([kefu, "train", stage, "--model", model_dir, "--device", "cuda",
                           "--data", data, "--output", out, "--max-steps", str(steps),
                           "--epochs", "1000", "--batch", str(batch), "--max-len", str(max_len), "--rank", str(RANK),
                           "--alpha", str(ALPHA), "--eval-fraction", "0", "--lr", "1e-4",
                           "--warmup-ratio", "0"])
    rates = [json.loads(line)["tokens_per_second"]
             for line in open(os.path.join(out, "metrics.jsonl")) if "tokens_per_second" in line]
    return statistics.median(rates[1:] or rates), peak


SAID = set()


def peer(task, model_dir, data, steps, batch, max_len):
    out, err, peak = measured([sys.executable, __file__, "--peer", task, model_dir, data or "-",
                               str(steps), str(batch), str(max_len)])
    # Which attention the peer ran, once.
    for line in err.splitlines():
        if line.startswith("peer attention:") and line not in SAID:
            SAID.add(line)
            print(f"# {line}", flush=True)
    return json.loads(out.strip().splitlines()[-1])["rate"], peak


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--peer":
        task, model_dir, data, steps, batch, max_len = sys.argv[2:8]
        peer_main(task, model_dir, data, int(steps), int(batch), int(max_len))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--only", default="decode,sft,dpo")
    parser.add_argument("--models", default="smollm2-135m,qwen2.5-0.5b")
    # Training sequence lengths; a step holds 4,096 tokens (SFT) or 2,048 per side (DPO)
    # whatever the length: 8 × 512, 2 × 2,048.
    parser.add_argument("--lengths", default="512")
    args = parser.parse_args()
    kefu = os.path.join(args.dir, "kefu")
    work = tempfile.mkdtemp()
    import torch
    print(f"# {torch.cuda.get_device_name(0)}; torch {torch.__version__}; "
          f"LoRA r={RANK} alpha={ALPHA} on all 7 projections, bf16 base", flush=True)
    print(f"{'model':14} {'work':22} {'kefu':>10} {'pytorch':>10} {'ratio':>7} "
          f"{'kefu MiB':>9} {'torch MiB':>9} {'mem ratio':>9}", flush=True)
    only = args.only.split(",")
    for name in args.models.split(","):
        model_dir = os.path.join(args.dir, name)
        random_weights(model_dir)
        rows = []
        if "decode" in only:
            for batch in (1, 8):
                k = kefu_decode(kefu, model_dir, batch, 256)
                p = peer(f"decode{batch}", model_dir, None, 0, batch, 256)
                rows.append((f"decode tok/s, batch {batch}", k, p))
        for length in map(int, args.lengths.split(",")):
            for stage, per_step, label in (("sft", 4096, "SFT"), ("dpo", 2048, "DPO")):
                if stage not in only:
                    continue
                batch = max(1, per_step // length)
                data = os.path.join(args.dir, f"{stage}.jsonl")
                shape = f"{batch}×{length}" if stage == "sft" else f"{batch} pairs×{length}"
                rows.append((f"{label} tok/s, {shape}",
                             attempt(lambda: kefu_train(kefu, stage, model_dir, data, args.steps,
                                                        batch, length, work)),
                             attempt(lambda: peer(stage, model_dir, data, args.steps, batch,
                                                  length))))
        for work_name, kefu_row, peer_row in rows:
            if kefu_row is None or peer_row is None:
                who = " and ".join(n for n, r in (("kefu", kefu_row), ("pytorch", peer_row))
                                   if r is None)
                print(f"{name:14} {work_name:22} {who} failed (see above)", flush=True)
                continue
            (k_rate, k_mem), (p_rate, p_mem) = kefu_row, peer_row
            print(f"{name:14} {work_name:22} {k_rate:10.1f} {p_rate:10.1f} {k_rate / p_rate:6.2f}x "
                  f"{k_mem:9d} {p_mem:9d} {k_mem / max(p_mem, 1):8.2f}x", flush=True)


def attempt(run):
    """`run()`, or None when it failed (its error printed)."""
    try:
        return run()
    except Failed as failure:
        print(str(failure)[-1500:], file=sys.stderr, flush=True)
        return None


if __name__ == "__main__":
    main()
