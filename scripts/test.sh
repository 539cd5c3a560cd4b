#!/usr/bin/env bash
# The whole test suite, from a fresh clone: services, models, formatting, lints, tests.
# README's test command (./scripts/test.sh); .ci/run runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build outputs and downloaded models are cached under ~/.cache so later runs are quick;
# a machine without the cache fills it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kefu/target}"
export KEFU_HOME="${KEFU_TEST_HOME:-$HOME/.cache/kefu}"
export KEFU_TEST_HOME="$KEFU_HOME"

# PostgreSQL: the serving tests need it; start it when it is installed but down.
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  fi
fi

# The browser test drives Debian's chromium through chromedriver; a CJK font renders the
# widget's Chinese interface in its screenshots; the proxy test runs Kefu behind Debian's nginx.
if ! command -v chromedriver >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi "wenquanyi" \
  || ! [ -x /usr/sbin/nginx ]; then
  echo "installing chromium, chromium-driver, a CJK font and nginx"
  apt-get update -qq && apt-get install -y -qq chromium chromium-driver fonts-wqy-zenhei \
    nginx-light >/dev/null
fi

echo "== formatting and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --release -- -D warnings
# No module imports a module that imports it back (ARCHITECTURE.md).
python3 scripts/module_cycles.py db model rag server tests trainer web

echo "== build"
cargo build --release --workspace
KEFU="$CARGO_TARGET_DIR/release/kefu"

echo "== models (the default and the small generator, Gemma 3, both embedders, ONNX Runtime)"
"$KEFU" models fetch smollm2-135m-instruct
"$KEFU" models fetch qwen2.5-coder-0.5b-instruct
"$KEFU" models fetch gemma3-270m
"$KEFU" models fetch multilingual-e5-small
"$KEFU" models fetch all-minilm-l6-v2
"$KEFU" models fetch onnxruntime

echo "== tests"
log=$(mktemp)
status=0
# The tests run in a session of their own: whatever they start and leave running is found
# afterwards, reported and stopped (a process left behind is a bug, and one holding the output
# open must not keep this script waiting). The log is followed until cargo ends, not until
# every process that inherited it has closed it.
setsid --wait cargo test --release --workspace --no-fail-fast >"$log" 2>&1 &
tests=$!
tail -n +1 -f --pid="$tests" "$log"
wait "$tests" || status=$?
# A worker whose server a test killed stops within seconds by itself; what still runs after
# ten is left behind.
for _ in $(seq 1 10); do
  left=$(pgrep -s "$tests" || true)
  [ -z "$left" ] && break
  sleep 1
done
if [ -n "$left" ]; then
  echo "processes the tests left running (stopped now):"
  ps -o pid,etime,args -p "$(echo $left | tr ' ' ',')" || true
  kill -KILL $left 2>/dev/null || true
  status=1
fi
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
# Only cargo's summaries count (a worker's log line such as "job 1 failed" is not a test).
failed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$log" | awk '{s+=$6} END {print s+0}')
rm -f "$log"
echo "tests: $passed passed, $failed failed"
exit "$status"
