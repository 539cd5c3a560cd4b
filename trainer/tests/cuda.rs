//! GPU correctness, in a CUDA build (`--features cuda`) on a machine with an NVIDIA GPU: the
//! GPU's bf16 logits against the CPU's f32 ones, LoRA gradients against the CPU's, and a short
//! SFT run whose loss curve follows the CPU run's; the training attention's CUDA kernels
//! against candle's elementary ops. The model is `KEFU_CUDA_TEST_MODEL` (a GGUF
//! file or Hugging Face folder) when set, else a tiny random-weight llama. Each test prints its
//! figures (`--nocapture` shows them).
#![cfg(feature = "cuda")]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use kefu_model::testing::{TinySpec, write_tiny_gguf};
use kefu_model::{Architecture, DecoderOptions, LoadOptions, LoadedModel};
use kefu_trainer::data::{Conversation, Tokenized, tokenize};
use kefu_trainer::lora::{Adapters, LoraConfig};
use kefu_trainer::run::TrainConfig;
use kefu_trainer::sft;

fn model_path(dir: &Path) -> PathBuf {
    match std::env::var_os("KEFU_CUDA_TEST_MODEL") {
        Some(path) => PathBuf::from(path),
        None => write_tiny_gguf(dir, &TinySpec::new(Architecture::Llama)),
    }
}

fn gpu() -> Device {
    kefu_model::parse_device("cuda").expect("a CUDA device")
}

/// The reference: dense f32 weights and candle's reference kernels on the CPU.
fn on_cpu(path: &Path) -> LoadedModel {
    let options = LoadOptions {
        requantize: false,
        decoder: DecoderOptions {
            dense: true,
            fast_kernels: false,
            ..DecoderOptions::default()
        },
        ..LoadOptions::default()
    };
    LoadedModel::load(path, &options).unwrap()
}

fn on_gpu(path: &Path) -> LoadedModel {
    LoadedModel::load(path, &LoadOptions::default().on(&gpu())).unwrap()
}

fn examples(model: &LoadedModel) -> Vec<Tokenized> {
    let topics = [
        (
            "How do I reset my password?",
            "Open Settings, choose Security, then Reset password.",
        ),
        (
            "Can I change my delivery address?",
            "Yes, until the parcel ships: open the order.",
        ),
        (
            "Where is my invoice?",
            "Invoices are under Account, Billing, Invoices.",
        ),
        (
            "Do you ship abroad?",
            "We ship to every country of the European Union.",
        ),
        (
            "How long is the warranty?",
            "Two years from the day of delivery.",
        ),
        (
            "Can I pay by card?",
            "Yes: Visa, Mastercard and American Express.",
        ),
        (
            "How do I cancel an order?",
            "Open the order and press Cancel before it ships.",
        ),
        (
            "Is there a phone line?",
            "Call us on weekdays from nine to five.",
        ),
    ];
    topics
        .iter()
        .map(|(q, a)| {
            let conversation = Conversation {
                messages: vec![
                    kefu_model::ChatMessage::new(kefu_model::Role::User, *q),
                    kefu_model::ChatMessage::new(kefu_model::Role::Assistant, *a),
                ],
            };
            tokenize(model, &conversation, 128).unwrap().unwrap()
        })
        .collect()
}

fn relative_difference(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
    let norm = a.sqr().unwrap().sum_all().unwrap();
    (diff.to_scalar::<f32>().unwrap() / norm.to_scalar::<f32>().unwrap().max(1e-30)).sqrt()
}

#[test]
fn gpu_logits_match_the_cpu_within_bf16_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let path = model_path(dir.path());
    let cpu = on_cpu(&path);
    let gpu_model = on_gpu(&path);
    assert_eq!(gpu_model.decoder.dtype(), candle_core::DType::BF16);
    let ids = &examples(&cpu)[0].input;
    let input = |device: &Device| Tensor::new(ids.as_slice(), device).unwrap().unsqueeze(0);
    let expected = cpu
        .decoder
        .forward_all(&input(&Device::Cpu).unwrap())
        .unwrap();
    let actual = gpu_model
        .decoder
        .forward_all(&input(&gpu()).unwrap())
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    let relative = relative_difference(&expected, &actual);
    let top = |t: &Tensor| {
        t.squeeze(0)
            .unwrap()
            .argmax(1)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap()
    };
    let (a, b) = (top(&expected), top(&actual));
    let agreement = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f32 / a.len() as f32;
    println!(
        "logits over {} positions: relative L2 difference {relative:.5}, top-1 agreement {agreement:.3}",
        ids.len()
    );
    assert!(relative < 0.03, "relative difference {relative}");
    // Random weights give nearly flat logits, where bf16 noise may reorder near-ties: the
    // agreement is reported, and only a broken path (agreement near chance) fails here.
    assert!(agreement >= 0.5, "top-1 agreement {agreement}");
    // The incremental path (KV cache on the GPU) gives the last position's logits too.
    let mut cache = kefu_model::KvCache::new(gpu_model.config());
    let last = gpu_model
        .decoder
        .forward(&input(&gpu()).unwrap(), &mut cache)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    let full_last = actual.squeeze(0).unwrap().get(ids.len() - 1).unwrap();
    let cached = relative_difference(&full_last, &last.squeeze(0).unwrap());
    println!("cached forward against the full pass, last position: {cached:.5}");
    assert!(cached < 0.03, "cached path differs by {cached}");
}

#[test]
fn lora_gradients_on_the_gpu_match_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let path = model_path(dir.path());
    let mut cpu = on_cpu(&path);
    let config = LoraConfig {
        rank: 8,
        alpha: 16.0,
        ..LoraConfig::default()
    };
    // B = 0 would leave A without a gradient: give B values, then share the adapter.
    let adapters = Adapters::attach(&mut cpu.decoder, &config, 7).unwrap();
    for (i, var) in adapters.vars().iter().enumerate() {
        if i % 2 == 1 {
            let values = Tensor::randn(0f32, 0.02, var.shape(), &Device::Cpu).unwrap();
            var.set(&values).unwrap();
        }
    }
    let saved = dir.path().join("adapter");
    adapters.save(&saved, "test").unwrap();
    let mut gpu_model = on_gpu(&path);
    let gpu_adapters = Adapters::load(&mut gpu_model.decoder, &saved).unwrap();
    let batch = examples(&cpu);
    let refs: Vec<&Tokenized> = batch.iter().take(4).collect();
    let gradients = |model: &LoadedModel, adapters: &Adapters| -> Vec<Tensor> {
        let (nll, count) = sft::answer_nll(model, &refs).unwrap();
        let loss = (nll / count as f64).unwrap();
        let store = loss.backward().unwrap();
        adapters
            .vars()
            .iter()
            .map(|v| {
                store
                    .get(v.as_tensor())
                    .expect("every adapter has a gradient")
                    .to_device(&Device::Cpu)
                    .unwrap()
            })
            .collect()
    };
    let expected = gradients(&cpu, &adapters);
    let actual = gradients(&gpu_model, &gpu_adapters);
    let mut worst = 0f32;
    for (e, a) in expected.iter().zip(&actual) {
        assert!(
            e.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
        worst = worst.max(relative_difference(e, a));
    }
    println!(
        "{} adapter gradients: worst relative L2 difference {worst:.4}",
        expected.len()
    );
    assert!(worst < 0.1, "a gradient differs by {worst}");
}

#[test]
fn a_short_sft_run_on_the_gpu_follows_the_cpu_loss_curve() {
    let dir = tempfile::tempdir().unwrap();
    let path = model_path(dir.path());
    let config = TrainConfig {
        lora: LoraConfig {
            rank: 8,
            alpha: 16.0,
            ..LoraConfig::default()
        },
        epochs: 3,
        learning_rate: 2e-3,
        batch_size: 4,
        warmup_ratio: 0.0,
        ..TrainConfig::default()
    };
    let curve = |mut model: LoadedModel, name: &str| -> Vec<f64> {
        let data = examples(&model);
        let output = dir.path().join(name);
        sft::train(
            &mut model,
            "test",
            &data,
            &[],
            &config,
            &output,
            false,
            |_, _, _| true,
        )
        .unwrap();
        std::fs::read_to_string(output.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["loss"].as_f64())
            .collect()
    };
    let expected = curve(on_cpu(&path), "cpu");
    let actual = curve(on_gpu(&path), "gpu");
    println!("loss per step, CPU: {expected:.4?}");
    println!("loss per step, GPU: {actual:.4?}");
    assert_eq!(expected.len(), actual.len());
    assert!(expected.last() < expected.first(), "the CPU loss falls");
    for (e, a) in expected.iter().zip(&actual) {
        assert!((e - a).abs() <= 0.03 * e.abs().max(1.0), "{e} against {a}");
    }
}

/// Packed rows on the GPU (the attention kernels read only each example's keys): a batch whose
/// short examples share rows scores each example as it scores alone, and as the CPU does.
#[test]
fn packed_examples_on_the_gpu_score_as_they_do_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = model_path(dir.path());
    let (cpu, gpu) = (on_cpu(&path), on_gpu(&path));
    let mut batch = examples(&gpu);
    // One long example (two of the others back to back), so the short ones share rows.
    let mut long = batch[0].clone();
    long.input.extend(batch[1].input.clone());
    long.targets.extend(batch[1].targets.clone());
    batch.push(long);
    let refs: Vec<&Tokenized> = batch.iter().collect();
    let (together, _) = sft::answer_logprobs(&gpu, &refs).unwrap();
    let together: Vec<f32> = together.to_device(&Device::Cpu).unwrap().to_vec1().unwrap();
    let mut worst_alone = 0f32;
    let mut worst_cpu = 0f32;
    for (i, e) in batch.iter().enumerate() {
        let (alone, _) = sft::answer_logprobs(&gpu, &[e]).unwrap();
        let alone: f32 = alone.to_device(&Device::Cpu).unwrap().to_vec1().unwrap()[0];
        let (reference, _) = sft::answer_logprobs(&cpu, &[e]).unwrap();
        let reference: f32 = reference.to_vec1().unwrap()[0];
        worst_alone = worst_alone.max((alone - together[i]).abs() / alone.abs().max(1.0));
        worst_cpu = worst_cpu.max((reference - together[i]).abs() / reference.abs().max(1.0));
    }
    println!(
        "packed on the GPU: worst relative difference {worst_alone:.4} from each example alone, \
         {worst_cpu:.4} from the CPU"
    );
    // bf16 activations: rows of different lengths round differently.
    assert!(worst_alone < 0.02, "{worst_alone}");
    assert!(worst_cpu < 0.05, "{worst_cpu}");
}

/// The first key each query reads: causal rows, a sliding window, packed examples.
fn first_keys(batch: usize, seq: usize, window: Option<usize>, lengths: &[usize]) -> Vec<u32> {
    let mut starts = Vec::with_capacity(seq);
    for &n in lengths {
        let start = starts.len();
        starts.extend(std::iter::repeat_n(start, n));
    }
    starts.resize(seq, starts.len());
    (0..batch)
        .flat_map(|_| starts.iter().enumerate())
        .map(|(i, &start)| start.max(window.map_or(0, |w| (i + 1).saturating_sub(w))) as u32)
        .collect()
}

/// The training attention's CUDA kernels (f32 and bf16) against candle's elementary ops in f32
/// on the CPU: values and the gradients of q, k and v, for causal rows, a window, packed
/// examples, grouped queries, odd lengths, heads 8, 64 and 128 wide, rows of many key tiles.
#[test]
fn the_attention_kernels_match_the_elementary_ops_and_their_gradients() {
    let gpu = gpu();
    // (batch, heads, kv heads, seq, dim, first keys)
    let cases = [
        (2, 6, 2, 37, 64, first_keys(2, 37, None, &[])),
        (1, 9, 3, 150, 64, first_keys(1, 150, None, &[])),
        (1, 4, 4, 70, 128, first_keys(1, 70, None, &[])),
        (2, 4, 2, 45, 64, first_keys(2, 45, Some(16), &[])),
        (2, 4, 2, 40, 8, first_keys(2, 40, None, &[3, 20, 9])),
        (1, 14, 2, 300, 64, first_keys(1, 300, None, &[100, 150])),
    ];
    let largest = |t: &Tensor| -> f32 { t.abs().unwrap().max_all().unwrap().to_scalar().unwrap() };
    for (batch, heads, kv_heads, seq, dim, first) in cases {
        let cpu = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (batch, heads, seq, dim), &cpu).unwrap();
        let k = Tensor::randn(0f32, 1.0, (batch, kv_heads, seq, dim), &cpu).unwrap();
        let v = Tensor::randn(0f32, 1.0, (batch, kv_heads, seq, dim), &cpu).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (batch, heads, seq, dim), &cpu).unwrap();
        let scale = 1.0 / (dim as f64).sqrt();
        // Values and gradients of `sum(y · weights)`, y in f32 on the CPU.
        let run = |device: &Device, dtype: DType, fused: bool| {
            let vars = [&q, &k, &v].map(|t| {
                Var::from_tensor(&t.to_device(device).unwrap().to_dtype(dtype).unwrap()).unwrap()
            });
            let [vq, vk, vv] = &vars;
            let y = if fused {
                kefu_model::testing::causal_attention(vq, vk, vv, scale, &first)
                    .unwrap()
                    .expect("the kernels take f32 and bf16 heads up to 128 wide")
            } else {
                kefu_model::testing::reference_attention(vq, vk, vv, scale, &first)
            };
            let y = y.to_dtype(DType::F32).unwrap();
            let store = (&y * weights.to_device(device).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let back = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_device(&cpu).unwrap();
            let grads = vars.map(|x| back(store.get(x.as_tensor()).unwrap()));
            (back(&y), grads)
        };
        let (expected, expected_grads) = run(&cpu, DType::F32, false);
        for (dtype, tolerance) in [(DType::F32, 1e-4), (DType::BF16, 3e-2)] {
            let (actual, grads) = run(&gpu, dtype, true);
            let mut worst = largest(&(&actual - &expected).unwrap()) / largest(&expected).max(1.0);
            for (a, b) in grads.iter().zip(&expected_grads) {
                worst = worst.max(largest(&(a - b).unwrap()) / largest(b).max(1.0));
            }
            println!(
                "attention kernels, {dtype:?}, batch {batch}, heads {heads}/{kv_heads}, seq {seq}, \
                 dim {dim}: worst difference {worst:.2e} of the largest value"
            );
            assert!(worst < tolerance, "{dtype:?} {seq}x{dim}: {worst}");
        }
    }
}
