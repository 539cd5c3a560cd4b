//! The model crate's error type: every failure a user can cause has its own variant.

use std::path::PathBuf;

/// Errors from loading models, tokenizing, templating and generating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model file not found: {0}")]
    NotFound(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid model file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} is truncated: it holds {actual} bytes but its tensors need {expected}")]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("unsupported model architecture `{0}` (supported: llama, qwen2, qwen3, gemma3)")]
    UnknownArchitecture(String),
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("chat template error: {0}")]
    Template(String),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error(
        "the prompt has {prompt_tokens} tokens but the model's context window is {context} tokens"
    )]
    PromptTooLong {
        prompt_tokens: usize,
        context: usize,
    },
    #[error("invalid generation parameter: {0}")]
    InvalidParameter(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn tokenizer(error: impl std::fmt::Display) -> Self {
        Error::Tokenizer(error.to_string())
    }
}
