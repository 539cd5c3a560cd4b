//! The configuration file: `kefu.toml` in the data directory (or `KEFU_CONFIG`), TOML whose
//! top-level keys name `KEFU_*` settings (`port = 9000` is `KEFU_PORT=9000`).
//! Precedence: command-line flags, then environment variables, then the file, then defaults.

use std::path::{Path, PathBuf};

/// Settings the file may hold: every `KEFU_*` variable a command-line flag reads, as its
/// lower-case name without the prefix (`KEFU_MAX_TOKENS` is `max_tokens`). Read off the clap
/// definitions, so the file and the flags cannot drift apart.
pub fn keys() -> Vec<String> {
    fn walk(command: &clap::Command, keys: &mut Vec<String>) {
        for arg in command.get_arguments() {
            if let Some(name) = arg.get_env().and_then(|n| n.to_str())
                && let Some(key) = name.strip_prefix("KEFU_")
            {
                keys.push(key.to_ascii_lowercase());
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, keys);
        }
    }
    let mut keys = Vec::new();
    walk(
        &<crate::cli::Cli as clap::CommandFactory>::command(),
        &mut keys,
    );
    // Read by the code, not by a flag: the ONNX Runtime library's path.
    keys.push("onnxruntime".into());
    keys.retain(|k| k != "home" && k != "config");
    keys.sort();
    keys.dedup();
    keys
}

/// Parses the file (TOML: `key = value` at the top level) into `(KEFU_NAME, value)` pairs;
/// errors name the key, or the line of a syntax error.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
    let known = keys();
    let mut settings = Vec::new();
    for (key, value) in table {
        if !known.contains(&key) {
            return Err(format!(
                "unknown setting `{key}` (known: {})",
                known.join(", ")
            ));
        }
        let value = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                return Err(format!("`{key}` needs a string, a number or true / false"));
            }
        };
        settings.push((format!("KEFU_{}", key.to_ascii_uppercase()), value));
    }
    Ok(settings)
}

/// Where the file is: `KEFU_CONFIG`, else `kefu.toml` in the data directory named by
/// `--home` / `KEFU_HOME` (default `kefu-data`).
pub fn location(args: &[String]) -> PathBuf {
    if let Some(path) = std::env::var_os("KEFU_CONFIG") {
        return PathBuf::from(path);
    }
    let mut home = std::env::var_os("KEFU_HOME").map(PathBuf::from);
    for (i, arg) in args.iter().enumerate() {
        if let Some(value) = arg.strip_prefix("--home=") {
            home = Some(PathBuf::from(value));
        } else if let Some(value) = args.get(i + 1).filter(|_| arg == "--home") {
            home = Some(PathBuf::from(value));
        }
    }
    home.unwrap_or_else(|| PathBuf::from("kefu-data"))
        .join("kefu.toml")
}

/// Reads the file, if there is one, and returns the settings no environment variable
/// overrides.
pub fn load(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let settings = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(settings
        .into_iter()
        .filter(|(name, _)| std::env::var_os(name).is_none())
        .collect())
}

/// Puts the file's settings into the environment, where clap reads them.
#[allow(unsafe_code)]
pub fn apply(settings: &[(String, String)]) {
    for (name, value) in settings {
        // SAFETY: called first thing in `main`, before any other thread exists.
        unsafe { std::env::set_var(name, value) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_kefu_variables() {
        let settings = parse(
            "# comment\nport = 9000\nmodel = \"qwen2.5-coder-0.5b-instruct\"\nlog_format = 'json'\n",
        )
        .unwrap();
        let mut settings = settings;
        settings.sort();
        assert_eq!(
            settings,
            [
                ("KEFU_LOG_FORMAT".to_string(), "json".to_string()),
                (
                    "KEFU_MODEL".to_string(),
                    "qwen2.5-coder-0.5b-instruct".to_string()
                ),
                ("KEFU_PORT".to_string(), "9000".to_string()),
            ]
        );
    }

    #[test]
    fn every_flag_variable_is_a_key() {
        let keys = keys();
        for key in [
            "host",
            "port",
            "database_url",
            "model",
            "embedder",
            "qdrant_url",
            "workers",
            "queue",
            "max_tokens",
            "max_body_bytes",
            "threads",
            "onnxruntime",
            "device",
            "log_format",
            "keep_versions",
            "worker_poll_ms",
        ] {
            assert!(
                keys.contains(&key.to_string()),
                "{key} missing from {keys:?}"
            );
        }
    }

    #[test]
    fn mistakes_are_named() {
        assert!(
            parse("colour = \"red\"")
                .unwrap_err()
                .contains("unknown setting `colour`")
        );
        assert!(parse("\nport 9000").unwrap_err().contains("line 2"));
        assert!(
            parse("model = \"unterminated")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(parse("model = bare").unwrap_err().contains("line 1"));
        assert!(
            parse("[server]\nport = 1")
                .unwrap_err()
                .contains("unknown setting `server`")
        );
        assert!(
            parse("port = [1]")
                .unwrap_err()
                .contains("a string, a number")
        );
    }

    #[test]
    fn the_file_lives_in_the_data_directory() {
        let args: Vec<String> = ["kefu", "--home", "/srv/kefu", "serve"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(location(&args), PathBuf::from("/srv/kefu/kefu.toml"));
    }
}
