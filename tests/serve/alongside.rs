//! Commands run beside a running server on its data directory.

use kefu_tests::test_home;

use crate::support::*;

/// The in-process vector store is one process's at a time: `kefu ask` beside a running
/// `kefu serve` on the same data directory says so and points at the server's API, instead of
/// a bare storage error.
#[test]
fn a_command_beside_a_running_server_names_the_server() {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(test_home().join("models"), home.path().join("models")).unwrap();
    let guide = home.path().join("returns.md");
    std::fs::write(
        &guide,
        "# Returns\n\nParcels can be returned within 30 days.\n",
    )
    .unwrap();
    let ingested = kefu(home.path(), None)
        .arg("ingest")
        .arg(&guide)
        .output()
        .unwrap();
    assert!(ingested.status.success(), "{ingested:?}");
    let server = Server::start(home.path(), None, &["--trainer", "off"]);
    let out = kefu(home.path(), None)
        .args(["ask", "How long do I have to return a parcel?"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("another kefu process (a running `kefu serve`?) has it open"),
        "{stderr}"
    );
    drop(server);
    // With the server gone the same command works.
    let out = kefu(home.path(), None)
        .args([
            "ask",
            "How long do I have to return a parcel?",
            "--max-tokens",
            "4",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
