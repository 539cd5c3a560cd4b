//! Behind a real reverse proxy: Debian's nginx in front of `kefu serve`, configured as
//! `deploy/nginx.conf` is. Answers stream through it event by event, event streams carry
//! `X-Accel-Buffering: no` (so no nginx configuration buffers them), and the per-address rate
//! limit counts the client nginx forwards because nginx is a trusted proxy — without
//! `--trusted-proxies` every request would count against nginx's own address and the limit
//! would refuse the second client too.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kefu_tests::{http_agent as agent, test_home};
use serde_json::{Value, json};

use crate::support::*;

/// nginx in the foreground with its files in `dir`, proxying `port` to `upstream`.
struct Nginx {
    child: Child,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn start(dir: &Path, upstream: &str) -> Self {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is missing: ./scripts/test.sh installs Debian's nginx-light");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // The proxying lines are deploy/nginx.conf's.
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx.conf"),
        )
        .unwrap();
        let start = example
            .find("location / {")
            .expect("deploy/nginx.conf's location");
        let end = start + example[start..].find("\n    }").unwrap() + 6;
        let location = example[start..end].replace("127.0.0.1:8080", upstream);
        let d = dir.display();
        let config = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n\
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n  server {{\n    listen 127.0.0.1:{port};\n    {location}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), config).unwrap();
        let child = Command::new(binary)
            .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
            .args(["-e", &format!("{d}/error.log")])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// GET through `url` as the client `from` (its `X-Forwarded-For`): the status.
fn get_as(url: &str, from: &str) -> u16 {
    agent()
        .get(url)
        .header("x-forwarded-for", from)
        .call()
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn behind_nginx_answers_stream_and_limits_count_the_forwarded_client() {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let server = Server::start(
        home.path(),
        None,
        &[
            "--max-tokens",
            "64",
            "--trusted-proxies",
            "127.0.0.1,::1",
            "--rate-per-ip",
            "6",
            "--public-url",
            "https://help.example.test",
        ],
    );
    let nginx_dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(
        nginx_dir.path(),
        server.base.strip_prefix("http://").unwrap(),
    );

    // An answer through nginx arrives event by event, not in one piece at the end.
    let (status, conversation) = {
        let mut response = agent()
            .post(&nginx.url("/api/conversations"))
            .header("content-type", "application/json")
            .header("x-forwarded-for", "198.51.100.20")
            .send(b"{}".as_slice())
            .unwrap();
        let text = response.body_mut().read_to_string().unwrap();
        (
            response.status().as_u16(),
            serde_json::from_str::<Value>(&text).unwrap(),
        )
    };
    assert_eq!(status, 201, "{conversation}");
    let id = conversation["id"].as_str().unwrap();
    let token = conversation["customer_token"].as_str().unwrap();
    let started = Instant::now();
    let response = agent()
        .post(&nginx.url(&format!("/api/conversations/{id}/messages")))
        .header("content-type", "application/json")
        .header("authorization", &format!("Bearer {token}"))
        .header("x-forwarded-for", "198.51.100.20")
        .send(
            json!({"content": "Tell me about the Debian project and its history."})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (mut first_token, mut tokens, mut done) = (None, 0, None);
    let mut event = String::new();
    for line in BufReader::new(response.into_body().into_reader()).lines() {
        let line = line.unwrap();
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim().to_string();
        } else if line.starts_with("data:") {
            match event.as_str() {
                "token" => {
                    tokens += 1;
                    first_token.get_or_insert_with(|| started.elapsed());
                }
                "done" => done = Some(started.elapsed()),
                _ => {}
            }
        }
    }
    let (first_token, done) = (first_token.unwrap(), done.expect("a done event"));
    eprintln!("through nginx: {tokens} token events, first at {first_token:?}, done at {done:?}");
    assert!(tokens >= 10, "{tokens} token events");
    assert!(
        done - first_token >= Duration::from_millis(300),
        "the events came together (buffered): first {first_token:?}, done {done:?}"
    );
    // Kefu asks proxies not to buffer its event streams.
    let direct = agent()
        .post(&server.url(&format!("/api/conversations/{id}/messages")))
        .header("content-type", "application/json")
        .header("authorization", &format!("Bearer {token}"))
        .send(
            json!({"content": "And its founder?"})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    assert_eq!(
        direct.headers().get("x-accel-buffering").unwrap(),
        "no",
        "{:?}",
        direct.headers()
    );
    drop(direct);

    // The per-address limit counts the client nginx forwards: one client is refused after its
    // six requests a minute, another still gets in.
    let url = nginx.url("/api/openapi.json");
    let statuses: Vec<u16> = (0..7).map(|_| get_as(&url, "203.0.113.7")).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 200, 429],
        "{statuses:?}"
    );
    assert_eq!(get_as(&url, "203.0.113.8"), 200);
    assert!(server.stop().success());
}
