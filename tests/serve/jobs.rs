//! Training jobs: new documents, the triggers, a killed worker, a database restart.

use kefu_tests::test_home;
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// An admin's "train now": the job, or the refusal.
fn trigger(staffed: &Staffed) -> (u16, Value) {
    request(
        "POST",
        &staffed.server.url("/api/admin/training/jobs"),
        &staffed.admin_api,
        None,
    )
}

/// Queues a job, lets one worker pass take it, and returns the job as the API shows it after.
fn train_once(staffed: &Staffed) -> Value {
    let (status, job) = trigger(staffed);
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_i64().unwrap();
    let worked = kefu(staffed._home.path(), None)
        .args(["trainer", "work", "--once"])
        .output()
        .unwrap();
    assert!(worked.status.success(), "{worked:?}");
    let (status, job) = request(
        "GET",
        &staffed
            .server
            .url(&format!("/api/admin/training/jobs/{id}")),
        &staffed.admin_api,
        None,
    );
    assert_eq!(status, 200, "{job}");
    job
}

/// With a `[cpt]` stage in the worker's recipe, documents count as something to learn: a job
/// snapshots the documents the last succeeded job had not seen and trains on them (here with
/// no feedback at all; the real default model trained, merged, gated and registered); the next
/// trigger has nothing new until another document arrives.
#[test]
fn a_job_learns_the_documents_the_last_one_had_not_seen() {
    let staffed = staffed_server(&["--max-tokens", "4", "--trainer", "off", PRODUCT_DEFAULT]);
    let server = &staffed.server;
    let home = staffed._home.path();
    // Without a CPT stage, documents are not material.
    let (status, _, _) = call(
        "POST",
        &server.url("/api/admin/knowledge-bases/default/documents?name=returns.md"),
        &staffed.admin_api,
        &Body::Raw(
            b"# Returns\n\nParcels can be returned within thirty days of delivery. The label is \
              free for members. Refunds reach the original card within five working days.",
        ),
    );
    assert_eq!(status, 201);
    assert_error(trigger(&staffed), 422, "nothing_to_learn");
    std::fs::write(
        home.join("recipe.toml"),
        "[lora]\nrank = 4\nalpha = 8.0\n[cpt]\nmax_steps = 2\nmax_len = 32\nbatch = 1\n\
         eval_fraction = 0.0\n",
    )
    .unwrap();
    let job = train_once(&staffed);
    assert_eq!(job["status"], "succeeded", "{job}");
    let id = job["id"].as_i64().unwrap();
    let report = &job["report"];
    let stages: Vec<&str> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["cpt"], "{report}");
    assert_eq!(report["dataset"]["new_documents"], 1, "{report}");
    let docs = home.join(format!("jobs/{id}/data/docs"));
    let written: Vec<_> = std::fs::read_dir(&docs).unwrap().collect();
    assert_eq!(written.len(), 1);
    let text = std::fs::read_to_string(written[0].as_ref().unwrap().path()).unwrap();
    assert!(
        text.starts_with("# Returns") && text.contains("thirty days"),
        "{text}"
    );
    let manifest =
        std::fs::read_to_string(home.join(format!("jobs/{id}/data/docs.jsonl"))).unwrap();
    assert_eq!(manifest.lines().count(), 1, "{manifest}");

    // Nothing new since; a new document is.
    assert_error(trigger(&staffed), 422, "nothing_to_learn");
    let (status, _, _) = call(
        "POST",
        &server.url("/api/admin/knowledge-bases/default/documents?name=shipping.md"),
        &staffed.admin_api,
        &Body::Raw(b"# Shipping\n\nParcels leave the warehouse within one day."),
    );
    assert_eq!(status, 201);
    let (status, next) = trigger(&staffed);
    assert_eq!(status, 202, "{next}");
}

/// With `[knowledge]` in the worker's recipe, a knowledge base's FAQ-shaped sections are
/// something to learn before any feedback: the job trains on grounded examples made from them
/// (the question with its retrieved passages, the section's text with a citation) and on
/// abstention examples (the decline reply over other documents' passages only), and its report
/// counts them; without it the same documents are not material.
#[test]
fn a_job_learns_the_knowledge_base_s_faq_before_any_feedback() {
    let staffed = staffed_server(&["--max-tokens", "4", "--trainer", "off"]);
    let server = &staffed.server;
    let home = staffed._home.path();
    let faq: &[u8] = b"# Orders FAQ\n\n## 1.1. Can I change my delivery address?\n\nYes, until \
        the parcel ships: open the order and choose Change address.\n\n## 1.2. How long do \
        refunds take?\n\nRefunds reach the original card within five working days.\n\n## \
        1.3. Do you ship abroad?\n\nWe ship to every country of the European Union.\n";
    // Words of every question, none of their answers: retrieval brings it to each of them.
    let other: &[u8] = b"# Warehouse\n\nWe ship orders from the warehouse in recycled card. \
        The delivery address is printed on the parcel. How long refunds take is up to the shop \
        you bought from; ask them to change it.";
    for (name, body) in [("faq.md", faq), ("warehouse.md", other)] {
        let (status, _, _) = call(
            "POST",
            &server.url(&format!(
                "/api/admin/knowledge-bases/default/documents?name={name}"
            )),
            &staffed.admin_api,
            &Body::Raw(body),
        );
        assert_eq!(status, 201);
    }
    assert_error(trigger(&staffed), 422, "nothing_to_learn");
    // A recipe that cannot be read is refused with its reason, and nothing is queued.
    std::fs::write(home.join("recipe.toml"), "[knowledge]\nabstention = 2.0\n").unwrap();
    let (status, refused) = trigger(&staffed);
    assert_eq!(
        (status, refused["code"].as_str()),
        (422, Some("bad_recipe")),
        "{refused}"
    );
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("abstention is a share"),
        "{refused}"
    );
    // A knowledge base that does not exist fails the job with its name, before any training.
    std::fs::write(
        home.join("recipe.toml"),
        "[knowledge]\nknowledge_base = \"elsewhere\"\n",
    )
    .unwrap();
    let failed = train_once(&staffed);
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("no knowledge base is named `elsewhere`"),
        "{failed}"
    );
    std::fs::write(
        home.join("recipe.toml"),
        "[lora]\nrank = 4\nalpha = 8.0\n[sft]\nmax_steps = 1\nmax_len = 1024\nbatch = 1\n\
         eval_fraction = 0.0\n[knowledge]\nabstention = 1.0\n",
    )
    .unwrap();
    let job = train_once(&staffed);
    assert_eq!(job["status"], "succeeded", "{job}");
    let id = job["id"].as_i64().unwrap();
    let dataset = &job["report"]["dataset"];
    let learned = &dataset["learned_from"]["sft"];
    let faq_examples = learned["knowledge"].as_u64().unwrap_or(0);
    let declines = learned["abstention"].as_u64().unwrap_or(0);
    // Three FAQ questions: each trained on or held out for the gate; a held-out question's
    // abstention example is dropped.
    assert_eq!(
        faq_examples + dataset["held_out_examples"].as_u64().unwrap(),
        3,
        "{dataset}"
    );
    assert_eq!(declines, faq_examples, "{dataset}");
    assert!(faq_examples >= 1, "{dataset}");
    let lines = std::fs::read_to_string(home.join(format!("jobs/{id}/data/sft.jsonl"))).unwrap();
    let decline = "I don't have that information in our documents.";
    for line in lines.lines() {
        let example: Value = serde_json::from_str(line).unwrap();
        let messages = example["messages"].as_array().unwrap();
        let (system, answer) = (
            messages[0]["content"].as_str().unwrap(),
            messages[2]["content"].as_str().unwrap(),
        );
        match example["kefu"]["source"].as_str() {
            Some("knowledge") => {
                // The section's text, cited, from a prompt that holds it.
                let text = answer.rsplit_once(" [").unwrap().0;
                assert!(system.contains(text), "{answer} not in {system}");
                assert!(answer.ends_with(']'), "{answer}");
            }
            Some("abstention") => {
                assert!(answer.starts_with(decline), "{answer}");
                assert!(!system.contains("Change address"), "{system}");
                assert!(!system.contains("five working days"), "{system}");
                assert!(system.contains("recycled card"), "{system}");
            }
            other => panic!("an example of {other:?}: {example}"),
        }
    }
}

/// The automatic triggers: an admin sets a schedule and a threshold (bad values refused); the
/// worker's check queues a `threshold` job once enough feedback arrived, none while one is
/// queued, none without anything to learn, and a `schedule` job when the minutes have passed.
#[test]
fn the_schedule_and_the_threshold_queue_training_jobs() {
    let staffed = staffed_server(&["--max-tokens", "4", "--trainer", "off"]);
    let server = &staffed.server;
    let url = server.url("/api/admin/training/schedule");
    let (status, schedule, _) = call("GET", &url, &staffed.admin_api, &Body::Empty);
    assert_eq!(status, 200);
    assert_eq!(
        schedule,
        json!({"every_minutes": null, "after_new_feedback": null})
    );
    for bad in [
        json!({"every_minutes": 0}),
        json!({"every_minutes": -5}),
        json!({"every_minutes": 600_000}),
        json!({"after_new_feedback": 0}),
        json!({"after_new_feedback": 2_000_000}),
    ] {
        let (status, error, _) = call("PUT", &url, &staffed.admin_api, &Body::Json(bad.clone()));
        assert_eq!(
            (status, error["code"].as_str()),
            (400, Some("invalid_schedule")),
            "{bad}"
        );
    }
    for bad in [
        json!({"every_minutes": "hourly"}),
        json!({"hourly": true}),
        json!("60"),
    ] {
        let (status, error, _) = call("PUT", &url, &staffed.admin_api, &Body::Json(bad.clone()));
        assert_eq!(
            (status, error["code"].as_str()),
            (422, Some("invalid_json")),
            "{bad}"
        );
        assert!(error["message"].is_string(), "{error}");
    }
    let (status, _, _) = call(
        "PUT",
        &url,
        &staffed.agent_api,
        &Body::Json(json!({"every_minutes": 60})),
    );
    assert_eq!(status, 403, "agents cannot set the schedule");
    let (_, unchanged, _) = call("GET", &url, &staffed.admin_api, &Body::Empty);
    assert_eq!(
        unchanged["every_minutes"],
        Value::Null,
        "refused changes store nothing"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database_url = format!(
        "sqlite://{}",
        staffed._home.path().join("kefu.db").display()
    );
    let database = runtime
        .block_on(kefu_db::Database::connect(&database_url))
        .unwrap();
    let model = kefu_trainer::registry::TRAINED_MODEL;
    let check = |at: i64| {
        runtime
            .block_on(kefu_trainer::triggers::check_triggers(
                staffed._home.path(),
                &database,
                model,
                kefu_trainer::dataset::Policy::default(),
                at,
            ))
            .unwrap()
    };
    let set = |body: Value| {
        let (status, stored, _) = call("PUT", &url, &staffed.admin_api, &Body::Json(body.clone()));
        assert_eq!((status, &stored), (200, &body));
    };
    let now = kefu_db::now_ms();
    set(json!({"every_minutes": 1, "after_new_feedback": 1}));
    assert!(
        check(now).is_none(),
        "no feedback yet: nothing to learn, no job"
    );

    // The threshold counts rated answers the feedback policy admits: a customer's thumbs
    // (however many) count once the inbox accepts them, an agent's correction at once.
    let (id, token, answer) = ask_anonymously(server, "How long do I have to return a parcel?");
    assert_eq!(thumbs(server, &id, &token, answer, "down").0, 201);
    correct(server, &staffed.admin_api, &id, answer, "Within 30 days.");
    let (liked_id, liked_token, liked) = ask_anonymously(server, "Is the return label free?");
    for _ in 0..5 {
        assert_eq!(thumbs(server, &liked_id, &liked_token, liked, "up").0, 201);
    }

    set(json!({"every_minutes": null, "after_new_feedback": 2}));
    assert!(
        check(now).is_none(),
        "one corrected answer; five unreviewed thumbs-up on another count for nothing"
    );
    let (status, reviewed, _) = call(
        "POST",
        &server.url("/api/admin/feedback/review"),
        &staffed.admin_api,
        &Body::Json(json!({"message_ids": [liked], "decision": "accept"})),
    );
    assert_eq!(status, 200, "{reviewed}");
    set(json!({"every_minutes": null, "after_new_feedback": 3}));
    assert!(
        check(now).is_none(),
        "two admitted answers are fewer than three"
    );
    set(json!({"every_minutes": null, "after_new_feedback": 2}));
    let job = check(kefu_db::now_ms()).expect("the threshold queues a job");
    assert_eq!(
        (job.trigger.as_str(), job.requested_by),
        ("threshold", None)
    );
    assert!(check(kefu_db::now_ms()).is_none(), "one job at a time");
    let (status, _) = request(
        "POST",
        &server.url(&format!("/api/admin/training/jobs/{}/cancel", job.id)),
        &staffed.admin_api,
        None,
    );
    assert_eq!(status, 200);
    // The count starts again at each job: nothing arrived since the cancelled one began.
    assert!(check(kefu_db::now_ms()).is_none());

    set(json!({"every_minutes": 60, "after_new_feedback": null}));
    let soon = kefu_db::now_ms() + 59 * 60_000;
    assert!(check(soon).is_none(), "the hour has not passed");
    let later = job.created_ms + 61 * 60_000;
    let scheduled = check(later).expect("the schedule queues a job");
    assert_eq!(scheduled.trigger, "schedule");
    let (_, jobs, _) = call(
        "GET",
        &server.url("/api/admin/training/jobs"),
        &staffed.admin_api,
        &Body::Empty,
    );
    let triggers: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(triggers, ["schedule", "threshold"]);
    runtime.block_on(database.close());
}

/// `kill -9` of the training worker in the middle of a job: the server keeps answering, starts
/// a new worker, and the job's expired lease sends it back to work (second attempt, the lost
/// lease named as the reason) instead of leaving it stuck.
#[test]
fn a_killed_worker_s_job_is_retried_and_serving_goes_on() {
    let staffed = staffed_server_with(
        &["--max-tokens", "8"],
        &[
            ("KEFU_WORKER_LEASE_SECONDS", "3"),
            ("KEFU_WORKER_POLL_MS", "200"),
        ],
    );
    let server = &staffed.server;
    // A long run, so the job is still going when its worker dies.
    std::fs::write(
        staffed._home.path().join("recipe.toml"),
        "[lora]\nrank = 8\nalpha = 16.0\n[sft]\nepochs = 500\nlr = 1e-3\nbatch = 1\neval_fraction = 0.0\n",
    )
    .unwrap();
    let ask = || ask_anonymously(server, "Where is my parcel?");
    let (id, _, answer) = ask();
    correct(server, &staffed.agent_api, &id, answer, "It is on its way.");
    let (status, job) = request(
        "POST",
        &server.url("/api/admin/training/jobs"),
        &staffed.admin_api,
        None,
    );
    assert_eq!(status, 202, "{job}");
    let job_url = server.url(&format!("/api/admin/training/jobs/{}", job["id"]));
    let job_now = || request("GET", &job_url, &staffed.admin_api, None).1;
    let deadline = Instant::now() + Duration::from_secs(120);
    while job_now()["status"] != "running" {
        assert!(
            Instant::now() < deadline,
            "the job never started: {}",
            job_now()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let workers = children(server.child.id(), "trainer");
    assert_eq!(workers.len(), 1, "one embedded worker: {workers:?}");
    let status = Command::new("kill")
        .args(["-KILL", &workers[0].to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // Serving never stops.
    let (status, ready) = get(&server.url("/readyz"), None);
    assert_eq!(status, 200, "{ready}");
    ask();
    // A new worker takes the job back once the dead one's lease has run out.
    let deadline = Instant::now() + Duration::from_secs(60);
    let retried = loop {
        let now = job_now();
        if now["attempts"] == 2 && now["status"] == "running" {
            break now;
        }
        assert!(Instant::now() < deadline, "the job was not retried: {now}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        retried["error"]
            .as_str()
            .unwrap_or_default()
            .contains("lease"),
        "{retried}"
    );
    let replacement = children(server.child.id(), "trainer");
    assert_eq!(replacement.len(), 1, "{replacement:?}");
    assert_ne!(
        replacement[0], workers[0],
        "the server started a new worker"
    );
    let (status, cancelled) = request(
        "POST",
        &format!("{job_url}/cancel"),
        &staffed.admin_api,
        None,
    );
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (200, Some("cancelled"))
    );
}

/// The database restarts while a training job runs: the server answers again once it is
/// back, the worker finishes the job (its heartbeats and final writes wait for the database),
/// and nothing stored before is lost.
#[test]
fn a_database_restart_during_a_job_loses_nothing() {
    let postgres = PrivatePostgres::start();
    let url = postgres.url();
    let staffed = staffed_server_on(
        Some(&url),
        &["--max-tokens", "8", "--follow-ms", "200"],
        // Heartbeats every second, so some fall in the database's downtime.
        &[
            ("KEFU_WORKER_POLL_MS", "200"),
            ("KEFU_WORKER_LEASE_SECONDS", "4"),
        ],
    );
    let server = &staffed.server;
    std::fs::write(
        staffed._home.path().join("recipe.toml"),
        "[lora]\nrank = 8\nalpha = 16.0\n[sft]\nepochs = 60\nlr = 1e-3\nbatch = 1\neval_fraction = 0.0\n",
    )
    .unwrap();
    let (id, _, answer) = ask_anonymously(server, "Where is my parcel?");
    correct(server, &staffed.agent_api, &id, answer, "It is on its way.");
    let (status, job) = request(
        "POST",
        &server.url("/api/admin/training/jobs"),
        &staffed.admin_api,
        None,
    );
    assert_eq!(status, 202, "{job}");
    let job_url = server.url(&format!("/api/admin/training/jobs/{}", job["id"]));
    let job_now = || request("GET", &job_url, &staffed.admin_api, None);
    let deadline = Instant::now() + Duration::from_secs(120);
    while job_now().1["status"] != "running" {
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(200));
    }

    postgres.pg_ctl("stop");
    // While the database is down the server keeps running.
    let (status, health) = get(&server.url("/healthz"), None);
    assert_eq!(status, 200, "{health}");
    std::thread::sleep(Duration::from_secs(3));
    postgres.pg_ctl("start");

    // Back: requests succeed again (a pooled connection to the old server is replaced).
    let deadline = Instant::now() + Duration::from_secs(30);
    while job_now().0 != 200 {
        assert!(Instant::now() < deadline, "the API never came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    let finished = succeeded_job(&staffed, job["id"].as_i64().unwrap());
    assert!(finished["version"].is_string(), "{finished}");
    eprintln!("after the restart: {} attempt(s)", finished["attempts"]);
    // Everything stored before the restart is there, and new answers are stored.
    let (status, transcript) = request(
        "GET",
        &server.url(&format!("/api/agent/conversations/{id}")),
        &staffed.admin_api,
        None,
    );
    assert_eq!(status, 200, "{transcript}");
    let text = transcript.to_string();
    assert!(
        text.contains("Where is my parcel?") && text.contains("It is on its way."),
        "{text}"
    );
    ask_anonymously(server, "Where is my parcel now?");
}

/// A server killed with `kill -9` leaves no training worker behind, and neither does one killed
/// while its worker was still starting: the worker knows its server's process id and stops as
/// soon as its parent is another process (an orphan kept retrying a deleted database for ever
/// and held the test run's output open).
#[test]
fn a_worker_ends_with_its_server() {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let server = Server::start(home.path(), None, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let worker = loop {
        if let [worker] = children(server.child.id(), "trainer")[..] {
            break worker;
        }
        assert!(Instant::now() < deadline, "the server started no worker");
        std::thread::sleep(Duration::from_millis(100));
    };
    let status = Command::new("kill")
        .args(["-KILL", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    drop(server);
    let alive = || {
        // A zombie (state Z) waiting for its new parent to reap it has ended.
        std::fs::read_to_string(format!("/proc/{worker}/stat"))
            .ok()
            .and_then(|stat| {
                let state = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .next()?
                    .to_string();
                Some(state != "Z")
            })
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive() {
        assert!(
            Instant::now() < deadline,
            "worker {worker} outlived its server by 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Started for a server that is already gone (its parent is not that server): it stops at
    // once, before touching the database.
    let mut orphan = kefu(home.path(), None)
        .args(["trainer", "work"])
        .env("KEFU_WORKER_EMBEDDED", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = orphan.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = orphan.kill();
            let _ = orphan.wait();
            panic!("a worker whose server is gone kept running");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut orphan.stderr.take().unwrap(), &mut log).unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("kefu serve is gone"), "{log}");
    // A value that is no process id is a clear error, not a worker that never ends.
    let bad = kefu(home.path(), None)
        .args(["trainer", "work"])
        .env("KEFU_WORKER_EMBEDDED", "yes")
        .output()
        .unwrap();
    assert!(!bad.status.success(), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("KEFU_WORKER_EMBEDDED must be the process id"),
        "{bad:?}"
    );
}
