//! Loading: Hugging Face folders (config, tokenizer, sharded safetensors) match candle-transformers'
//! dense `llama` / `qwen2`; slow GGUF block types are re-quantized once and cached.

mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{llama, qwen2};
use common::max_abs_diff;
use kefu_model::decoder::Target;
use kefu_model::gguf::GgufFile;
use kefu_model::testing::{TinySpec, write_hf_folder, write_tiny_gguf};
use kefu_model::{Architecture, KvCache, LoadOptions, LoadedModel, ModelFormat};

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

#[test]
fn a_file_whose_first_ffn_down_is_fast_is_requantized_for_its_other_slow_matrices() {
    // Qwen2.5-Coder's shipped file: Q5_0 projections behind a fast `ffn_down`.
    let tmp = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        dtype: GgmlDType::Q5_0,
        ffn_down_dtype: Some(GgmlDType::Q8_0),
        ..TinySpec::new(Architecture::Qwen2)
    };
    let gguf = write_tiny_gguf(tmp.path(), &spec);
    assert!(GgufFile::open(&gguf).unwrap().has_slow_weights());
    let loaded = LoadedModel::load(&gguf, &LoadOptions::default()).unwrap();
    assert_eq!(
        loaded.weights_path,
        kefu_model::loader::requantized_path(&gguf)
    );
    let copy = GgufFile::open(&loaded.weights_path).unwrap();
    assert!(!copy.has_slow_weights(), "a slow matrix was left as it was");
}

#[test]
fn base_weights_come_back_in_hugging_face_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = write_tiny_gguf(tmp.path(), &TinySpec::new(Architecture::Llama));
    let tensors = write_hf_folder(&gguf, &tmp.path().join("hf"));
    let model = LoadedModel::load(&gguf, &LoadOptions::default()).unwrap();
    for (target, name) in [
        (Target::Q, "self_attn.q_proj"),
        (Target::K, "self_attn.k_proj"),
        (Target::V, "self_attn.v_proj"),
        (Target::O, "self_attn.o_proj"),
        (Target::Gate, "mlp.gate_proj"),
        (Target::Up, "mlp.up_proj"),
        (Target::Down, "mlp.down_proj"),
    ] {
        let ours = model.decoder.base_weight(1, target).unwrap();
        let expected = &tensors[&format!("model.layers.1.{name}.weight")];
        assert_eq!(max_abs_diff(&ours, expected), 0.0, "{name}");
    }
}

/// A file that stores its tied table twice (Qwen2.5's: `token_embd` as Q5_0, `output` as
/// Q8_0) serves token lookups from the packed output table and never keeps the second copy;
/// a file whose two tables differ keeps both. Sharing reads the more precise copy: the logits
/// are those of the table as Q8_0 in both places (within the kernels' own difference), not
/// those of the Q5_0 lookups.
#[test]
fn a_token_table_stored_twice_is_kept_once() {
    if !kefu_model::q8::available() {
        eprintln!("skipped: no AVX-512 VNNI here, so nothing is packed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let gguf = write_tiny_gguf(tmp.path(), &TinySpec::new(Architecture::Qwen2));
    let mut file = GgufFile::open(&gguf).unwrap();
    let table = file
        .tensor("token_embd.weight", &Device::Cpu)
        .unwrap()
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap();
    let mut with_tables = |name: &str, lookup: GgmlDType| {
        let path = tmp.path().join(name);
        kefu_model::gguf::rewrite(&mut file, &path, |name, tensor| {
            Ok(match name {
                "token_embd.weight" => QTensor::quantize(&table, lookup)?,
                "output.weight" => QTensor::quantize(&table, GgmlDType::Q8_0)?,
                _ => tensor,
            })
        })
        .unwrap();
        path
    };
    let twice = with_tables("twice.gguf", GgmlDType::Q5_0);
    let same = with_tables("same.gguf", GgmlDType::Q8_0);
    let fast = LoadOptions::default();
    let mut exact = LoadOptions::default();
    exact.decoder.fast_kernels = false;
    let load = |path: &Path, options: &LoadOptions| LoadedModel::load(path, options).unwrap();
    assert!(
        !load(&gguf, &fast).decoder.token_table_is_output(),
        "two different tables"
    );
    assert!(
        load(&twice, &fast).decoder.token_table_is_output(),
        "one table stored twice"
    );
    assert!(!load(&twice, &exact).decoder.token_table_is_output());
    let logits = |model: LoadedModel| {
        let mut cache = KvCache::new(model.config());
        model.decoder.forward(&prompt(), &mut cache).unwrap()
    };
    // The kernels' own difference, on a file with two different tables.
    let kernels = max_abs_diff(&logits(load(&gguf, &fast)), &logits(load(&gguf, &exact)));
    let reference = logits(load(&same, &exact));
    let shared = max_abs_diff(&logits(load(&twice, &fast)), &reference);
    let q5_lookups = max_abs_diff(&logits(load(&twice, &exact)), &reference);
    eprintln!(
        "logits against the Q8_0 table: shared {shared}, Q5_0 lookups {q5_lookups}, kernels {kernels}"
    );
    assert!(
        shared < 2.0 * kernels,
        "{shared} against the kernels' {kernels}"
    );
    assert!(shared < q5_lookups, "{shared} against {q5_lookups}");
}
