//! Tiny random-weight models of the real architectures, written as GGUF files, for tests of
//! this crate and of the crates above it (loader, generation, trainer, server).

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::config::Architecture;
use crate::decoder::WeightSource;
use crate::gguf::{GgufFile, GgufSource};

/// Shape of a tiny test model.
#[derive(Debug, Clone)]
pub struct TinySpec {
    pub architecture: Architecture,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub layers: usize,
    pub context: usize,
    pub dtype: GgmlDType,
    /// `ffn_down`'s block type when it differs from `dtype` (real files mix types).
    pub ffn_down_dtype: Option<GgmlDType>,
    pub tied: bool,
    /// Each head's size when it is not `hidden / heads` (qwen3 models have their own).
    pub head_dim: Option<usize>,
    /// Local layers' window and every how many layers one attends globally (gemma3).
    pub sliding_window: Option<(usize, usize)>,
    pub seed: u64,
    /// Written as `general.architecture` instead of the real name (to test refusals).
    pub architecture_name: Option<String>,
}

impl TinySpec {
    pub fn new(architecture: Architecture) -> Self {
        Self {
            architecture,
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            ffn: 128,
            layers: 2,
            context: 256,
            dtype: GgmlDType::Q8_0,
            ffn_down_dtype: None,
            tied: matches!(architecture, Architecture::Llama | Architecture::Gemma3),
            // As in Qwen3's and Gemma 3's own models, the heads are wider than hidden / heads.
            head_dim: matches!(architecture, Architecture::Qwen3 | Architecture::Gemma3)
                .then_some(32),
            // A window shorter than the tests' prompts, and a global layer after each local one.
            sliding_window: architecture.is_gemma().then_some((12, 2)),
            seed: 1,
            architecture_name: None,
        }
    }
}

/// GPT-2's reversible byte → printable character map used by byte-level BPE.
pub fn byte_to_char(byte: u8) -> char {
    let b = u32::from(byte);
    let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    if printable {
        return char::from_u32(b).expect("tiny model construction");
    }
    let mut n = 0;
    for other in 0..b {
        let p = (33..=126).contains(&other)
            || (161..=172).contains(&other)
            || (174..=255).contains(&other);
        if !p {
            n += 1;
        }
    }
    char::from_u32(256 + n).expect("tiny model construction")
}

pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Vocabulary: three specials then the 256 byte tokens; a few merges so BPE has work to do.
pub fn vocabulary() -> (Vec<String>, Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut types = vec![3; SPECIALS.len()];
    for b in 0..=255u8 {
        tokens.push(byte_to_char(b).to_string());
        types.push(1);
    }
    let merges = vec![("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o")];
    let mut merge_strings = Vec::new();
    for (a, b) in merges {
        tokens.push(format!("{a}{b}"));
        types.push(1);
        merge_strings.push(format!("{a} {b}"));
    }
    (tokens, merge_strings, types)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        // splitmix64 → uniform in [-1, 1)
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn tensor(&mut self, dims: &[usize], scale: f32, offset: f32) -> Tensor {
        let n: usize = dims.iter().product();
        let data: Vec<f32> = (0..n).map(|_| self.next() * scale + offset).collect();
        Tensor::from_vec(data, dims, &Device::Cpu).expect("tiny model construction")
    }
}

/// Writes a tiny random model as GGUF and returns its path.
fn matrix(
    name: String,
    rows: usize,
    cols: usize,
    rng: &mut Rng,
    dtype: GgmlDType,
) -> (String, QTensor) {
    let t = rng.tensor(&[rows, cols], 0.25, 0.0);
    (
        name,
        QTensor::quantize(&t, dtype).expect("tiny model construction"),
    )
}

fn vector(name: String, n: usize, rng: &mut Rng, offset: f32) -> (String, QTensor) {
    (
        name,
        QTensor::quantize(&rng.tensor(&[n], 0.1, offset), GgmlDType::F32)
            .expect("tiny model construction"),
    )
}

/// Layer `i`'s tensors, drawn from `rng` in a fixed order.
fn layer_tensors(spec: &TinySpec, i: usize, rng: &mut Rng, tensors: &mut Vec<(String, QTensor)>) {
    let head_dim = spec.head_dim.unwrap_or(spec.hidden / spec.heads);
    let kv = spec.kv_heads * head_dim;
    let q = spec.heads * head_dim;
    let p = format!("blk.{i}");
    tensors.push(vector(
        format!("{p}.attn_norm.weight"),
        spec.hidden,
        rng,
        1.0,
    ));
    tensors.push(vector(
        format!("{p}.ffn_norm.weight"),
        spec.hidden,
        rng,
        1.0,
    ));
    tensors.push(matrix(
        format!("{p}.attn_q.weight"),
        q,
        spec.hidden,
        rng,
        spec.dtype,
    ));
    tensors.push(matrix(
        format!("{p}.attn_k.weight"),
        kv,
        spec.hidden,
        rng,
        spec.dtype,
    ));
    tensors.push(matrix(
        format!("{p}.attn_v.weight"),
        kv,
        spec.hidden,
        rng,
        spec.dtype,
    ));
    tensors.push(matrix(
        format!("{p}.attn_output.weight"),
        spec.hidden,
        q,
        rng,
        spec.dtype,
    ));
    tensors.push(matrix(
        format!("{p}.ffn_gate.weight"),
        spec.ffn,
        spec.hidden,
        rng,
        spec.dtype,
    ));
    tensors.push(matrix(
        format!("{p}.ffn_up.weight"),
        spec.ffn,
        spec.hidden,
        rng,
        spec.dtype,
    ));
    tensors.push(matrix(
        format!("{p}.ffn_down.weight"),
        spec.hidden,
        spec.ffn,
        rng,
        spec.ffn_down_dtype.unwrap_or(spec.dtype),
    ));
    if spec.architecture == Architecture::Qwen2 {
        tensors.push(vector(format!("{p}.attn_q.bias"), spec.hidden, rng, 0.0));
        tensors.push(vector(format!("{p}.attn_k.bias"), kv, rng, 0.0));
        tensors.push(vector(format!("{p}.attn_v.bias"), kv, rng, 0.0));
    }
    if spec.architecture.is_gemma() {
        for name in ["post_attention_norm", "post_ffw_norm"] {
            tensors.push(vector(format!("{p}.{name}.weight"), spec.hidden, rng, 1.0));
        }
    }
    if matches!(
        spec.architecture,
        Architecture::Qwen3 | Architecture::Gemma3
    ) {
        tensors.push(vector(
            format!("{p}.attn_q_norm.weight"),
            head_dim,
            rng,
            1.0,
        ));
        tensors.push(vector(
            format!("{p}.attn_k_norm.weight"),
            head_dim,
            rng,
            1.0,
        ));
    }
}

/// The GGUF metadata of a tiny model: shape, RoPE, and the byte-level BPE tokenizer.
fn tiny_metadata(
    spec: &TinySpec,
    tokens: &[String],
    merges: &[String],
    types: &[i32],
) -> Vec<(String, Value)> {
    let arch = spec.architecture.as_str();
    let arch_name = spec.architecture_name.as_deref().unwrap_or(arch);
    let vocab = tokens.len();
    let head_dim = spec.head_dim.unwrap_or(spec.hidden / spec.heads);
    let u32v = |n: usize| Value::U32(n as u32);
    let strings = |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
    let mut window = Vec::new();
    if let Some((size, pattern)) = spec.sliding_window {
        window.push((format!("{arch}.attention.sliding_window"), u32v(size)));
        // candle-transformers' reader's name for the pattern, and llama.cpp's.
        window.push((
            format!("{arch}.attention.sliding_window_type"),
            u32v(pattern),
        ));
        window.push((
            format!("{arch}.attention.sliding_window_pattern"),
            u32v(pattern),
        ));
        window.push((format!("{arch}.rope.local_freq_base"), Value::F32(1_000.0)));
    }
    let mut metadata = vec![
        (
            "general.architecture".into(),
            Value::String(arch_name.into()),
        ),
        (format!("{arch}.block_count"), u32v(spec.layers)),
        (format!("{arch}.context_length"), u32v(spec.context)),
        (format!("{arch}.embedding_length"), u32v(spec.hidden)),
        (format!("{arch}.feed_forward_length"), u32v(spec.ffn)),
        (format!("{arch}.attention.head_count"), u32v(spec.heads)),
        (
            format!("{arch}.attention.head_count_kv"),
            u32v(spec.kv_heads),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        (format!("{arch}.rope.freq_base"), Value::F32(10_000.0)),
        (format!("{arch}.rope.dimension_count"), u32v(head_dim)),
        (format!("{arch}.attention.key_length"), u32v(head_dim)),
        (format!("{arch}.attention.value_length"), u32v(head_dim)),
        (format!("{arch}.vocab_size"), u32v(vocab)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.pre".into(),
            Value::String(
                if spec.architecture != Architecture::Llama {
                    "qwen2"
                } else {
                    "smollm"
                }
                .into(),
            ),
        ),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        ("tokenizer.ggml.merges".into(), strings(merges)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.iter().map(|t| Value::I32(*t)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
    ];
    metadata.extend(window);
    metadata
}

pub fn write_tiny_gguf(dir: &Path, spec: &TinySpec) -> PathBuf {
    let arch = spec.architecture.as_str();
    let (tokens, merges, types) = vocabulary();
    let vocab = tokens.len();
    let mut rng = Rng(spec.seed);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    // Q8_0 as real files have it, unless the whole model is F32: a tied output projection then
    // runs in f32 as a float reference does.
    let embedding_dtype = match spec.dtype {
        GgmlDType::F32 => GgmlDType::F32,
        _ => GgmlDType::Q8_0,
    };
    tensors.push(matrix(
        "token_embd.weight".into(),
        vocab,
        spec.hidden,
        &mut rng,
        embedding_dtype,
    ));
    if !spec.tied {
        tensors.push(matrix(
            "output.weight".into(),
            vocab,
            spec.hidden,
            &mut rng,
            spec.dtype,
        ));
    }
    tensors.push(vector(
        "output_norm.weight".into(),
        spec.hidden,
        &mut rng,
        1.0,
    ));
    for i in 0..spec.layers {
        layer_tensors(spec, i, &mut rng, &mut tensors);
    }
    let metadata = tiny_metadata(spec, &tokens, &merges, &types);
    let path = dir.join(format!("tiny-{arch}-{:?}.gguf", spec.dtype).to_lowercase());
    let mut file = std::fs::File::create(&path).expect("tiny model construction");
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &md, &ts).expect("tiny model construction");
    path
}

pub use crate::export::hf_tensor_names;

/// Converts a GGUF model into a Hugging Face folder (config, tokenizer, tokenizer config, two
/// safetensors shards with their index) and returns the dense tensors by name.
pub fn write_hf_folder(gguf: &Path, dir: &Path) -> std::collections::HashMap<String, Tensor> {
    let mut file = GgufFile::open(gguf).expect("tiny model opens");
    let config = file.config().expect("tiny model config");
    let tokenizer =
        crate::tokenizer::from_gguf_metadata(file.metadata()).expect("tiny model tokenizer");
    let mut source = GgufSource::new(&mut file, config.clone(), Device::Cpu);
    let mut tensors = std::collections::HashMap::new();
    for name in hf_tensor_names(&config) {
        let weight = source.require(&name).expect("tiny model tensor");
        tensors.insert(name, weight.dequantize(&Device::Cpu).expect("dequantize"));
    }
    std::fs::create_dir_all(dir).expect("create the folder");
    let shard_of = |name: &str| {
        if name.contains("layers.0.") || name.contains("embed") {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        }
    };
    for shard in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        let part: std::collections::HashMap<String, Tensor> = tensors
            .iter()
            .filter(|(name, _)| shard_of(name) == shard)
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        candle_core::safetensors::save(&part, dir.join(shard)).expect("write a shard");
    }
    let weight_map: serde_json::Map<String, serde_json::Value> = tensors
        .keys()
        .map(|n| (n.clone(), serde_json::Value::from(shard_of(n))))
        .collect();
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string())
        .expect("write the index");
    std::fs::write(dir.join("config.json"), config.to_hf_json().to_string())
        .expect("write config.json");
    tokenizer
        .save(dir.join("tokenizer.json"), false)
        .expect("write tokenizer.json");
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "<|im_end|>", "bos_token": "<|im_start|>"}"#,
    )
    .expect("write tokenizer_config.json");
    tensors
}

/// Causal attention in candle's elementary ops (full scores, an additive mask, softmax, keys
/// and values repeated per group): the reference the training attention op is tested against.
/// q `(batch, heads, seq, dim)`, k and v `(batch, kv_heads, seq, dim)`; query `i` of row `b`
/// reads keys `first[b * seq + i] ..= i`.
pub fn reference_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    first: &[u32],
) -> Tensor {
    let (batch, heads, seq, _) = q.dims4().unwrap();
    let group = heads / k.dim(1).unwrap();
    let repeat = |t: &Tensor| {
        let (b, kv, s, d) = t.dims4().unwrap();
        t.unsqueeze(2)
            .unwrap()
            .broadcast_as((b, kv, group, s, d))
            .unwrap()
            .reshape((b, kv * group, s, d))
            .unwrap()
    };
    let (k, v) = (repeat(k), repeat(v));
    let mask: Vec<f32> = (0..batch * seq)
        .flat_map(|at| {
            let (b, i) = (at / seq, at % seq);
            (0..seq).map(move |j| (b, i, j))
        })
        .map(|(b, i, j)| {
            if j > i || j < first[b * seq + i] as usize {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, (batch, 1, seq, seq), q.device()).unwrap();
    let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale)
        .unwrap()
        .broadcast_add(&mask)
        .unwrap();
    candle_nn::ops::softmax(&scores, candle_core::D::Minus1)
        .unwrap()
        .matmul(&v)
        .unwrap()
}

/// The training attention op (`None` where it does not run: see `fused::attention`), for the
/// GPU tests of the crates above.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    first: &[u32],
) -> crate::Result<Option<Tensor>> {
    crate::fused::attention::causal_attention(q, k, v, scale, first.into())
}
