//! Writing a GGUF model as a Hugging Face folder — `model.safetensors` (f32, Hugging Face names
//! and row layout), `config.json`, `generation_config.json`, `tokenizer.json` and
//! `tokenizer_config.json` with the chat template — the layout transformers, PEFT and vLLM load
//! and [`crate::LoadedModel::load`] reads back.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::chat::default_template;
use crate::config::Config;
use crate::decoder::WeightSource;
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, GgufSource};
use crate::tokenizer::{from_gguf_metadata, gguf_token_id};

/// Hugging Face names of every tensor of a model with this configuration.
pub fn hf_tensor_names(config: &Config) -> Vec<String> {
    let mut names = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
    ];
    if !config.tie_word_embeddings {
        names.push("lm_head.weight".into());
    }
    let gemma_norms: &[&str] = match config.architecture.is_gemma() {
        true => &[
            "pre_feedforward_layernorm.weight",
            "post_feedforward_layernorm.weight",
        ],
        false => &[],
    };
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for module in gemma_norms {
            names.push(format!("{p}.{module}"));
        }
        for module in [
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ] {
            names.push(format!("{p}.{module}"));
        }
        if config.attention_bias {
            for module in ["q_proj", "k_proj", "v_proj"] {
                names.push(format!("{p}.self_attn.{module}.bias"));
            }
        }
        if config.qk_norm {
            for module in ["q_norm", "k_norm"] {
                names.push(format!("{p}.self_attn.{module}.weight"));
            }
        }
    }
    names
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Writes the model in `gguf` into the folder `dir` in Hugging Face layout; every tensor passes
/// through `edit(hf_name, dense_f32)` first (a merge adds its adapters' updates there). Returns
/// how many tensors were written. The weights file is written beside its final name and
/// renamed, so a failed export never leaves a half-written `model.safetensors`.
pub fn export_hf(
    gguf: &Path,
    dir: &Path,
    mut edit: impl FnMut(&str, Tensor) -> Result<Tensor>,
) -> Result<usize> {
    let device = Device::Cpu;
    let mut file = GgufFile::open(gguf)?;
    let config = file.config()?;
    let metadata = file.metadata().clone();
    let tokenizer = from_gguf_metadata(&metadata)?;
    let mut tensors = HashMap::new();
    {
        let mut source = GgufSource::new(&mut file, config.clone(), device.clone());
        for name in hf_tensor_names(&config) {
            let weight = source.require(&name)?.dequantize(&device)?;
            tensors.insert(name.clone(), edit(&name, weight)?);
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let weights = dir.join("model.safetensors");
    let partial = dir.join("model.safetensors.partial");
    candle_core::safetensors::save(&tensors, &partial)?;
    std::fs::rename(&partial, &weights).map_err(|e| Error::io(&weights, e))?;

    let token_text = |key: &str| {
        gguf_token_id(&metadata, key)
            .and_then(|id| tokenizer.id_to_token(id))
            .unwrap_or_default()
    };
    let bos = token_text("tokenizer.ggml.bos_token_id");
    let eos = token_text("tokenizer.ggml.eos_token_id");
    let template = metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| default_template(config.architecture).to_string());
    let mut hf_config = config.to_hf_json();
    let bos_id = gguf_token_id(&metadata, "tokenizer.ggml.bos_token_id");
    let eos_id = gguf_token_id(&metadata, "tokenizer.ggml.eos_token_id");
    hf_config["bos_token_id"] = serde_json::json!(bos_id);
    hf_config["eos_token_id"] = serde_json::json!(eos_id);
    write(
        &dir.join("config.json"),
        &serde_json::to_string_pretty(&hf_config).expect("JSON"),
    )?;
    let generation = serde_json::json!({ "bos_token_id": bos_id, "eos_token_id": eos_id });
    write(
        &dir.join("generation_config.json"),
        &serde_json::to_string_pretty(&generation).expect("JSON"),
    )?;
    let tokenizer_path = dir.join("tokenizer.json");
    tokenizer
        .save(&tokenizer_path, false)
        .map_err(|e| Error::io(&tokenizer_path, std::io::Error::other(e.to_string())))?;
    let tokenizer_config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": eos,
        "chat_template": template,
        "model_max_length": config.max_position_embeddings,
        "clean_up_tokenization_spaces": false,
    });
    write(
        &dir.join("tokenizer_config.json"),
        &serde_json::to_string_pretty(&tokenizer_config).expect("JSON"),
    )?;
    Ok(tensors.len())
}
