//! Parity: Kefu's decoder gives the same logits as candle-transformers' reference models
//! (`quantized_llama`, `quantized_qwen2`, `quantized_qwen3`) on the same GGUF weights, for tiny
//! random models of every family in every block type, and for the real default model.

mod common;

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2, quantized_qwen3};
use common::{max_abs_diff, small_model_path};
use kefu_model::decoder::Decoder;
use kefu_model::gguf::{GgufFile, GgufSource};
use kefu_model::testing::{TinySpec, write_tiny_gguf};
use kefu_model::{Architecture, DecoderOptions, KvCache};

/// Logits after the prompt, then after each further token, fed one at a time (KV cache).
fn kefu_logits(path: &Path, prompt: &[u32], more: &[u32]) -> Vec<Tensor> {
    let mut file = GgufFile::open(path).unwrap();
    let config = file.config().unwrap();
    // The reference kernels: parity of the decoder's arithmetic. The faster padded layout is
    // checked against this one in `fast_kernels_keep_the_default_models_greedy_answers`.
    let exact = DecoderOptions {
        fast_kernels: false,
        ..DecoderOptions::default()
    };
    let decoder = Decoder::load_with(
        &mut GgufSource::new(&mut file, config.clone(), Device::Cpu),
        &config,
        &Device::Cpu,
        exact,
    )
    .unwrap();
    let mut cache = KvCache::new(&config);
    let mut out = vec![
        decoder
            .forward(
                &Tensor::new(prompt, &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
                &mut cache,
            )
            .unwrap(),
    ];
    for &t in more {
        let x = Tensor::new(&[t], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        out.push(decoder.forward(&x, &mut cache).unwrap());
    }
    out
}

enum Reference {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
    Qwen3(quantized_qwen3::ModelWeights),
}

impl Reference {
    fn forward(&mut self, x: &Tensor, pos: usize) -> Tensor {
        match self {
            Reference::Llama(m) => m.forward(x, pos).unwrap(),
            Reference::Qwen2(m) => m.forward(x, pos).unwrap(),
            Reference::Qwen3(m) => m.forward(x, pos).unwrap(),
        }
    }
}

fn reference_logits(path: &Path, prompt: &[u32], more: &[u32]) -> Vec<Tensor> {
    let mut reader = BufReader::new(File::open(path).unwrap());
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let arch = content.metadata["general.architecture"]
        .to_string()
        .unwrap()
        .clone();
    let mut model = match arch.as_str() {
        "llama" => Reference::Llama(
            quantized_llama::ModelWeights::from_gguf(content, &mut reader, &Device::Cpu).unwrap(),
        ),
        "qwen2" => Reference::Qwen2(
            quantized_qwen2::ModelWeights::from_gguf(content, &mut reader, &Device::Cpu).unwrap(),
        ),
        "qwen3" => Reference::Qwen3(
            quantized_qwen3::ModelWeights::from_gguf(content, &mut reader, &Device::Cpu).unwrap(),
        ),
        other => panic!("no reference for {other}"),
    };
    let x = Tensor::new(prompt, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut out = vec![model.forward(&x, 0)];
    for (i, &t) in more.iter().enumerate() {
        let x = Tensor::new(&[t], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        out.push(model.forward(&x, prompt.len() + i));
    }
    out
}

/// Asserts every step's logits agree within `tolerance`; returns the largest difference.
fn assert_parity(path: &Path, prompt: &[u32], more: &[u32], tolerance: f32) -> f32 {
    let ours = kefu_logits(path, prompt, more);
    let reference = reference_logits(path, prompt, more);
    let mut worst = 0f32;
    for (step, (a, b)) in ours.iter().zip(&reference).enumerate() {
        assert_eq!(a.dims(), b.dims(), "step {step}");
        let diff = max_abs_diff(a, b);
        assert!(
            diff <= tolerance,
            "{}: step {step}: logits differ by {diff} (tolerance {tolerance})",
            path.display()
        );
        worst = worst.max(diff);
    }
    worst
}

const PROMPT: [u32; 7] = [1, 74, 71, 78, 78, 81, 2];
const MORE: [u32; 4] = [40, 259, 100, 3];

/// Tolerance for tiny models: the two implementations sum attention terms in a different
/// order (Kefu rotates un-permuted rows with the half-split RoPE, the reference interleaved rows
/// with the interleaved RoPE), so float rounding differs in the last bits.
const TINY_TOLERANCE: f32 = 1e-4;

#[test]
fn tiny_llama_matches_quantized_llama() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny_gguf(dir.path(), &TinySpec::new(Architecture::Llama));
    assert_parity(&path, &PROMPT, &MORE, TINY_TOLERANCE);
}

#[test]
fn tiny_qwen2_matches_quantized_qwen2() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tiny_gguf(dir.path(), &TinySpec::new(Architecture::Qwen2));
    assert_parity(&path, &PROMPT, &MORE, TINY_TOLERANCE);
}

/// `quantized_qwen3` attends on the CPU with its own flash-attention kernels (interleaved
/// caches, a fused decode kernel) whose summation order differs from a plain softmax: its
/// logits differ from Kefu's — and from candle-transformers' plain `qwen3` — by up to about
/// 1e-3 on these tiny models wherever more than one position is attended (one position:
/// identical). Exactness is checked against the plain model below.
const QWEN3_FLASH_TOLERANCE: f32 = 1e-2;

/// Qwen3: queries and keys normed per head before RoPE, heads wider than hidden / heads —
/// against candle-transformers' plain `qwen3` (elementary tensor ops, f32) on the same weights,
/// exported to a Hugging Face folder.
#[test]
fn tiny_qwen3_matches_candle_transformers_qwen3() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        dtype: GgmlDType::F32,
        ..TinySpec::new(Architecture::Qwen3)
    };
    assert_eq!(
        spec.head_dim,
        Some(32),
        "heads of their own size: 4 × 32 ≠ 64"
    );
    let path = write_tiny_gguf(dir.path(), &spec);
    let ours = kefu_logits(&path, &PROMPT, &MORE);

    let hf = dir.path().join("hf");
    kefu_model::export::export_hf(&path, &hf, |_, t| Ok(t)).unwrap();
    let config: candle_transformers::models::qwen3::Config =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    let weights =
        candle_core::safetensors::load(hf.join("model.safetensors"), &Device::Cpu).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(weights, candle_core::DType::F32, &Device::Cpu);
    let mut reference =
        candle_transformers::models::qwen3::ModelForCausalLM::new(&config, vb).unwrap();
    let mut position = 0;
    for (step, tokens) in std::iter::once(&PROMPT[..])
        .chain(MORE.chunks(1))
        .enumerate()
    {
        let x = Tensor::new(tokens, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = reference
            .forward(&x, position)
            .unwrap()
            .flatten_all()
            .unwrap();
        position += tokens.len();
        let diff = max_abs_diff(&ours[step].flatten_all().unwrap(), &logits);
        assert!(
            diff <= TINY_TOLERANCE,
            "step {step}: logits differ by {diff}"
        );
    }
    // And the GGUF reference, within its kernels' tolerance.
    assert_parity(&path, &PROMPT, &MORE, QWEN3_FLASH_TOLERANCE);
}

#[test]
fn every_block_type_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let types = [
        GgmlDType::F32,
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];
    for architecture in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ] {
        for dtype in types {
            // K-quants need rows that are whole 256-element super-blocks.
            let spec = TinySpec {
                hidden: 256,
                ffn: 256,
                dtype,
                // Qwen3's own head size, with whole super-blocks in the output projection.
                head_dim: (architecture == Architecture::Qwen3).then_some(128),
                ..TinySpec::new(architecture)
            };
            let path = write_tiny_gguf(dir.path(), &spec);
            // Activations are quantized to 8 bits before each block-quantized matmul, which
            // turns last-bit differences into whole rounding steps: looser than F32.
            let tolerance = match dtype {
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
                    if architecture == Architecture::Qwen3 =>
                {
                    QWEN3_FLASH_TOLERANCE
                }
                // The flash kernels' last-bit differences, turned into whole rounding steps by
                // the 8-bit activations (measured: 0.13 to 0.21 on these random weights; the
                // projection kernels themselves are the ones Qwen2 matches exactly).
                _ if architecture == Architecture::Qwen3 => 0.25,
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => TINY_TOLERANCE,
                _ => 2e-2,
            };
            let worst = assert_parity(&path, &PROMPT, &MORE, tolerance);
            eprintln!("{architecture:?} {dtype:?}: largest logit difference {worst}");
        }
    }
}

/// Writes a copy of a GGUF file with every tensor dequantized to F32.
fn dequantize_gguf(src: &Path, dst: &Path) {
    let mut reader = BufReader::new(File::open(src).unwrap());
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(&str, QTensor)> = names
        .iter()
        .map(|name| {
            let q = content.tensor(&mut reader, name, &Device::Cpu).unwrap();
            let dense = q.dequantize(&Device::Cpu).unwrap();
            (
                name.as_str(),
                QTensor::quantize(&dense, GgmlDType::F32).unwrap(),
            )
        })
        .collect();
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut File::create(dst).unwrap(), &metadata, &refs).unwrap();
}

/// Arg-max of each step's logits.
fn greedy_tokens(logits: &[Tensor]) -> Vec<u32> {
    logits
        .iter()
        .map(|l| {
            l.flatten_all()
                .unwrap()
                .argmax(0)
                .unwrap()
                .to_scalar::<u32>()
                .unwrap()
        })
        .collect()
}

/// The real SmolLM2-135M-Instruct: exact parity on its weights dequantized to F32, and on the
/// quantized files (as shipped, Q4_1, and Kefu's Q8_0) the same greedy tokens with logits
/// close: there both sides quantize activations to 8 bits before each matmul, so the last-bit
/// differences of the attention sums can flip a rounding step and grow through 30 layers.
#[test]
fn default_model_matches_quantized_llama() {
    let path = small_model_path();
    let file = GgufFile::open(&path).unwrap();
    let tokenizer = kefu_model::tokenizer::from_gguf_metadata(file.metadata()).unwrap();
    let encode = |text: &str| tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    let prompt =
        encode("<|im_start|>user\nHow do I reset my password?<|im_end|>\n<|im_start|>assistant\n");
    let more = encode("To reset your password");
    drop(file);
    let dir = tempfile::tempdir().unwrap();
    let dense = dir.path().join("f32.gguf");
    dequantize_gguf(&path, &dense);
    let worst = assert_parity(&dense, &prompt, &more, 1e-3);
    eprintln!("default model (F32): largest logit difference {worst}");

    let requantized = dir.path().join("q8.gguf");
    let mut file = GgufFile::open(&path).unwrap();
    kefu_model::gguf::requantize(&mut file, &requantized, GgmlDType::Q8_0).unwrap();
    for quantized in [&path, &requantized] {
        let ours = kefu_logits(quantized, &prompt, &more);
        let reference = reference_logits(quantized, &prompt, &more);
        assert_eq!(
            greedy_tokens(&ours),
            greedy_tokens(&reference),
            "{}",
            quantized.display()
        );
        let worst = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| max_abs_diff(a, b))
            .fold(0f32, f32::max);
        assert!(
            worst < 1.5,
            "{}: logits differ by {worst}",
            quantized.display()
        );
        eprintln!(
            "default model ({}): largest logit difference {worst}",
            quantized.display()
        );
    }
}

/// The padded fast-kernel layout quantizes activations in 256-wide blocks instead of 32-wide
/// ones, so greedy replies can part ways after a few tokens. What must hold is that the model
/// stays as good: its perplexity on real documents (`../shared/data`) within 2 % of the
/// reference layout's. Measured: 20.11 against 19.86 (+1.3 %), and 19.81 for the shipped Q4_1.
#[test]
fn fast_kernels_keep_the_default_models_perplexity() {
    use kefu_model::{LoadOptions, LoadedModel};

    let path = small_model_path();
    let load = |fast_kernels, requantize| {
        let options = LoadOptions {
            decoder: DecoderOptions {
                fast_kernels,
                ..DecoderOptions::default()
            },
            requantize,
            ..LoadOptions::default()
        };
        LoadedModel::load(&path, &options).unwrap()
    };
    let (fast, exact, shipped) = (load(true, true), load(false, true), load(false, false));
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/kb/en");
    let mut total = [0f64; 3];
    let mut count = 0usize;
    for doc in [
        "debian-faq/basic-defs.md",
        "debian-faq/pkg-basics.md",
        "abcd-guidelines/order-issue.md",
    ] {
        let text = std::fs::read_to_string(data.join(doc))
            .unwrap_or_else(|e| panic!("{}: {e}", data.join(doc).display()));
        let ids = exact.encode(&text).unwrap();
        let ids = &ids[..ids.len().min(384)];
        let input = Tensor::new(&ids[..ids.len() - 1], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let targets = Tensor::new(&ids[1..], &Device::Cpu).unwrap();
        for (i, model) in [&fast, &exact, &shipped].into_iter().enumerate() {
            let logits = model
                .decoder
                .forward_all(&input)
                .unwrap()
                .squeeze(0)
                .unwrap();
            let nll: f32 = candle_nn::loss::cross_entropy(&logits, &targets)
                .unwrap()
                .to_scalar()
                .unwrap();
            total[i] += f64::from(nll) * targets.dim(0).unwrap() as f64;
        }
        count += targets.dim(0).unwrap();
    }
    let ppl = |i: usize| (total[i] / count as f64).exp();
    let (fast_ppl, exact_ppl) = (ppl(0), ppl(1));
    eprintln!(
        "perplexity over {count} tokens: Q8_0 fast {fast_ppl:.3}, Q8_0 reference {exact_ppl:.3}, \
         shipped Q4_1 reference {:.3}",
        ppl(2)
    );
    assert!(
        (fast_ppl / exact_ppl - 1.0).abs() < 0.02,
        "fast {fast_ppl} vs reference {exact_ppl}"
    );
}
