//! The browser test's tools: a WebDriver client for chromedriver and headless Chromium, a
//! second origin serving the widget, the API as a script calls it.

use kefu_tests::{http_agent as agent, kefu_command};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// What a test script calls `kefu`: the widget's shadow root (its parts live there, out of
/// the page's styles), or the document while the widget is not on the page.
const WIDGET_ROOT: &str =
    "const kefu = (document.querySelector('kefu-widget') || {}).shadowRoot || document;";

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `chromedriver` on a free port, stopped when dropped.
pub(crate) struct Driver {
    pub(crate) child: Child,
    pub(crate) url: String,
}

impl Driver {
    pub(crate) fn start() -> Self {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (./scripts/test.sh installs chromium-driver)");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent().get(&format!("{url}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser (its own profile directory).
pub(crate) struct Browser {
    pub(crate) session: String,
    pub(crate) _profile: tempfile::TempDir,
}

pub(crate) fn send(method: &str, url: &str, body: Option<Value>) -> Value {
    let request = ureq::http::Request::builder().method(method).uri(url);
    let mut response = match body {
        Some(body) => agent().run(
            request
                .header("content-type", "application/json")
                .body(body.to_string())
                .unwrap(),
        ),
        None => agent().run(request.body(()).unwrap()),
    }
    .unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    value["value"].clone()
}

impl Browser {
    /// A desktop window of `width` × `height`, or with `phone` a phone's screen (390 × 844,
    /// touch, device pixel ratio 2).
    pub(crate) fn open(driver: &Driver, width: u32, height: u32, phone: bool) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--disable-dev-shm-usage".into(),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--window-size={width},{height}"),
        ];
        let mut options = json!({"binary": "/usr/bin/chromium", "args": args});
        if phone {
            options["mobileEmulation"] = json!({
                "deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 2.0, "touch": true},
            });
        }
        let created = send(
            "POST",
            &format!("{}/session", driver.url),
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": options,
            }}})),
        );
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a browser session: {created}"));
        Self {
            session: format!("{}/session/{id}", driver.url),
            _profile: profile,
        }
    }

    pub(crate) fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        send(method, &format!("{}{path}", self.session), body)
    }

    pub(crate) fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    pub(crate) fn url(&self) -> String {
        self.call("GET", "/url", None).as_str().unwrap().to_string()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value. The
    /// script sees `kefu`: the widget's shadow root once the widget is on the page (the
    /// document before).
    pub(crate) fn js(&self, script: &str, args: Value) -> Value {
        let script = format!("{WIDGET_ROOT}\n{script}");
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Waits until `script` returns something truthy; returns it.
    #[track_caller]
    pub(crate) fn wait(&self, what: &str, seconds: u64, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let value = self.js(script, json!([]));
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!("")
                && value != json!(0);
            if truthy {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} at {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first element `css` selects inside the widget's shadow root, else in the page.
    pub(crate) fn element(&self, css: &str) -> String {
        let found = self.js(
            "return kefu.querySelector(arguments[0]) || document.querySelector(arguments[0])",
            json!([css]),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    pub(crate) fn click(&self, css: &str) {
        let id = self.element(css);
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    pub(crate) fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        );
    }

    pub(crate) fn screenshot(&self, name: &str) {
        let data = self.call("GET", "/screenshot", None);
        let png = base64_decode(data.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = agent().delete(&self.session).call();
    }
}

pub(crate) fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let digits: Vec<u32> = chunk
            .iter()
            .filter(|&&c| c != b'=')
            .map(|&c| value(c))
            .collect();
        let mut word = 0u32;
        for (i, d) in digits.iter().enumerate() {
            word |= d << (18 - 6 * i);
        }
        out.extend_from_slice(&word.to_be_bytes()[1..digits.len()]);
    }
    out
}

/// Serves fixed pages on a second origin (another port): `/` embeds the widget with `key`,
/// `/dark` the same in the dark theme and a brand colour, `/wrong` with a wrong key, `/nokey`
/// without one.
pub(crate) fn second_origin(widget: &str, key: &str) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let page = |attrs: &str| {
        format!(
            "<!doctype html><html lang=\"zh\"><head><meta charset=\"utf-8\"><title>Shop</title>\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             </head><body><h1>另一个网站</h1><script src=\"{widget}\" {attrs}></script></body></html>"
        )
    };
    let pages = [
        ("/ ", page(&format!("data-site=\"{key}\""))),
        (
            "/wrong ",
            page("data-site=\"kefu_site_0000000000\" data-lang=\"en\""),
        ),
        ("/nokey ", page("data-lang=\"en\"")),
        (
            "/dark ",
            page(&format!(
                "data-site=\"{key}\" data-theme=\"dark\" data-color=\"#0a7d5a\""
            )),
        ),
    ];
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let target = line.split(' ').nth(1).unwrap_or("/").to_string() + " ";
            if target == "/quit " {
                return;
            }
            let body = pages
                .iter()
                .find(|(path, _)| *path == target)
                .map(|(_, body)| body.clone())
                .unwrap_or_default();
            let status = if body.is_empty() {
                "404 Not Found"
            } else {
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, handle)
}

pub(crate) fn kefu(home: &Path) -> Command {
    let mut command = kefu_command();
    command
        .env_remove("KEFU_DATABASE_URL")
        .env("KEFU_HOME", home)
        .env("HF_ENDPOINT", "")
        .env("KEFU_PACKAGE_INDEX", "http://127.0.0.1:9/simple");
    command
}

pub(crate) fn api(method: &str, url: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"));
    let mut response = match body {
        Some(body) => agent().run(
            request
                .header("content-type", "application/json")
                .body(body.to_string())
                .unwrap(),
        ),
        None => agent().run(request.body(()).unwrap()),
    }
    .unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}
