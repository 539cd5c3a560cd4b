"""The learning curve: does Kefu's loop make answers better? Driven by learning_curve.sh, which
starts `kefu serve` on a fresh data directory with the documents ingested.

Each iteration: simulated customers ask the train-split questions through the public API; a
simulated agent scores each answer against the reference with Kefu's own scorer
(`kefu eval score`) and thumbs a good one up, corrects a bad one with the reference answer; a
share of customers clicks a thumb at random (noise). Then a training job through the admin
API (the worker trains, the gate decides, the server swaps), then `kefu eval answers` on the
test split and on the corrected questions — asked through the public API like the customers'
questions, scored the same way. Prints a table per iteration, writes the figures as JSON and an
SVG plot.

python3 benches/learning_curve.py BASE ADMIN_TOKEN AGENT_TOKEN QA_FILE KB_DIR ITERATIONS OUT_DIR
Environment: KEFU (the binary), TRAIN_LIMIT, TEST_LIMIT, GOOD_F1 (0.5), NOISE (0.1), SEED, LABEL.
"""

import hashlib
import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request

BASE, ADMIN, AGENT, QA, KB_DIR, ITERATIONS, OUT = sys.argv[1:8]
ITERATIONS = int(ITERATIONS)
KEFU = os.environ["KEFU"]
TRAIN_LIMIT = int(os.environ.get("TRAIN_LIMIT", "0")) or None
TEST_LIMIT = os.environ.get("TEST_LIMIT")
GOOD_F1 = float(os.environ.get("GOOD_F1", "0.5"))
NOISE = float(os.environ.get("NOISE", "0.1"))
LABEL = os.environ.get("LABEL", os.path.basename(QA))
rng = random.Random(int(os.environ.get("SEED", "7")))


def call(method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def ask(question):
    """(conversation, customer token, message id, answer text, passages, abstained) of one
    question."""
    status, conversation = call("POST", "/api/conversations", {})
    assert status == 201, conversation
    request = urllib.request.Request(
        f"{BASE}/api/conversations/{conversation['id']}/messages",
        data=json.dumps({"content": question}).encode(), method="POST")
    request.add_header("content-type", "application/json")
    request.add_header("authorization", "Bearer " + conversation["customer_token"])
    event, done = None, None
    with urllib.request.urlopen(request, timeout=900) as response:
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "done":
                done = json.loads(line[6:])
    assert done is not None, "no done event"
    _, transcript = call("GET", f"/api/agent/conversations/{conversation['id']}", token=AGENT)
    message = next(m for m in transcript["messages"] if m["id"] == done["message_id"])
    prompt = (message.get("served") or {}).get("prompt") or []
    passages = "\n".join(m.get("content", "") for m in prompt if m.get("role") == "system")
    return (conversation["id"], conversation["customer_token"], done["message_id"],
            message["content"], passages, bool(done.get("abstained")))


def scores(judged):
    """Kefu's scorer on (answer, reference, passages) triples."""
    lines = "".join(json.dumps({"answer": a, "reference": r, "passages": p}) + "\n"
                    for a, r, p in judged)
    done = subprocess.run([KEFU, "eval", "score", "-"], input=lines, capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"kefu eval score failed:\n{done.stderr}")
    return [json.loads(line) for line in done.stdout.splitlines()]


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def evaluate(questions, name):
    """Each question asked through the public API as a customer would (the model `production`
    names now, the server's answer pipeline and its abstentions), the answers scored against
    the references: (figures, per-question scores)."""
    asked = [ask(r["question"]) for r in questions]
    judged = scores([(a[3], r["answer"], a[4]) for r, a in zip(questions, asked)])
    for s, a in zip(judged, asked):
        s["abstained"] = s["abstained"] or a[5]
    # Every answer with its scores, to be read (OUT/answers-NAME.jsonl).
    with open(os.path.join(OUT, f"answers-{name}.jsonl"), "w") as f:
        for r, a, s in zip(questions, asked, judged):
            f.write(json.dumps({"question": r["question"], "reference": r["answer"],
                                "answer": a[3], **s}, ensure_ascii=False) + "\n")
    figures = {key: mean(s.get(key) for s in judged)
               for key in ("f1", "fact_recall", "support")}
    figures["abstained"] = mean(1.0 if s["abstained"] else 0.0 for s in judged)
    return figures, judged


def held_out(question, share=float(os.environ.get("HOLD_OUT", "0.2"))):
    """Whether the worker keeps `question` out of training for its gate (the recipe names no
    held-out file): kefu_trainer::worker::is_held_out, the same hash."""
    normal = " ".join(question.split()).lower()
    digest = hashlib.sha256(normal.encode()).digest()
    return int.from_bytes(digest[:4], "little") % 10_000 < int(min(max(share, 0.0), 0.5) * 10_000)


def in_kb(record):
    doc = (record.get("source_doc") or "").split("/")[-1]
    return doc and os.path.exists(os.path.join(KB_DIR, doc))


records = [json.loads(line) for line in open(QA) if line.strip()]
train = [r for r in records if r.get("split") == "train" and in_kb(r)]
test = [r for r in records if r.get("split") == "test" and in_kb(r)]
if TRAIN_LIMIT:
    train = rng.sample(train, min(TRAIN_LIMIT, len(train)))
if TEST_LIMIT:
    test = rng.sample(test, min(int(TEST_LIMIT), len(test)))
print(f"{LABEL}: {len(train)} train questions, {len(test)} test questions, "
      f"{ITERATIONS} iterations", flush=True)

curve = []


def measure(iteration, job=None, corrected=None, seconds=None):
    answers, judged = evaluate(test, f"test-{iteration}")
    point = {
        "iteration": iteration, "f1": answers["f1"], "fact_recall": answers["fact_recall"],
        "support": answers["support"], "abstained": answers["abstained"],
        "corrected_recalled": corrected, "job": job, "seconds": seconds,
    }
    curve.append(point)
    print(json.dumps(point), flush=True)
    report(final=False)



def report(final):
    """Writes curve.json and curve.svg (after every iteration: a run cut short keeps its
    figures) and, at the end, prints the table."""
    with open(os.path.join(OUT, "curve.json"), "w") as f:
        json.dump({"label": LABEL, "curve": curve}, f, indent=1)

    # The plot: held-out F1, support and abstention per iteration.
    width, height, left, top = 520, 260, 50, 20
    series = [("f1", "#1f6feb", "held-out F1"), ("support", "#2f9e44", "support"),
              ("abstained", "#d9480f", "abstained")]
    n = max(1, len(curve) - 1)
    x = lambda i: left + i * (width - left - 20) / n
    y = lambda v: top + (1 - v) * (height - top - 40)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<text x="{left}" y="14">{LABEL}: answers per training iteration</text>',
             f'<line x1="{left}" y1="{y(0)}" x2="{width - 20}" y2="{y(0)}" stroke="#888"/>',
             f'<line x1="{left}" y1="{y(0)}" x2="{left}" y2="{y(1)}" stroke="#888"/>']
    for v in (0, 0.5, 1):
        parts.append(f'<text x="{left - 30}" y="{y(v) + 4}">{v:.1f}</text>')
    for i, point in enumerate(curve):
        parts.append(f'<text x="{x(i) - 3}" y="{y(0) + 16}">{point["iteration"]}</text>')
    for k, (key, colour, name) in enumerate(series):
        points = [(x(i), y(p[key])) for i, p in enumerate(curve) if p.get(key) is not None]
        if points:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                         + " ".join(f"{a:.1f},{b:.1f}" for a, b in points) + '"/>')
        parts.append(f'<text x="{width - 150}" y="{top + 14 + 14 * k}" fill="{colour}">{name}</text>')
    parts.append(f'<text x="{width / 2 - 20}" y="{height - 6}">iteration</text></svg>')
    with open(os.path.join(OUT, "curve.svg"), "w") as f:
        f.write("\n".join(parts) + "\n")
    if not final:
        return
    print(f"{'iteration':>9} {'F1':>6} {'facts':>6} {'support':>8} {'abstained':>9} "
          f"{'corrected recalled':>18} {'job':>12} {'seconds':>8}")
    for p in curve:
        fmt = lambda v: "—" if v is None else f"{v:.3f}"
        job = p["job"] or {}
        verdict = "" if not job else f"{job.get('status')}/{'pass' if job.get('passed') else 'fail'}"
        print(f"{p['iteration']:>9} {fmt(p['f1']):>6} {fmt(p['fact_recall']):>6} "
              f"{fmt(p['support']):>8} {fmt(p['abstained']):>9} {fmt(p['corrected_recalled']):>18} "
              f"{verdict:>12} {p['seconds'] or '':>8}")


measure(0)
for iteration in range(1, ITERATIONS + 1):
    started = time.monotonic()
    asked = [(r, *ask(r["question"])) for r in train]
    judged = scores([(a[3], r["answer"], a[4]) for r, *a in asked])
    corrected = []
    for (r, conversation, customer, message, text, _, _), score in zip(asked, judged):
        path = f"/api/agent/conversations/{conversation}/messages/{message}/feedback"
        if (score.get("f1") or 0.0) >= GOOD_F1:
            status, body = call("POST", path, {"rating": "up"}, AGENT)
        else:
            status, body = call("POST", path, {"rating": "down", "corrected_answer": r["answer"]},
                                AGENT)
            corrected.append(r)
        assert status == 201, body
        if rng.random() < NOISE:
            call("POST", f"/api/conversations/{conversation}/messages/{message}/feedback",
                 {"rating": rng.choice(["up", "down"])}, customer)
    asking = time.monotonic() - started
    status, job = call("POST", "/api/admin/training/jobs", None, ADMIN)
    assert status == 202, job
    while job["status"] in ("queued", "running"):
        time.sleep(5)
        _, job = call("GET", f"/api/admin/training/jobs/{job['id']}", token=ADMIN)
    job_report = job.get("report") or {}
    trained = time.monotonic() - started - asking
    # The server follows `production` within its follow interval.
    time.sleep(3)
    recalled = None
    # The corrected questions the job trained on (the gate's held-out share never is).
    learned = [r for r in corrected if not held_out(r["question"])]
    if learned:
        _, answers = evaluate(learned, f"corrected-{iteration}")
        recalled = mean(1.0 if (a.get("fact_recall") or 0.0) >= 0.5 else 0.0 for a in answers)
    measure(iteration, {"id": job["id"], "status": job["status"], "passed": job_report.get("passed"),
                        "corrections": len(corrected), "held_out": len(corrected) - len(learned),
                        "asked_s": round(asking),
                        "trained_s": round(trained), "error": job.get("error")},
            recalled, round(time.monotonic() - started))

report(final=True)
