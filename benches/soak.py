"""Mixed traffic against one kefu server for a while (benches/soak.sh): customers ask and
rate, an agent takes over, replies and hands back, an admin uploads, staff sign in. Samples
the server's resident memory and open files; prints requests by status and the samples."""

import collections
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request

BASE, PID, TOKEN, MINUTES, QA = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
END = time.time() + MINUTES * 60
statuses = collections.Counter()
failures = []
lock = threading.Lock()
questions = [json.loads(line)["question"] for line in open(QA, encoding="utf-8")][:300]


def call(method, path, body=None, headers=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(BASE + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            status, text = response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode("utf-8", "replace")
    except Exception as error:  # a dropped connection counts as a failure
        status, text = 0, repr(error)
    with lock:
        statuses[status] += 1
        if status == 0 or status >= 500:
            failures.append((method, path, status, text[:200]))
    return status, text


def customer():
    while time.time() < END:
        status, text = call("POST", "/api/conversations", {})
        if status != 201:
            time.sleep(1)
            continue
        conversation = json.loads(text)
        who = {"Authorization": f"Bearer {conversation['customer_token']}"}
        path = f"/api/conversations/{conversation['id']}"
        for _ in range(random.randint(1, 3)):
            status, text = call("POST", path + "/messages", {"content": random.choice(questions)}, who)
            done = [line for line in text.split("\n") if line.startswith("data:") and "message_id" in line]
            call("GET", path + "/messages", headers=who)
            if done and random.random() < 0.7:
                answer = json.loads(done[-1][5:])["message_id"]
                call("POST", f"{path}/messages/{answer}/feedback",
                     {"rating": random.choice(["up", "down"])}, who)


def agent():
    while time.time() < END:
        status, text = call("GET", "/api/agent/conversations", headers=ADMIN)
        if status == 200 and json.loads(text)["conversations"]:
            conversation = random.choice(json.loads(text)["conversations"][:20])["id"]
            call("GET", f"/api/agent/conversations/{conversation}", headers=ADMIN)
            call("POST", f"/api/agent/conversations/{conversation}/takeover", headers=ADMIN)
            call("POST", f"/api/agent/conversations/{conversation}/reply",
                 {"content": "A person here: let me check that for you."}, ADMIN)
            call("POST", f"/api/agent/conversations/{conversation}/release", headers=ADMIN)
        time.sleep(2)


def admin():
    n = 0
    while time.time() < END:
        n += 1
        document = f"# Note {n}\n\nOrders placed before noon ship the same day ({n}).\n".encode()
        call("POST", f"/api/admin/knowledge-bases/default/documents?name=note-{n % 20}.md",
             headers=ADMIN, raw=document)
        call("GET", "/api/admin/feedback?limit=20", headers=ADMIN)
        call("GET", "/metrics")
        time.sleep(5)


def logins():
    n = 0
    while time.time() < END:
        n += 1
        password = "correct horse battery" if n % 10 else "wrong password"
        call("POST", "/api/auth/login", {"name": "ann", "password": password})
        time.sleep(3)


def sample():
    def read():
        rss = 0
        for line in open(f"/proc/{PID}/status"):
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) // 1024
        import os
        return rss, len(os.listdir(f"/proc/{PID}/fd"))
    samples = []
    while time.time() < END:
        samples.append((round(MINUTES * 60 - (END - time.time())), *read()))
        time.sleep(10)
    samples.append((round(MINUTES * 60), *read()))
    return samples


threads = [threading.Thread(target=f) for f in [customer, customer, customer, agent, admin, logins]]
for thread in threads:
    thread.start()
samples = sample()
for thread in threads:
    thread.join()
total = sum(statuses.values())
errors = sum(v for k, v in statuses.items() if k == 0 or k >= 500)
print(f"requests {total}, by status {dict(sorted(statuses.items()))}, 5xx or dropped {errors}")
first, middle, last = samples[0], samples[len(samples) // 2], samples[-1]
print(f"resident memory MiB: start {first[1]}, middle {middle[1]}, end {last[1]}, max {max(s[1] for s in samples)}")
print(f"open files: start {first[2]}, middle {middle[2]}, end {last[2]}, max {max(s[2] for s in samples)}")
print("samples (s, MiB, files):", " ".join(f"{s[0]}:{s[1]}:{s[2]}" for s in samples))
for failure in failures[:10]:
    print("failure:", failure)
sys.exit(1 if errors else 0)
