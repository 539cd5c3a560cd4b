//! Live updates and the stop button: the widget's event stream of one conversation (agent
//! replies, take-over, hand-back) resumes after a reconnect without losing or repeating a
//! message; the console's stream names conversations as they change; a customer stops an
//! answer mid-stream and the partial answer is stored as cancelled; shutting down ends open
//! streams.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc;
use std::time::Duration;

use kefu_tests::http_agent as agent;
use serde_json::{Value, json};

use crate::support::*;

/// One Server-Sent Event: name, id (when it has one) and data.
#[derive(Debug, Clone, PartialEq)]
struct SseEvent {
    name: String,
    id: Option<String>,
    data: Value,
}

/// Reads a stream's events on a thread of its own, as they arrive.
struct EventStream {
    events: mpsc::Receiver<SseEvent>,
}

impl EventStream {
    /// Opens `method url` with `headers` and expects 200.
    fn open(method: &str, url: &str, headers: &Identity, body: Option<&Value>) -> Self {
        let request = ureq::http::Request::builder().method(method).uri(url);
        let request = headers
            .iter()
            .fold(request, |r, (k, v)| r.header(*k, v.as_str()))
            .header("content-type", "application/json");
        let response = agent()
            .run(
                request
                    .body(body.map(Value::to_string).unwrap_or_default())
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{url}");
        let reader = response.into_body().into_reader();
        let (send, events) = mpsc::channel();
        std::thread::spawn(move || read_events(reader, send));
        Self { events }
    }

    /// The next event, waiting at most `seconds`.
    fn next(&self, seconds: u64) -> SseEvent {
        self.events
            .recv_timeout(Duration::from_secs(seconds))
            .expect("an event in time")
    }

    /// Whether the stream stays quiet for `millis` (no event).
    fn quiet(&self, millis: u64) -> bool {
        self.events
            .recv_timeout(Duration::from_millis(millis))
            .is_err()
    }

    /// Events until the stream ends (waiting at most `seconds` for each).
    fn rest(&self, seconds: u64) -> Vec<SseEvent> {
        let mut all = Vec::new();
        while let Ok(event) = self.events.recv_timeout(Duration::from_secs(seconds)) {
            all.push(event);
        }
        all
    }
}

fn read_events(reader: impl Read, send: mpsc::Sender<SseEvent>) {
    let (mut name, mut id, mut data) = (String::from("message"), None, Vec::<String>::new());
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { return };
        if line.is_empty() {
            if !data.is_empty() {
                let event = SseEvent {
                    name: std::mem::replace(&mut name, "message".into()),
                    id: id.take(),
                    data: serde_json::from_str(&data.join("\n")).unwrap(),
                };
                data.clear();
                if send.send(event).is_err() {
                    return;
                }
            }
        } else if let Some(n) = line.strip_prefix("event:") {
            name = n.trim().to_string();
        } else if let Some(i) = line.strip_prefix("id:") {
            id = Some(i.trim().to_string());
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
        }
    }
}

fn customer(token: &str) -> Identity {
    vec![("authorization", format!("Bearer {token}"))]
}

#[test]
fn agent_replies_and_hand_offs_are_pushed_and_a_reconnect_loses_nothing() {
    let staffed = staffed_server(&[]);
    let server = &staffed.server;
    let (status, conversation) = post(&server.url("/api/conversations"), None, b"{}");
    assert_eq!(status, 201);
    let id = conversation["id"].as_str().unwrap().to_string();
    let token = conversation["customer_token"].as_str().unwrap().to_string();
    let events_url = server.url(&format!("/api/conversations/{id}/events"));

    // The console's stream opens with `sync`.
    let console = EventStream::open("GET", &server.url("/api/agent/events"), &staffed.ann, None);
    assert_eq!(console.next(10).name, "sync");

    // The widget's stream: the status first, then nothing until something happens.
    let widget = EventStream::open("GET", &events_url, &customer(&token), None);
    let first = widget.next(10);
    assert_eq!(
        (first.name.as_str(), &first.data),
        ("status", &json!({"status": "assistant"}))
    );
    assert!(widget.quiet(500), "nothing new yet");

    // A customer's question reaches the console (and the widget, as a message).
    let (status, _) = post_sse(
        &server.url(&format!("/api/conversations/{id}/messages")),
        Some(&token),
        &json!({"content": "Is there a manual?"}),
    );
    assert_eq!(status, 200);
    let changed = console.next(10);
    assert_eq!(
        (changed.name.as_str(), &changed.data),
        ("conversation", &json!({"id": id}))
    );
    let question = widget.next(10);
    assert_eq!(
        (question.name.as_str(), &question.data["role"]),
        ("message", &json!("customer"))
    );
    let answer = widget.next(30);
    assert_eq!(answer.data["role"], "assistant", "{answer:?}");
    assert_eq!(answer.id, Some(answer.data["id"].to_string()));

    // Take-over and an agent's reply are pushed at once.
    let url = |path: &str| server.url(&format!("/api/agent/conversations/{id}/{path}"));
    let (status, _) = request("POST", &url("takeover"), &staffed.agent_api, None);
    assert_eq!(status, 200);
    assert_eq!(widget.next(10).data, json!({"status": "agent"}));
    let reply = |text: &str| {
        let (status, body) = request(
            "POST",
            &url("reply"),
            &staffed.agent_api,
            Some(&json!({"content": text})),
        );
        assert_eq!(status, 201, "{body}");
        body["message_id"].as_i64().unwrap()
    };
    let first_reply = reply("Hello, this is Ann.");
    let pushed = widget.next(10);
    assert_eq!(pushed.name, "message");
    assert_eq!(pushed.id, Some(first_reply.to_string()));
    assert_eq!(pushed.data["role"], "agent");
    assert_eq!(pushed.data["content"], "Hello, this is Ann.");

    // The widget goes away; two replies and the hand-back happen meanwhile.
    drop(widget);
    let later = [reply("The manual is online."), reply("Anything else?")];
    let (status, _) = request("POST", &url("release"), &staffed.agent_api, None);
    assert_eq!(status, 200);

    // Resuming after the first reply: the status as it is now, then exactly the two later
    // replies, in order, and nothing more.
    let mut resume = customer(&token);
    resume.push(("last-event-id", first_reply.to_string()));
    let widget = EventStream::open("GET", &events_url, &resume, None);
    assert_eq!(widget.next(10).data, json!({"status": "assistant"}));
    let again: Vec<Option<String>> = (0..2).map(|_| widget.next(10).id).collect();
    assert_eq!(
        again,
        later
            .iter()
            .map(|m| Some(m.to_string()))
            .collect::<Vec<_>>()
    );
    assert!(widget.quiet(1000), "no message twice");

    // Bad input: a Last-Event-ID that is not a message id, another customer's token, an
    // unknown conversation, the console's stream without a session or token.
    let mut bad = customer(&token);
    bad.push(("last-event-id", "yesterday".into()));
    assert_error(
        request("GET", &events_url, &bad, None),
        400,
        "invalid_last_event_id",
    );
    assert_error(
        request("GET", &events_url, &customer("not-the-token"), None),
        404,
        "conversation_not_found",
    );
    assert_error(
        request(
            "GET",
            &server.url("/api/conversations/nosuch/events"),
            &customer(&token),
            None,
        ),
        404,
        "conversation_not_found",
    );
    assert_error(
        request("GET", &server.url("/api/agent/events"), &vec![], None),
        401,
        "unauthorized",
    );
}

#[test]
fn a_stopped_answer_ends_its_stream_and_is_stored_as_cancelled() {
    // Long answers: the stop arrives while the model is still writing.
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        kefu_tests::test_home().join("models"),
        home.path().join("models"),
    )
    .unwrap();
    let server = Server::start(home.path(), None, &["--max-tokens", "400"]);
    let (status, conversation) = post(&server.url("/api/conversations"), None, b"{}");
    assert_eq!(status, 201);
    let id = conversation["id"].as_str().unwrap().to_string();
    let token = conversation["customer_token"].as_str().unwrap().to_string();
    let stop_url = server.url(&format!("/api/conversations/{id}/stop"));

    // Nothing is being written yet: a clear 409.
    assert_error(
        request("POST", &stop_url, &customer(&token), None),
        409,
        "not_answering",
    );
    let widget = EventStream::open(
        "GET",
        &server.url(&format!("/api/conversations/{id}/events")),
        &customer(&token),
        None,
    );
    assert_eq!(widget.next(10).name, "status");

    let answer = EventStream::open(
        "POST",
        &server.url(&format!("/api/conversations/{id}/messages")),
        &customer(&token),
        Some(&json!({"content": "Count from 1 to 300, one number per line."})),
    );
    let first = answer.next(60);
    assert_eq!(first.name, "token", "{first:?}");
    // Someone else's token cannot stop it.
    assert_error(
        request("POST", &stop_url, &customer("not-the-token"), None),
        404,
        "conversation_not_found",
    );
    let (status, body) = request("POST", &stop_url, &customer(&token), None);
    assert_eq!((status, &body), (200, &json!({"stopped": true})));
    let mut events = vec![first];
    events.extend(answer.rest(30));
    let done = events.last().unwrap();
    assert_eq!(done.name, "done", "{events:?}");
    assert_eq!(done.data["finish_reason"], "cancelled", "{done:?}");
    let written: String = events
        .iter()
        .filter(|e| e.name == "token")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    let tokens = done.data["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(
        (1..300).contains(&tokens),
        "stopped well before its 400 tokens: {tokens}"
    );

    // Stored as written, and pushed to the widget's stream like any answer.
    let (status, list) = get(
        &server.url(&format!("/api/conversations/{id}/messages")),
        Some(&token),
    );
    assert_eq!(status, 200);
    let stored = list["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(stored["id"], done.data["message_id"]);
    assert_eq!(stored["role"], "assistant");
    assert_eq!(stored["content"], written.as_str());
    let pushed: Vec<SseEvent> = (0..2).map(|_| widget.next(10)).collect();
    assert_eq!(pushed[1].data, stored, "{pushed:?}");

    // Shutting down ends the open stream and the server exits cleanly.
    let (send, exited) = mpsc::channel();
    std::thread::spawn(move || send.send(server.stop()).unwrap());
    let status = exited
        .recv_timeout(Duration::from_secs(60))
        .expect("the server stops although an event stream is open");
    assert!(status.success(), "{status:?}");
    assert!(widget.rest(5).is_empty());
}

#[test]
fn the_staff_pages_language_is_chosen_remembered_and_checked() {
    let staffed = staffed_server(&[]);
    let server = &staffed.server;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let switch = |path: &str| {
        let response = agent.get(&server.url(path)).call().unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        (
            response.status().as_u16(),
            header("location"),
            header("set-cookie"),
        )
    };
    let (status, location, cookie) = switch("/language/zh?next=/admin/training");
    assert_eq!(status, 303);
    assert_eq!(location.as_deref(), Some("/admin/training"));
    let cookie = cookie.unwrap();
    assert!(
        cookie.starts_with("kefu_lang=zh;") && cookie.contains("Max-Age=31536000"),
        "{cookie}"
    );
    // Only a path on this server is a place to go back to; only en and zh are languages.
    let (_, location, _) = switch("/language/en?next=//evil.example/x");
    assert_eq!(location.as_deref(), Some("/agent"));
    let (status, _, cookie) = switch("/language/fr");
    assert_eq!((status, cookie), (404, None));

    // The sign-in page: the remembered choice first, then the browser's language.
    let login = |headers: &[(&str, &str)]| {
        let request = headers
            .iter()
            .fold(agent.get(&server.url("/login")), |r, (k, v)| {
                r.header(*k, *v)
            });
        request.call().unwrap().body_mut().read_to_string().unwrap()
    };
    let chinese = login(&[("cookie", "kefu_lang=zh")]);
    assert!(
        chinese.contains("<html lang=\"zh\">") && chinese.contains("<h1>登录</h1>"),
        "{chinese}"
    );
    assert!(
        chinese.contains("\"Take over\":\"接管\""),
        "the script's texts come along"
    );
    assert!(login(&[("accept-language", "zh-CN,zh;q=0.9")]).contains("<h1>登录</h1>"));
    let english = login(&[("accept-language", "zh-CN"), ("cookie", "kefu_lang=en")]);
    assert!(
        english.contains("<h1>Sign in</h1>") && english.contains("id=\"kefu-texts\">{}<"),
        "{english}"
    );
}
