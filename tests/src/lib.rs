//! What the end-to-end tests share: the `kefu` program (this package's `kefu-e2e` binary), the data directory with the fetched models, the shared data set, and the
//! checks every refusal must pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The `kefu` program under test: this package's `kefu-e2e` binary (`server::main`, as the
/// `kefu` binary runs it), which cargo builds before it runs this package's tests. It lies
/// beside the test's own executable's folder (`target/<profile>/deps/…`).
pub fn kefu_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        let binary = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test runs from target/<profile>/deps")
            .join("kefu-e2e");
        assert!(
            binary.exists(),
            "no {}: run the tests through cargo",
            binary.display()
        );
        binary
    })
}

/// A `kefu` command (standard streams as the caller sets them).
pub fn kefu_command() -> Command {
    Command::new(kefu_binary())
}

/// The product's default chat model (`kefu serve` without `--model` on a fresh data
/// directory): the end-to-end tests of each capability on the real default model use it.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b-instruct";

/// A real, small chat model (SmolLM2-135M, about five times faster than the default): the
/// tests about something other than the model — the loop's mechanics, access, the platform —
/// serve and train it.
pub const SMALL_MODEL: &str = "smollm2-135m-instruct";

/// The data directory holding the fetched models (`KEFU_TEST_HOME`, else `~/.cache/kefu`):
/// the default and the small chat model, the default embedder and ONNX Runtime must be there.
pub fn test_home() -> PathBuf {
    let home = std::env::var("KEFU_TEST_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kefu"));
    for needed in [
        "models/multilingual-e5-small/model.onnx",
        "models/onnxruntime/libonnxruntime.so",
        "models/smollm2-135m-instruct/model.gguf",
        "models/qwen2.5-coder-0.5b-instruct/model.gguf",
    ] {
        assert!(
            home.join(needed).exists(),
            "{needed} is not in {}: run ./scripts/test.sh (it fetches the models)",
            home.display()
        );
    }
    home
}

/// A path in the steering repository's shared data (`../shared/data`).
pub fn shared_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(relative)
}

/// [`shared_path`] as a string (for command lines).
pub fn shared(relative: &str) -> String {
    shared_path(relative).to_string_lossy().into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A refusal: non-zero exit, the expected words on standard error (any case), and no panic.
pub fn assert_clear_failure(output: &Output, expected: &str) {
    let err = stderr(output);
    assert!(
        !output.status.success(),
        "expected failure, got success: {err}"
    );
    assert!(
        err.to_lowercase().contains(&expected.to_lowercase()),
        "stderr lacks {expected:?}: {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
}

/// An HTTP client that hands back 4xx / 5xx answers instead of failing on them.
pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}
