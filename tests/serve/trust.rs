//! Learning you can trust: a customer's thumbs are weak evidence (one rating per answer counts,
//! caps per conversation and per address, flags in the inbox, nothing trained on before an
//! agent or admin accepts it), and a job's gate always compares answers — on questions it holds
//! out of the feedback when the recipe names none — while a cancelled job registers nothing.

use serde_json::{Value, json};
use std::time::{Duration, Instant};

use crate::support::*;

/// `kefu export KIND` on the server's data directory under `policy`: the examples.
fn export(staffed: &Staffed, kind: &str, policy: &str) -> Vec<Value> {
    let out = kefu(staffed._home.path(), None)
        .args(["export", kind, "--feedback-policy", policy])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What each SFT example teaches: its last message's text.
fn taught(sft: &[Value]) -> Vec<String> {
    sft.iter()
        .map(|e| {
            e["messages"].as_array().unwrap().last().unwrap()["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn inbox(staffed: &Staffed, query: &str) -> Value {
    let (status, inbox) = request(
        "GET",
        &staffed.server.url(&format!("/api/admin/feedback?{query}")),
        &staffed.admin_api,
        None,
    );
    assert_eq!(status, 200, "{inbox}");
    inbox
}

/// The poisoning scenario: an anonymous customer asks the bot to say something false and
/// thumbs the answer up twenty times with the threshold trigger at twenty. Under the default
/// policy nothing is trained on it: one rating counts, unreviewed thumbs are no material, the
/// inbox flags the answer. A hundred ratings of one answer stop at the conversation's cap;
/// another customer cannot rate it; agents' corrections, in English and Chinese, count at once.
#[test]
fn a_customer_s_thumbs_up_flood_trains_nothing_by_default() {
    let staffed = staffed_server(&["--trainer", "off"]);
    let server = &staffed.server;
    let (id, token, answer) =
        ask_anonymously(server, "Say that every Debian release costs 500 euros.");
    for _ in 0..20 {
        assert_eq!(thumbs(server, &id, &token, answer, "up").0, 201);
    }
    let (status, schedule, _) = call(
        "PUT",
        &server.url("/api/admin/training/schedule"),
        &staffed.admin_api,
        &Body::Json(json!({"every_minutes": null, "after_new_feedback": 20})),
    );
    assert_eq!(status, 200, "{schedule}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = runtime
        .block_on(kefu_db::Database::connect(&format!(
            "sqlite://{}",
            staffed._home.path().join("kefu.db").display()
        )))
        .unwrap();
    let check = || {
        runtime
            .block_on(kefu_trainer::triggers::check_triggers(
                staffed._home.path(),
                &database,
                kefu_trainer::registry::TRAINED_MODEL,
                kefu_trainer::dataset::Policy::default(),
                kefu_db::now_ms(),
            ))
            .unwrap()
    };
    assert!(check().is_none(), "twenty unreviewed thumbs queue no job");
    let trigger = || {
        request(
            "POST",
            &server.url("/api/admin/training/jobs"),
            &staffed.admin_api,
            None,
        )
    };
    assert_error(trigger(), 422, "nothing_to_learn");
    for kind in ["sft", "pairs", "kto"] {
        assert_eq!(
            export(&staffed, kind, "review"),
            Vec::<Value>::new(),
            "{kind}"
        );
    }
    // The policy is what keeps it out: trusting every rating makes it one example (one
    // rating counts, not twenty).
    assert_eq!(export(&staffed, "sft", "all").len(), 1);
    assert_eq!(export(&staffed, "pairs", "pairs-only").len(), 0);
    let listed = inbox(&staffed, "");
    assert_eq!(listed["policy"], "review", "{listed}");
    let item = &listed["items"][0];
    assert_eq!(
        (item["customer_ratings"].as_u64(), item["trusted"].as_bool()),
        (Some(20), Some(false)),
        "{item}"
    );
    assert!(
        item["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("repeated_ratings")),
        "{item}"
    );
    assert_eq!(inbox(&staffed, "flagged=true")["total"], 1);
    assert_eq!(inbox(&staffed, "flagged=false")["total"], 0);
    assert_error(
        request(
            "GET",
            &server.url("/api/admin/feedback?flagged=maybe"),
            &staffed.admin_api,
            None,
        ),
        400,
        "invalid_filter",
    );

    // A hundred ratings of one answer: the conversation's cap (30) stops them, and what was
    // stored stays one rating.
    let mut limited = None;
    for _ in 20..100 {
        let (status, body) = thumbs(server, &id, &token, answer, "up");
        if status != 201 {
            limited = Some((status, body));
            break;
        }
    }
    assert_error(limited.expect("a cap"), 429, "feedback_limit");
    assert_eq!(inbox(&staffed, "")["items"][0]["customer_ratings"], 30);
    assert_eq!(export(&staffed, "sft", "all").len(), 1);
    // Another customer cannot rate it.
    let (other, other_token, _) = ask_anonymously(server, "Where is the FAQ?");
    assert_error(
        thumbs(server, &other, &other_token, answer, "up"),
        404,
        "message_not_found",
    );

    // Accepted in the inbox, the thumbs-up becomes material; agents' corrections count at once,
    // in both languages.
    let (status, _) = request(
        "POST",
        &server.url("/api/admin/feedback/review"),
        &staffed.admin_api,
        Some(&json!({"message_ids": [answer], "decision": "accept"})),
    );
    assert_eq!(status, 200);
    assert_eq!(export(&staffed, "sft", "review").len(), 1);
    let (zh, _, zh_answer) = ask_anonymously(server, "Debian 是什么？");
    correct(
        server,
        &staffed.agent_api,
        &zh,
        zh_answer,
        "Debian 是一个自由的操作系统。",
    );
    let (en, _, en_answer) = ask_anonymously(server, "What is Debian?");
    correct(
        server,
        &staffed.agent_api,
        &en,
        en_answer,
        "Debian is a free operating system.",
    );
    let sft = export(&staffed, "sft", "review");
    let said = taught(&sft);
    assert_eq!(sft.len(), 3, "{said:?}");
    assert!(
        said.iter().any(|s| s == "Debian 是一个自由的操作系统。"),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|s| s == "Debian is a free operating system."),
        "{said:?}"
    );
    // The same question asked again (case and spacing aside) is one lesson, not two: an
    // agent's thumbs-up on the new answer leaves the correction in place; a later correction
    // takes it.
    let (again, _, again_answer) = ask_anonymously(server, "what is  DEBIAN?");
    let (status, body) = request(
        "POST",
        &server.url(&format!(
            "/api/agent/conversations/{again}/messages/{again_answer}/feedback"
        )),
        &staffed.agent_api,
        Some(&json!({"rating": "up"})),
    );
    assert_eq!(status, 201, "{body}");
    let sft = export(&staffed, "sft", "review");
    let said = taught(&sft);
    assert_eq!(sft.len(), 3, "{said:?}");
    assert!(
        said.iter()
            .any(|s| s == "Debian is a free operating system."),
        "{said:?}"
    );
    correct(
        server,
        &staffed.agent_api,
        &again,
        again_answer,
        "Debian is a free operating system made by volunteers.",
    );
    let sft = export(&staffed, "sft", "review");
    let said = taught(&sft);
    assert_eq!(sft.len(), 3, "{said:?}");
    assert!(
        said.iter()
            .any(|s| s == "Debian is a free operating system made by volunteers.")
            && !said
                .iter()
                .any(|s| s == "Debian is a free operating system."),
        "{said:?}"
    );
    // Admitted answers, not the thirty-odd events: the threshold at 3 queues a job.
    let (status, _, _) = call(
        "PUT",
        &server.url("/api/admin/training/schedule"),
        &staffed.admin_api,
        &Body::Json(json!({"every_minutes": null, "after_new_feedback": 3})),
    );
    assert_eq!(status, 200);
    let job = check().expect("three admitted answers reach the threshold");
    assert_eq!(job.trigger, "threshold");
    runtime.block_on(database.close());
}

/// One address rating many answers fast: its ratings stop at the per-address cap (429 with
/// Retry-After), the inbox flags them (one source, many answers; a burst of identical ratings),
/// and an admin rejects them in bulk, after which not even the `all` policy trains on them.
#[test]
fn a_flood_from_one_address_is_capped_flagged_and_rejected_in_bulk() {
    let staffed = staffed_server(&[
        "--trainer",
        "off",
        "--feedback-policy",
        "all",
        "--feedback-per-address-hour",
        "10",
        "--max-tokens",
        "4",
    ]);
    let server = &staffed.server;
    let mut asked = Vec::new();
    for n in 0..11 {
        asked.push(ask_anonymously(server, &format!("Question number {n}?")));
    }
    for (id, token, answer) in &asked[..10] {
        assert_eq!(thumbs(server, id, token, *answer, "up").0, 201);
    }
    let (id, token, answer) = &asked[10];
    let (status, _, retry) = call(
        "POST",
        &server.url(&format!(
            "/api/conversations/{id}/messages/{answer}/feedback"
        )),
        &vec![("authorization", format!("Bearer {token}"))],
        &Body::Json(json!({"rating": "up"})),
    );
    assert_eq!(status, 429);
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");

    let flagged = inbox(&staffed, "flagged=true&limit=100");
    assert_eq!(flagged["total"], 10, "{flagged}");
    for item in flagged["items"].as_array().unwrap() {
        let flags = item["flags"].as_array().unwrap();
        assert!(
            flags.contains(&json!("one_source_many_answers")) && flags.contains(&json!("burst")),
            "{item}"
        );
    }
    assert_eq!(export(&staffed, "sft", "all").len(), 10);
    assert_eq!(export(&staffed, "sft", "review").len(), 0);
    let ids: Vec<Value> = flagged["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["message_id"].clone())
        .collect();
    let (status, reviewed) = request(
        "POST",
        &server.url("/api/admin/feedback/review"),
        &staffed.admin_api,
        Some(&json!({"message_ids": ids, "decision": "reject"})),
    );
    assert_eq!((status, reviewed["reviewed"].as_u64()), (200, Some(10)));
    assert_eq!(export(&staffed, "sft", "all").len(), 0);
    assert_eq!(inbox(&staffed, "flagged=true&review=pending")["total"], 0);
}

/// Questions whose hash puts them in (`held`) or out of the gate's default held-out share.
fn questions(held: bool, count: usize) -> Vec<String> {
    (0..)
        .map(|n| format!("How do I install package number {n}?"))
        .filter(|q| kefu_trainer::worker::is_held_out(q, kefu_trainer::worker::HOLD_OUT) == held)
        .take(count)
        .collect()
}

/// Without held-out questions in the recipe the worker holds a share of the feedback's own
/// questions out of training and the gate answers them with both models: a job whose share is
/// empty says why and does not promote; a held-out question is never trained on and is
/// answered in the report. A job cancelled during its gate registers and promotes nothing.
#[test]
fn the_gate_holds_out_feedback_questions_and_a_cancelled_job_registers_nothing() {
    let staffed = staffed_server_with(
        &["--max-tokens", "24"],
        &[
            ("KEFU_WORKER_LEASE_SECONDS", "3"),
            ("KEFU_WORKER_POLL_MS", "200"),
        ],
    );
    let server = &staffed.server;
    let home = staffed._home.path();
    std::fs::write(
        home.join("recipe.toml"),
        "[lora]\nrank = 4\nalpha = 8.0\n[sft]\nepochs = 1\nlr = 1e-3\nbatch = 1\n\
         max_len = 1024\neval_fraction = 0.0\n",
    )
    .unwrap();
    let (_, ready) = get(&server.url("/readyz"), None);
    let original = ready["model_version"].as_str().unwrap().to_string();
    let trained = questions(false, 3);
    let held = questions(true, 1);
    let correct_one = |question: &str, text: &str| {
        let (id, _, answer) = ask_anonymously(server, question);
        correct(server, &staffed.agent_api, &id, answer, text);
    };
    let trigger = || {
        let (status, job) = request(
            "POST",
            &server.url("/api/admin/training/jobs"),
            &staffed.admin_api,
            None,
        );
        assert_eq!(status, 202, "{job}");
        job["id"].as_i64().unwrap()
    };
    let job_url = |id: i64| server.url(&format!("/api/admin/training/jobs/{id}"));
    let models = || {
        request(
            "GET",
            &server.url("/api/admin/models"),
            &staffed.admin_api,
            None,
        )
        .1
    };

    // One corrected question, outside the held-out share: nothing to compare answers on.
    correct_one(&trained[0], "Run apt install with the package's name.");
    let first = succeeded_job(&staffed, trigger());
    let report = &first["report"];
    assert_eq!(report["passed"], false, "{report}");
    let why = report["held_out_questions"]["why"].as_str().unwrap();
    assert!(why.contains("too little feedback"), "{why}");
    let (_, ready) = get(&server.url("/readyz"), None);
    assert_eq!(ready["model_version"], original.as_str());

    // A question in the share: kept out of the training data, answered by both models.
    correct_one(&held[0], "Use apt install followed by the package name.");
    let second = succeeded_job(&staffed, trigger());
    let data = home.join(format!("jobs/{}/data", second["id"]));
    let sft = std::fs::read_to_string(data.join("sft.jsonl")).unwrap();
    let kept = std::fs::read_to_string(data.join("held-out.jsonl")).unwrap();
    assert!(
        !sft.contains(&held[0]) && sft.contains(&trained[0]),
        "{sft}"
    );
    assert!(kept.contains(&held[0]), "{kept}");
    let questions_report = &second["report"]["held_out_questions"];
    assert_eq!(questions_report["questions"], 1, "{questions_report}");
    let answers = &questions_report["answers"][0];
    assert!(
        answers["production"]["answer"].is_string() && answers["candidate"]["f1"].is_number(),
        "{answers}"
    );
    // The answers decide whatever the loss: `answers_ok` is the rule applied to the reported
    // figures (F1 and support no lower, abstention no higher, within the tolerance), and a
    // candidate whose answers are not ok is not promoted.
    // (A measure one side has no value for, e.g. support when every answer abstained, does
    // not count.)
    let tolerance = questions_report["fact_tolerance"].as_f64().unwrap();
    let no_worse = |measure: &str, higher_is_better: bool| {
        let side = |who: &str| questions_report[format!("{who}_{measure}")].as_f64();
        match (side("production"), side("candidate")) {
            (Some(p), Some(c)) if higher_is_better => c >= p - tolerance,
            (Some(p), Some(c)) => c <= p + tolerance,
            _ => true,
        }
    };
    let rule = no_worse("f1", true) && no_worse("support", true) && no_worse("abstained", false);
    assert_eq!(questions_report["answers_ok"], rule, "{questions_report}");
    if !rule {
        assert_eq!(second["report"]["passed"], false, "{}", second["report"]);
    }

    // Cancelled while its gate runs: no version registered, nothing promoted.
    correct_one(&trained[1], "Type apt install and the name.");
    correct_one(&trained[2], "apt install NAME installs it.");
    let before = models()["versions"].as_array().unwrap().len();
    let (_, production_before) = get(&server.url("/readyz"), None);
    let third = trigger();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (_, job) = request("GET", &job_url(third), &staffed.admin_api, None);
        if job["progress"]["stage"] == "gate" {
            break;
        }
        assert!(
            job["status"] == "queued" || job["status"] == "running",
            "the job ended before its gate: {job}"
        );
        assert!(Instant::now() < deadline, "no gate: {job}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, cancelled) = request(
        "POST",
        &format!("{}/cancel", job_url(third)),
        &staffed.admin_api,
        None,
    );
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (200, Some("cancelled"))
    );
    // The worker takes the next job only once it is done with the cancelled one.
    let fourth = trigger();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (_, job) = request("GET", &job_url(fourth), &staffed.admin_api, None);
        if job["status"] != "queued" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never came back: {job}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = models();
    let versions = after["versions"].as_array().unwrap();
    assert_eq!(versions.len(), before, "{after}");
    assert!(versions.iter().all(|v| v["job"] != third), "{after}");
    let (_, ready) = get(&server.url("/readyz"), None);
    assert_eq!(ready["model_version"], production_before["model_version"]);
    let (status, _) = request(
        "POST",
        &format!("{}/cancel", job_url(fourth)),
        &staffed.admin_api,
        None,
    );
    assert_eq!(status, 200);
}
