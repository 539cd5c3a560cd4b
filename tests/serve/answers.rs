//! Answers: the platform end to end on SQLite and PostgreSQL, the access log, a full queue,
//! the OpenAI client.

use kefu_tests::{http_agent as agent, shared, test_home};
use serde_json::{Value, json};
use std::io::Read;
use std::process::{Command, Stdio};

use crate::support::*;

pub(crate) fn the_platform_answers_streams_cites_and_records(database_url: Option<&str>) {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let ingest = kefu(home.path(), database_url)
        .args(["ingest", &shared("kb/en")])
        .output()
        .unwrap();
    assert!(
        ingest.status.success(),
        "{}",
        String::from_utf8_lossy(&ingest.stderr)
    );

    // Staff: an admin and an agent, and an API token for each.
    for (role, name) in [("admin", "boss"), ("agent", "ann")] {
        let added = kefu(home.path(), database_url)
            .args(["users", "add", "--role", role, name])
            .env("KEFU_PASSWORD", "correct horse battery")
            .output()
            .unwrap();
        assert!(
            added.status.success(),
            "{}",
            String::from_utf8_lossy(&added.stderr)
        );
    }
    let token_of = |user: &str| {
        let out = kefu(home.path(), database_url)
            .args(["tokens", "add", user])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let admin_token = token_of("boss");
    let agent_token = token_of("ann");
    assert!(agent_token.starts_with("kefu_pat_"), "{agent_token}");
    let weak = kefu(home.path(), database_url)
        .args(["users", "add", "--role", "agent", "weak"])
        .env("KEFU_PASSWORD", "short")
        .output()
        .unwrap();
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("at least 8 characters"));

    let server = Server::start(home.path(), database_url, &[]);
    assert_eq!(get(&server.url("/healthz"), None).0, 200);
    let (status, ready) = get(&server.url("/readyz"), None);
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["model_version"].as_str().unwrap().len(), 64);

    let (status, conversation) = post(&server.url("/api/conversations"), None, b"{}");
    assert_eq!(status, 201, "{conversation}");
    let id = conversation["id"].as_str().unwrap().to_string();
    let token = conversation["customer_token"].as_str().unwrap().to_string();
    let messages_url = server.url(&format!("/api/conversations/{id}/messages"));

    // A Debian FAQ question: streamed tokens, then the stored answer with its citations.
    let question = "Which Debian distribution (stable/testing/unstable) is better for me?";
    let (status, events) = post_sse(&messages_url, Some(&token), &json!({"content": question}));
    assert_eq!(status, 200, "{events:?}");
    let tokens: Vec<&(String, String)> = events.iter().filter(|(n, _)| n == "token").collect();
    assert!(tokens.len() >= 2, "streamed token by token: {events:?}");
    let (name, done) = events.last().unwrap();
    assert_eq!(name, "done", "{events:?}");
    let done: Value = serde_json::from_str(done).unwrap();
    let citations = done["citations"].as_array().unwrap();
    // Customers see the file's name, never the server's path to it.
    assert!(
        citations.iter().any(|c| c["source"] == "choosing.md"),
        "the chapter on choosing a distribution is cited: {done}"
    );
    assert!(!done.to_string().contains("kb/en/debian-faq"), "{done}");
    let answer_id = done["message_id"].as_i64().unwrap();
    let streamed: String = tokens
        .iter()
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    let (status, transcript) = get(&messages_url, Some(&token));
    assert_eq!(status, 200, "{transcript}");
    let messages = transcript["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{transcript}");
    assert_eq!(messages[0]["content"], question);
    assert_eq!(messages[1]["id"], answer_id);
    assert_eq!(messages[1]["content"].as_str().unwrap(), streamed);

    // Feedback is recorded.
    let feedback_url = format!("{messages_url}/{answer_id}/feedback");
    let (status, event) = post(
        &feedback_url,
        Some(&token),
        json!({"rating": "down", "reasons": ["wrong"], "comment": "not Ubuntu"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 201, "{event}");

    // An agent reads the transcript with the context each answer was served, and corrects it.
    let ann = sign_in(&server, "ann", "correct horse battery");
    let transcript_url = server.url(&format!("/api/agent/conversations/{id}"));
    let (status, seen) = request("GET", &transcript_url, &ann, None);
    assert_eq!(status, 200, "{seen}");
    let served = &seen["messages"][1]["served"];
    assert_eq!(served["model_version"], ready["model_version"]);
    assert!(
        served["retrieved"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["path"]
                .as_str()
                .unwrap()
                .ends_with("debian-faq/choosing.md")),
        "{served}"
    );
    assert_eq!(seen["messages"][1]["feedback"][0]["rating"], -1);
    let correction = "Stable is the safest choice for most people; testing and unstable get newer                       packages sooner at the cost of more breakage.";
    let agent_feedback_url = server.url(&format!(
        "/api/agent/conversations/{id}/messages/{answer_id}/feedback"
    ));
    let no_csrf: Identity = vec![ann[0].clone()];
    assert_error(
        request(
            "POST",
            &agent_feedback_url,
            &no_csrf,
            Some(&json!({"corrected_answer": correction})),
        ),
        403,
        "csrf_token_invalid",
    );
    let (status, _) = request(
        "POST",
        &agent_feedback_url,
        &ann,
        Some(&json!({"rating": "down", "corrected_answer": correction, "reasons": ["wrong"]})),
    );
    assert_eq!(status, 201);

    // Regenerating an answer gives another answer to the same question.
    let (status, events) = post_sse(
        &format!("{messages_url}/{answer_id}/regenerate"),
        Some(&token),
        &json!({}),
    );
    assert_eq!(status, 200);
    assert_eq!(events.last().unwrap().0, "done", "{events:?}");

    // Script and SQL text are stored and returned unchanged.
    let hostile = "<script>alert(1)</script>'; DROP TABLE messages; --";
    let (status, events) = post_sse(&messages_url, Some(&token), &json!({"content": hostile}));
    assert_eq!(status, 200, "{events:?}");
    let (_, transcript) = get(&messages_url, Some(&token));
    let messages = transcript["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 5, "{transcript}");
    assert_eq!(messages[3]["content"], hostile);

    // Bad input: 4xx with a JSON code; nothing stored changes.
    let big = vec![b'x'; 70 * 1024];
    assert_error(
        post(&messages_url, Some(&token), &big),
        413,
        "body_too_large",
    );
    assert_error(
        post(&messages_url, Some(&token), b"{\"content\": "),
        400,
        "invalid_json",
    );
    assert_error(
        post(&messages_url, Some(&token), b"{\"content\": \"caf\xe9\"}"),
        400,
        "invalid_json",
    );
    assert_error(
        post(&messages_url, Some(&token), b"{\"content\": \"   \"}"),
        400,
        "empty_message",
    );
    let huge = json!({"content": "word ".repeat(1000)}).to_string();
    assert_error(
        post(&messages_url, Some(&token), huge.as_bytes()),
        413,
        "message_too_long",
    );
    assert_error(
        post(
            &server.url("/api/conversations/nope/messages"),
            Some(&token),
            b"{\"content\": \"hi\"}",
        ),
        404,
        "conversation_not_found",
    );
    let (_, other) = post(&server.url("/api/conversations"), None, b"{}");
    let other_token = other["customer_token"].as_str().unwrap();
    assert_error(
        get(&messages_url, Some(other_token)),
        404,
        "conversation_not_found",
    );
    assert_error(get(&messages_url, None), 401, "unauthorized");
    assert_error(
        post(
            &format!("{messages_url}/999999/feedback"),
            Some(&token),
            b"{\"rating\": \"up\"}",
        ),
        404,
        "message_not_found",
    );
    assert_error(
        post(&feedback_url, Some(&token), b"{\"rating\": \"meh\"}"),
        400,
        "invalid_rating",
    );
    assert_error(get(&server.url("/api/nothing"), None), 404, "no_such_route");
    let (_, after) = get(&messages_url, Some(&token));
    assert_eq!(after, transcript, "nothing stored changed");

    // The correction is in the pairs export: chosen against the model's answer, with the
    // context the model was served.
    let admin_api: Identity = vec![("authorization", format!("Bearer {admin_token}"))];
    let (status, pairs) = request(
        "GET",
        &server.url("/api/admin/export/pairs"),
        &admin_api,
        None,
    );
    assert_eq!(status, 200, "{pairs}");
    // JSON lines (a single line also parses as one JSON value).
    let pairs = match pairs {
        Value::String(text) => text,
        one => one.to_string(),
    };
    let pair: Value = pairs
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|p| p["chosen"][0]["content"] == correction)
        .unwrap_or_else(|| panic!("the correction is a chosen answer: {pairs}"));
    assert_eq!(pair["rejected"][0]["content"].as_str().unwrap(), streamed);
    assert_eq!(pair["kefu"]["rejected_message_id"], answer_id);
    let system = pair["prompt"][0]["content"].as_str().unwrap();
    assert!(
        system.contains("Passages:") && system.contains("[1]"),
        "{system}"
    );
    assert_eq!(
        pair["prompt"].as_array().unwrap().last().unwrap()["content"],
        question
    );

    // Authorization for every route and caller: `every_route_with_every_caller`.
    let customer: Identity = vec![("authorization", format!("Bearer {token}"))];
    let agent_api: Identity = vec![("authorization", format!("Bearer {agent_token}"))];
    // Admins manage documents over the API: upload (embedded like `kefu ingest`), list, delete.
    let upload = |name: &str, bytes: &[u8], who: &Identity| -> (u16, Value) {
        let mut r = agent().post(&server.url(&format!(
            "/api/admin/knowledge-bases/default/documents?name={name}"
        )));
        for (k, v) in who {
            r = r.header(*k, v);
        }
        let mut response = r.send(bytes).unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    };
    let guide = b"# Returns\n\nParcels can be returned within 30 days with the prepaid label.";
    let (status, added) = upload("returns.md", guide, &admin_api);
    assert_eq!(status, 201, "{added}");
    assert!(added["chunks"].as_u64().unwrap() >= 1, "{added}");
    let (status, again) = upload("returns.md", guide, &admin_api);
    assert_eq!(
        (status, again["outcome"].as_str()),
        (200, Some("unchanged")),
        "{again}"
    );
    assert_error(
        upload("slides.pptx", b"PK\x03\x04", &admin_api),
        400,
        "unsupported_type",
    );
    assert_error(
        upload("empty.md", b"", &admin_api),
        400,
        "unreadable_document",
    );
    assert_error(
        upload("bad.txt", b"caf\xe9", &admin_api),
        400,
        "unreadable_document",
    );
    assert_error(upload("../etc.md", guide, &admin_api), 400, "invalid_name");
    assert_error(upload("returns.md", guide, &agent_api), 403, "forbidden");
    let documents_url = server.url("/api/admin/knowledge-bases/default/documents");
    let (_, listed) = request("GET", &documents_url, &admin_api, None);
    let uploaded = listed["documents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "upload:default/returns.md")
        .unwrap_or_else(|| panic!("{listed}"))
        .clone();
    assert_eq!(uploaded["title"], "Returns");
    // Re-ingesting reads the kept upload again and re-embeds it even though it is unchanged;
    // with the kept copy gone it says so and keeps the document.
    let reingest_url = format!("{documents_url}/{}/reingest", uploaded["id"]);
    let (status, again) = request("POST", &reingest_url, &admin_api, None);
    assert_eq!(
        (status, again["outcome"].as_str()),
        (200, Some("updated")),
        "{again}"
    );
    let kept = find_file(&home.path().join("uploads"), "returns.md").expect("the upload is kept");
    assert_eq!(std::fs::read(&kept).unwrap(), guide);
    std::fs::rename(&kept, kept.with_extension("moved")).unwrap();
    assert_error(
        request("POST", &reingest_url, &admin_api, None),
        409,
        "source_missing",
    );
    std::fs::rename(kept.with_extension("moved"), &kept).unwrap();
    // A truncated copy is refused, never re-ingested over the good chunks.
    std::fs::write(&kept, &guide[..20]).unwrap();
    assert_error(
        request("POST", &reingest_url, &admin_api, None),
        409,
        "source_changed",
    );
    std::fs::write(&kept, guide).unwrap();
    // Bytes that do not parse under the same name replace neither the copy nor the document.
    assert_error(
        upload("returns.md", b"caf\xe9", &admin_api),
        400,
        "unreadable_document",
    );
    assert_eq!(std::fs::read(&kept).unwrap(), guide);
    let leftovers: Vec<_> = std::fs::read_dir(kept.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary copies: {leftovers:?}");
    let (_, listed_again) = request("GET", &documents_url, &admin_api, None);
    assert_eq!(listed_again, listed, "a failed re-ingest changes nothing");
    let delete = |who: &Identity| {
        let mut r = agent().delete(&format!("{documents_url}/{}", uploaded["id"]));
        for (k, v) in who {
            r = r.header(*k, v);
        }
        let mut response = r.call().unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    };
    assert_error(delete(&agent_api), 403, "forbidden");
    assert_eq!(delete(&admin_api).0, 204);
    assert_error(delete(&admin_api), 404, "document_not_found");
    assert!(!kept.exists(), "a deleted upload's copy goes too");
    assert_error(
        request("POST", &reingest_url, &admin_api, None),
        404,
        "document_not_found",
    );

    // An agent takes over: the customer's next message waits for the agent.
    let (status, _) = request(
        "POST",
        &server.url(&format!("/api/conversations/{id}/handoff")),
        &customer,
        None,
    );
    assert_eq!(status, 200);
    let reply_url = server.url(&format!("/api/agent/conversations/{id}/reply"));
    assert_error(
        request(
            "POST",
            &reply_url,
            &ann,
            Some(&json!({"content": "Hello, Ann here."})),
        ),
        409,
        "not_taken_over",
    );
    let (status, _) = request(
        "POST",
        &server.url(&format!("/api/agent/conversations/{id}/takeover")),
        &ann,
        None,
    );
    assert_eq!(status, 200);
    let (status, _) = request(
        "POST",
        &reply_url,
        &ann,
        Some(&json!({"content": "Hello, Ann here."})),
    );
    assert_eq!(status, 201);
    let (status, waiting) = post(
        &messages_url,
        Some(&token),
        b"{\"content\": \"Thanks Ann!\"}",
    );
    assert_eq!(status, 202, "{waiting}");
    assert_eq!(waiting["status"], "agent");

    // OpenAI-compatible API (staff only: an API token).
    let (status, models) = request("GET", &server.url("/v1/models"), &admin_api, None);
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], "production");
    let (status, completion) = request(
        "POST",
        &server.url("/v1/chat/completions"),
        &admin_api,
        Some(
            &json!({"model": "default", "messages": [{"role": "user", "content": "Say hello."}],
               "max_tokens": 8}),
        ),
    );
    assert_eq!(status, 200, "{completion}");
    assert_eq!(completion["object"], "chat.completion");
    assert!(completion["choices"][0]["message"]["content"].is_string());
    assert!(completion["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    let (status, chunks) = post_sse(
        &server.url("/v1/chat/completions"),
        Some(&admin_token),
        &json!({"messages": [{"role": "user", "content": question}], "stream": true,
                "max_tokens": 8, "retrieval": true}),
    );
    assert_eq!(status, 200);
    assert_eq!(chunks.last().unwrap().1, "[DONE]", "{chunks:?}");
    let first: Value = serde_json::from_str(&chunks[0].1).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_error(
        post(
            &server.url("/v1/chat/completions"),
            Some(&admin_token),
            json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})
                .to_string()
                .as_bytes(),
        ),
        404,
        "model_not_found",
    );
    assert_error(
        post(
            &server.url("/v1/chat/completions"),
            Some(&admin_token),
            b"{\"messages\": []}",
        ),
        400,
        "empty_messages",
    );
    assert_error(
        post(
            &server.url("/v1/chat/completions"),
            None,
            b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}",
        ),
        401,
        "unauthorized",
    );

    // Prometheus metrics count what happened.
    let mut response = agent().get(&server.url("/metrics")).call().unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    assert!(
        value("kefu_generations_total{outcome=\"done\"}") >= 5.0,
        "{text}"
    );
    assert!(value("kefu_generated_tokens_total") >= 10.0, "{text}");
    assert!(
        value("kefu_time_to_first_token_seconds_sum") > 0.0,
        "{text}"
    );
    assert!(
        value("kefu_http_requests_total{status=\"4xx\"}") >= 10.0,
        "{text}"
    );
    assert_eq!(value("kefu_generation_queue_depth"), 0.0);

    let exit = server.stop();
    assert!(exit.success(), "graceful shutdown exits 0: {exit:?}");

    // The command-line export reads the same feedback.
    let out = kefu(home.path(), database_url)
        .args(["export", "pairs", "--format", "llama-factory"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let pair: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|p| p["chosen"]["value"] == correction)
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(pair["rejected"]["value"].as_str().unwrap(), streamed);
    assert_eq!(
        pair["conversations"].as_array().unwrap().last().unwrap()["from"],
        "human"
    );
}

/// The access log: with `RUST_LOG=info --log-format json`, one JSON line per request with its
/// method, path, status, latency and request id; the id comes back in `X-Request-Id` (a
/// caller's own is kept) and in error bodies; secrets stay out of the log.
#[test]
fn every_request_is_logged_once_with_its_id() {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let log_path = home.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = kefu(home.path(), None);
    command.env("RUST_LOG", "info");
    let server = Server::spawn_logging(command, &["--log-format", "json"], Stdio::from(log));
    let health = agent()
        .get(&server.url("/healthz"))
        .header("x-request-id", "probe-1")
        .call()
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(health.headers()["x-request-id"], "probe-1");
    let missing = agent()
        .get(&server.url("/api/no-such-thing"))
        .header("authorization", "Bearer kefu_pat_secret-value")
        .call()
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    let made = missing.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(made.len(), 16, "{made}");
    let mut text = String::new();
    missing
        .into_body()
        .as_reader()
        .read_to_string(&mut text)
        .unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["code"], "no_such_route");
    assert_eq!(body["request_id"], made.as_str());
    let (status, refused) = post(&server.url("/api/auth/login"), None, b"{not json");
    assert_eq!(status, 400, "{refused}");
    assert!(refused["request_id"].is_string(), "{refused}");
    server.stop();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "request finished")
        .collect();
    let of =
        |id: &str| -> Vec<&&Value> { access.iter().filter(|l| l["span"]["id"] == id).collect() };
    let probe = of("probe-1");
    assert_eq!(probe.len(), 1, "one line per request: {text}");
    let line = probe[0];
    assert_eq!(line["level"], "INFO");
    assert!(line["timestamp"].is_string());
    assert_eq!(line["span"]["method"], "GET");
    assert_eq!(line["span"]["path"], "/healthz");
    assert_eq!(line["fields"]["status"], 200);
    assert!(line["fields"]["latency_ms"].as_f64().unwrap() >= 0.0);
    let missing_line = of(&made);
    assert_eq!(missing_line.len(), 1, "{text}");
    assert_eq!(missing_line[0]["fields"]["status"], 404);
    assert_eq!(access.len(), 3, "three requests, three lines: {text}");
    assert!(
        !text.contains("secret-value"),
        "a token reached the log: {text}"
    );
}

#[test]
fn the_platform_on_sqlite() {
    the_platform_answers_streams_cites_and_records(None);
}

#[test]
fn the_platform_on_postgresql() {
    let (url, _guard) = postgres_database("serve");
    the_platform_answers_streams_cites_and_records(Some(&url));
}

#[test]
fn a_full_generation_queue_answers_503_with_retry_after() {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let server = Server::start(
        home.path(),
        None,
        &[
            "--queue",
            "1",
            "--workers",
            "1",
            "--batch",
            "1",
            "--max-tokens",
            "96",
        ],
    );
    let (_, conversation) = post(&server.url("/api/conversations"), None, b"{}");
    let id = conversation["id"].as_str().unwrap().to_string();
    let token = conversation["customer_token"].as_str().unwrap().to_string();
    let url = server.url(&format!("/api/conversations/{id}/messages"));
    // Six at once: one runs, one waits, the rest are refused at once.
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let (url, token) = (url.clone(), token.clone());
                scope.spawn(move || {
                    let response = agent()
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("authorization", &format!("Bearer {token}"))
                        .send(
                            json!({"content": format!("Question {i}: tell me a long story.")})
                                .to_string()
                                .as_bytes(),
                        )
                        .unwrap();
                    let retry = response
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_string());
                    let status = response.status().as_u16();
                    let mut body = String::new();
                    let _ = response.into_body().as_reader().read_to_string(&mut body);
                    (status, retry)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let busy: Vec<_> = statuses.iter().filter(|(s, _)| *s == 503).collect();
    assert!(!busy.is_empty(), "{statuses:?}");
    assert!(
        busy.iter().all(|(_, retry)| retry.is_some()),
        "{statuses:?}"
    );
    assert!(statuses.iter().any(|(s, _)| *s == 200), "{statuses:?}");
    assert!(
        statuses.iter().all(|(s, _)| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(server.stop().success());
}

/// The official `openai` Python client (installed into a cached venv on first run) talks to
/// `/v1/chat/completions`, streaming and not, with an API token as its key.
#[test]
fn the_openai_python_client_talks_to_the_api() {
    let venv = test_home().join("openai-venv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let made = Command::new("python3")
            .args(["-m", "venv", venv.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(made.success(), "python3 -m venv failed");
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "openai==2.*"])
            .status()
            .unwrap();
        assert!(installed.success(), "pip install openai failed");
    }
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let added = kefu(home.path(), None)
        .args(["users", "add", "--role", "agent", "bot"])
        .env("KEFU_PASSWORD", "a long password")
        .output()
        .unwrap();
    assert!(added.status.success());
    let token = kefu(home.path(), None)
        .args(["tokens", "add", "bot"])
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    let server = Server::start(home.path(), None, &[]);
    let script = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1] + "/v1", api_key=sys.argv[2])
models = [m.id for m in client.models.list()]
reply = client.chat.completions.create(
    model="default", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8)
stream = client.chat.completions.create(
    model="production", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8,
    stream=True)
pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
try:
    client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    refused = None
except Exception as e:
    refused = getattr(e, "status_code", None)
print(json.dumps({
    "models": models,
    "text": reply.choices[0].message.content,
    "finish": reply.choices[0].finish_reason,
    "completion_tokens": reply.usage.completion_tokens,
    "streamed": "".join(pieces),
    "chunks": len(pieces),
    "refused": refused,
}))
"#;
    let out = Command::new(&python)
        .args(["-c", script, &server.base, &token])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["models"], json!(["production"]), "{result}");
    assert!(!result["text"].as_str().unwrap().is_empty(), "{result}");
    assert!(
        result["completion_tokens"].as_u64().unwrap() >= 1,
        "{result}"
    );
    assert!(
        result["chunks"].as_u64().unwrap() >= 2,
        "streamed in pieces: {result}"
    );
    // Greedy decoding: the streamed reply is the same text.
    assert_eq!(result["streamed"], result["text"], "{result}");
    assert_eq!(result["refused"], 404, "{result}");
    assert!(server.stop().success());
}
