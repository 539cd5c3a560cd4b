//! `RegistryStandIn`: a local stand-in for a package index (PEP 503 pages plus file downloads
//! with HTTP range requests) and for the Hugging Face hub (`/api/models/<id>/revision/main`,
//! `/<id>/resolve/<commit>/<file>`), for
//! tests of fetching. It is a fake at the network seam only; the
//! download, resume, hash and unzip code under test is the real one.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A request line and its `Range` header.
pub type RequestLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Serves `/simple/<package>/` and `/files/<filename>` on 127.0.0.1.
pub struct RegistryStandIn {
    pub address: String,
    /// Every request line and its `Range` header, in order.
    pub requests: RequestLog,
    /// The `Authorization` header of every request that had one, in order.
    pub authorizations: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RegistryStandIn {
    /// `files` maps a package name to (filename, bytes); `listed_sha256` optionally adds a
    /// `#sha256=` fragment to the link, as PyPI does.
    pub fn start(files: HashMap<String, (String, Vec<u8>, Option<String>)>) -> Self {
        Self::with_routes(files, HashMap::new())
    }

    /// Also serves `routes`: exact paths (such as `/org/model/resolve/main/config.json`) to
    /// their bytes.
    pub fn with_routes(files: Files, routes: HashMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let address = format!("http://{}", listener.local_addr().expect("local address"));
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let requests: RequestLog = Arc::new(Mutex::new(Vec::new()));
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let (stop2, requests2, authorizations2) =
            (stop.clone(), requests.clone(), authorizations.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = serve(stream, &files, &routes, &requests2, &authorizations2);
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        Self {
            address,
            requests,
            authorizations,
            stop,
            thread: Some(thread),
        }
    }

    /// The index URL to put in `KEFU_PACKAGE_INDEX`.
    pub fn index_url(&self) -> String {
        format!("{}/simple", self.address)
    }
}

impl Drop for RegistryStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Package name → (wheel file name, bytes, hash listed in the index page).
pub type Files = HashMap<String, (String, Vec<u8>, Option<String>)>;

fn serve(
    stream: TcpStream,
    files: &Files,
    routes: &HashMap<String, Vec<u8>>,
    requests: &Mutex<Vec<(String, Option<String>)>>,
    authorizations: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            } else if name.eq_ignore_ascii_case("authorization") {
                authorizations
                    .lock()
                    .expect("authorizations lock")
                    .push(value.trim().to_string());
            }
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    requests
        .lock()
        .expect("requests lock")
        .push((request_line.trim().to_string(), range.clone()));
    let mut out = stream;
    let head = request_line.starts_with("HEAD ");
    if let Some(bytes) = routes.get(&path) {
        let body: &[u8] = if head { &[] } else { bytes };
        return respond(&mut out, "200 OK", &[], body);
    }
    if let Some(package) = path.strip_prefix("/simple/") {
        let package = package.trim_end_matches('/');
        if let Some((filename, _, hash)) = files.get(package) {
            let fragment = hash
                .as_ref()
                .map(|h| format!("#sha256={h}"))
                .unwrap_or_default();
            let body = format!(
                "<html><body><a href=\"/files/{filename}{fragment}\">{filename}</a></body></html>"
            );
            return respond(&mut out, "200 OK", &[], body.as_bytes());
        }
    }
    if let Some(filename) = path.strip_prefix("/files/")
        && let Some((_, bytes, _)) = files.values().find(|(name, _, _)| name == filename)
    {
        let start = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
        return match start {
            Some(start) if start < bytes.len() => {
                let header = format!(
                    "Content-Range: bytes {start}-{}/{}",
                    bytes.len() - 1,
                    bytes.len()
                );
                respond(&mut out, "206 Partial Content", &[&header], &bytes[start..])
            }
            _ => respond(&mut out, "200 OK", &[], bytes),
        };
    }
    respond(&mut out, "404 Not Found", &[], b"not found")
}

fn respond(
    out: &mut TcpStream,
    status: &str,
    headers: &[&str],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}
