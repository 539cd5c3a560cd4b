//! Helpers shared by this crate's integration tests: where the real models are, tensor diffs.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{Device, Tensor, Var};
use kefu_model::decoder::Target;
use kefu_model::{LoadedModel, Lora, LoraDropout};

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

/// A tiny random-weight model of `architecture` loaded with `options` (and the folder it is in).
pub fn tiny_model(
    architecture: kefu_model::Architecture,
    options: &kefu_model::LoadOptions,
) -> (tempfile::TempDir, LoadedModel) {
    tiny_model_of(&kefu_model::testing::TinySpec::new(architecture), options)
}

/// [`tiny_model`] of `spec`.
pub fn tiny_model_of(
    spec: &kefu_model::testing::TinySpec,
    options: &kefu_model::LoadOptions,
) -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    let path = kefu_model::testing::write_tiny_gguf(dir.path(), spec);
    (dir, LoadedModel::load(&path, options).unwrap())
}

/// A tiny model of `architecture` with three layers (the folder it is in).
pub fn three_layers(architecture: kefu_model::Architecture) -> (tempfile::TempDir, LoadedModel) {
    let spec = kefu_model::testing::TinySpec {
        layers: 3,
        ..kefu_model::testing::TinySpec::new(architecture)
    };
    tiny_model_of(&spec, &kefu_model::LoadOptions::default())
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

/// Rank-4 adapters (scale 2, A and B random) on every projection of every layer, with
/// `dropout` on their inputs; returns their variables, A then B per projection.
pub fn attach_adapters(model: &mut LoadedModel, dropout: Option<LoraDropout>) -> Vec<Var> {
    let mut vars = Vec::new();
    for layer in 0..model.config().num_hidden_layers {
        for target in Target::ALL {
            let linear = model.decoder.linear_mut(layer, target).unwrap();
            let (out_f, in_f) = (linear.out_features(), linear.in_features());
            let a = Var::randn(0f32, 0.1, (4, in_f), &Device::Cpu).unwrap();
            let b = Var::randn(0f32, 0.05, (out_f, 4), &Device::Cpu).unwrap();
            linear.lora = Some(Lora {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale: 2.0,
                dropout: dropout.clone(),
            });
            vars.extend([a, b]);
        }
    }
    vars
}
