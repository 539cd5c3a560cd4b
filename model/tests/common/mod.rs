//! Helpers shared by this crate's integration tests: where the real models are, tensor diffs.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::Tensor;

/// Where the real small model (SmolLM2-135M-Instruct) is: `KEFU_TEST_MODEL`, else the cache
/// `.ci/run` fills.
pub fn small_model_path() -> PathBuf {
    if let Ok(path) = std::env::var("KEFU_TEST_MODEL") {
        return PathBuf::from(path);
    }
    model_path("smollm2-135m-instruct")
}

/// A fetched model in the test cache (`KEFU_HOME`, default `~/.cache/kefu`).
pub fn model_path(name: &str) -> PathBuf {
    let home = std::env::var("KEFU_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/kefu")
        });
    let path = home.join("models").join(name).join("model.gguf");
    assert!(
        path.exists(),
        "the model is missing at {}: run `kefu models fetch {name}` with KEFU_HOME={} \
         (.ci/run does)",
        path.display(),
        home.display()
    );
    path
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
