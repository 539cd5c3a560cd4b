//! `kefu serve`'s embedded training worker: a child process (`kefu trainer work`), restarted
//! when it dies, ended when the server ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `kefu serve`'s embedded worker: a child process, restarted when it dies; once `stop` is set
/// the thread kills it and ends (join it before exiting, so no worker outlives the server).
pub fn supervise(
    home: PathBuf,
    database_url: String,
    policy: kefu_trainer::dataset::Policy,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(exe) = std::env::current_exe() else {
            tracing::error!("cannot find this program to start the training worker");
            return;
        };
        while !stop.load(Ordering::SeqCst) {
            let child = std::process::Command::new(&exe)
                .env("KEFU_HOME", &home)
                .env("KEFU_DATABASE_URL", &database_url)
                .env("KEFU_FEEDBACK_POLICY", policy.name())
                // The worker ends when its parent is no longer this process.
                .env(
                    kefu_trainer::worker::EMBEDDED,
                    std::process::id().to_string(),
                )
                // The worker logs as the server does (`RUST_LOG` is inherited).
                .env("KEFU_LOG_FORMAT", crate::logging::format().name())
                .args(["trainer", "work"])
                .stdin(std::process::Stdio::null())
                // The server's standard output may be a pipe its reader has closed; the worker
                // reports on standard error.
                .stdout(std::process::Stdio::null())
                .spawn();
            let mut child = match child {
                Ok(child) => child,
                Err(e) => {
                    tracing::error!("cannot start the training worker: {e}");
                    std::thread::sleep(Duration::from_secs(10));
                    continue;
                }
            };
            loop {
                if stop.load(Ordering::SeqCst) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                match child.try_wait() {
                    Ok(Some(status)) => {
                        tracing::warn!("the training worker stopped ({status}); restarting it");
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(200)),
                    Err(_) => break,
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    })
}
