//! Merging a LoRA adapter into its base: `W + (α/r)·B·A` for every adapted projection, written
//! as a GGUF file the server loads like any other, or as a Hugging Face folder (f32
//! safetensors, config, tokenizer) for transformers, PEFT and vLLM. Weights are dequantized
//! before merging and never merged into a 4-bit type: a float GGUF base stays f32, a quantized
//! one is written as Q8_0.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use kefu_model::config::Architecture;
use kefu_model::decoder::Target;
use kefu_model::gguf::{GgufFile, gguf_name, rewrite};

use crate::error::{Result, TrainError};
use crate::lora::{ADAPTER_WEIGHTS, LoraConfig, read_config};

/// What a merge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeReport {
    /// Projections that received their adapter's update.
    pub merged: usize,
    /// The type the merged projections were written in.
    pub dtype: String,
}

/// GGUF `llama` files keep the q and k rows interleaved per head; an update computed in
/// Hugging Face layout is moved into that order: GGUF row `2j + t` = HF row `t·(d/2) + j`.
fn to_gguf_rows(delta: &Tensor, heads: usize) -> Result<Tensor> {
    let rows = delta.dim(0)?;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut order = Vec::with_capacity(rows);
    for h in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                order.push((h * head_dim + t * half + j) as u32);
            }
        }
    }
    let index = Tensor::from_vec(order, rows, delta.device())?;
    Ok(delta.index_select(&index, 0)?)
}

/// The adapter's updates `(α/r)·B·A`, by the Hugging Face name of the weight each changes
/// (`model.layers.3.self_attn.q_proj.weight`), in Hugging Face row layout.
pub fn adapter_updates(adapter_dir: &Path, layers: usize) -> Result<HashMap<String, Tensor>> {
    let config: LoraConfig = read_config(adapter_dir)?;
    let weights = adapter_dir.join(ADAPTER_WEIGHTS);
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu)?;
    let mut updates = HashMap::new();
    for layer in 0..layers {
        for &target in &config.targets {
            let block = match target {
                Target::Q | Target::K | Target::V | Target::O => "self_attn",
                _ => "mlp",
            };
            let module = format!("model.layers.{layer}.{block}.{}", target.module_name());
            let mut take = |part: &str| {
                let name = format!("base_model.model.{module}.{part}.weight");
                tensors
                    .remove(&name)
                    .ok_or_else(|| TrainError::Config(format!("{}: no {name}", weights.display())))
            };
            let a = take("lora_A")?.to_dtype(DType::F32)?;
            let b = take("lora_B")?.to_dtype(DType::F32)?;
            if a.dim(0)? != config.rank || b.dim(1)? != config.rank {
                return Err(TrainError::Config(format!(
                    "{}: {module} is not rank {} as adapter_config.json says",
                    weights.display(),
                    config.rank
                )));
            }
            updates.insert(
                format!("{module}.weight"),
                (b.matmul(&a)? * config.scale())?,
            );
        }
    }
    Ok(updates)
}

fn mismatch(name: &str, weight: &[usize], delta: &[usize]) -> kefu_model::Error {
    kefu_model::Error::InvalidConfig(format!(
        "{name} is {weight:?} but the adapter's update is {delta:?} (an adapter for another model?)"
    ))
}

fn too_few(base: &Path, merged: usize, updates: usize) -> TrainError {
    TrainError::Config(format!(
        "{}: only {merged} of the adapter's {updates} projections exist in the base model",
        base.display()
    ))
}

/// Writes `base` (GGUF) as a Hugging Face folder `output` (f32 safetensors, config, tokenizer
/// with the chat template), with the adapter in `adapter_dir` merged in when given.
pub fn merge_hf(base: &Path, adapter_dir: Option<&Path>, output: &Path) -> Result<MergeReport> {
    let model = GgufFile::open(base)?.config()?;
    let updates = match adapter_dir {
        Some(dir) => adapter_updates(dir, model.num_hidden_layers)?,
        None => HashMap::new(),
    };
    let existed = output.exists();
    let discard = || {
        if !existed {
            let _ = std::fs::remove_dir_all(output);
        }
    };
    let mut merged = 0;
    let written = kefu_model::export::export_hf(base, output, |name, weight| {
        let Some(delta) = updates.get(name) else {
            return Ok(weight);
        };
        if weight.dims() != delta.dims() {
            return Err(mismatch(name, weight.dims(), delta.dims()));
        }
        merged += 1;
        Ok((weight + delta)?)
    });
    if let Err(e) = written {
        discard();
        return Err(e.into());
    }
    if merged != updates.len() {
        discard();
        return Err(too_few(base, merged, updates.len()));
    }
    Ok(MergeReport {
        merged,
        dtype: "F32".into(),
    })
}

/// Merges the adapter in `adapter_dir` (PEFT layout) into the GGUF model `base`, writing
/// `output` (a `.gguf` file).
pub fn merge_gguf(base: &Path, adapter_dir: &Path, output: &Path) -> Result<MergeReport> {
    let device = Device::Cpu;
    let mut file = GgufFile::open(base)?;
    let model = file.config()?;
    // GGUF name → update in GGUF layout.
    let mut updates: HashMap<String, Tensor> = HashMap::new();
    for (name, mut delta) in adapter_updates(adapter_dir, model.num_hidden_layers)? {
        let heads = if name.ends_with("q_proj.weight") {
            Some(model.num_attention_heads)
        } else if name.ends_with("k_proj.weight") {
            Some(model.num_key_value_heads)
        } else {
            None
        };
        if let (Architecture::Llama, Some(heads)) = (model.architecture, heads) {
            delta = to_gguf_rows(&delta, heads)?;
        }
        let gguf = gguf_name(model.architecture, &name)
            .ok_or_else(|| TrainError::Config(format!("no GGUF name for {name}")))?;
        updates.insert(gguf, delta);
    }
    let mut merged = 0;
    let mut written = None;
    rewrite(&mut file, output, |name, tensor| {
        let Some(delta) = updates.get(name) else {
            return Ok(tensor);
        };
        let weight = tensor.dequantize(&device)?;
        if weight.dims() != delta.dims() {
            return Err(mismatch(name, weight.dims(), delta.dims()));
        }
        let target = match tensor.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => GgmlDType::F32,
            _ if weight.dim(1)? % GgmlDType::Q8_0.block_size() == 0 => GgmlDType::Q8_0,
            _ => GgmlDType::F32,
        };
        merged += 1;
        written = Some(target);
        Ok(QTensor::quantize(&(weight + delta)?, target)?)
    })?;
    if merged != updates.len() {
        let _ = std::fs::remove_file(output);
        return Err(too_few(base, merged, updates.len()));
    }
    Ok(MergeReport {
        merged,
        dtype: format!("{:?}", written.unwrap_or(GgmlDType::F32)),
    })
}
