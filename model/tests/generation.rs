//! Generation on tiny models: determinism, stop conditions, streaming, cancellation, the KV
//! cache against a full forward pass, the training path, LoRA hooks, and refusals of bad input.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::max_abs_diff;
use kefu_model::decoder::Target;
use kefu_model::generate::GenerationParams;
use kefu_model::sampling::SamplingConfig;
use kefu_model::testing::{TinySpec, write_tiny_gguf};
use kefu_model::{
    Architecture, ChatMessage, Error, FinishReason, KvCache, LoadOptions, LoadedModel, Lora, Role,
};

fn tiny(architecture: Architecture) -> (tempfile::TempDir, LoadedModel) {
    common::tiny_model(architecture, &LoadOptions::default())
}

fn params(max_tokens: usize) -> GenerationParams {
    GenerationParams {
        max_tokens,
        ..GenerationParams::default()
    }
}

fn prompt(model: &LoadedModel) -> Vec<u32> {
    model
        .chat_prompt(&[ChatMessage::new(Role::User, "hello there")])
        .unwrap()
}

#[test]
fn greedy_generation_is_deterministic_and_streams_its_text() {
    let (_dir, model) = tiny(Architecture::Llama);
    let ids = prompt(&model);
    let mut pieces = Vec::new();
    let first = model
        .generate(&ids, &params(24), |p| {
            pieces.push(p.to_string());
            true
        })
        .unwrap();
    let second = model.generate(&ids, &params(24), |_| true).unwrap();
    assert_eq!(first.tokens, second.tokens);
    assert!(!first.tokens.is_empty());
    assert_eq!(
        pieces.concat(),
        first.text,
        "streamed pieces add up to the text"
    );
    assert_eq!(first.prompt_tokens, ids.len());
}

#[test]
fn sampling_depends_on_the_seed() {
    let (_dir, model) = tiny(Architecture::Qwen2);
    let ids = prompt(&model);
    let sample = |seed| {
        let p = GenerationParams {
            sampling: SamplingConfig {
                temperature: 1.5,
                seed,
                ..SamplingConfig::default()
            },
            max_tokens: 32,
            ..GenerationParams::default()
        };
        model.generate(&ids, &p, |_| true).unwrap().tokens
    };
    assert_eq!(sample(1), sample(1));
    assert_ne!(sample(1), sample(2));
}

#[test]
fn max_tokens_stop_strings_and_cancellation_end_generation() {
    let (_dir, model) = tiny(Architecture::Llama);
    let ids = prompt(&model);
    // Past end-of-turn tokens, so every condition below is reached whatever the tiny model says.
    let forced = |max_tokens| GenerationParams {
        ignore_eos: true,
        ..params(max_tokens)
    };
    let long = model.generate(&ids, &forced(40), |_| true).unwrap();
    assert_eq!(long.finish_reason, FinishReason::Length);
    assert_eq!(long.completion_tokens(), 40);
    let three = model.generate(&ids, &forced(3), |_| true).unwrap();
    assert_eq!(three.completion_tokens(), 3);

    // Stop at a string taken from the middle of the unconstrained reply.
    let chars: Vec<char> = long.text.chars().collect();
    assert!(
        chars.len() >= 6,
        "a reply long enough to cut: {:?}",
        long.text
    );
    let stop: String = chars[3..5].iter().collect();
    let p = GenerationParams {
        stop: vec![stop.clone()],
        ..forced(40)
    };
    let mut streamed = String::new();
    let stopped = model
        .generate(&ids, &p, |piece| {
            streamed.push_str(piece);
            true
        })
        .unwrap();
    assert_eq!(stopped.finish_reason, FinishReason::StopString);
    assert!(!stopped.text.contains(&stop));
    assert!(long.text.starts_with(&stopped.text));
    assert_eq!(streamed, stopped.text, "the stop string is never streamed");

    let mut calls = 0;
    let cancelled = model
        .generate(&ids, &forced(40), |_| {
            calls += 1;
            false
        })
        .unwrap();
    assert_eq!(cancelled.finish_reason, FinishReason::Cancelled);
    assert_eq!(calls, 1);
    assert!(cancelled.completion_tokens() < 40);
}

#[test]
fn incremental_decoding_equals_a_full_forward_pass() {
    for architecture in Architecture::ALL {
        let (_dir, model) = tiny(architecture);
        let ids: Vec<u32> = (3..23).collect();
        let all = model
            .decoder
            .forward_all(
                &Tensor::new(ids.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
            )
            .unwrap()
            .squeeze(0)
            .unwrap();
        let mut cache = KvCache::new(model.config());
        let head = Tensor::new(&ids[..5], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        model.decoder.forward(&head, &mut cache).unwrap();
        for (i, &t) in ids.iter().enumerate().skip(5) {
            let x = Tensor::new(&[t], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let step = model
                .decoder
                .forward(&x, &mut cache)
                .unwrap()
                .squeeze(0)
                .unwrap();
            let expected = all.get(i).unwrap();
            let diff = (step - expected).unwrap().abs().unwrap().max(0).unwrap();
            let diff: f32 = diff.to_scalar().unwrap();
            assert!(diff < 1e-4, "{architecture:?} position {i}: {diff}");
        }
        assert_eq!(cache.len(), ids.len());
    }
}

#[test]
fn the_training_path_gives_the_inference_logits() {
    let (_dir, model) = tiny(Architecture::Qwen2);
    let x = Tensor::new(&[[5u32, 9, 77, 120, 3]], &Device::Cpu).unwrap();
    let fused = model.decoder.forward_all(&x).unwrap();
    let differentiable = model.decoder.forward_train(&x).unwrap();
    let diff = max_abs_diff(&fused, &differentiable);
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn lora_with_zero_b_is_exactly_the_base_and_every_adapter_gets_a_gradient() {
    let (_dir, mut model) = tiny(Architecture::Llama);
    let x = Tensor::new(&[[5u32, 9, 77, 120, 3, 44]], &Device::Cpu).unwrap();
    let base = model.decoder.forward_train(&x).unwrap();
    let layers = model.config().num_hidden_layers;
    let rank = 4;
    let mut vars = Vec::new();
    for layer in 0..layers {
        for target in Target::ALL {
            let linear = model.decoder.linear_mut(layer, target).unwrap();
            let (out_f, in_f) = (linear.out_features(), linear.in_features());
            let a = Var::randn(0f32, 0.1, (rank, in_f), &Device::Cpu).unwrap();
            let b = Var::zeros((out_f, rank), DType::F32, &Device::Cpu).unwrap();
            linear.lora = Some(Lora {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale: 16.0 / rank as f64,
                dropout: None,
            });
            vars.push((a, b));
        }
    }
    let adapted = model.decoder.forward_train(&x).unwrap();
    let diff = max_abs_diff(&adapted, &base);
    assert_eq!(diff, 0.0, "B = 0 must leave the output unchanged");

    // With B = 0 only B gets a gradient at first; one step later both have one. Give B a
    // small value so A's gradient is non-zero too, then check every adapter parameter.
    for (_, b) in &vars {
        b.set(&Tensor::full(0.01f32, b.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    let logits = model.decoder.forward_train(&x).unwrap();
    let targets = Tensor::new(&[9u32, 77, 120, 3, 44, 2], &Device::Cpu).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits.squeeze(0).unwrap(), &targets).unwrap();
    let grads = loss.backward().unwrap();
    for (i, (a, b)) in vars.iter().enumerate() {
        for (name, var) in [("A", a), ("B", b)] {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}{i}: no gradient"));
            let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(norm > 0.0, "adapter {i} {name} has a zero gradient");
        }
    }
}

#[test]
fn chunked_target_logprobs_match_the_full_logits_and_their_gradients() {
    for architecture in Architecture::ALL {
        let (_dir, mut model) = tiny(architecture);
        let vars = common::attach_adapters(&mut model, None);
        let x = Tensor::new(
            &[[5u32, 9, 77, 120, 3, 44], [8, 8, 31, 2, 90, 17]],
            &Device::Cpu,
        )
        .unwrap();
        let targets = Tensor::new(
            &[[9u32, 77, 120, 3, 44, 2], [8, 31, 2, 90, 17, 5]],
            &Device::Cpu,
        )
        .unwrap();
        // Unequal weights per position, as a masked, per-sequence loss gives.
        let weights = Tensor::new(
            &[
                [0f32, 0.0, 1.0, 1.0, 1.0, 0.5],
                [0.0, 1.0, 1.0, 2.0, 0.0, 1.0],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let full = {
            let logits = model.decoder.forward_train(&x).unwrap();
            candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)
                .unwrap()
                .gather(&targets.unsqueeze(2).unwrap(), 2)
                .unwrap()
                .squeeze(2)
                .unwrap()
        };
        // Three chunks of four positions.
        let chunked = model
            .decoder
            .target_logprobs_in_chunks(&x, &targets, 4)
            .unwrap();
        assert!(
            max_abs_diff(&full, &chunked) < 1e-4,
            "{architecture:?} values"
        );
        let grads = |values: &Tensor| {
            let loss = (values * &weights).unwrap().sum_all().unwrap();
            let store = loss.backward().unwrap();
            vars.iter()
                .map(|v| store.get(v.as_tensor()).unwrap().clone())
                .collect::<Vec<_>>()
        };
        for (i, (e, a)) in grads(&full).iter().zip(grads(&chunked)).enumerate() {
            let scale: f32 = e.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert!(scale > 0.0, "{architecture:?} var {i} has no gradient");
            let diff = max_abs_diff(e, &a);
            assert!(
                diff <= 1e-3 * scale,
                "{architecture:?} var {i}: {diff} of {scale}"
            );
        }
    }
}

#[test]
fn bad_generation_input_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        context: 32,
        ..TinySpec::new(Architecture::Llama)
    };
    let model =
        LoadedModel::load(&write_tiny_gguf(dir.path(), &spec), &LoadOptions::default()).unwrap();
    assert!(matches!(
        model.generate(&[], &params(4), |_| true),
        Err(Error::EmptyPrompt)
    ));
    assert!(matches!(
        model.chat_prompt(&[ChatMessage::new(Role::User, "  \n")]),
        Err(Error::EmptyPrompt)
    ));
    let long: Vec<u32> = vec![40; 64];
    let err = model.generate(&long, &params(4), |_| true).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PromptTooLong {
                prompt_tokens: 64,
                context: 32
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("context window is 32 tokens"));
    assert!(matches!(
        model.generate(&[40], &params(0), |_| true),
        Err(Error::InvalidParameter(_))
    ));
    assert!(matches!(
        model.generate(&[1_000_000], &params(4), |_| true),
        Err(Error::InvalidParameter(_))
    ));
    // A prompt that fits but leaves little room stops at the context window.
    let near: Vec<u32> = vec![40; 30];
    let g = model.generate(&near, &params(50), |_| true).unwrap();
    assert!(g.completion_tokens() <= 2);
}

/// Several sequences stepped together (one forward pass per step) give the logits and the
/// greedy tokens each gives alone, on both architectures, with prompts of different lengths.
#[test]
fn batched_decoding_matches_one_sequence_at_a_time() {
    for architecture in Architecture::ALL {
        let (_dir, model) = tiny(architecture);
        let prompts: Vec<Vec<u32>> = ["hello there", "a much longer question about parcels", "hi"]
            .iter()
            .map(|text| {
                model
                    .chat_prompt(&[ChatMessage::new(Role::User, *text)])
                    .unwrap()
            })
            .collect();
        let params = GenerationParams {
            ignore_eos: true,
            ..params(12)
        };
        let alone: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| model.generate(p, &params, |_| true).unwrap().tokens)
            .collect();
        let mut sequences: Vec<_> = prompts
            .iter()
            .map(|p| model.start_sequence(p, &params).unwrap())
            .collect();
        loop {
            let mut running = Vec::new();
            for sequence in sequences.iter_mut() {
                if sequence.advance(|_| true).unwrap() {
                    running.push(sequence);
                }
            }
            if running.is_empty() {
                break;
            }
            model.step_batch(&mut running).unwrap();
        }
        let together: Vec<Vec<u32>> = sequences
            .into_iter()
            .map(|s| s.finish(|_| true).tokens)
            .collect();
        assert_eq!(together, alone, "{architecture:?}");
        assert!(together.iter().all(|t| t.len() == 12));

        // The logits themselves, after different amounts of context.
        let mut caches: Vec<KvCache> = prompts
            .iter()
            .map(|_| KvCache::new(model.config()))
            .collect();
        let mut single = Vec::new();
        for (p, cache) in prompts.iter().zip(caches.iter_mut()) {
            let input = Tensor::new(p.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            model.decoder.forward(&input, cache).unwrap();
            let mut alone_cache = cache.clone();
            let next = Tensor::new(&[7u32], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            single.push(
                model
                    .decoder
                    .forward(&next, &mut alone_cache)
                    .unwrap()
                    .squeeze(0)
                    .unwrap(),
            );
        }
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        let batched = model.decoder.forward_batch(&[7, 7, 7], &mut refs).unwrap();
        for (b, expected) in single.iter().enumerate() {
            let diff = max_abs_diff(&batched.get(b).unwrap(), expected);
            assert!(diff < 1e-4, "{architecture:?} sequence {b}: {diff}");
        }
        assert!(matches!(
            model.decoder.forward_batch(&[7], &mut []),
            Err(Error::InvalidParameter(_))
        ));
    }
}
