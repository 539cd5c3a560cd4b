//! Merging an adapter into its base GGUF: the merged model's logits equal base + adapter (exactly
//! up to float rounding on an f32 base — which also checks the llama q/k row order — and within
//! Q8_0 rounding on a quantized base), greedy answers are identical, and an adapter for another
//! model is refused without leaving a file. The Hugging Face export (f32 safetensors, config,
//! tokenizer, chat template) loads back with the adapted logits on every base.

use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use kefu_model::generate::GenerationParams;
use kefu_model::testing::{TinySpec, write_tiny_gguf};
use kefu_model::{Architecture, ChatMessage, DecoderOptions, LoadOptions, LoadedModel, Role};
use kefu_trainer::lora::{Adapters, LoraConfig};
use kefu_trainer::merge::{merge_gguf, merge_hf};

fn load(path: &Path) -> LoadedModel {
    LoadedModel::load(path, &LoadOptions::default()).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

#[test]
fn merged_weights_give_the_adapted_logits() {
    for (architecture, dtype, tolerance) in [
        (Architecture::Llama, GgmlDType::F32, 1e-4f32),
        (Architecture::Qwen2, GgmlDType::F32, 1e-4),
        (Architecture::Qwen3, GgmlDType::F32, 1e-4),
        (Architecture::Gemma3, GgmlDType::F32, 1e-4),
        // Merged weights are rounded to Q8_0 once more: the logits move by that rounding.
        (Architecture::Llama, GgmlDType::Q8_0, 0.1),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let spec = TinySpec {
            dtype,
            ..TinySpec::new(architecture)
        };
        let base = write_tiny_gguf(dir.path(), &spec);
        let mut model = load(&base);
        let config = LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        };
        let adapters = Adapters::attach(&mut model.decoder, &config, 7).unwrap();
        // A fixed, non-zero B (the same on every run).
        for (k, adapter) in adapters.adapters.iter().enumerate() {
            let n = adapter.b.elem_count();
            let values: Vec<f32> = (0..n)
                .map(|i| 0.05 * ((i * 7 + k * 13) as f32).sin())
                .collect();
            let b = Tensor::from_vec(values, adapter.b.shape(), &Device::Cpu).unwrap();
            adapter.b.set(&b).unwrap();
        }
        let x = Tensor::new(&[[5u32, 9, 77, 120, 3, 44, 8, 200]], &Device::Cpu).unwrap();
        let adapted = model.decoder.forward_all(&x).unwrap();
        let adapter_dir = dir.path().join("adapter");
        adapters.save(&adapter_dir, "tiny").unwrap();

        let merged_path = dir.path().join("merged.gguf");
        let report = merge_gguf(&base, &adapter_dir, &merged_path).unwrap();
        assert_eq!(report.merged, 7 * spec.layers);
        let merged = load(&merged_path);
        let logits = merged.decoder.forward_all(&x).unwrap();
        let diff = max_abs(&(&logits - &adapted).unwrap()) / max_abs(&adapted);
        eprintln!("{architecture:?} {dtype:?}: relative logit difference {diff}");
        assert!(
            diff < tolerance,
            "{architecture:?} {dtype:?}: relative difference {diff}"
        );
        let base_logits = load(&base).decoder.forward_all(&x).unwrap();
        let moved = max_abs(&(&base_logits - &adapted).unwrap()) / max_abs(&adapted);
        eprintln!("{architecture:?} {dtype:?}: the adapter moves the logits by {moved}");
        assert!(moved > 4.0 * diff, "the adapter matters: {moved} vs {diff}");

        if dtype == GgmlDType::F32 {
            let params = GenerationParams {
                max_tokens: 12,
                ignore_eos: true,
                ..GenerationParams::default()
            };
            let prompt = model
                .chat_prompt(&[ChatMessage::new(Role::User, "hello there")])
                .unwrap();
            let want = model.generate(&prompt, &params, |_| true).unwrap().tokens;
            let got = merged.generate(&prompt, &params, |_| true).unwrap().tokens;
            assert_eq!(got, want, "{architecture:?}: greedy answers");
        }

        // The Hugging Face export holds the merged weights in f32: exact on every base.
        let hf = dir.path().join("hf");
        let report = merge_hf(&base, Some(&adapter_dir), &hf).unwrap();
        assert_eq!(report.merged, 7 * spec.layers);
        for file in [
            "model.safetensors",
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            assert!(hf.join(file).exists(), "{file}");
        }
        let tokenizer_config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(hf.join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        assert!(
            tokenizer_config["chat_template"]
                .as_str()
                .unwrap()
                .contains(match architecture {
                    Architecture::Gemma3 => "<start_of_turn>",
                    _ => "<|im_start|>",
                })
        );
        let exported = LoadedModel::load(
            &hf,
            &LoadOptions {
                requantize: false,
                ..LoadOptions::default()
            },
        )
        .unwrap();
        // The reference: the base held dense (no activation quantization in any product, as
        // in the export) with the adapter installed.
        let mut dense = LoadedModel::load(
            &base,
            &LoadOptions {
                requantize: false,
                decoder: DecoderOptions {
                    dense: true,
                    ..DecoderOptions::default()
                },
                ..LoadOptions::default()
            },
        )
        .unwrap();
        Adapters::load(&mut dense.decoder, &adapter_dir).unwrap();
        let dense_adapted = dense.decoder.forward_all(&x).unwrap();
        let near = max_abs(&(&dense_adapted - &adapted).unwrap()) / max_abs(&adapted);
        assert!(near < 0.05, "dense and block weights agree roughly: {near}");
        let logits = exported.decoder.forward_all(&x).unwrap();
        let diff = max_abs(&(&logits - &dense_adapted).unwrap()) / max_abs(&dense_adapted);
        eprintln!("{architecture:?} {dtype:?}: Hugging Face export differs by {diff}");
        assert!(diff < 1e-4, "{architecture:?} {dtype:?}: {diff}");
        let prompt = [ChatMessage::new(Role::User, "hello there")];
        assert_eq!(
            exported.chat_prompt(&prompt).unwrap(),
            model.chat_prompt(&prompt).unwrap(),
            "the export keeps the chat template"
        );
        // Without an adapter the export is the base as it is.
        let plain = dir.path().join("plain");
        assert_eq!(merge_hf(&base, None, &plain).unwrap().merged, 0);

        // An adapter for another shape of model is refused, and no file is left behind.
        let other_dir = tempfile::tempdir().unwrap();
        let other = write_tiny_gguf(
            other_dir.path(),
            &TinySpec {
                hidden: 32,
                ..spec.clone()
            },
        );
        let out = other_dir.path().join("bad.gguf");
        let err = merge_gguf(&other, &adapter_dir, &out).unwrap_err();
        assert!(err.to_string().contains("another model"), "{err}");
        assert!(!out.exists());
        let out_dir = other_dir.path().join("bad-hf");
        let err = merge_hf(&other, Some(&adapter_dir), &out_dir).unwrap_err();
        assert!(err.to_string().contains("another model"), "{err}");
        assert!(!out_dir.exists());
        let missing = merge_gguf(&base, &dir.path().join("nope"), &out).unwrap_err();
        assert!(
            missing.to_string().contains("adapter_config.json"),
            "{missing}"
        );
    }
}
