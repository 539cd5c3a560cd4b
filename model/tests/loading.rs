//! Loading: Hugging Face folders (config, tokenizer, sharded safetensors) match candle-transformers'
//! dense `llama` / `qwen2`; slow GGUF block types are re-quantized once and cached.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{llama, qwen2};
use common::max_abs_diff;
use kefu_model::decoder::WeightSource;
use kefu_model::gguf::{GgufFile, GgufSource, gguf_name};
use kefu_model::testing::{TinySpec, write_tiny_gguf};
use kefu_model::{Architecture, KvCache, LoadOptions, LoadedModel, ModelFormat};

/// Converts a tiny GGUF into a Hugging Face folder with the weights split over two shards.
fn write_hf_folder(gguf: &Path, dir: &Path) -> HashMap<String, Tensor> {
    let mut file = GgufFile::open(gguf).unwrap();
    let config = file.config().unwrap();
    let tokenizer = kefu_model::tokenizer::from_gguf_metadata(file.metadata()).unwrap();
    let names: Vec<String> = file
        .content
        .tensor_infos
        .keys()
        .map(|gguf_tensor| hf_name(gguf_tensor))
        .collect();
    let mut source = GgufSource::new(&mut file, config.clone(), Device::Cpu);
    let mut tensors = HashMap::new();
    for name in names {
        let weight = source.require(&name).unwrap();
        tensors.insert(name, weight.dequantize(&Device::Cpu).unwrap());
    }
    std::fs::create_dir_all(dir).unwrap();
    let (first, second): (HashMap<_, _>, HashMap<_, _>) = tensors
        .clone()
        .into_iter()
        .partition(|(name, _)| name.contains("layers.0.") || name.contains("embed"));
    candle_core::safetensors::save(&first, dir.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&second, dir.join("model-00002-of-00002.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_hf_json().to_string()).unwrap();
    tokenizer.save(dir.join("tokenizer.json"), false).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "<|im_end|>", "bos_token": "<|im_start|>"}"#,
    )
    .unwrap();
    tensors
}

fn hf_name(gguf_tensor: &str) -> String {
    let candidates = [
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
        "lm_head.weight".to_string(),
    ];
    for c in candidates {
        if gguf_name(&c).as_deref() == Some(gguf_tensor) {
            return c;
        }
    }
    let (layer, module) = gguf_tensor
        .strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .unwrap();
    for hf in [
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "self_attn.q_proj.bias",
        "self_attn.k_proj.bias",
        "self_attn.v_proj.bias",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
    ] {
        let full = format!("model.layers.{layer}.{hf}");
        if gguf_name(&full).as_deref() == Some(&format!("blk.{layer}.{module}")) {
            return full;
        }
    }
    panic!("no Hugging Face name for {gguf_tensor}");
}

fn prompt() -> Tensor {
    Tensor::new(&[1u32, 74, 71, 78, 78, 81, 2, 40], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

fn kefu_last_logits(dir: &Path) -> Tensor {
    let options = LoadOptions {
        requantize: false,
        ..LoadOptions::default()
    };
    let model = LoadedModel::load(dir, &options).unwrap();
    assert_eq!(model.format, ModelFormat::HuggingFace);
    let mut cache = KvCache::new(model.config());
    model.decoder.forward(&prompt(), &mut cache).unwrap()
}

#[test]
fn hf_llama_folder_matches_candle_transformers_llama() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = write_tiny_gguf(tmp.path(), &TinySpec::new(Architecture::Llama));
    let dir = tmp.path().join("hf");
    let tensors = write_hf_folder(&gguf, &dir);
    let config: llama::LlamaConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let config = config.into_config(false);
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let reference = llama::Llama::load(vb, &config).unwrap();
    let mut cache = llama::Cache::new(true, DType::F32, &config, &Device::Cpu).unwrap();
    let expected = reference.forward(&prompt(), 0, &mut cache).unwrap();
    let diff = max_abs_diff(&kefu_last_logits(&dir), &expected);
    assert!(diff < 1e-4, "logits differ by {diff}");
}

#[test]
fn hf_qwen2_folder_matches_candle_transformers_qwen2() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = write_tiny_gguf(tmp.path(), &TinySpec::new(Architecture::Qwen2));
    let dir = tmp.path().join("hf");
    let tensors = write_hf_folder(&gguf, &dir);
    let config: qwen2::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let mut reference = qwen2::ModelForCausalLM::new(&config, vb).unwrap();
    let expected = reference.forward(&prompt(), 0).unwrap().squeeze(1).unwrap();
    let diff = max_abs_diff(&kefu_last_logits(&dir), &expected);
    assert!(diff < 1e-4, "logits differ by {diff}");
}

#[test]
fn slow_block_types_are_requantized_once_and_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        dtype: GgmlDType::Q4_1,
        ..TinySpec::new(Architecture::Llama)
    };
    let gguf = write_tiny_gguf(tmp.path(), &spec);
    let first = LoadedModel::load(&gguf, &LoadOptions::default()).unwrap();
    let cached: PathBuf = kefu_model::loader::requantized_path(&gguf);
    assert_eq!(first.weights_path, cached);
    let reopened = GgufFile::open(&cached).unwrap();
    assert_eq!(reopened.weight_dtype(), Some(GgmlDType::Q8_0));
    let written = std::fs::metadata(&cached).unwrap().modified().unwrap();

    let second = LoadedModel::load(&gguf, &LoadOptions::default()).unwrap();
    assert_eq!(second.weights_path, cached);
    let unchanged = std::fs::metadata(&cached).unwrap().modified().unwrap();
    assert_eq!(written, unchanged, "the cached file was rewritten");

    // Without re-quantization the shipped file is used as it is.
    let options = LoadOptions {
        requantize: false,
        ..LoadOptions::default()
    };
    assert_eq!(
        LoadedModel::load(&gguf, &options).unwrap().weights_path,
        gguf
    );
}
