//! The configuration file: `kefu.toml` in the data directory (or `KEFU_CONFIG`), flat
//! `key = value` lines whose keys name `KEFU_*` settings (`port = 9000` is `KEFU_PORT=9000`).
//! Precedence: command-line flags, then environment variables, then the file, then defaults.

use std::path::{Path, PathBuf};

/// Settings the file may hold, each the lower-case name of its `KEFU_*` variable.
pub const KEYS: &[&str] = &[
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
];

/// Parses the file's text into `(KEFU_NAME, value)` pairs; errors name the line.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut settings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected `key = value`", n + 1));
        };
        let key = key.trim();
        if !KEYS.contains(&key) {
            return Err(format!(
                "line {}: unknown setting `{key}` (known: {})",
                n + 1,
                KEYS.join(", ")
            ));
        }
        let value = value.trim();
        let value = if let Some(quoted) = value.strip_prefix('"') {
            quoted
                .strip_suffix('"')
                .filter(|v| !v.contains('"'))
                .ok_or_else(|| format!("line {}: unterminated string", n + 1))?
                .to_string()
        } else if !value.is_empty() && value.chars().all(|c| c.is_ascii_digit()) {
            value.to_string()
        } else {
            return Err(format!(
                "line {}: `{key}` needs a number or a \"quoted string\"",
                n + 1
            ));
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
    fn flat_settings_become_kefu_variables() {
        let settings =
            parse("# comment\nport = 9000\nmodel = \"qwen2.5-coder-0.5b-instruct\"\n").unwrap();
        assert_eq!(
            settings,
            [
                ("KEFU_PORT".to_string(), "9000".to_string()),
                (
                    "KEFU_MODEL".to_string(),
                    "qwen2.5-coder-0.5b-instruct".to_string()
                ),
            ]
        );
    }

    #[test]
    fn mistakes_name_their_line() {
        assert!(
            parse("colour = \"red\"")
                .unwrap_err()
                .contains("line 1: unknown setting")
        );
        assert!(parse("\nport 9000").unwrap_err().contains("line 2"));
        assert!(
            parse("model = \"unterminated")
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(parse("model = bare").unwrap_err().contains("quoted string"));
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
