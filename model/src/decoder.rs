//! The decoder shared by the llama and qwen2 families: one set of weights serves inference
//! (KV cache, quantized matmuls, fused kernels) and training (differentiable ops, LoRA hooks).

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, D, DType, Device, Layout, Module, Shape, Tensor};

use crate::config::Config;
use crate::error::{Error, Result};

/// One weight matrix as stored: quantized blocks or a dense tensor.
#[derive(Debug, Clone)]
pub enum Weight {
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Weight {
    pub fn dims(&self) -> &[usize] {
        match self {
            Weight::Quantized(q) => q.shape().dims(),
            Weight::Dense(t) => t.dims(),
        }
    }

    /// The weight as a dense f32 tensor.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        Ok(match self {
            Weight::Quantized(q) => q.dequantize(device)?,
            Weight::Dense(t) => t.to_dtype(DType::F32)?,
        })
    }
}

/// Where the decoder's weights come from. Names are Hugging Face names
/// (`model.layers.0.self_attn.q_proj.weight`); each source maps them to its own layout.
pub trait WeightSource {
    /// A weight, or `None` when the file does not hold it.
    fn get(&mut self, name: &str) -> Result<Option<Weight>>;

    fn require(&mut self, name: &str) -> Result<Weight> {
        self.get(name)?
            .ok_or_else(|| Error::InvalidConfig(format!("the model has no tensor `{name}`")))
    }
}

/// The projections a LoRA adapter can attach to, named as PEFT names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    pub fn module_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }
}

/// A low-rank adapter on one projection: `y = x·Wᵀ + scale·(x·Aᵀ)·Bᵀ`, `scale = α / r`.
/// Only the adapter path is scaled.
#[derive(Debug, Clone)]
pub struct Lora {
    /// `(rank, in_features)`
    pub a: Tensor,
    /// `(out_features, rank)`
    pub b: Tensor,
    pub scale: f64,
}

/// candle's fastest CPU kernels (repacked tiles with VNNI dot products) take Q8_0 rows whose
/// length is a multiple of this and a row count that is a multiple of 16.
const FAST_ROW_MULTIPLE: usize = 256;
const FAST_ROW_COUNT_MULTIPLE: usize = 16;

fn cpu_has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
            || std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Appends zero columns to every row of a quantized matrix. An all-zero block decodes to zeros
/// in every GGML block type, so rows are padded by inserting zero bytes: exact.
fn pad_rows(tensor: &QTensor, padded_in: usize) -> Result<QTensor> {
    let (rows, cols) = tensor.shape().dims2()?;
    let dtype = tensor.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let padded_row_bytes = padded_in / dtype.block_size() * dtype.type_size();
    let data = tensor.data()?;
    let mut out = vec![0u8; rows * padded_row_bytes];
    for (src, dst) in data
        .chunks_exact(row_bytes)
        .zip(out.chunks_exact_mut(padded_row_bytes))
    {
        dst[..row_bytes].copy_from_slice(src);
    }
    let storage = candle_core::quantized::QStorage::from_data(
        std::borrow::Cow::Owned(out),
        &tensor.device(),
        dtype,
    )?;
    Ok(QTensor::new(storage, (rows, padded_in))?)
}

/// A projection: frozen base weight (quantized or dense), optional bias, optional adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: QMatMul,
    bias: Option<Tensor>,
    pub lora: Option<Lora>,
    out_features: usize,
    in_features: usize,
    /// Row length of the stored weight when it was padded with zero columns for a faster
    /// kernel; inputs are padded to match.
    padded_in_features: usize,
}

impl Linear {
    fn new(weight: Weight, bias: Option<Tensor>, fast_kernels: bool) -> Result<Self> {
        let (out_features, in_features) = match weight.dims() {
            [o, i] => (*o, *i),
            dims => {
                return Err(Error::InvalidConfig(format!(
                    "a projection must be 2-D, got {dims:?}"
                )));
            }
        };
        let mut padded_in_features = in_features;
        let weight = match weight {
            Weight::Quantized(q) => {
                let pad = fast_kernels
                    && q.dtype() == candle_core::quantized::GgmlDType::Q8_0
                    && q.device().is_cpu()
                    && !in_features.is_multiple_of(FAST_ROW_MULTIPLE)
                    && out_features.is_multiple_of(FAST_ROW_COUNT_MULTIPLE)
                    && cpu_has_vnni();
                if pad {
                    padded_in_features = in_features.next_multiple_of(FAST_ROW_MULTIPLE);
                    QMatMul::from_qtensor(pad_rows(&q, padded_in_features)?)?
                } else {
                    QMatMul::from_arc(q)?
                }
            }
            Weight::Dense(t) => QMatMul::Tensor(t.to_dtype(DType::F32)?),
        };
        Ok(Self {
            weight,
            bias,
            lora: None,
            out_features,
            in_features,
            padded_in_features,
        })
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The base weight as a dense `(out, in)` tensor.
    pub fn base_weight(&self) -> Result<Tensor> {
        let dense = match &self.weight {
            QMatMul::QTensor(q) => q.dequantize(&q.device())?,
            QMatMul::Tensor(t) => t.clone(),
            QMatMul::TensorF16(t) => t.to_dtype(DType::F32)?,
        };
        Ok(dense.narrow(1, 0, self.in_features)?)
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let padding = self.padded_in_features - self.in_features;
        let padded;
        let base_input = if padding > 0 {
            padded = x.pad_with_zeros(D::Minus1, 0, padding)?;
            &padded
        } else {
            x
        };
        let mut y = match (&self.weight, mode) {
            (QMatMul::QTensor(weight), Mode::Training) => {
                base_input.contiguous()?.apply_op1(FrozenQuantizedMatMul {
                    weight: weight.clone(),
                })?
            }
            (weight, _) => weight.forward(base_input)?,
        };
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(bias)?;
        }
        if let Some(lora) = &self.lora {
            let down = x.broadcast_matmul(&lora.a.t()?)?;
            let up = down.broadcast_matmul(&lora.b.t()?)?;
            y = (y + (up * lora.scale)?)?;
        }
        Ok(y)
    }
}

/// `x·Wᵀ` for a frozen quantized `W` that still passes gradients to `x`, so adapters in earlier
/// layers learn through a quantized base (QLoRA). The backward pass dequantizes this one
/// matrix for the moment it is needed; the model as a whole stays quantized.
#[derive(Debug)]
struct FrozenQuantizedMatMul {
    weight: Arc<QTensor>,
}

impl CustomOp1 for FrozenQuantizedMatMul {
    fn name(&self) -> &'static str {
        "frozen-quantized-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let data = storage.as_slice::<f32>()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-quantized-matmul needs a contiguous input")
        };
        let x = Tensor::from_slice(&data[start..end], layout.shape(), &Device::Cpu)?;
        let y = QMatMul::from_arc(self.weight.clone())?.forward(&x)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let weight = self.weight.dequantize(grad_res.device())?;
        Ok(Some(grad_res.broadcast_matmul(&weight)?))
    }
}

/// Whether a forward pass may use fused kernels (inference) or must record gradients
/// (training: candle's fused RMSNorm, RoPE and softmax have no backward pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Inference,
    Training,
}

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(match mode {
            Mode::Inference => candle_nn::ops::rms_norm(x, &self.weight, self.eps)?,
            Mode::Training => candle_nn::ops::rms_norm_slow(x, &self.weight, self.eps)?,
        })
    }
}

#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(config: &Config, device: &Device) -> Result<Self> {
        let head_dim = config.head_dim();
        let inv_freq: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| (1.0 / config.rope_theta.powf(i as f64 / head_dim as f64)) as f32)
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, head_dim / 2), device)?;
        let positions = Tensor::arange(0u32, config.max_position_embeddings as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((config.max_position_embeddings, 1))?;
        let angles = positions.matmul(&inv_freq)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }

    /// Rotates `x` of shape `(batch, heads, seq, head_dim)` (half-split, Hugging Face layout).
    fn apply(&self, x: &Tensor, offset: usize, mode: Mode) -> Result<Tensor> {
        let seq_len = x.dim(2)?;
        let cos = self.cos.narrow(0, offset, seq_len)?;
        let sin = self.sin.narrow(0, offset, seq_len)?;
        let x = x.contiguous()?;
        Ok(match mode {
            Mode::Inference => candle_nn::rotary_emb::rope(&x, &cos, &sin)?,
            Mode::Training => candle_nn::rotary_emb::rope_slow(&x, &cos, &sin)?,
        })
    }
}

/// Keys and values of past positions, one pair per layer, for one batch of sequences.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<candle_nn::kv_cache::KvCache>,
}

impl KvCache {
    /// Room grows in steps of this many positions.
    const GROWTH: usize = 256;

    pub fn new(config: &Config) -> Self {
        Self {
            layers: (0..config.num_hidden_layers)
                .map(|_| candle_nn::kv_cache::KvCache::new(2, Self::GROWTH))
                .collect(),
        }
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.current_seq_len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| l.reset());
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        mask: Option<&Tensor>,
        offset: usize,
        cache: Option<&mut candle_nn::kv_cache::KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (batch, seq_len, _) = x.dims3()?;
        let split = |t: Tensor, heads: usize| -> Result<Tensor> {
            Ok(t.reshape((batch, seq_len, heads, self.head_dim))?
                .transpose(1, 2)?)
        };
        let q = split(self.q_proj.forward(x, mode)?, self.num_heads)?;
        let k = split(self.k_proj.forward(x, mode)?, self.num_kv_heads)?;
        let v = split(self.v_proj.forward(x, mode)?, self.num_kv_heads)?.contiguous()?;
        let q = rope.apply(&q, offset, mode)?;
        let k = rope.apply(&k, offset, mode)?;
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v)?,
            None => (k, v),
        };
        let kv_len = k.dim(2)?;
        // Grouped-query attention without copying keys: the query heads that share a key/value
        // head are stacked along the sequence axis, so one batched matmul serves the group.
        let group = self.num_heads / self.num_kv_heads;
        let q =
            q.contiguous()?
                .reshape((batch, self.num_kv_heads, group * seq_len, self.head_dim))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = scores.reshape((batch, self.num_heads, seq_len, kv_len))?;
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let probs = match mode {
            Mode::Inference => candle_nn::ops::softmax_last_dim(&scores)?,
            Mode::Training => candle_nn::ops::softmax(&scores, D::Minus1)?,
        };
        let probs = probs.reshape((batch, self.num_kv_heads, group * seq_len, kv_len))?;
        let y = probs.matmul(&v.contiguous()?)?;
        let y = y
            .reshape((batch, self.num_heads, seq_len, self.head_dim))?
            .transpose(1, 2)?
            .reshape((batch, seq_len, self.num_heads * self.head_dim))?;
        self.o_proj.forward(&y, mode)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate_proj.forward(x, mode)?)?;
        let up = self.up_proj.forward(x, mode)?;
        self.down_proj.forward(&(gate * up)?, mode)
    }
}

#[derive(Debug, Clone)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

#[derive(Debug, Clone)]
enum Embedding {
    /// Rows are dequantized on lookup; the table stays in its compact form.
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Embedding::Quantized(q) => q.embedding(ids)?,
            Embedding::Dense(t) => {
                let (batch, seq_len) = ids.dims2()?;
                t.index_select(&ids.flatten_all()?, 0)?
                    .reshape((batch, seq_len, t.dim(1)?))?
            }
        })
    }
}

/// How the decoder lays out its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderOptions {
    /// Pad Q8_0 rows with zero columns to a multiple of 256 where the CPU has VNNI, so candle's
    /// repacked kernels apply (4–8× faster matrix-vector products here). Those kernels quantize
    /// activations in 256-wide blocks instead of 32-wide ones, so logits move by quantization
    /// noise; `false` keeps the reference kernels (parity tests use that).
    pub fast_kernels: bool,
}

impl Default for DecoderOptions {
    fn default() -> Self {
        Self { fast_kernels: true }
    }
}

/// A llama / qwen2 decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    config: Config,
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    device: Device,
}

impl Decoder {
    /// Builds the decoder from any weight source; names are Hugging Face names.
    pub fn load(source: &mut dyn WeightSource, config: &Config, device: &Device) -> Result<Self> {
        Self::load_with(source, config, device, DecoderOptions::default())
    }

    pub fn load_with(
        source: &mut dyn WeightSource,
        config: &Config,
        device: &Device,
        options: DecoderOptions,
    ) -> Result<Self> {
        config.validate()?;
        let head_dim = config.head_dim();
        let norm = |source: &mut dyn WeightSource, name: &str| -> Result<RmsNorm> {
            let weight = source.require(name)?.dequantize(device)?;
            Ok(RmsNorm {
                weight,
                eps: config.rms_norm_eps as f32,
            })
        };
        let bias = |source: &mut dyn WeightSource, name: &str| -> Result<Option<Tensor>> {
            if !config.attention_bias {
                return Ok(None);
            }
            source.get(name)?.map(|w| w.dequantize(device)).transpose()
        };
        let embed_weight = source.require("model.embed_tokens.weight")?;
        check_dims(
            "model.embed_tokens.weight",
            embed_weight.dims(),
            &[config.vocab_size, config.hidden_size],
        )?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let kv_out = config.num_key_value_heads * head_dim;
            let mut linear = |name: &str, shape: [usize; 2], with_bias: bool| -> Result<Linear> {
                let full = format!("{p}.{name}.weight");
                let weight = source.require(&full)?;
                check_dims(&full, weight.dims(), &shape)?;
                let b = if with_bias {
                    bias(source, &format!("{p}.{name}.bias"))?
                } else {
                    None
                };
                Linear::new(weight, b, options.fast_kernels)
            };
            let h = config.hidden_size;
            let f = config.intermediate_size;
            let self_attn = Attention {
                q_proj: linear("self_attn.q_proj", [h, h], true)?,
                k_proj: linear("self_attn.k_proj", [kv_out, h], true)?,
                v_proj: linear("self_attn.v_proj", [kv_out, h], true)?,
                o_proj: linear("self_attn.o_proj", [h, h], false)?,
                num_heads: config.num_attention_heads,
                num_kv_heads: config.num_key_value_heads,
                head_dim,
            };
            let mlp = Mlp {
                gate_proj: linear("mlp.gate_proj", [f, h], false)?,
                up_proj: linear("mlp.up_proj", [f, h], false)?,
                down_proj: linear("mlp.down_proj", [h, f], false)?,
            };
            layers.push(Block {
                input_layernorm: norm(source, &format!("{p}.input_layernorm.weight"))?,
                self_attn,
                post_attention_layernorm: norm(
                    source,
                    &format!("{p}.post_attention_layernorm.weight"),
                )?,
                mlp,
            });
        }
        let lm_head_weight = match source.get("lm_head.weight")? {
            Some(w) if !config.tie_word_embeddings => w,
            _ => embed_weight.clone(),
        };
        let embed_tokens = match embed_weight {
            Weight::Quantized(q) => Embedding::Quantized(q),
            Weight::Dense(t) => Embedding::Dense(t.to_dtype(DType::F32)?),
        };
        Ok(Self {
            config: config.clone(),
            embed_tokens,
            layers,
            norm: norm(source, "model.norm.weight")?,
            lm_head: Linear::new(lm_head_weight, None, options.fast_kernels)?,
            rope: Rope::new(config, device)?,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The projection `target` of layer `layer`, to attach or inspect an adapter.
    pub fn linear_mut(&mut self, layer: usize, target: Target) -> Option<&mut Linear> {
        let block = self.layers.get_mut(layer)?;
        Some(match target {
            Target::Q => &mut block.self_attn.q_proj,
            Target::K => &mut block.self_attn.k_proj,
            Target::V => &mut block.self_attn.v_proj,
            Target::O => &mut block.self_attn.o_proj,
            Target::Gate => &mut block.mlp.gate_proj,
            Target::Up => &mut block.mlp.up_proj,
            Target::Down => &mut block.mlp.down_proj,
        })
    }

    fn causal_mask(&self, seq_len: usize, offset: usize) -> Result<Option<Tensor>> {
        if seq_len <= 1 {
            return Ok(None);
        }
        let kv_len = offset + seq_len;
        let mask: Vec<f32> = (0..seq_len)
            .flat_map(|i| {
                (0..kv_len).map(move |j| {
                    if j > offset + i {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        Ok(Some(Tensor::from_vec(
            mask,
            (seq_len, kv_len),
            &self.device,
        )?))
    }

    fn hidden_states(
        &self,
        input_ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (_, seq_len) = input_ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        if offset + seq_len > self.config.max_position_embeddings {
            return Err(Error::PromptTooLong {
                prompt_tokens: offset + seq_len,
                context: self.config.max_position_embeddings,
            });
        }
        let mask = self.causal_mask(seq_len, offset)?;
        let mut x = self.embed_tokens.forward(input_ids)?;
        for (i, block) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_mut().map(|c| &mut c.layers[i]);
            let h = block.input_layernorm.forward(&x, mode)?;
            let h = block.self_attn.forward(
                &h,
                &self.rope,
                mask.as_ref(),
                offset,
                layer_cache,
                mode,
            )?;
            x = (x + h)?;
            let h = block.post_attention_layernorm.forward(&x, mode)?;
            x = (x + block.mlp.forward(&h, mode)?)?;
        }
        self.norm.forward(&x, mode)
    }

    /// Inference: feeds `input_ids` `(batch, seq)` after the positions already in `cache` and
    /// returns the logits of the last position, `(batch, vocab)`.
    pub fn forward(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        // Inside candle's pool the many short parallel sections of a pass reuse warm workers
        // instead of handing each op to a sleeping pool and waiting for it.
        self.device.with_context(|| {
            let hidden = self.hidden_states(input_ids, Some(cache), Mode::Inference)?;
            let last = hidden.narrow(1, hidden.dim(1)? - 1, 1)?.squeeze(1)?;
            self.lm_head.forward(&last, Mode::Inference)
        })
    }

    /// Logits of every position, `(batch, seq, vocab)`, with fused kernels and no cache (for
    /// scoring and parity checks).
    pub fn forward_all(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.device.with_context(|| {
            let hidden = self.hidden_states(input_ids, None, Mode::Inference)?;
            self.lm_head.forward(&hidden, Mode::Inference)
        })
    }

    /// Logits of every position through differentiable ops only, so gradients reach every
    /// adapter (training).
    pub fn forward_train(&self, input_ids: &Tensor) -> Result<Tensor> {
        let hidden = self.hidden_states(input_ids, None, Mode::Training)?;
        self.lm_head.forward(&hidden, Mode::Training)
    }
}

fn check_dims(name: &str, actual: &[usize], expected: &[usize]) -> Result<()> {
    if actual != expected {
        return Err(Error::InvalidConfig(format!(
            "tensor `{name}` has shape {actual:?}, the configuration needs {expected:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlDType;

    use super::*;

    #[test]
    fn a_frozen_quantized_matmul_passes_the_dense_gradient_to_its_input() {
        let device = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (48, 64), &device).unwrap();
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
        let linear = Linear::new(Weight::Quantized(q.clone()), None, true).unwrap();
        let x = candle_core::Var::randn(0f32, 1.0, (2, 3, 64), &device).unwrap();
        let r = Tensor::randn(0f32, 1.0, (2, 3, 48), &device).unwrap();
        let y = linear.forward(x.as_tensor(), Mode::Training).unwrap();
        // The forward value is the quantized matmul's.
        let inference = linear.forward(x.as_tensor(), Mode::Inference).unwrap();
        let diff: f32 = (&y - &inference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0);
        let loss = (y * &r).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let got = grads.get(x.as_tensor()).unwrap();
        // d(sum(r ⊙ x·Wᵀ))/dx = r·W, with W as dequantized.
        let expected = r.broadcast_matmul(&q.dequantize(&device).unwrap()).unwrap();
        let diff: f32 = (got - expected)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-4, "{diff}");
    }
}
