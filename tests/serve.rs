//! `kefu serve` end to end over HTTP: the real binary on port 0 with the real default models,
//! on SQLite and on PostgreSQL. A Debian FAQ question is answered with streamed tokens and a
//! citation of the right chapter, the answer is stored with what it was served, feedback is
//! recorded, the OpenAI-compatible API answers (stream and not), and every bad input gets a
//! 4xx with a JSON `code` while nothing stored changes.

use kefu_tests::{http_agent as agent, kefu_command, shared, test_home};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// `database_url` `None`: the default, SQLite in the data directory.
fn kefu(home: &Path, database_url: Option<&str>) -> Command {
    let mut command = kefu_command();
    match database_url {
        Some(url) => command.env("KEFU_DATABASE_URL", url),
        None => command.env_remove("KEFU_DATABASE_URL"),
    };
    command
        .env("KEFU_HOME", home)
        .env("HF_ENDPOINT", "")
        .env("KEFU_PACKAGE_INDEX", "http://127.0.0.1:9/simple");
    command
}

/// A running `kefu serve`, stopped (SIGTERM) when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(home: &Path, database_url: Option<&str>, extra: &[&str]) -> Self {
        Self::spawn(kefu(home, database_url), extra)
    }

    /// `kefu serve` through a prepared command (its environment set).
    fn spawn(command: Command, extra: &[&str]) -> Self {
        Self::spawn_logging(command, extra, Stdio::inherit())
    }

    /// [`Server::spawn`] with its standard error (the log) sent to `log`.
    fn spawn_logging(mut command: Command, extra: &[&str], log: Stdio) -> Self {
        let mut child = command
            .args(["serve", "--port", "0"])
            .args(if extra.contains(&"--max-tokens") {
                &[][..]
            } else {
                &["--max-tokens", "24"][..]
            })
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("kefu serve printed its address before exiting")
                .unwrap();
            if let Some(address) = line.strip_prefix("kefu: listening on ") {
                break address.to_string();
            }
        };
        Self { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then the exit status (graceful shutdown).
    fn stop(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        std::mem::forget(self);
        exit
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (status, JSON body)
fn post(url: &str, token: Option<&str>, body: &[u8]) -> (u16, Value) {
    let mut request = agent().post(url).header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    let mut response = request.send(body).unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = agent().get(url);
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    let mut response = request.call().unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Posts and reads a Server-Sent Events stream: (event name, data) in order.
fn post_sse(url: &str, token: Option<&str>, body: &Value) -> (u16, Vec<(String, String)>) {
    let mut request = agent().post(url).header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    let mut response = request.send(body.to_string().as_bytes()).unwrap();
    let status = response.status().as_u16();
    let mut text = String::new();
    response
        .body_mut()
        .as_reader()
        .read_to_string(&mut text)
        .unwrap();
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut name = "message".to_string();
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event:") {
                name = n.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
            }
        }
        if !data.is_empty() {
            events.push((name, data.join("\n")));
        }
    }
    (status, events)
}

/// Who is calling: extra request headers.
type Identity = Vec<(&'static str, String)>;

fn request(method: &str, url: &str, who: &Identity, body: Option<&Value>) -> (u16, Value) {
    let agent = agent();
    let mut response = match method {
        "GET" => {
            let mut r = agent.get(url);
            for (k, v) in who {
                r = r.header(*k, v);
            }
            r.call().unwrap()
        }
        _ => {
            let mut r = agent.post(url).header("content-type", "application/json");
            for (k, v) in who {
                r = r.header(*k, v);
            }
            r.send(body.unwrap_or(&json!({})).to_string().as_bytes())
                .unwrap()
        }
    };
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Signs in; the identity carries the session cookie and the CSRF token.
fn sign_in(server: &Server, name: &str, password: &str) -> Identity {
    let mut response = agent()
        .post(&server.url("/api/auth/login"))
        .header("content-type", "application/json")
        .send(
            json!({"name": name, "password": password})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let cookie = response
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    vec![
        ("cookie", session),
        (
            "x-csrf-token",
            body["csrf_token"].as_str().unwrap().to_string(),
        ),
    ]
}

/// The first file named `name` under `dir`.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}

#[track_caller]
fn assert_error(result: (u16, Value), status: u16, code: &str) {
    assert_eq!(result.0, status, "{:?}", result.1);
    assert_eq!(result.1["code"], code, "{:?}", result.1);
    assert!(result.1["message"].is_string(), "{:?}", result.1);
}

fn the_platform_answers_streams_cites_and_records(database_url: Option<&str>) {
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
    assert!(
        citations.iter().any(|c| c["path"]
            .as_str()
            .unwrap()
            .ends_with("kb/en/debian-faq/choosing.md")),
        "the chapter on choosing a distribution is cited: {done}"
    );
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

/// A request body for [`call`].
enum Body {
    Empty,
    Json(Value),
    Raw(&'static [u8]),
}

/// Any method, any headers, any body: (status, JSON body or text, Retry-After).
fn call(method: &str, url: &str, who: &Identity, body: &Body) -> (u16, Value, Option<String>) {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in who {
        builder = builder.header(*k, v);
    }
    let agent = agent();
    let result = match body {
        // Bodies go only with the methods that take them.
        _ if matches!(method, "GET" | "DELETE" | "OPTIONS") => agent.run(builder.body(()).unwrap()),
        Body::Empty => agent.run(
            builder
                .header("content-type", "application/json")
                .body(&b"{}"[..])
                .unwrap(),
        ),
        Body::Json(value) => agent.run(
            builder
                .header("content-type", "application/json")
                .body(value.to_string().into_bytes())
                .unwrap(),
        ),
        Body::Raw(bytes) => agent.run(builder.body(*bytes).unwrap()),
    };
    let mut response = result.unwrap();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        retry,
    )
}

/// A server on SQLite with an admin (`boss`) and an agent (`ann`), each with an API token.
struct Staffed {
    _home: tempfile::TempDir,
    server: Server,
    boss: Identity,
    ann: Identity,
    admin_api: Identity,
    agent_api: Identity,
}

fn staffed_server(extra: &[&str]) -> Staffed {
    staffed_server_with(extra, &[])
}

/// A staffed server whose process (and its training worker) sees `env` too.
fn staffed_server_with(extra: &[&str], env: &[(&str, &str)]) -> Staffed {
    staffed_server_on(None, extra, env)
}

/// A staffed server on `database_url` (`None`: SQLite in its data directory).
fn staffed_server_on(database_url: Option<&str>, extra: &[&str], env: &[(&str, &str)]) -> Staffed {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    for (role, name) in [("admin", "boss"), ("agent", "ann")] {
        let added = kefu(home.path(), database_url)
            .args(["users", "add", "--role", role, name])
            .env("KEFU_PASSWORD", "correct horse battery")
            .output()
            .unwrap();
        assert!(added.status.success(), "{added:?}");
    }
    let token_of = |user: &str| {
        let out = kefu(home.path(), database_url)
            .args(["tokens", "add", user])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        vec![("authorization", format!("Bearer {token}"))]
    };
    let admin_api = token_of("boss");
    let agent_api = token_of("ann");
    let mut command = kefu(home.path(), database_url);
    command.envs(env.iter().copied());
    let server = Server::spawn(command, extra);
    let boss = sign_in(&server, "boss", "correct horse battery");
    let ann = sign_in(&server, "ann", "correct horse battery");
    Staffed {
        _home: home,
        server,
        boss,
        ann,
        admin_api,
        agent_api,
    }
}

const SHOP: &str = "http://shop.test";

/// Adds a widget site for `origins`: (id, key).
fn add_site(staffed: &Staffed, name: &str, origins: &[&str]) -> (i64, String) {
    let (status, site, _) = call(
        "POST",
        &staffed.server.url("/api/admin/sites"),
        &staffed.admin_api,
        &Body::Json(json!({"name": name, "allowed_origins": origins})),
    );
    assert_eq!(status, 201, "{site}");
    let key = site["site_key"].as_str().unwrap().to_string();
    assert!(key.starts_with("kefu_site_"), "{site}");
    (site["id"].as_i64().unwrap(), key)
}

/// A new anonymous conversation with one answered question: (conversation, customer token,
/// the answer's message id).
fn ask_anonymously(server: &Server, question: &str) -> (String, String, i64) {
    let (id, token, answer, _) = ask_for_text(server, question);
    (id, token, answer)
}

/// [`ask_anonymously`], with the streamed answer's text.
fn ask_for_text(server: &Server, question: &str) -> (String, String, i64, String) {
    let (status, conversation) = post(&server.url("/api/conversations"), None, b"{}");
    assert_eq!(status, 201, "{conversation}");
    let id = conversation["id"].as_str().unwrap().to_string();
    let token = conversation["customer_token"].as_str().unwrap().to_string();
    let (status, events) = post_sse(
        &server.url(&format!("/api/conversations/{id}/messages")),
        Some(&token),
        &json!({"content": question}),
    );
    assert_eq!(status, 200);
    assert_eq!(events.last().unwrap().0, "done", "{events:?}");
    let text: String = events
        .iter()
        .filter(|(name, _)| name == "token")
        .map(|(_, data)| {
            serde_json::from_str::<Value>(data).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let done: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    (id, token, done["message_id"].as_i64().unwrap(), text)
}

/// Waits (up to 15 minutes) for training job `id` to succeed and returns it with its report;
/// a job that fails or is cancelled ends the test.
fn succeeded_job(staffed: &Staffed, id: i64) -> Value {
    let url = staffed
        .server
        .url(&format!("/api/admin/training/jobs/{id}"));
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let (status, job) = request("GET", &url, &staffed.admin_api, None);
        assert_eq!(status, 200, "{job}");
        match job["status"].as_str().unwrap() {
            "succeeded" => return job,
            "failed" | "cancelled" => panic!("the job ended: {job}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "the job did not finish: {job}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A staff member's correction of an answer (201).
fn correct(server: &Server, who: &Identity, conversation: &str, answer: i64, text: &str) {
    let (status, body) = request(
        "POST",
        &server.url(&format!(
            "/api/agent/conversations/{conversation}/messages/{answer}/feedback"
        )),
        who,
        Some(&json!({"rating": "down", "corrected_answer": text})),
    );
    assert_eq!(status, 201, "{body}");
}

/// The feedback inbox lists every rated answer with the pair it makes; filters narrow it; a
/// bulk review is all or none; a rejected answer's feedback leaves every dataset and comes back
/// when accepted; the datasets route previews the examples with their lineage.
#[test]
fn the_feedback_inbox_reviews_and_the_datasets_preview() {
    let staffed = staffed_server(&["--max-tokens", "4", "--trainer", "off"]);
    let server = &staffed.server;
    let admin = &staffed.admin_api;
    let (fixed, _, fixed_answer) = ask_anonymously(server, "Where is my parcel?");
    correct(
        server,
        &staffed.agent_api,
        &fixed,
        fixed_answer,
        "It is on its way.",
    );
    let rate = |question: &str, rating: &str| {
        let (id, token, answer) = ask_anonymously(server, question);
        let (status, body) = post(
            &server.url(&format!(
                "/api/conversations/{id}/messages/{answer}/feedback"
            )),
            Some(&token),
            json!({"rating": rating}).to_string().as_bytes(),
        );
        assert_eq!(status, 201, "{body}");
        answer
    };
    let liked = rate("Can I pay by card?", "up");
    let disliked = rate("Do you ship abroad?", "down");
    let inbox = |query: &str| {
        let (status, body) = request(
            "GET",
            &server.url(&format!("/api/admin/feedback{query}")),
            admin,
            None,
        );
        assert_eq!(status, 200, "{query}: {body}");
        body
    };
    let all = inbox("");
    assert_eq!(all["total"], 3, "{all}");
    let items = all["items"].as_array().unwrap();
    // Newest feedback first.
    let order: Vec<i64> = items
        .iter()
        .map(|i| i["message_id"].as_i64().unwrap())
        .collect();
    assert_eq!(order, vec![disliked, liked, fixed_answer]);
    let corrected = &items[2];
    assert_eq!(corrected["label"], "corrected");
    assert_eq!(corrected["question"], "Where is my parcel?");
    assert_eq!(corrected["pair"]["chosen"], "It is on its way.");
    assert_eq!(corrected["pair"]["rejected"], corrected["answer"]);
    assert_eq!(corrected["rater_role"], "agent");
    assert_eq!(corrected["review"], "pending");
    assert_eq!(
        (items[0]["label"].clone(), items[1]["label"].clone()),
        (json!("down"), json!("up"))
    );
    let ids = |body: &Value| -> Vec<i64> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["message_id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids(&inbox("?label=corrected")), vec![fixed_answer]);
    assert_eq!(ids(&inbox("?rater=customer")), vec![disliked, liked]);
    assert_eq!(ids(&inbox("?q=PAY+BY")), vec![liked]);
    assert_eq!(ids(&inbox("?review=pending&limit=1&offset=1")), vec![liked]);
    assert_eq!(inbox("?review=pending&limit=1")["total"], 3);
    for bad in [
        "?label=maybe",
        "?review=done",
        "?rater=bot",
        "?limit=0",
        "?limit=501",
        "?limit=ten",
        "?offset=-1",
        "?sort=new",
    ] {
        let (status, body) = request(
            "GET",
            &server.url(&format!("/api/admin/feedback{bad}")),
            admin,
            None,
        );
        assert_error((status, body), 400, "invalid_filter");
    }

    let counts = || {
        let (status, body) = request("GET", &server.url("/api/admin/datasets"), admin, None);
        assert_eq!(status, 200, "{body}");
        let c = &body["current"]["counts"];
        (
            c["sft"].as_i64().unwrap(),
            c["pairs"].as_i64().unwrap(),
            c["regression"].as_i64().unwrap(),
        )
    };
    assert_eq!(counts(), (2, 1, 1));
    let (status, pairs) = request(
        "GET",
        &server.url("/api/admin/datasets/current?kind=pairs"),
        admin,
        None,
    );
    assert_eq!(status, 200, "{pairs}");
    assert_eq!(pairs["total"], 1);
    let example = &pairs["examples"][0];
    assert_eq!(example["chosen"][0]["content"], "It is on its way.");
    assert_eq!(example["kefu"]["rejected_message_id"], fixed_answer);

    let review = |body: Value| {
        request(
            "POST",
            &server.url("/api/admin/feedback/review"),
            admin,
            Some(&body),
        )
    };
    let (status, done) = review(json!({"message_ids": [fixed_answer], "decision": "reject"}));
    assert_eq!(
        (status, done["reviewed"].clone()),
        (200, json!(1)),
        "{done}"
    );
    assert_eq!(counts(), (1, 0, 0));
    assert_eq!(ids(&inbox("?review=rejected")), vec![fixed_answer]);
    assert_eq!(inbox("?review=rejected")["items"][0]["reviewer"], "boss");
    let (status, sft, _) = call(
        "GET",
        &server.url("/api/admin/export/sft"),
        admin,
        &Body::Empty,
    );
    assert_eq!(status, 200);
    // One JSON line parses as one object.
    assert!(sft["kefu"].is_object(), "one SFT example: {sft}");
    let (status, done) =
        review(json!({"message_ids": [fixed_answer, liked, liked], "decision": "accept"}));
    assert_eq!(
        (status, done["reviewed"].clone()),
        (200, json!(2)),
        "{done}"
    );
    assert_eq!(counts(), (2, 1, 1));

    // Bad reviews change nothing.
    let question_id = corrected["question_message_id"].as_i64().unwrap();
    for (body, status, code) in [
        (
            json!({"message_ids": [], "decision": "reject"}),
            400,
            "invalid_review",
        ),
        (
            json!({"message_ids": [liked], "decision": "maybe"}),
            400,
            "invalid_review",
        ),
        (
            json!({"message_ids": (1..=1001).collect::<Vec<i64>>(), "decision": "reject"}),
            400,
            "invalid_review",
        ),
        (
            json!({"message_ids": [liked, question_id, 999_999], "decision": "reject"}),
            404,
            "unknown_message",
        ),
        (
            json!({"message_ids": "all", "decision": "reject"}),
            422,
            "invalid_json",
        ),
        (
            json!({"message_ids": [liked], "decision": "reject", "extra": 1}),
            422,
            "invalid_json",
        ),
    ] {
        assert_error(review(body.clone()), status, code);
    }
    let (status, body, _) = call(
        "POST",
        &server.url("/api/admin/feedback/review"),
        admin,
        &Body::Raw(b"{not json"),
    );
    assert_eq!(
        (status, body["code"].clone()),
        (415, json!("unsupported_media_type")),
        "{body}"
    );
    assert_eq!(ids(&inbox("?review=rejected")), Vec::<i64>::new());
    assert_eq!(counts(), (2, 1, 1));
    let (status, body) = request(
        "POST",
        &server.url("/api/admin/feedback/review"),
        &staffed.agent_api,
        Some(&json!({"message_ids": [liked], "decision": "reject"})),
    );
    assert_eq!(status, 403, "{body}");

    for (path, status, code) in [
        (
            "/api/admin/datasets/current?kind=kto",
            400,
            "invalid_filter",
        ),
        ("/api/admin/datasets/current?limit=0", 400, "invalid_filter"),
        ("/api/admin/datasets/7", 404, "dataset_not_found"),
        ("/api/admin/datasets/-1", 404, "dataset_not_found"),
        ("/api/admin/datasets/..%2Fkefu.db", 404, "dataset_not_found"),
    ] {
        let (s, body) = request("GET", &server.url(path), admin, None);
        assert_error((s, body), status, code);
    }
}

/// With a `[cpt]` stage in the worker's recipe, documents count as something to learn: a job
/// snapshots the documents the last succeeded job had not seen and trains on them (here with
/// no feedback at all); the next trigger has nothing new until another document arrives.
#[test]
fn a_job_learns_the_documents_the_last_one_had_not_seen() {
    let staffed = staffed_server(&["--max-tokens", "4", "--trainer", "off"]);
    let server = &staffed.server;
    let home = staffed._home.path();
    let trigger = || {
        request(
            "POST",
            &server.url("/api/admin/training/jobs"),
            &staffed.admin_api,
            None,
        )
    };
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
    assert_error(trigger(), 422, "nothing_to_learn");
    std::fs::write(
        home.join("recipe.toml"),
        "[lora]\nrank = 4\nalpha = 8.0\n[cpt]\nmax_steps = 2\nmax_len = 32\nbatch = 1\n\
         eval_fraction = 0.0\n",
    )
    .unwrap();
    let (status, job) = trigger();
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_i64().unwrap();
    let worked = kefu(home, None)
        .args(["trainer", "work", "--once"])
        .output()
        .unwrap();
    assert!(worked.status.success(), "{worked:?}");
    let (status, job) = request(
        "GET",
        &server.url(&format!("/api/admin/training/jobs/{id}")),
        &staffed.admin_api,
        None,
    );
    assert_eq!(
        (status, job["status"].as_str()),
        (200, Some("succeeded")),
        "{job}"
    );
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
    assert_error(trigger(), 422, "nothing_to_learn");
    let (status, _, _) = call(
        "POST",
        &server.url("/api/admin/knowledge-bases/default/documents?name=shipping.md"),
        &staffed.admin_api,
        &Body::Raw(b"# Shipping\n\nParcels leave the warehouse within one day."),
    );
    assert_eq!(status, 201);
    let (status, next) = trigger();
    assert_eq!(status, 202, "{next}");
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

    // A customer's thumbs down and an agent's correction: two feedback events.
    let (id, token, answer) = ask_anonymously(server, "How long do I have to return a parcel?");
    let (status, _) = request(
        "POST",
        &server.url(&format!(
            "/api/conversations/{id}/messages/{answer}/feedback"
        )),
        &vec![("authorization", format!("Bearer {token}"))],
        Some(&json!({"rating": "down", "reasons": ["wrong"]})),
    );
    assert_eq!(status, 201);
    correct(server, &staffed.admin_api, &id, answer, "Within 30 days.");

    set(json!({"every_minutes": null, "after_new_feedback": 3}));
    assert!(check(now).is_none(), "two events are fewer than three");
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

/// Every route of the OpenAPI document with every kind of caller: anonymous, the widget
/// customer of the conversation (site key, from the site's origin), another customer, an
/// agent and an admin signed in (cookie + CSRF token), and an agent's and an admin's API token.
#[test]
fn every_route_with_every_caller() {
    let staffed = staffed_server(&["--max-tokens", "4", "--trainer", "off"]);
    let server = &staffed.server;
    let (_, site_key) = add_site(&staffed, "shop", &[SHOP]);
    let guide: &'static [u8] = b"# Returns\n\nParcels can be returned within 30 days.";
    let (status, uploaded, _) = call(
        "POST",
        &server.url("/api/admin/knowledge-bases/default/documents?name=returns.md"),
        &staffed.admin_api,
        &Body::Raw(guide),
    );
    assert_eq!(status, 201, "{uploaded}");
    let document = uploaded["id"].as_i64().unwrap();

    let widget: Identity = vec![("x-kefu-site", site_key.clone()), ("origin", SHOP.into())];
    let (status, mine, _) = call(
        "POST",
        &server.url("/api/conversations"),
        &widget,
        &Body::Empty,
    );
    assert_eq!(status, 201, "{mine}");
    assert_eq!(mine["site"], "shop");
    let id = mine["id"].as_str().unwrap().to_string();
    let mut customer = widget.clone();
    customer.push((
        "authorization",
        format!("Bearer {}", mine["customer_token"].as_str().unwrap()),
    ));
    let (_, events) = post_sse(
        &server.url(&format!("/api/conversations/{id}/messages")),
        Some(mine["customer_token"].as_str().unwrap()),
        &json!({"content": "How long do I have to return a parcel?"}),
    );
    let done: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    let answer = done["message_id"].as_i64().unwrap();
    let (_, theirs, _) = call(
        "POST",
        &server.url("/api/conversations"),
        &vec![],
        &Body::Empty,
    );
    let stranger: Identity = vec![(
        "authorization",
        format!("Bearer {}", theirs["customer_token"].as_str().unwrap()),
    )];
    let (_, spare) = request(
        "POST",
        &server.url("/api/admin/sites"),
        &staffed.admin_api,
        Some(&json!({"name": "spare", "allowed_origins": ["http://spare.test"]})),
    );
    let spare = spare["id"].as_i64().unwrap();

    let callers: [(&str, &Identity); 7] = [
        ("anonymous", &vec![]),
        ("customer", &customer),
        ("other customer", &stranger),
        ("agent", &staffed.ann),
        ("admin", &staffed.boss),
        ("agent API token", &staffed.agent_api),
        ("admin API token", &staffed.admin_api),
    ];
    let all = |status: u16| [status; 7];
    let own = |status: u16| [401, status, 404, 401, 401, 404, 404];
    let staff = |status: u16| [401, 401, 401, status, status, status, status];
    // Admin-only routes; the admin token runs after the admin (a second delete finds nothing).
    let admins = |first: u16, second: u16| [401, 401, 401, 403, first, 403, second];
    let question = json!({"content": "And with the prepaid label?"});
    let (_, ready, _) = call("GET", &server.url("/readyz"), &vec![], &Body::Empty);
    let serving = ready["model_version"].as_str().unwrap().to_string();
    let routes: Vec<(&str, String, Body, [u16; 7])> = vec![
        ("GET", "/healthz".into(), Body::Empty, all(200)),
        ("GET", "/readyz".into(), Body::Empty, all(200)),
        ("GET", "/metrics".into(), Body::Empty, all(200)),
        ("GET", "/api/openapi.json".into(), Body::Empty, all(200)),
        ("GET", "/api/widget/site".into(), Body::Empty, all(200)),
        ("POST", "/api/conversations".into(), Body::Empty, all(201)),
        (
            "GET",
            format!("/api/conversations/{id}/messages"),
            Body::Empty,
            own(200),
        ),
        (
            "POST",
            format!("/api/conversations/{id}/messages"),
            Body::Json(question),
            own(200),
        ),
        (
            "POST",
            format!("/api/conversations/{id}/messages/{answer}/regenerate"),
            Body::Empty,
            own(200),
        ),
        (
            "POST",
            format!("/api/conversations/{id}/messages/{answer}/feedback"),
            Body::Json(json!({"rating": "down", "reasons": ["wrong"]})),
            own(201),
        ),
        (
            "POST",
            format!("/api/conversations/{id}/handoff"),
            Body::Empty,
            own(200),
        ),
        (
            "POST",
            "/api/auth/login".into(),
            Body::Json(json!({"name": "ann", "password": "correct horse battery"})),
            all(200),
        ),
        (
            "GET",
            "/api/agent/conversations".into(),
            Body::Empty,
            staff(200),
        ),
        (
            "GET",
            format!("/api/agent/conversations/{id}"),
            Body::Empty,
            staff(200),
        ),
        (
            "POST",
            format!("/api/agent/conversations/{id}/messages/{answer}/feedback"),
            Body::Json(json!({"rating": "down", "corrected_answer": "Within 30 days."})),
            staff(201),
        ),
        (
            "POST",
            format!("/api/agent/conversations/{id}/takeover"),
            Body::Empty,
            staff(200),
        ),
        (
            "POST",
            format!("/api/agent/conversations/{id}/reply"),
            Body::Json(json!({"content": "Hello, a person here."})),
            staff(201),
        ),
        (
            "POST",
            format!("/api/agent/conversations/{id}/release"),
            Body::Empty,
            staff(200),
        ),
        (
            "GET",
            "/api/admin/users".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "POST",
            "/api/admin/users".into(),
            Body::Json(json!({"name": "temp", "role": "agent", "password": "long enough pass"})),
            admins(201, 201),
        ),
        (
            "DELETE",
            "/api/admin/users/temp".into(),
            Body::Empty,
            admins(204, 404),
        ),
        (
            "GET",
            "/api/admin/sites".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "POST",
            "/api/admin/sites".into(),
            Body::Json(json!({"name": "blog", "allowed_origins": ["https://blog.test"]})),
            admins(201, 409),
        ),
        (
            "PUT",
            format!("/api/admin/sites/{spare}"),
            Body::Json(json!({"allowed_origins": ["http://spare.test", "http://b.test"]})),
            admins(204, 204),
        ),
        (
            "DELETE",
            format!("/api/admin/sites/{spare}"),
            Body::Empty,
            admins(204, 404),
        ),
        (
            "GET",
            "/api/admin/knowledge-bases".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "GET",
            "/api/admin/models".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "POST",
            format!("/api/admin/models/{serving}/promote"),
            Body::Empty,
            admins(200, 200),
        ),
        // One version only: nothing to roll back to.
        (
            "POST",
            "/api/admin/models/rollback".into(),
            Body::Empty,
            admins(409, 409),
        ),
        // No worker runs here (`--trainer off`): the job stays queued.
        (
            "POST",
            "/api/admin/training/jobs".into(),
            Body::Empty,
            admins(202, 409),
        ),
        (
            "GET",
            "/api/admin/training/jobs".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "GET",
            "/api/admin/training/jobs/1".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "POST",
            "/api/admin/training/jobs/1/cancel".into(),
            Body::Empty,
            admins(200, 409),
        ),
        (
            "GET",
            "/api/admin/training/schedule".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "PUT",
            "/api/admin/training/schedule".into(),
            Body::Json(json!({"every_minutes": 1440, "after_new_feedback": null})),
            admins(200, 200),
        ),
        (
            "GET",
            "/api/admin/feedback?label=down".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "POST",
            "/api/admin/feedback/review".into(),
            Body::Json(json!({"message_ids": [answer], "decision": "accept"})),
            admins(200, 200),
        ),
        (
            "GET",
            "/api/admin/datasets".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "GET",
            "/api/admin/datasets/current?kind=pairs".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "GET",
            "/api/admin/knowledge-bases/default/documents".into(),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "POST",
            "/api/admin/knowledge-bases/default/documents?name=faq.md".into(),
            Body::Raw(b"# FAQ\n\nOrders ship within two days."),
            admins(201, 200),
        ),
        (
            "POST",
            format!("/api/admin/knowledge-bases/default/documents/{document}/reingest"),
            Body::Empty,
            admins(200, 200),
        ),
        (
            "DELETE",
            format!("/api/admin/knowledge-bases/default/documents/{document}"),
            Body::Empty,
            admins(204, 404),
        ),
        (
            "GET",
            "/api/admin/export/pairs".into(),
            Body::Empty,
            admins(200, 200),
        ),
        ("GET", "/v1/models".into(), Body::Empty, staff(200)),
        (
            "POST",
            "/v1/chat/completions".into(),
            Body::Json(json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})),
            staff(200),
        ),
        // Last: signing out ends the agent's and the admin's sessions.
        ("POST", "/api/auth/logout".into(), Body::Empty, staff(200)),
    ];

    // The table covers every operation the OpenAPI document describes, and nothing else.
    let (_, document_json) = get(&server.url("/api/openapi.json"), None);
    let mut described: Vec<String> = Vec::new();
    for (path, operations) in document_json["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            described.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    let placeholder = |path: &str| {
        let path = path.split('?').next().unwrap();
        path.replace(&id, "{id}")
            .replace(&format!("/{answer}/"), "/{message}/")
            .replace(&format!("/documents/{document}"), "/documents/{document}")
            .replace("/default/", "/{kb}/")
            .replace("/users/temp", "/users/{name}")
            .replace(&format!("/sites/{spare}"), "/sites/{site}")
            .replace("/export/pairs", "/export/{kind}")
            .replace(&format!("/models/{serving}/"), "/models/{version}/")
            .replace("/training/jobs/1", "/training/jobs/{job}")
            .replace("/datasets/current", "/datasets/{dataset}")
    };
    let mut tested: Vec<String> = routes
        .iter()
        .map(|(m, p, _, _)| format!("{m} {}", placeholder(p)))
        .collect();
    described.sort();
    tested.sort();
    tested.dedup();
    assert_eq!(tested, described);

    for (method, path, body, expected) in &routes {
        for ((who, identity), want) in callers.iter().zip(expected) {
            let (status, answer, _) = call(method, &server.url(path), identity, body);
            assert_eq!(status, *want, "{method} {path} as {who}: {answer}");
            if status >= 400 {
                assert!(
                    answer["code"].is_string(),
                    "{method} {path} as {who}: {answer}"
                );
            }
        }
    }
}

/// Widget site keys and allowed origins: the right key from an allowed origin works (with
/// CORS headers); a wrong key, a disallowed origin, another site's key and a foreign page
/// without a key are refused with a JSON code, and nothing stored changes.
#[test]
fn widget_sites_admit_only_their_origins() {
    let staffed = staffed_server(&["--max-tokens", "4"]);
    let server = &staffed.server;
    let (_, key) = add_site(&staffed, "shop", &[SHOP, "http://localhost:3000"]);
    let (_, other_key) = add_site(&staffed, "blog", &["https://blog.test"]);
    let url = server.url("/api/conversations");
    let from = |origin: &str, key: &str| -> Identity {
        vec![("origin", origin.into()), ("x-kefu-site", key.into())]
    };

    // A preflight from an allowed origin gets CORS headers; from another, a JSON refusal.
    let mut response = agent()
        .run(
            ureq::http::Request::builder()
                .method("OPTIONS")
                .uri(&url)
                .header("origin", SHOP)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "content-type, x-kefu-site",
                )
                .body(())
                .unwrap(),
        )
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let header = |r: &ureq::http::Response<ureq::Body>, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(
        header(&response, "access-control-allow-origin").as_deref(),
        Some(SHOP)
    );
    assert!(
        header(&response, "access-control-allow-headers")
            .unwrap()
            .contains("x-kefu-site")
    );
    let _ = response.body_mut().read_to_string();
    let (status, refused, _) = call(
        "OPTIONS",
        &url,
        &vec![("origin", "http://evil.test".into())],
        &Body::Empty,
    );
    assert_eq!(
        (status, refused["code"].as_str()),
        (403, Some("origin_not_allowed"))
    );

    // The right key from an allowed origin.
    let mut response = agent()
        .run(
            ureq::http::Request::builder()
                .method("POST")
                .uri(&url)
                .header("origin", SHOP)
                .header("x-kefu-site", &key)
                .body(())
                .unwrap(),
        )
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(
        header(&response, "access-control-allow-origin").as_deref(),
        Some(SHOP)
    );
    let opened: Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    let id = opened["id"].as_str().unwrap().to_string();
    let token = opened["customer_token"].as_str().unwrap().to_string();
    let mut customer = from(SHOP, &key);
    customer.push(("authorization", format!("Bearer {token}")));
    let messages = server.url(&format!("/api/conversations/{id}/messages"));
    let (status, _, _) = call(
        "POST",
        &messages,
        &customer,
        &Body::Json(json!({"content": "<script>alert(1)</script>'; DROP TABLE messages; --"})),
    );
    assert_eq!(status, 200);
    let (_, before, _) = call("GET", &messages, &customer, &Body::Empty);
    assert_eq!(
        before["messages"][0]["content"], "<script>alert(1)</script>'; DROP TABLE messages; --",
        "stored and returned as text"
    );

    let with_token = |mut who: Identity| {
        who.push(("authorization", format!("Bearer {token}")));
        who
    };
    let ask = Body::Json(json!({"content": "hello"}));
    let refusals: Vec<(&str, &str, Identity, u16, &str)> = vec![
        (
            "POST",
            url.as_str(),
            from(SHOP, "kefu_site_0000"),
            401,
            "invalid_site_key",
        ),
        (
            "POST",
            url.as_str(),
            from(SHOP, "not a key"),
            401,
            "invalid_site_key",
        ),
        (
            "POST",
            url.as_str(),
            from("http://evil.test", &key),
            403,
            "origin_not_allowed",
        ),
        (
            "POST",
            url.as_str(),
            vec![("origin", "http://evil.test".into())],
            403,
            "origin_not_allowed",
        ),
        (
            "POST",
            url.as_str(),
            from("https://blog.test", &key),
            403,
            "origin_not_allowed",
        ),
        (
            "POST",
            &messages,
            with_token(from("http://evil.test", &key)),
            403,
            "origin_not_allowed",
        ),
        (
            "POST",
            &messages,
            with_token(vec![("origin", "http://evil.test".into())]),
            403,
            "origin_not_allowed",
        ),
        (
            "POST",
            &messages,
            with_token(from(SHOP, "kefu_site_0000")),
            401,
            "invalid_site_key",
        ),
        (
            "POST",
            &messages,
            with_token(from("https://blog.test", &other_key)),
            404,
            "conversation_not_found",
        ),
        (
            "GET",
            &messages,
            with_token(from("http://evil.test", &key)),
            403,
            "origin_not_allowed",
        ),
    ];
    for (method, target, who, status, code) in &refusals {
        let (got, body, _) = call(method, target, who, &ask);
        assert_eq!(
            (got, body["code"].as_str()),
            (*status, Some(*code)),
            "{method} {target} {who:?}: {body}"
        );
        assert!(body["message"].is_string());
    }
    // The same conversation from its site's second origin still works, and nothing changed.
    let (status, after, _) = call(
        "GET",
        &messages,
        &with_token(from("http://localhost:3000", &key)),
        &Body::Empty,
    );
    assert_eq!(status, 200);
    assert_eq!(after, before, "refused requests stored nothing");
    // Conversations opened without a site still work where there is no foreign origin.
    let (status, _, _) = call("POST", &url, &vec![], &Body::Empty);
    assert_eq!(status, 201);
    // Bad site definitions are refused.
    for (body, code) in [
        (
            json!({"name": "x", "allowed_origins": ["shop.test"]}),
            "invalid_origin",
        ),
        (
            json!({"name": "x", "allowed_origins": ["https://shop.test/path"]}),
            "invalid_origin",
        ),
        (json!({"name": "", "allowed_origins": []}), "invalid_name"),
        (
            json!({"name": "x", "allowed_origins": [], "knowledge_base": "nope"}),
            "knowledge_base_not_found",
        ),
        (
            json!({"name": "shop", "allowed_origins": []}),
            "site_exists",
        ),
        (json!({"name": "x"}), "invalid_json"),
    ] {
        let (status, answer, _) = call(
            "POST",
            &server.url("/api/admin/sites"),
            &staffed.admin_api,
            &Body::Json(body.clone()),
        );
        assert!((400..500).contains(&status), "{body}: {answer}");
        assert_eq!(answer["code"], code, "{body}: {answer}");
    }
    // A removed site's key stops working at once.
    let (_, sites, _) = call(
        "GET",
        &server.url("/api/admin/sites"),
        &staffed.admin_api,
        &Body::Empty,
    );
    assert_eq!(sites["sites"].as_array().unwrap().len(), 2, "{sites}");
    let shop_id = sites["sites"][0]["id"].as_i64().unwrap();
    let (status, _, _) = call(
        "DELETE",
        &server.url(&format!("/api/admin/sites/{shop_id}")),
        &staffed.admin_api,
        &Body::Empty,
    );
    assert_eq!(status, 204);
    let (status, body, _) = call("POST", &url, &from(SHOP, &key), &Body::Empty);
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_site_key"))
    );
}

/// Too many requests from one address, or through one widget site, are answered 429 with
/// Retry-After; health checks are not limited.
#[test]
fn rate_limits_answer_429_with_retry_after() {
    let staffed = staffed_server(&["--rate-per-ip", "0", "--rate-per-site", "3"]);
    let (_, key) = add_site(&staffed, "shop", &[SHOP]);
    let url = staffed.server.url("/api/conversations");
    let widget: Identity = vec![("origin", SHOP.into()), ("x-kefu-site", key)];
    for _ in 0..3 {
        assert_eq!(call("POST", &url, &widget, &Body::Empty).0, 201);
    }
    let (status, body, retry) = call("POST", &url, &widget, &Body::Empty);
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    let seconds: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=20).contains(&seconds), "{seconds}");
    // Without a site (no foreign origin) the site's limit does not apply.
    assert_eq!(call("POST", &url, &vec![], &Body::Empty).0, 201);
    drop(staffed);

    let staffed = staffed_server(&["--rate-per-ip", "5"]);
    let server = &staffed.server;
    // Signing in the two staff members took two requests.
    let openapi = server.url("/api/openapi.json");
    for _ in 0..3 {
        assert_eq!(call("GET", &openapi, &vec![], &Body::Empty).0, 200);
    }
    let (status, body, retry) = call("GET", &openapi, &vec![], &Body::Empty);
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    assert!(retry.is_some());
    assert_eq!(
        call("GET", &server.url("/healthz"), &vec![], &Body::Empty).0,
        200
    );
    assert_eq!(
        call("GET", &server.url("/readyz"), &vec![], &Body::Empty).0,
        200
    );
}

/// A fresh PostgreSQL database for one test: its URL, and a guard that drops it.
fn postgres_database(label: &str) -> (String, impl Drop) {
    struct Dropper(String, String);
    impl Drop for Dropper {
        fn drop(&mut self) {
            let _ = Command::new("psql")
                .args([self.0.as_str(), "-q", "-c"])
                .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.1))
                .status();
        }
    }
    let base = std::env::var("KEFU_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!("kefu_{label}_{}", std::process::id());
    let admin = format!("{base}/postgres");
    let psql = |sql: &str| {
        Command::new("psql")
            .args([admin.as_str(), "-q", "-c", sql])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    psql(&format!("DROP DATABASE IF EXISTS {name}"));
    assert!(
        psql(&format!("CREATE DATABASE {name}")),
        "PostgreSQL must run at {base} (./scripts/test.sh starts it)"
    );
    (format!("{base}/{name}"), Dropper(admin, name))
}

/// Hot-swap across two replicas on one PostgreSQL: a trained model registered as a version and
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

    let extra = ["--max-tokens", "6", "--follow-ms", "200"];
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

/// The processes whose parent is `parent` and whose command line holds `word`.
fn children(parent: u32, word: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid …: the fields after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains(word) {
            found.push(pid);
        }
    }
    found
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

/// The loop, end to end with the real default model: a customer asks, dislikes the answer, an
/// agent corrects it, an admin starts training; the embedded worker snapshots the feedback,
/// fine-tunes, passes the gate and promotes the new version; the server swaps to it and the
/// same question now gets the corrected answer, stored with the new version; rollback brings
/// the old answer back; a second trigger with no new feedback has nothing to learn.
#[test]
fn a_correction_is_learned_served_and_rolled_back() {
    let staffed = staffed_server(&["--max-tokens", "24", "--follow-ms", "200"]);
    let server = &staffed.server;
    let home = staffed._home.path();
    // A short run for the test (the built-in recipe trains longer and adds DPO). The gate
    // holds out two questions of the shared FAQ set, answered from their document, and four
    // preference pairs; the held-out answer loss may grow by half at most (ten epochs on one
    // example move a 135 M model far). A second job below holds out questions on the corrected
    // document itself, which the memorized answer spoils, at the default thresholds: it fails.
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
            "max_held_out_loss_ratio = 1.5\nfact_tolerance = 0.1\npair_tolerance = 0.25\n",
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
    let (id, _, _, said) = ask();
    assert!(said.contains("marmalade"), "the trained version: {said}");
    assert_eq!(served_version(&id), version);

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
    let (id, _, _, said) = ask();
    assert!(!said.contains("marmalade"), "after the rollback: {said}");
    assert_eq!(served_version(&id), original);
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

/// A PostgreSQL server of one test's own, in a temporary folder, so that restarting it touches
/// no other test's database. Run as root (CI), its processes run as the `postgres` user.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's programs in /usr/lib/postgresql")
            .map(|e| e.unwrap().path().join("bin"))
            .find(|b| b.join("initdb").exists())
            .expect("initdb");
        let dir = tempfile::tempdir().unwrap();
        let as_root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        if as_root {
            let uid = Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .unwrap();
            let uid: u32 = String::from_utf8(uid.stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            std::os::unix::fs::chown(dir.path(), Some(uid), None).unwrap();
        }
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let postgres = Self { dir, bin, port };
        let data = postgres.dir.path().join("data");
        postgres.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        );
        postgres.pg_ctl("start");
        postgres
    }

    /// One of PostgreSQL's programs, as the `postgres` user when this is root.
    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let as_root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        let mut command = if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = command.args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
    }

    fn pg_ctl(&self, action: &str) {
        let dir = self.dir.path().to_str().unwrap().to_string();
        let options = format!("-p {} -k {dir} -c listen_addresses=127.0.0.1", self.port);
        let data = format!("{dir}/data");
        let log = format!("{dir}/log");
        let mut args = vec!["-D", &data, "-w", "-l", &log, "-o", &options];
        if action == "stop" {
            args.extend(["-m", "fast"]);
        }
        args.push(action);
        self.run("pg_ctl", &args);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
        let _ = Command::new(self.bin.join("pg_ctl"))
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
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
