#!/usr/bin/env bash
# Benchmark: Kefu's generation against llama.cpp (through llama-cpp-python, compiled from source
# into a throwaway venv) on the same GGUF file, quantization, prompt and thread count, in one
# run. Prints prefill and decode tokens/s, peak memory and the Kefu / llama.cpp ratios
# ("kefu exact" is Kefu with --exact-kernels: candle's reference kernels, no row padding).
#
#   bash benches/generate_vs_llama_cpp.sh            # threads 1 and 2, 128 new tokens
#   THREADS="1" TOKENS=64 bash benches/generate_vs_llama_cpp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-"1 2"}
TOKENS=${TOKENS:-128}
MODEL_NAME=${MODEL_NAME:-smollm2-135m-instruct}
export KEFU_HOME=${KEFU_HOME:-$HOME/.cache/kefu}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kefu/target}
VENV=${BENCH_VENV:-$HOME/.cache/kefu-bench/venv}

if ! "$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  echo "installing llama-cpp-python (compiles llama.cpp; several minutes)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "llama-cpp-python==0.3.36"
fi

# The whole workspace, as the test script builds it: one feature set, one set of cached artifacts.
cargo build --release --workspace --all-targets >&2
KEFU="$CARGO_TARGET_DIR/release/kefu"
"$KEFU" models fetch "$MODEL_NAME" >&2
# Kefu serves the Q8_0 re-quantization of the shipped file; both engines read that same file.
"$KEFU" generate --model "$MODEL_NAME" --prompt "warm-up" --max-tokens 1 >/dev/null
GGUF="$KEFU_HOME/models/$MODEL_NAME/model.kefu-q8_0.gguf"
[ -f "$GGUF" ] || GGUF="$KEFU_HOME/models/$MODEL_NAME/model.gguf"

"$VENV/bin/python" - "$KEFU" "$GGUF" "$TOKENS" $THREADS <<'PY'
import json, os, platform, re, resource, subprocess, sys, tempfile, time

kefu, gguf, tokens, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(t) for t in sys.argv[4:]]
# ~200 tokens of ordinary support text, sent raw (no chat template) to both engines.
prompt = ("Customer: I ordered a blue jacket last week and the tracking page still says the "
          "parcel is waiting at the depot. I paid for express shipping, so it should have "
          "arrived two days ago. Can you tell me where it is, whether I can get the express "
          "fee refunded, and how I change the delivery address to my office? ") * 3
prompt_file = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
prompt_file.write(prompt); prompt_file.close()

def run_kefu(n_threads, exact=False):
    cmd = ["/usr/bin/time", "-f", "MAXRSS %M", kefu, "generate", "--raw", "--no-requantize",
           "--model", gguf, "--prompt-file", prompt_file.name, "--max-tokens", str(tokens),
           "--ignore-eos", "--temperature", "0", "--repetition-penalty", "1", "-v",
           "--threads", str(n_threads)] + (["--exact-kernels"] if exact else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    m = re.search(r"prompt (\d+) tokens, prefill ([\d.]+) tok/s; generated (\d+) tokens, decode ([\d.]+) tok/s", out.stderr)
    rss = int(re.search(r"MAXRSS (\d+)", out.stderr).group(1)) / 1024
    return dict(prompt_tokens=int(m.group(1)), prefill=float(m.group(2)),
                generated=int(m.group(3)), decode=float(m.group(4)), peak_mib=rss)

LLAMA = r'''
import json, resource, sys, time
import numpy as np
from llama_cpp import Llama
gguf, prompt_file, tokens, n_threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=gguf, n_ctx=2048, n_batch=512, n_threads=n_threads,
            n_threads_batch=n_threads, verbose=False)
ids = llm.tokenize(open(prompt_file).read().encode(), add_bos=False, special=True)
t0 = time.perf_counter(); llm.eval(ids); t1 = time.perf_counter()
tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
t2 = time.perf_counter()
for _ in range(tokens - 1):
    llm.eval([tok])
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
t3 = time.perf_counter()
print(json.dumps(dict(prompt_tokens=len(ids), prefill=len(ids) / (t1 - t0),
    generated=tokens, decode=(tokens - 1) / (t3 - t2),
    peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
'''

def run_llama(n_threads):
    out = subprocess.run([sys.executable, "-c", LLAMA, gguf, prompt_file.name, str(tokens), str(n_threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])

print(f"model {os.path.basename(os.path.dirname(gguf))} ({os.path.basename(gguf)}), "
      f"{tokens} new tokens, greedy; {platform.processor() or platform.machine()}, {os.cpu_count()} cpus")
print(f"{'threads':>7} {'engine':<10} {'prompt':>6} {'prefill tok/s':>14} {'decode tok/s':>13} {'peak MiB':>9}")
for n in threads:
    k = run_kefu(n); x = run_kefu(n, exact=True); l = run_llama(n)
    for name, r in (("kefu", k), ("kefu exact", x), ("llama.cpp", l)):
        print(f"{n:>7} {name:<10} {r['prompt_tokens']:>6} {r['prefill']:>14.1f} {r['decode']:>13.1f} {r['peak_mib']:>9.0f}")
    print(f"{n:>7} {'ratio':<10} {'':>6} {k['prefill']/l['prefill']:>13.2f}x {k['decode']/l['decode']:>12.2f}x {k['peak_mib']/l['peak_mib']:>8.2f}x")
os.unlink(prompt_file.name)
PY
