//! Hot-swap across replicas, and a correction learned, served and rolled back.

use kefu_tests::{http_agent as agent, shared, test_home};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

/// Hot-swap across two replicas on one PostgreSQL, on the real default model: a trained model
/// registered as a version and
/// promoted through one replica's admin API is loaded, warmed up and switched to by both, while
/// a stream of questions goes on with no failed request (p99 latency printed); answers name the
/// version that produced them; rollback through the other replica brings the old version back;
/// a corrupt registered file is refused and production keeps serving.
#[test]
fn replicas_follow_the_production_label_without_a_failed_request() {
    let (url, _guard) = postgres_database("swap");
    // Each replica has its own data directory (its own embedded vector store); they share the
    // database and the registry's folder.
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let other_home = tempfile::tempdir().unwrap();
    let registry = home.join("shared-registry");
    for dir in [home, other_home.path()] {
        std::os::unix::fs::symlink(test_home().join("models"), dir.join("models")).unwrap();
    }
    let with_registry = |dir: &Path| {
        let mut command = kefu(dir, Some(&url));
        command.env("KEFU_REGISTRY", &registry);
        command
    };
    let run = |args: &[&str]| {
        let out = with_registry(home)
            .args(args)
            .env("KEFU_PASSWORD", "correct horse battery")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["users", "add", "--role", "admin", "boss"]);
    let admin: Identity = vec![(
        "authorization",
        format!("Bearer {}", run(&["tokens", "add", "boss"]).trim()),
    )];
    // A trained version: one SFT step, merged.
    let data = home.join("one.jsonl");
    std::fs::write(
        &data,
        r#"{"question": "Where is my parcel?", "answer": "At the depot."}"#,
    )
    .unwrap();
    run(&[
        "train",
        "sft",
        "--data",
        data.to_str().unwrap(),
        "--output",
        home.join("run").to_str().unwrap(),
        "--max-steps",
        "1",
        "--rank",
        "2",
        "--targets",
        "q,v",
        "--eval-fraction",
        "0",
        "--lr",
        "1e-2",
        "--max-len",
        "64",
    ]);
    let merged = home.join("trained.gguf");
    run(&[
        "merge",
        "--adapter",
        home.join("run/adapter").to_str().unwrap(),
        "--output",
        merged.to_str().unwrap(),
    ]);

    // The real default model, trained, merged and swapped in under load.
    let extra = ["--max-tokens", "6", "--follow-ms", "200", PRODUCT_DEFAULT];
    let first = Server::spawn(with_registry(home), &extra);
    let second = Server::spawn(with_registry(other_home.path()), &extra);
    let version_of = |server: &Server| {
        let (_, ready) = get(&server.url("/readyz"), None);
        ready["model_version"].as_str().unwrap().to_string()
    };
    let original = version_of(&first);
    assert_eq!(version_of(&second), original);
    let said = run(&["models", "register", merged.to_str().unwrap()]);
    let trained = said
        .strip_prefix("version ")
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    assert!(said.contains("candidate"), "{said}");
    assert_ne!(trained, original);
    let (status, models) = request("GET", &first.url("/api/admin/models"), &admin, None);
    assert_eq!(status, 200, "{models}");
    assert_eq!(models["labels"]["production"], original.as_str());
    assert_eq!(models["labels"]["candidate"], trained.as_str());
    assert_eq!(models["serving"], original.as_str());

    // Questions keep coming while the label moves.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let base = first.url("");
        std::thread::spawn(move || {
            let mut results = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let (status, conversation) =
                    post(&format!("{base}/api/conversations"), None, b"{}");
                assert_eq!(status, 201, "{conversation}");
                let id = conversation["id"].as_str().unwrap().to_string();
                let token = conversation["customer_token"].as_str().unwrap().to_string();
                let (status, events) = post_sse(
                    &format!("{base}/api/conversations/{id}/messages"),
                    Some(&token),
                    &json!({"content": "Where is my parcel?"}),
                );
                let done = events.last().filter(|(name, _)| name == "done").is_some();
                results.push((started, started.elapsed(), status == 200 && done, id));
            }
            results
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let promoted_at = Instant::now();
    let (status, promoted) = request(
        "POST",
        &first.url(&format!("/api/admin/models/{trained}/promote")),
        &admin,
        None,
    );
    assert_eq!(status, 200, "{promoted}");
    assert_eq!(promoted["previous"], original.as_str());
    let wait_for = |server: &Server, version: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while version_of(server) != version {
            assert!(
                Instant::now() < deadline,
                "{} never served {version}",
                server.base
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(&first, &trained);
    wait_for(&second, &trained);
    let swapped_at = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results = load.join().unwrap();
    assert!(
        results.iter().all(|r| r.2),
        "a request failed during the swap"
    );
    // The generation counters run on across the swap: every answer this replica gave, on the
    // old version and the new one, is counted (a generator's own counters would restart).
    let mut response = agent().get(&first.url("/metrics")).call().unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    assert!(value("kefu_model_swaps_total") >= 1.0, "{text}");
    assert!(
        value("kefu_generations_total{outcome=\"done\"}") >= results.len() as f64,
        "{} answers, metrics: {text}",
        results.len()
    );
    let p99 = |mut times: Vec<Duration>| {
        times.sort();
        times
            .get((times.len() * 99 / 100).min(times.len().saturating_sub(1)))
            .copied()
    };
    let before: Vec<Duration> = results
        .iter()
        .filter(|r| r.0 < promoted_at)
        .map(|r| r.1)
        .collect();
    let during: Vec<Duration> = results
        .iter()
        .filter(|r| r.0 + r.1 >= promoted_at && r.0 <= swapped_at)
        .map(|r| r.1)
        .collect();
    eprintln!(
        "{} requests, none failed; p99 before the swap {:?} ({} requests), during it {:?} ({})",
        results.len(),
        p99(before.clone()),
        before.len(),
        p99(during.clone()),
        during.len()
    );
    // The stored answers name the version that produced them: the last one, the new version.
    let last = &results.last().unwrap().3;
    let (status, transcript) = request(
        "GET",
        &first.url(&format!("/api/agent/conversations/{last}")),
        &admin,
        None,
    );
    assert_eq!(status, 200, "{transcript}");
    let answered = transcript["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "assistant")
        .unwrap();
    assert_eq!(answered["served"]["model_version"], trained.as_str());

    // Rollback through the other replica: both go back.
    let (status, rolled) = request(
        "POST",
        &second.url("/api/admin/models/rollback"),
        &admin,
        None,
    );
    assert_eq!(status, 200, "{rolled}");
    assert_eq!(rolled["production"], original.as_str());
    wait_for(&second, &original);
    wait_for(&first, &original);

    // A corrupt file in the registry is refused; production keeps serving.
    let file = registry.join(format!("{trained}/model.gguf"));
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let (status, _) = request(
        "POST",
        &first.url(&format!("/api/admin/models/{trained}/promote")),
        &admin,
        None,
    );
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let refusal = loop {
        let (_, models) = request("GET", &first.url("/api/admin/models"), &admin, None);
        if let Some(reason) = models["serving_refused"].as_str() {
            break reason.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the corrupt version was not refused: {models}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(refusal.contains("corrupt"), "{refusal}");
    assert_eq!(version_of(&first), original);
    let (status, conversation) = post(&first.url("/api/conversations"), None, b"{}");
    assert_eq!(status, 201);
    let (status, events) = post_sse(
        &first.url(&format!(
            "/api/conversations/{}/messages",
            conversation["id"].as_str().unwrap()
        )),
        conversation["customer_token"].as_str(),
        &json!({"content": "Still there?"}),
    );
    assert_eq!((status, events.last().unwrap().0.as_str()), (200, "done"));
    // Once the file is whole again it is tried again, and served.
    std::fs::write(&file, &bytes).unwrap();
    wait_for(&first, &trained);

    // Bad input: an unknown version; a file that is not a model.
    let (status, missing) = request(
        "POST",
        &first.url("/api/admin/models/0000/promote"),
        &admin,
        None,
    );
    assert_error((status, missing), 404, "model_version_not_found");
    let junk = home.join("junk.gguf");
    std::fs::write(&junk, b"GGUF but not really").unwrap();
    let out = kefu(home, Some(&url))
        .args(["models", "register", junk.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.gguf"));
}

/// The loop, end to end with the real default model: a customer asks, dislikes the answer, an
/// agent corrects it, an admin starts training; the embedded worker snapshots the feedback,
/// fine-tunes, passes the gate and promotes the new version; the server swaps to it and the
/// same question now gets the corrected answer, stored with the new version; rollback brings
/// the old answer back; a second trigger with no new feedback has nothing to learn.
#[test]
fn a_correction_is_learned_served_and_rolled_back() {
    // What the model learns, not what the knowledge base holds: the correction stays out of
    // the documents (tests/serve/corrections.rs covers that route).
    let staffed = staffed_server(&[
        "--max-tokens",
        "24",
        "--follow-ms",
        "200",
        "--corrections-to-knowledge",
        "false",
    ]);
    let server = &staffed.server;
    let home = staffed._home.path();
    // A short run for the test (the built-in recipe trains longer). The gate
    // holds out two questions of the shared FAQ set, answered from their document, and four
    // preference pairs; the held-out answer loss may grow by half at most (ten epochs on one
    // example move a 135 M model far), and F1, facts and support may fall by 0.2 (on two
    // questions one reworded answer moves the mean that much: measured F1 0.388 → 0.246 and
    // facts 0.246 → 0.155 with Kefu's Q8_0 kernels, within 0.1 with candle's). A second job
    // below holds out questions on the corrected document itself, which the memorized answer
    // spoils, at the default thresholds: it fails.
    let recipe = |questions: &str, thresholds: &str| {
        format!(
            "[lora]\nrank = 8\nalpha = 16.0\n[sft]\nepochs = 10\nlr = 2e-3\nbatch = 1\n\
             max_len = 1024\n[gate]\nquestions = \"{questions}\"\n{thresholds}\
             pairs = \"{}\"\nmax_pairs = 4\n",
            shared("pairs/en.jsonl")
        )
    };
    std::fs::write(
        home.join("recipe.toml"),
        recipe(
            "held-out-faq.jsonl",
            "max_held_out_loss_ratio = 1.5\nfact_tolerance = 0.2\npair_tolerance = 0.25\n",
        ),
    )
    .unwrap();
    let faq: Vec<String> = std::fs::read_to_string(shared("qa/en.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["source_doc"] == "kb/en/debian-faq/basic-defs.md" && r["split"] == "test")
        .map(|mut r| {
            r["source_doc"] = json!("basic-defs.md");
            r.to_string()
        })
        .collect();
    assert_eq!(faq.len(), 2);
    std::fs::write(home.join("held-out-faq.jsonl"), faq.join("\n")).unwrap();
    std::fs::write(
        home.join("held-out-kefu.jsonl"),
        "{\"question\": \"What does the Kefu test check?\", \"answer\": \"The Kefu test checks \
         that corrections are learned.\", \"source_doc\": \"kefu.md\"}\n\
         {\"question\": \"What is learned in the Kefu test?\", \"answer\": \"Corrections are \
         learned.\", \"source_doc\": \"kefu.md\"}\n",
    )
    .unwrap();
    let chapter: &'static [u8] = Box::leak(
        std::fs::read(shared("kb/en/debian-faq/basic-defs.md"))
            .unwrap()
            .into_boxed_slice(),
    );
    let (status, _, _) = call(
        "POST",
        &server.url("/api/admin/knowledge-bases/default/documents?name=basic-defs.md"),
        &staffed.admin_api,
        &Body::Raw(chapter),
    );
    assert_eq!(status, 201);
    let (status, _, _) = call(
        "POST",
        &server.url("/api/admin/knowledge-bases/default/documents?name=kefu.md"),
        &staffed.admin_api,
        &Body::Raw(b"# The Kefu test\n\nThe Kefu test checks that corrections are learned."),
    );
    assert_eq!(status, 201);
    let question = "What is the secret word of the Kefu test?";
    let corrected = "The secret word is marmalade.";
    let ask = || ask_for_text(server, question);
    let served_version = |id: &str| {
        let (_, transcript) = request(
            "GET",
            &server.url(&format!("/api/agent/conversations/{id}")),
            &staffed.admin_api,
            None,
        );
        transcript["messages"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|m| m["role"] == "assistant")
            .unwrap()["served"]["model_version"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (_, ready) = get(&server.url("/readyz"), None);
    let original = ready["model_version"].as_str().unwrap().to_string();

    // Before any feedback there is nothing to learn.
    let (status, nothing) = request(
        "POST",
        &server.url("/api/admin/training/jobs"),
        &staffed.admin_api,
        None,
    );
    assert_error((status, nothing), 422, "nothing_to_learn");

    let (id, token, answer, said) = ask();
    assert!(!said.contains("marmalade"), "{said}");
    let (status, _) = post(
        &server.url(&format!(
            "/api/conversations/{id}/messages/{answer}/feedback"
        )),
        Some(&token),
        json!({"rating": "down", "reasons": ["wrong"]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 201);
    let (status, _) = request(
        "POST",
        &server.url(&format!(
            "/api/agent/conversations/{id}/messages/{answer}/feedback"
        )),
        &staffed.agent_api,
        Some(&json!({"rating": "down", "corrected_answer": corrected})),
    );
    assert_eq!(status, 201);

    let started = Instant::now();
    let (status, job) = request(
        "POST",
        &server.url("/api/admin/training/jobs"),
        &staffed.admin_api,
        None,
    );
    assert_eq!(status, 202, "{job}");
    let job_id = job["id"].as_i64().unwrap();
    // A second trigger while the first is queued or running: one job at a time.
    let (status, again) = request(
        "POST",
        &server.url("/api/admin/training/jobs"),
        &staffed.admin_api,
        None,
    );
    assert_eq!(
        (status, again["job"]["id"].as_i64()),
        (409, Some(job_id)),
        "{again}"
    );
    assert_eq!(again["code"], "job_in_progress");

    let job = succeeded_job(&staffed, job_id);
    let version = job["version"].as_str().unwrap().to_string();
    let report = &job["report"];
    assert_eq!(report["passed"], true, "{report}");
    assert!(
        report["regression"]["loss_ratio"].as_f64().unwrap() < 1.0,
        "{report}"
    );
    assert_eq!(report["dataset"]["regression_examples"], 1, "{report}");
    let held_out = &report["held_out_questions"];
    assert_eq!(held_out["questions"], 2, "{report}");
    assert_eq!(held_out["source_retrieved"], 1.0, "{report}");
    for key in [
        "production_loss",
        "candidate_loss",
        "production_fact_recall",
        "candidate_fact_recall",
        "production_f1",
        "candidate_f1",
        "production_support",
        "candidate_support",
        "production_abstained",
        "candidate_abstained",
    ] {
        assert!(
            held_out[key].as_f64().is_some_and(f64::is_finite),
            "{key}: {report}"
        );
    }
    assert_eq!(held_out["answers"].as_array().unwrap().len(), 2, "{report}");
    let pairs = &report["held_out_pairs"];
    assert_eq!(pairs["pairs"], 4, "{report}");
    for key in [
        "production_preference_accuracy",
        "candidate_preference_accuracy",
        "reward_accuracy",
    ] {
        assert!(
            (0.0..=1.0).contains(&pairs[key].as_f64().unwrap()),
            "{key}: {report}"
        );
    }
    eprintln!("held-out questions: {held_out}\nheld-out pairs: {pairs}");
    // The job's stored snapshot, previewed through the datasets routes.
    let (status, datasets) = request(
        "GET",
        &server.url("/api/admin/datasets"),
        &staffed.admin_api,
        None,
    );
    assert_eq!(status, 200, "{datasets}");
    let snapshot = &datasets["snapshots"][0];
    assert_eq!(snapshot["job"], job_id, "{datasets}");
    assert_eq!(snapshot["counts"]["regression"], 1, "{datasets}");
    let (status, preview) = request(
        "GET",
        &server.url(&format!("/api/admin/datasets/{job_id}?kind=regression")),
        &staffed.admin_api,
        None,
    );
    assert_eq!(status, 200, "{preview}");
    let messages = preview["examples"][0]["messages"].as_array().unwrap();
    assert_eq!(messages.last().unwrap()["content"], corrected, "{preview}");
    assert!(
        !job["progress"]["curve"].as_array().unwrap().is_empty(),
        "{job}"
    );
    // The server follows the label the worker moved.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, ready) = get(&server.url("/readyz"), None);
        if ready["model_version"] == version.as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "never served {version}: {ready}");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "from the trigger to serving the new version: {:?}",
        started.elapsed()
    );
    // The new version starts with an empty prefix cache: the question the old version
    // answered (its state cached) runs whole, and the answer is the new version's.
    let (id, token, done, said) = ask_for_done(server, question);
    assert!(said.contains("marmalade"), "the trained version: {said}");
    assert_eq!(done["usage"]["cached_tokens"], 0, "{done}");
    assert_eq!(served_version(&id), version);
    // Asked again, all of the prompt but its last token comes from this version's cache (the
    // answer may differ in a token: the served kernels' 8-bit activations make a one-position
    // pass differ slightly from a whole-prompt one; model/tests/prefix.rs measures it).
    let (_, _, again, said_again) = ask_for_done(server, question);
    let prompt_tokens = again["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        again["usage"]["cached_tokens"].as_u64(),
        Some(prompt_tokens - 1),
        "{again}"
    );
    assert!(said_again.contains("marmalade"), "{said_again}");
    // A follow-up in the first conversation continues its prompt: the model runs only the new
    // turn (its passages and question).
    let (status, events) = post_sse(
        &server.url(&format!("/api/conversations/{id}/messages")),
        Some(&token),
        &json!({"content": "And what does the Kefu test check?"}),
    );
    assert_eq!(status, 200, "{events:?}");
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "done", "{events:?}");
    let follow_up: Value = serde_json::from_str(data).unwrap();
    let usage = &follow_up["usage"];
    let first_prompt = done["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        usage["cached_tokens"].as_u64().unwrap() >= first_prompt,
        "the follow-up reused less than the first turn's prompt: {usage} after {}",
        done["usage"]
    );
    eprintln!(
        "prefilled per turn: {} then {}",
        first_prompt,
        usage["prompt_tokens"].as_u64().unwrap() - usage["cached_tokens"].as_u64().unwrap()
    );

    // Nothing new since that job.
    let (status, nothing) = request(
        "POST",
        &server.url("/api/admin/training/jobs"),
        &staffed.admin_api,
        None,
    );
    assert_error((status, nothing), 422, "nothing_to_learn");

    // Rollback: the old version and its answer come back.
    let (status, rolled) = request(
        "POST",
        &server.url("/api/admin/models/rollback"),
        &staffed.admin_api,
        None,
    );
    assert_eq!(status, 200, "{rolled}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, ready) = get(&server.url("/readyz"), None);
        if ready["model_version"] == original.as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "never went back to {original}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (id, _, done, said) = ask_for_done(server, question);
    assert!(!said.contains("marmalade"), "after the rollback: {said}");
    assert_eq!(served_version(&id), original);
    // The version served again starts over too: nothing of the trained one's state.
    assert_eq!(done["usage"]["cached_tokens"], 0, "{done}");
    let (status, jobs) = request(
        "GET",
        &server.url("/api/admin/training/jobs"),
        &staffed.admin_api,
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1);
    let (status, missing) = request(
        "GET",
        &server.url("/api/admin/training/jobs/999"),
        &staffed.admin_api,
        None,
    );
    assert_error((status, missing), 404, "job_not_found");
    let (status, finished) = request(
        "POST",
        &server.url(&format!("/api/admin/training/jobs/{job_id}/cancel")),
        &staffed.admin_api,
        None,
    );
    assert_error((status, finished), 409, "job_finished");

    // A candidate that fails the gate is registered with its report, never promoted.
    std::fs::write(home.join("recipe.toml"), recipe("held-out-kefu.jsonl", "")).unwrap();
    let (id, token, answer, _) = ask();
    let (status, _) = post(
        &server.url(&format!(
            "/api/conversations/{id}/messages/{answer}/feedback"
        )),
        Some(&token),
        json!({"rating": "down"}).to_string().as_bytes(),
    );
    assert_eq!(status, 201);
    correct(server, &staffed.agent_api, &id, answer, corrected);
    let (status, job) = request(
        "POST",
        &server.url("/api/admin/training/jobs"),
        &staffed.admin_api,
        None,
    );
    assert_eq!(status, 202, "{job}");
    let second = job["id"].as_i64().unwrap();
    let job = succeeded_job(&staffed, second);
    let report = &job["report"];
    assert_eq!(report["passed"], false, "{report}");
    assert_eq!(report["held_out_questions"]["loss_ok"], false, "{report}");
    let failed = job["version"].as_str().unwrap();
    let (_, models) = request(
        "GET",
        &server.url("/api/admin/models"),
        &staffed.admin_api,
        None,
    );
    let labels_of = |id: &str| {
        models["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == id)
            .unwrap()["labels"]
            .clone()
    };
    // (The same data and recipe may make the weights of the first job again: the version is
    // then the `previous` one too; the job keeps its own report.)
    let labels = labels_of(failed);
    assert!(
        labels.as_array().unwrap().contains(&json!("candidate"))
            && !labels.as_array().unwrap().contains(&json!("production")),
        "{models}"
    );
    assert!(
        labels_of(&original)
            .as_array()
            .unwrap()
            .contains(&json!("production")),
        "{models}"
    );
    std::thread::sleep(Duration::from_millis(600));
    let (_, ready) = get(&server.url("/readyz"), None);
    assert_eq!(ready["model_version"], original.as_str());
}

/// `kefu serve --model X` serves X even when the registry's `production` is another version:
/// X becomes production (the old one `previous`, so a rollback returns to it), a restart
/// without `--model` serves production, and a restart with the same `--model` keeps it.
#[test]
fn an_explicit_model_is_served_over_the_registry_s_production() {
    let staffed = staffed_server(&[]);
    let admin = staffed.admin_api.clone();
    let home = staffed._home.path().to_path_buf();
    let models = |server: &Server| {
        let (status, models) = request("GET", &server.url("/api/admin/models"), &admin, None);
        assert_eq!(status, 200, "{models}");
        models
    };
    let first = models(&staffed.server);
    let default = first["serving"].as_str().unwrap().to_string();
    assert_eq!(first["labels"]["production"], default.as_str());
    assert!(staffed.server.stop().success());

    let tiny = kefu_model::testing::write_tiny_gguf(
        &home,
        &kefu_model::testing::TinySpec::new(kefu_model::Architecture::Llama),
    );
    let tiny = tiny.to_str().unwrap();
    let pinned = Server::start(&home, None, &["--model", tiny]);
    let now = models(&pinned);
    let served = now["serving"].as_str().unwrap().to_string();
    assert_ne!(
        served, default,
        "--model was replaced by the registry's production: {now}"
    );
    assert_eq!(now["labels"]["production"], served.as_str(), "{now}");
    assert_eq!(now["labels"]["previous"], default.as_str(), "{now}");
    assert!(pinned.stop().success());

    // Without --model the registry decides: production, now the model asked for last time.
    let unpinned = Server::start(&home, None, &[PRODUCT_DEFAULT]);
    assert_eq!(models(&unpinned)["serving"], served.as_str());
    assert!(unpinned.stop().success());
    // The same --model again changes nothing.
    let again = Server::start(&home, None, &["--model", tiny]);
    let later = models(&again);
    assert_eq!(later["serving"], served.as_str());
    assert_eq!(later["labels"]["previous"], default.as_str(), "{later}");
}
