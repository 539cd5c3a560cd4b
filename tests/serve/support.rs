//! What the serving tests share: a running `kefu serve`, HTTP calls, staffed servers, widget
//! sites, private databases.

pub(crate) use kefu_tests::SMALL_MODEL;
use kefu_tests::{http_agent as agent, kefu_command, test_home};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// In a server's extra arguments: serve without `--model` — the registry's `production`
/// version, or the product's default model ([`kefu_tests::DEFAULT_MODEL`]) on a fresh data
/// directory.
pub(crate) const PRODUCT_DEFAULT: &str = "<no --model: the product's default>";

/// `database_url` `None`: the default, SQLite in the data directory.
pub(crate) fn kefu(home: &Path, database_url: Option<&str>) -> Command {
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
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
}

impl Server {
    pub(crate) fn start(home: &Path, database_url: Option<&str>, extra: &[&str]) -> Self {
        Self::spawn(kefu(home, database_url), extra)
    }

    /// `kefu serve` through a prepared command (its environment set).
    pub(crate) fn spawn(command: Command, extra: &[&str]) -> Self {
        Self::spawn_logging(command, extra, Stdio::inherit())
    }

    /// [`Server::spawn`] with its standard error (the log) sent to `log`. The server serves
    /// the small model ([`SMALL_MODEL`], as `--model`) unless `extra` names a model or holds
    /// [`PRODUCT_DEFAULT`].
    pub(crate) fn spawn_logging(mut command: Command, extra: &[&str], log: Stdio) -> Self {
        let product_default = extra.contains(&PRODUCT_DEFAULT);
        let extra: Vec<&str> = extra
            .iter()
            .copied()
            .filter(|a| *a != PRODUCT_DEFAULT)
            .collect();
        let model: &[&str] = if product_default || extra.contains(&"--model") {
            &[]
        } else {
            &["--model", SMALL_MODEL]
        };
        let mut child = command
            .args(["serve", "--port", "0"])
            .args(model)
            .args(if extra.contains(&"--max-tokens") {
                &[][..]
            } else {
                &["--max-tokens", "24"][..]
            })
            // Tests about something else answer every question (their knowledge bases are
            // often empty); the abstention tests pass `--min-support` to keep the checks on.
            .args(if extra.contains(&"--min-support") {
                &[][..]
            } else {
                &["--answer-unrelated", "--min-support", "0"][..]
            })
            .args(&extra)
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

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then the exit status (graceful shutdown).
    pub(crate) fn stop(mut self) -> std::process::ExitStatus {
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
pub(crate) fn post(url: &str, token: Option<&str>, body: &[u8]) -> (u16, Value) {
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

pub(crate) fn get(url: &str, token: Option<&str>) -> (u16, Value) {
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
pub(crate) fn post_sse(
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Vec<(String, String)>) {
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
pub(crate) type Identity = Vec<(&'static str, String)>;

pub(crate) fn request(
    method: &str,
    url: &str,
    who: &Identity,
    body: Option<&Value>,
) -> (u16, Value) {
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
pub(crate) fn sign_in(server: &Server, name: &str, password: &str) -> Identity {
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
pub(crate) fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
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
pub(crate) fn assert_error(result: (u16, Value), status: u16, code: &str) {
    assert_eq!(result.0, status, "{:?}", result.1);
    assert_eq!(result.1["code"], code, "{:?}", result.1);
    assert!(result.1["message"].is_string(), "{:?}", result.1);
}

/// A request body for [`call`].
pub(crate) enum Body {
    Empty,
    Json(Value),
    Raw(&'static [u8]),
}

/// Any method, any headers, any body: (status, JSON body or text, Retry-After). A live event
/// stream (a `GET` answered `text/event-stream`) never ends: its body is not read.
pub(crate) fn call(
    method: &str,
    url: &str,
    who: &Identity,
    body: &Body,
) -> (u16, Value, Option<String>) {
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
    let live = method == "GET"
        && response
            .headers()
            .get("content-type")
            .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    if live {
        return (status, Value::String("(an event stream)".into()), retry);
    }
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        retry,
    )
}

/// Adds the user `name` with `role` (password "correct horse battery") through the CLI and
/// returns an API token of theirs as an identity.
pub(crate) fn staff_member(
    home: &Path,
    database_url: Option<&str>,
    role: &str,
    name: &str,
) -> Identity {
    let added = kefu(home, database_url)
        .args(["users", "add", "--role", role, name])
        .env("KEFU_PASSWORD", "correct horse battery")
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    let out = kefu(home, database_url)
        .args(["tokens", "add", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    vec![("authorization", format!("Bearer {token}"))]
}

/// A server on SQLite with an admin (`boss`) and an agent (`ann`), each with an API token.
pub(crate) struct Staffed {
    pub(crate) _home: tempfile::TempDir,
    pub(crate) server: Server,
    pub(crate) boss: Identity,
    pub(crate) ann: Identity,
    pub(crate) admin_api: Identity,
    pub(crate) agent_api: Identity,
}

pub(crate) fn staffed_server(extra: &[&str]) -> Staffed {
    staffed_server_with(extra, &[])
}

/// A staffed server whose process (and its training worker) sees `env` too.
pub(crate) fn staffed_server_with(extra: &[&str], env: &[(&str, &str)]) -> Staffed {
    staffed_server_on(None, extra, env)
}

/// A staffed server on `database_url` (`None`: SQLite in its data directory).
pub(crate) fn staffed_server_on(
    database_url: Option<&str>,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Staffed {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let admin_api = staff_member(home.path(), database_url, "admin", "boss");
    let agent_api = staff_member(home.path(), database_url, "agent", "ann");
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

pub(crate) const SHOP: &str = "http://shop.test";

/// Adds a widget site for `origins`: (id, key).
pub(crate) fn add_site(staffed: &Staffed, name: &str, origins: &[&str]) -> (i64, String) {
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
pub(crate) fn ask_anonymously(server: &Server, question: &str) -> (String, String, i64) {
    let (id, token, answer, _) = ask_for_text(server, question);
    (id, token, answer)
}

/// [`ask_anonymously`], with the streamed answer's text.
pub(crate) fn ask_for_text(server: &Server, question: &str) -> (String, String, i64, String) {
    let (id, token, done, text) = ask_for_done(server, question);
    (id, token, done["message_id"].as_i64().unwrap(), text)
}

/// A question, asked anonymously: the conversation, its customer token, the `done` event and
/// the streamed text.
pub(crate) fn ask_for_done(server: &Server, question: &str) -> (String, String, Value, String) {
    let (status, conversation) = post(&server.url("/api/conversations"), None, b"{}");
    assert_eq!(status, 201, "{conversation}");
    let id = conversation["id"].as_str().unwrap().to_string();
    let token = conversation["customer_token"].as_str().unwrap().to_string();
    let (status, events) = post_sse(
        &server.url(&format!("/api/conversations/{id}/messages")),
        Some(&token),
        &json!({"content": question}),
    );
    assert_eq!(status, 200, "{events:?}");
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "done", "{events:?}");
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
    (id, token, serde_json::from_str(data).unwrap(), text)
}

/// Waits (up to 15 minutes) for training job `id` to succeed and returns it with its report;
/// a job that fails or is cancelled ends the test.
pub(crate) fn succeeded_job(staffed: &Staffed, id: i64) -> Value {
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

/// The documents of the default knowledge base, as an admin lists them.
pub(crate) fn documents(server: &Server, admin: &Identity) -> Vec<Value> {
    let (status, listed) = request(
        "GET",
        &server.url("/api/admin/knowledge-bases/default/documents"),
        admin,
        None,
    );
    assert_eq!(status, 200, "{listed}");
    listed["documents"].as_array().unwrap().clone()
}

/// A staff member's correction of an answer (201): the reply's body.
pub(crate) fn correct(
    server: &Server,
    who: &Identity,
    conversation: &str,
    answer: i64,
    text: &str,
) -> Value {
    let (status, body) = request(
        "POST",
        &server.url(&format!(
            "/api/agent/conversations/{conversation}/messages/{answer}/feedback"
        )),
        who,
        Some(&json!({"rating": "down", "corrected_answer": text})),
    );
    assert_eq!(status, 201, "{body}");
    body
}

/// A fresh PostgreSQL database for one test: its URL, and a guard that drops it.
pub(crate) fn postgres_database(label: &str) -> (String, impl Drop) {
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

/// The processes whose parent is `parent` and whose command line holds `word`.
pub(crate) fn children(parent: u32, word: &str) -> Vec<u32> {
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

/// A PostgreSQL server of one test's own, in a temporary folder, so that restarting it touches
/// no other test's database. Run as root (CI), its processes run as the `postgres` user.
pub(crate) struct PrivatePostgres {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) bin: PathBuf,
    pub(crate) port: u16,
}

impl PrivatePostgres {
    pub(crate) fn start() -> Self {
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
    pub(crate) fn run(&self, program: &str, args: &[&str]) {
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

    pub(crate) fn pg_ctl(&self, action: &str) {
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

    pub(crate) fn url(&self) -> String {
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

/// A customer's rating of an answer: (status, body).
pub(crate) fn thumbs(
    server: &Server,
    id: &str,
    token: &str,
    answer: i64,
    rating: &str,
) -> (u16, Value) {
    request(
        "POST",
        &server.url(&format!(
            "/api/conversations/{id}/messages/{answer}/feedback"
        )),
        &vec![("authorization", format!("Bearer {token}"))],
        Some(&json!({"rating": rating})),
    )
}
