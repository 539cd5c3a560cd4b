//! Faults: `kill -9` of the server while it streams answers, records feedback and ingests an
//! upload (after a restart nothing acknowledged is missing and nothing half-written is served),
//! and a full disk (a clear error, nothing stored lost, work again once there is room).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kefu_tests::{shared_path, test_home};
use serde_json::{Value, json};

use crate::support::*;

/// Uploads `bytes` as `name` into the default knowledge base of the server at `base`:
/// (status, body).
fn upload(base: &str, admin: &Identity, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    let mut builder = ureq::http::Request::builder().method("POST").uri(format!(
        "{base}/api/admin/knowledge-bases/default/documents?name={name}"
    ));
    for (k, v) in admin {
        builder = builder.header(*k, v);
    }
    let mut response = kefu_tests::http_agent()
        .run(builder.body(bytes).unwrap())
        .unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn a_server_killed_mid_work_loses_nothing_it_acknowledged() {
    let staffed = staffed_server(&["--trainer", "off", "--max-tokens", "64"]);
    let home = staffed._home.path().to_path_buf();
    let admin = staffed.admin_api.clone();
    let guide = b"# Returns\n\nParcels can be returned within 30 days of delivery.\n".to_vec();
    assert_eq!(
        upload(&staffed.server.base, &admin, "returns.md", guide).0,
        201
    );
    // Acknowledged before the kill: an answer and its rating.
    let (id, token, done, _) =
        ask_for_done(&staffed.server, "How long do I have to return a parcel?");
    let answer = done["message_id"].as_i64().unwrap();
    assert_eq!(thumbs(&staffed.server, &id, &token, answer, "down").0, 201);

    // In flight at the kill: a long upload (embedding a large chapter) and a streamed answer.
    let base = staffed.server.base.clone();
    let big = std::fs::read(shared_path("kb/en/debian-reference/ch02.md")).unwrap();
    let uploading = {
        let (admin, base) = (admin.clone(), base.clone());
        std::thread::spawn(move || {
            std::panic::catch_unwind(|| upload(&base, &admin, "reference.md", big)).ok()
        })
    };
    let streaming = {
        let url = format!("{base}/api/conversations/{id}/messages");
        let token = token.clone();
        std::thread::spawn(move || {
            std::panic::catch_unwind(|| {
                post_sse(
                    &url,
                    Some(&token),
                    &json!({"content": "And with the prepaid label?"}),
                )
            })
            .ok()
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let pid = staffed.server.child.id();
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let _ = uploading.join();
    let _ = streaming.join();
    drop(staffed.server);

    let server = Server::start(&home, None, &["--trainer", "off", "--max-tokens", "64"]);
    // The acknowledged upload and rating are there.
    let listed = documents(&server, &admin);
    assert!(
        listed
            .iter()
            .any(|d| d["path"] == "upload:default/returns.md"),
        "{listed:?}"
    );
    let (_, inbox) = request("GET", &server.url("/api/admin/feedback"), &admin, None);
    assert!(
        inbox["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|item| item["message_id"] == answer),
        "{inbox}"
    );
    // Every document listed is whole: chunks stored, its kept copy what was ingested (a
    // re-ingest accepts it), so the interrupted upload is either complete or absent.
    for document in &listed {
        let (status, body) = request(
            "POST",
            &server.url(&format!(
                "/api/admin/knowledge-bases/default/documents/{}/reingest",
                document["id"]
            )),
            &admin,
            None,
        );
        assert_eq!(status, 200, "{document}: {body}");
        assert!(body["chunks"].as_u64().unwrap() > 0, "{document}: {body}");
    }
    // The interrupted answer is not stored half-written: every assistant message has text,
    // and the conversation goes on.
    let (_, transcript) = get(
        &server.url(&format!("/api/conversations/{id}/messages")),
        Some(&token),
    );
    for message in transcript["messages"].as_array().unwrap() {
        assert!(
            !message["content"].as_str().unwrap().trim().is_empty(),
            "{transcript}"
        );
    }
    let (status, events) = post_sse(
        &server.url(&format!("/api/conversations/{id}/messages")),
        Some(&token),
        &json!({"content": "Thanks, one more: how long again?"}),
    );
    assert_eq!((status, events.last().unwrap().0.as_str()), (200, "done"));
}

/// A tmpfs of `megabytes` at a fresh folder, unmounted when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn new(megabytes: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            mounted.success(),
            "this test mounts a small tmpfs (it runs as root)"
        );
        Self(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Fills the disk up to its last byte with `filler`.
    fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path().join("filler")).unwrap();
        for size in [1 << 16, 1 << 12, 1] {
            let block = vec![7u8; size];
            while file.write_all(&block).is_ok() {}
        }
        let _ = file.sync_all();
    }

    fn make_room(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_loses_nothing() {
    let disk = SmallDisk::new(256);
    let home = disk.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.join("models")).unwrap();
    let notes = home.join("notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(
        notes.join("returns.md"),
        "# Returns\n\nParcels can be returned within 30 days.\n",
    )
    .unwrap();
    let ingest = kefu(&home, None)
        .args(["ingest", notes.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(ingest.status.success(), "{ingest:?}");
    let admin = staff_member(&home, None, "admin", "boss");
    let server = Server::start(&home, None, &["--trainer", "off"]);
    let before = documents(&server, &admin);
    assert_eq!(before.len(), 1);

    disk.fill();
    // An upload: a clear error, the stored documents as they were, no temporary file left.
    let (status, body) = upload(
        &server.base,
        &admin,
        "shipping.md",
        b"# Shipping\n\nOrders ship within two days.\n".to_vec(),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (507, Some("storage_full")),
        "{body}"
    );
    assert_eq!(documents(&server, &admin), before);
    let uploads = home.join("uploads");
    let left: Vec<_> = walk(&uploads);
    assert!(left.is_empty(), "{left:?}");
    // The server stays ready (readiness only reads).
    assert_eq!(get(&server.url("/readyz"), None).0, 200);
    // A registry import: a clear error, nothing left in incoming/.
    let models = tempfile::tempdir().unwrap();
    let tiny = kefu_model::testing::write_tiny_gguf(
        models.path(),
        &kefu_model::testing::TinySpec::new(kefu_model::Architecture::Llama),
    );
    let register = kefu(&home, None)
        .args(["models", "register", tiny.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!register.status.success());
    let message = String::from_utf8_lossy(&register.stderr).to_lowercase();
    assert!(
        message.contains("no space") || message.contains("storage"),
        "{message}"
    );
    assert!(walk(&home.join("registry/incoming")).is_empty());
    // The CLI's ingest: a non-zero exit naming the cause; the stored document stays.
    drop(server);
    disk.make_room();
    std::fs::write(
        notes.join("more.md"),
        "# More\n\nA second note about parcels.\n",
    )
    .unwrap();
    disk.fill();
    let ingest = kefu(&home, None)
        .args(["ingest", notes.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!ingest.status.success(), "{ingest:?}");

    // Room again: everything works.
    disk.make_room();
    let server = Server::start(&home, None, &["--trainer", "off"]);
    assert_eq!(documents(&server, &admin), before);
    let (status, body) = upload(
        &server.base,
        &admin,
        "shipping.md",
        b"# Shipping\n\nOrders ship within two days.\n".to_vec(),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(documents(&server, &admin).len(), 2);
}

/// Every file under `dir` (none when it does not exist).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A training job on a disk with a few megabytes left: it fails naming the full disk,
/// registers and promotes nothing, leaves nothing in the registry's `incoming/`; with room
/// again the next job succeeds.
#[test]
fn a_job_on_a_full_disk_fails_clearly_and_changes_nothing() {
    let disk = SmallDisk::new(1024);
    let home = disk.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.join("models")).unwrap();
    std::fs::write(
        home.join("recipe.toml"),
        "[lora]\nrank = 4\nalpha = 8.0\n[sft]\nepochs = 1\nlr = 1e-3\nbatch = 1\n\
         max_len = 512\neval_fraction = 0.0\n",
    )
    .unwrap();
    let admin = staff_member(&home, None, "admin", "boss");
    let mut command = kefu(&home, None);
    command.env("KEFU_WORKER_POLL_MS", "200");
    let server = Server::spawn(command, &["--max-tokens", "16"]);
    let (_, ready) = get(&server.url("/readyz"), None);
    let original = ready["model_version"].as_str().unwrap().to_string();
    let (id, _, answer) = ask_anonymously(&server, "How do I install a package?");
    correct(
        &server,
        &admin,
        &id,
        answer,
        "Run apt install with the package's name.",
    );
    let versions = || {
        request("GET", &server.url("/api/admin/models"), &admin, None).1["versions"]
            .as_array()
            .unwrap()
            .len()
    };
    let before = versions();
    let finished = |job: i64| {
        let url = server.url(&format!("/api/admin/training/jobs/{job}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(900);
        loop {
            let (_, job) = request("GET", &url, &admin, None);
            if matches!(
                job["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return job;
            }
            assert!(std::time::Instant::now() < deadline, "{job}");
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    let trigger = || {
        let (status, job) = request(
            "POST",
            &server.url("/api/admin/training/jobs"),
            &admin,
            None,
        );
        assert_eq!(status, 202, "{job}");
        job["id"].as_i64().unwrap()
    };

    // Leave 8 MiB: the database works, a merged model (over 100 MB) cannot be written.
    disk.fill();
    {
        let filler = std::fs::OpenOptions::new()
            .write(true)
            .open(disk.path().join("filler"))
            .unwrap();
        let size = filler.metadata().unwrap().len();
        filler.set_len(size.saturating_sub(8 << 20)).unwrap();
    }
    let job = finished(trigger());
    assert_eq!(job["status"], "failed", "{job}");
    let error = job["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        error.contains("no space") || error.contains("full"),
        "{job}"
    );
    assert_eq!(versions(), before);
    assert_eq!(
        get(&server.url("/readyz"), None).1["model_version"],
        original.as_str()
    );
    assert!(walk(&home.join("registry/incoming")).is_empty());

    disk.make_room();
    let job = finished(trigger());
    assert_eq!(job["status"], "succeeded", "{job}");
}
