//! Logs through `tracing`: one subscriber for the process, writing to standard error as text
//! (with timestamps and levels) or JSON lines, filtered by `RUST_LOG` (default: `info` for
//! Kefu's own events and the access log, `warn` for the libraries). The events of axum, hyper,
//! sqlx and ONNX Runtime arrive through the same subscriber.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `2026-12-06T04:00:00.000Z  INFO request{…}: kefu::http: …`
    Text,
    /// One JSON object a line (timestamp, level, target, fields, spans).
    Json,
}

/// What is logged when `RUST_LOG` is not set.
/// Qdrant's engine warns about its own start-up ("feature flags not initialized", a memory
/// map check) on every open; those say nothing to a Kefu user, so only its errors show.
const DEFAULT_FILTER: &str = "warn,kefu=info,server=info,kefu_trainer=info,qdrant_edge=error";

/// The format this process logs in (for the processes it starts).
static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// The format [`init`] installed (`text` before it ran).
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or(LogFormat::Text)
}

impl LogFormat {
    /// The flag's value for this format.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Installs the process's subscriber; a second call (tests calling `run` twice) keeps the
/// first.
pub fn init(format: LogFormat) {
    let _ = FORMAT.set(format);
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}
