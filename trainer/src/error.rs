//! The trainer's error type: the model's and candle's errors, I/O with its path, bad data,
//! bad settings, and a run stopped by its caller.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Model(#[from] kefu_model::Error),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Unusable training data (the message names the file and line).
    #[error("{0}")]
    Data(String),
    /// The caller stopped the run after this step.
    #[error("training stopped after step {0}")]
    Interrupted(usize),
    /// A setting out of range, or an adapter that does not fit the model.
    #[error("{0}")]
    Config(String),
}

impl TrainError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;
