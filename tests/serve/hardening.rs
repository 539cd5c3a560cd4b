//! The security and fault review's findings, each reproduced against the real server: sign-in
//! bursts, slow clients, a read-only readiness check, knowledge bases and file paths hidden
//! from customers, generation limits for staff tokens, sessions and tokens that end, and the
//! small ones (redirects, security headers, regeneration during a takeover).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use kefu_tests::{http_agent as agent, test_home};
use serde_json::{Value, json};

use crate::support::*;

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// 600 bad sign-ins at once (as many as the per-IP bucket lets through) cost little memory:
/// password checks run two at a time, failures lock the address and the account, and a
/// customer's question is answered meanwhile.
#[test]
fn a_burst_of_bad_sign_ins_stays_small_and_customers_still_get_answers() {
    let staffed = staffed_server(&["--trainer", "off", "--rate-per-ip", "5000"]);
    let server = &staffed.server;
    let pid = server.child.id();
    // The model is loaded and warm before the baseline.
    ask_for_done(server, "How do I return a parcel?");
    let before = memory_kib(pid, "VmRSS");
    // Reset the peak so that it measures the burst only.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let url = server.url("/api/auth/login");
    let start = Arc::new(Barrier::new(601));
    let attempts: Vec<_> = (0..600)
        .map(|i| {
            let (url, start) = (url.clone(), start.clone());
            std::thread::spawn(move || {
                let name = if i % 2 == 0 {
                    "boss".to_string()
                } else {
                    format!("nobody{i}")
                };
                start.wait();
                call(
                    "POST",
                    &url,
                    &vec![],
                    &Body::Json(json!({"name": name, "password": "not the password"})),
                )
            })
        })
        .collect();
    start.wait();
    let asked = Instant::now();
    let (_, _, done, _) = ask_for_done(server, "How do I return a parcel?");
    let answered_in = asked.elapsed();
    assert!(done["message_id"].is_i64(), "{done}");
    let mut counts = std::collections::BTreeMap::new();
    for attempt in attempts {
        let (status, body, retry) = attempt.join().unwrap();
        assert!(matches!(status, 401 | 429 | 503), "{status} {body}");
        if status != 401 {
            assert!(retry.is_some(), "{status} without Retry-After: {body}");
        }
        *counts.entry(status).or_insert(0) += 1;
    }
    let peak = memory_kib(pid, "VmHWM");
    eprintln!(
        "600 bad sign-ins: {counts:?}; resident {before} KiB before, peak {peak} KiB during; \
         a question answered in {answered_in:?}"
    );
    assert!(counts.get(&429).copied().unwrap_or(0) > 400, "{counts:?}");
    // Unbounded, 600 Argon2 checks of ~19 MiB each would need gigabytes.
    assert!(
        peak < before + 400 * 1024,
        "peak {peak} KiB against {before} KiB before the burst"
    );
}

/// Five wrong passwords for an account are free; the sixth locks it for a second, even for
/// the right password, and says for how long.
#[test]
fn failed_sign_ins_lock_the_account() {
    let staffed = staffed_server(&["--trainer", "off"]);
    let url = staffed.server.url("/api/auth/login");
    let attempt = |password: &str| {
        call(
            "POST",
            &url,
            &vec![],
            &Body::Json(json!({"name": "ann", "password": password})),
        )
    };
    for _ in 0..6 {
        assert_eq!(attempt("not the password").0, 401);
    }
    let (status, body, retry) = attempt("correct horse battery");
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too_many_sign_ins")),
        "{body}"
    );
    assert_eq!(retry.as_deref(), Some("1"));
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(attempt("correct horse battery").0, 200);
}

/// Reads until the server closes the connection or `limit` passes; returns what arrived and
/// when the connection closed (`None`: still open at `limit`). `drip` is written every two
/// seconds meanwhile (a slow client), when given.
fn until_closed(
    stream: &mut TcpStream,
    drip: Option<&[u8]>,
    limit: Duration,
) -> (Vec<u8>, Option<Duration>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buffer) {
            Ok(0) => return (received, Some(started.elapsed())),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (received, Some(started.elapsed())),
        }
        if let Some(drip) = drip
            && stream.write_all(drip).is_err()
        {
            return (received, Some(started.elapsed()));
        }
    }
    (received, None)
}

/// A client that sends its headers a byte every two seconds, one that sends its body that
/// way, and an idle keep-alive connection are all cut off; the server answers others meanwhile.
#[test]
fn slow_clients_and_idle_connections_are_cut_off() {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let server = Server::start(home.path(), None, &["--trainer", "off"]);
    let address = server.base.trim_start_matches("http://").to_string();
    let connect = || TcpStream::connect(&address).unwrap();
    let slow_head = {
        let mut stream = connect();
        std::thread::spawn(move || {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: kefu\r\nX-Slow: a")
                .unwrap();
            until_closed(&mut stream, Some(b"a"), Duration::from_secs(60))
        })
    };
    let slow_body = {
        let mut stream = connect();
        std::thread::spawn(move || {
            stream
                .write_all(
                    b"POST /api/conversations HTTP/1.1\r\nHost: kefu\r\n\
                      Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
                )
                .unwrap();
            until_closed(&mut stream, Some(b" "), Duration::from_secs(90))
        })
    };
    let idle = {
        let mut stream = connect();
        std::thread::spawn(move || {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: kefu\r\n\r\n")
                .unwrap();
            until_closed(&mut stream, None, Duration::from_secs(60))
        })
    };
    // Meanwhile the server answers.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(get(&server.url("/healthz"), None).0, 200);

    let (_, closed) = slow_head.join().unwrap();
    let closed = closed.expect("a client dripping its headers is cut off");
    assert!(closed < Duration::from_secs(25), "{closed:?}");
    let (answer, closed) = slow_body.join().unwrap();
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("invalid_body"),
        "{answer}"
    );
    assert!(
        closed.is_some_and(|c| c < Duration::from_secs(60)),
        "{closed:?}"
    );
    let (answer, closed) = idle.join().unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    let closed = closed.expect("an idle keep-alive connection is closed");
    assert!(closed < Duration::from_secs(25), "{closed:?}");
}

/// `/readyz` only reads: it answers at once while another process holds SQLite's write lock
/// (a get-or-create would wait for it and fail).
#[test]
fn readiness_only_reads_the_database() {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let server = Server::start(home.path(), None, &["--trainer", "off"]);
    let database = home.path().join("kefu.db");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use sqlx::Connection;
        let url = format!("sqlite://{}", database.display());
        let mut writer = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut writer)
            .await
            .unwrap();
        let started = Instant::now();
        let (status, ready) = get(&server.url("/readyz"), None);
        assert_eq!(status, 200, "{ready}");
        assert_eq!(ready["status"], "ready");
        assert!(started.elapsed() < Duration::from_secs(2));
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut writer)
            .await
            .unwrap();
    });
}

/// A server with a document ingested from a private folder into the knowledge base `shop`,
/// and an admin API token.
fn shop_server() -> (tempfile::TempDir, Server, Identity) {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let private = home.path().join("private").join("docs");
    std::fs::create_dir_all(&private).unwrap();
    std::fs::write(
        private.join("returns.md"),
        "# Returns\n\nParcels can be returned within 30 days of delivery.\n",
    )
    .unwrap();
    for kb in ["shop", "default"] {
        let ingest = kefu(home.path(), None)
            .args(["ingest", private.to_str().unwrap(), "--kb", kb])
            .output()
            .unwrap();
        assert!(ingest.status.success(), "{ingest:?}");
    }
    let admin = staff_member(home.path(), None, "admin", "boss");
    let server = Server::start(home.path(), None, &["--trainer", "off"]);
    (home, server, admin)
}

/// Customers cannot probe knowledge-base names nor learn the server's file paths; `/v1`
/// never makes a knowledge base for an unknown name and keeps to the server's answer length
/// and a few short stop strings; a conversation an agent took over is not regenerated.
#[test]
fn customers_see_no_names_or_paths_and_staff_tokens_keep_to_limits() {
    let (home, server, admin) = shop_server();
    let url = server.url("/api/conversations");
    // Anonymous: the same answer for a name that exists and one that does not.
    for name in ["shop", "nope"] {
        let (status, body, _) = call(
            "POST",
            &url,
            &vec![],
            &Body::Json(json!({"knowledge_base": name})),
        );
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("knowledge_base_not_allowed")),
            "{name}: {body}"
        );
    }
    let (status, _, _) = call(
        "POST",
        &url,
        &vec![],
        &Body::Json(json!({"knowledge_base": "default"})),
    );
    assert_eq!(status, 201);
    // Staff may name one, and learn that another does not exist.
    let (status, body, _) = call(
        "POST",
        &url,
        &admin,
        &Body::Json(json!({"knowledge_base": "nope"})),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("knowledge_base_not_found"))
    );
    let (status, conversation, _) = call(
        "POST",
        &url,
        &admin,
        &Body::Json(json!({"knowledge_base": "shop"})),
    );
    assert_eq!(status, 201, "{conversation}");

    // Citations name the file, never the folder it was ingested from.
    let (_, _, done, _) = ask_for_done(&server, "How long do I have to return a parcel?");
    let citations = done["citations"].as_array().unwrap();
    assert!(!citations.is_empty(), "{done}");
    let private = home.path().display().to_string();
    for citation in citations {
        assert!(citation.get("path").is_none(), "{citation}");
        assert_eq!(citation["source"], "returns.md", "{citation}");
        assert!(citation["url"].is_null(), "{citation}");
        assert!(!citation.to_string().contains(&private), "{citation}");
    }

    // `/v1`: an unknown knowledge base is a 404 and is not created.
    let completions = server.url("/v1/chat/completions");
    let ask = |extra: Value| {
        let mut body =
            json!({"messages": [{"role": "user", "content": "How long do returns take?"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        call("POST", &completions, &admin, &Body::Json(body))
    };
    let (status, body, _) = ask(json!({"retrieval": "nope"}));
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("knowledge_base_not_found"))
    );
    let (_, kbs) = request(
        "GET",
        &server.url("/api/admin/knowledge-bases"),
        &admin,
        None,
    );
    assert!(!kbs.to_string().contains("\"nope\""), "{kbs}");
    // The server's answer length (24 tokens in these tests) wins over the request's.
    let (status, body, _) = ask(json!({"max_tokens": 4096, "temperature": 1.0, "seed": 7}));
    assert_eq!(status, 200, "{body}");
    assert!(
        body["usage"]["completion_tokens"].as_u64().unwrap() <= 24,
        "{body}"
    );
    for stop in [
        json!(["a", "b", "c", "d", "e"]),
        json!("x".repeat(65)),
        json!([""]),
    ] {
        let (status, body, _) = ask(json!({"stop": stop}));
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_stop")),
            "{body}"
        );
    }

    // An agent takes the conversation over: the customer cannot make the model answer again.
    let (id, token, done, _) = ask_for_done(&server, "How long do I have to return a parcel?");
    let answer = done["message_id"].as_i64().unwrap();
    let (status, _, _) = call(
        "POST",
        &server.url(&format!("/api/agent/conversations/{id}/takeover")),
        &admin,
        &Body::Empty,
    );
    assert_eq!(status, 200);
    let (status, body, _) = call(
        "POST",
        &server.url(&format!(
            "/api/conversations/{id}/messages/{answer}/regenerate"
        )),
        &vec![("authorization", format!("Bearer {token}"))],
        &Body::Empty,
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("agent_has_conversation"))
    );
}

fn status_with(server: &Server, identity: &Identity) -> u16 {
    call(
        "GET",
        &server.url("/api/agent/conversations"),
        identity,
        &Body::Empty,
    )
    .0
}

/// A password reset ends the user's sessions and API tokens; tokens are listed and revoked
/// (API and CLI); an https public address makes the cookie `Secure`; sign-in never redirects
/// off the server; pages carry security headers.
#[test]
fn sessions_and_tokens_end_when_they_should() {
    let staffed = staffed_server(&[
        "--trainer",
        "off",
        "--public-url",
        "https://help.example.com/",
    ]);
    let server = &staffed.server;
    assert_eq!(status_with(server, &staffed.ann), 200);
    assert_eq!(status_with(server, &staffed.agent_api), 200);

    // The cookie is Secure behind https; the snippet uses the public address.
    let mut response = agent()
        .post(&server.url("/api/auth/login"))
        .header("content-type", "application/json")
        .send(
            json!({"name": "boss", "password": "correct horse battery"})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let _ = response.body_mut().read_to_string();
    let demo = agent()
        .get(&server.url("/"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        demo.contains("https://help.example.com/widget.js"),
        "{demo}"
    );

    // Resetting ann's password ends her session and her token.
    let (status, _) = request(
        "POST",
        &server.url("/api/admin/users"),
        &staffed.admin_api,
        Some(&json!({"name": "ann", "role": "agent", "password": "a brand new password"})),
    );
    assert_eq!(status, 201);
    assert_eq!(status_with(server, &staffed.ann), 401);
    assert_eq!(status_with(server, &staffed.agent_api), 401);
    assert_eq!(status_with(server, &staffed.boss), 200);
    sign_in(server, "ann", "a brand new password");

    // Tokens: made, listed and revoked by the CLI; the API revokes by id.
    let home = staffed._home.path();
    let made = kefu(home, None)
        .args(["tokens", "add", "boss", "--label", "ci"])
        .output()
        .unwrap();
    let token = String::from_utf8(made.stdout).unwrap().trim().to_string();
    let ci: Identity = vec![("authorization", format!("Bearer {token}"))];
    assert_eq!(status_with(server, &ci), 200);
    let listed = kefu(home, None).args(["tokens", "list"]).output().unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains("boss  ci  created"), "{listed}");
    assert!(
        !listed.contains(&token[9..]),
        "a listing never shows a token: {listed}"
    );
    let revoked = kefu(home, None)
        .args(["tokens", "revoke", &token])
        .output()
        .unwrap();
    assert!(revoked.status.success(), "{revoked:?}");
    assert_eq!(status_with(server, &ci), 401);
    let again = kefu(home, None)
        .args(["tokens", "revoke", &token])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no such API token"),
        "{again:?}"
    );
    let nothing = kefu(home, None)
        .args(["tokens", "revoke"])
        .output()
        .unwrap();
    assert!(!nothing.status.success());
    let (_, tokens) = request(
        "GET",
        &server.url("/api/admin/tokens"),
        &staffed.admin_api,
        None,
    );
    let tokens = tokens["tokens"].as_array().unwrap().clone();
    assert_eq!(
        tokens.len(),
        1,
        "only the admin's own token is left: {tokens:?}"
    );
    let (status, body, _) = call(
        "DELETE",
        &server.url("/api/admin/tokens/0000000000000000"),
        &staffed.admin_api,
        &Body::Empty,
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("token_not_found"))
    );
    let own = tokens[0]["id"].as_str().unwrap();
    let (status, _, _) = call(
        "DELETE",
        &server.url(&format!("/api/admin/tokens/{own}")),
        &staffed.admin_api,
        &Body::Empty,
    );
    assert_eq!(status, 204);
    assert_eq!(status_with(server, &staffed.admin_api), 401);

    // Sign-in never sends a browser to another host (`%5C` is a backslash).
    let page = |path: &str| {
        let mut response = agent().get(&server.url(path)).call().unwrap();
        let headers = response.headers().clone();
        (headers, response.body_mut().read_to_string().unwrap())
    };
    for next in ["/%5Cexample.com", "//example.com", "/%5C/example.com"] {
        let (_, html) = page(&format!("/login?next={next}"));
        assert!(html.contains("data-next=\"/agent\""), "{next}: {html}");
    }
    let (headers, html) = page("/login?next=/admin/training");
    assert!(html.contains("data-next=\"/admin/training\""));
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("frame-ancestors 'none'") && policy.contains("script-src 'self'"));
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let (headers, _) = page("/");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'self'")
    );
    let api = agent().get(&server.url("/healthz")).call().unwrap();
    assert_eq!(api.headers()["x-content-type-options"], "nosniff");
}

/// The widget's background poll of a conversation counts against that conversation only: an
/// office of customers behind one address keeps its budget for questions, and one
/// conversation polling too fast is told to slow down.
#[test]
fn a_widget_s_polls_do_not_use_up_its_address_budget() {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let server = Server::start(
        home.path(),
        None,
        &["--trainer", "off", "--rate-per-ip", "6"],
    );
    let (status, conversation) = post(&server.url("/api/conversations"), None, b"{}");
    assert_eq!(status, 201);
    let id = conversation["id"].as_str().unwrap();
    let token = conversation["customer_token"].as_str().unwrap();
    let messages = server.url(&format!("/api/conversations/{id}/messages"));
    let statuses: Vec<u16> = (0..70).map(|_| get(&messages, Some(token)).0).collect();
    assert!(statuses[..50].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    // The address's six requests a minute are still there for questions.
    for _ in 0..3 {
        assert_eq!(post(&server.url("/api/conversations"), None, b"{}").0, 201);
    }
}
