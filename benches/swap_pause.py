"""Load through two hot-swaps: CONCURRENCY conversations ask questions one after another over
the public SSE API while an admin promotes a second version and then rolls back. Prints, for
the requests that overlapped a swap window (from the admin's call to the server serving the
other version) and for those before the first swap, the count, failures, and p50 / p99 of the
time to first token and of the whole answer; and how long each swap took.

python3 benches/swap_pause.py BASE_URL ADMIN_TOKEN VERSION_B [CONCURRENCY] [BASELINE_S] [SWAPS]

The swaps alternate: promote VERSION_B, roll back, promote, ... SWAPS times, BASELINE_S / 2
seconds apart, after BASELINE_S seconds of load without a swap.
"""

import json
import sys
import threading
import time
import urllib.request

BASE, TOKEN, VERSION_B = sys.argv[1], sys.argv[2], sys.argv[3]
CONCURRENCY = int(sys.argv[4]) if len(sys.argv) > 4 else 2
BASELINE_S = float(sys.argv[5]) if len(sys.argv) > 5 else 30.0
SWAPS = int(sys.argv[6]) if len(sys.argv) > 6 else 2
QUESTIONS = [
    "How do I keep my Debian system up to date?",
    "Which Debian distribution is better for me?",
    "What is the Debian FAQ?",
    "How can I install a package that is not in the archive?",
    "What does the stable directory contain?",
]


def call(method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", "Bearer " + token)
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read() or b"null")


def ask(conversation, token, question):
    """(ok, time to first token, total, version, start, token arrival times) of one answer."""
    request = urllib.request.Request(
        f"{BASE}/api/conversations/{conversation}/messages",
        data=json.dumps({"content": question}).encode(), method="POST")
    request.add_header("content-type", "application/json")
    request.add_header("authorization", "Bearer " + token)
    started = time.monotonic()
    first = None
    version = None
    ok = False
    arrivals = []
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            event = None
            for raw in response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    if event == "token":
                        arrivals.append(time.monotonic())
                        if first is None:
                            first = arrivals[-1] - started
                    elif event == "done":
                        ok = True
                        version = json.loads(line[6:]).get("model_version")
                    elif event == "error":
                        ok = False
    except Exception as error:  # a failed request is counted, not fatal
        print("request failed:", error, file=sys.stderr)
    return ok, first, time.monotonic() - started, version, started, arrivals


records = []
lock = threading.Lock()
stop = threading.Event()


def conversation_loop(offset):
    conversation = call("POST", "/api/conversations", {})
    n = offset
    while not stop.is_set():
        result = ask(conversation["id"], conversation["customer_token"],
                     QUESTIONS[n % len(QUESTIONS)])
        with lock:
            records.append(result)
        n += 1


def serving():
    return call("GET", "/readyz")["model_version"]


def swap(action):
    """Runs `action` (an admin call) and waits until the server serves another version:
    (window start, window end)."""
    before = serving()
    started = time.monotonic()
    action()
    while serving() == before:
        time.sleep(0.02)
    return started, time.monotonic()


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


threads = [threading.Thread(target=conversation_loop, args=(i,), daemon=True)
           for i in range(CONCURRENCY)]
for t in threads:
    t.start()
time.sleep(BASELINE_S)
windows = []
for i in range(SWAPS):
    if i % 2 == 0:
        windows.append(swap(
            lambda: call("POST", f"/api/admin/models/{VERSION_B}/promote", {}, TOKEN)))
    else:
        windows.append(swap(lambda: call("POST", "/api/admin/models/rollback", {}, TOKEN)))
    time.sleep(BASELINE_S / 2)
stop.set()
for t in threads:
    t.join()

first_swap = windows[0][0]
# Requests that began after the warm-up's first answers and ended before the first swap.
before = [r for r in records if r[4] + r[2] < first_swap and r[4] > records[0][4] + 5]
during = [r for r in records
          if any(r[4] < end and r[4] + r[2] > start for start, end in windows)]


def row(name, rows):
    ttft = [r[1] * 1000 for r in rows if r[0] and r[1] is not None]
    total = [r[2] * 1000 for r in rows if r[0]]
    failed = sum(1 for r in rows if not r[0])
    print("%-22s %5d %6d %9.0f %9.0f %10.0f %10.0f" % (
        name, len(rows), failed, percentile(ttft, 50), percentile(ttft, 99),
        percentile(total, 50), percentile(total, 99)))
    return percentile(total, 99), percentile(ttft, 99)


print("%-22s %5s %6s %9s %9s %10s %10s" % (
    "requests", "n", "failed", "ttft p50", "ttft p99", "total p50", "total p99"))
base_total, base_ttft = row("before the swaps", before)
swap_total, swap_ttft = row("overlapping a swap", during)
# The stall a stream sees: gaps between consecutive tokens, before the swaps and those that
# overlap a swap window.
gaps_before, gaps_during = [], []
for r in records:
    for a, b in zip(r[5], r[5][1:]):
        if b < first_swap:
            gaps_before.append((b - a) * 1000)
        elif any(a < end and b > start for start, end in windows):
            gaps_during.append((b - a) * 1000)
print("%-22s %5d %17s %9.0f %9.0f (max %.0f)" % (
    "token gaps before", len(gaps_before), "p50 / p99 ms", percentile(gaps_before, 50),
    percentile(gaps_before, 99), max(gaps_before or [float("nan")])))
print("%-22s %5d %17s %9.0f %9.0f (max %.0f)" % (
    "token gaps in a swap", len(gaps_during), "p50 / p99 ms", percentile(gaps_during, 50),
    percentile(gaps_during, 99), max(gaps_during or [float("nan")])))
print("all requests: %d, failed: %d" % (len(records), sum(1 for r in records if not r[0])))
print("versions served: %s" % sorted({(r[3] or "?")[:12] for r in records}))
for i, (start, end) in enumerate(windows):
    print("swap %d: %.0f ms from the admin's call to serving the other version" % (
        i + 1, (end - start) * 1000))
print("swap pause (p99 in the window minus p99 before): total %.0f ms, first token %.0f ms, "
      "token gap %.0f ms" % (swap_total - base_total, swap_ttft - base_ttft,
                            percentile(gaps_during, 99) - percentile(gaps_before, 99)))
