//! The decoder shared by the llama and qwen2 families: one set of weights serves inference
//! (KV cache, quantized matmuls, fused kernels) and training (differentiable ops, LoRA hooks).

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use crate::config::Config;
use crate::error::{Error, Result};
pub use crate::linear::{Linear, Lora, LoraDropout, Weight};
use crate::linear::{Mode, ProjectionGroup};

mod checkpoint;

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

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(match mode {
            Mode::Inference => candle_nn::ops::rms_norm(x, &self.weight, self.eps)?,
            Mode::Training => crate::fused::rms_norm(x, &self.weight, self.eps)?,
        })
    }
}

#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// `−sin`: the inverse rotation, for the backward pass.
    neg_sin: Tensor,
}

impl Rope {
    fn new(config: &Config, device: &Device, dtype: DType) -> Result<Self> {
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
        let sin = angles.sin()?.to_dtype(dtype)?;
        Ok(Self {
            cos: angles.cos()?.to_dtype(dtype)?,
            neg_sin: sin.neg()?,
            sin,
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
            Mode::Training => {
                let neg_sin = self.neg_sin.narrow(0, offset, seq_len)?;
                crate::fused::rope(&x, &cos, &sin, &neg_sin)?
            }
        })
    }
}

/// Keys and values of past positions, one pair per layer, for one batch of sequences.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<candle_nn::kv_cache::KvCache>,
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
    /// q, k, v (in that order)
    qkv: ProjectionGroup,
    o_proj: ProjectionGroup,
    /// Per-head RMS norms of queries and keys, before RoPE (qwen3).
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
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
        let [q, k, v] = self.project(x, mode)?;
        let y = self.attend(&q, &k, &v, rope, mask, offset, cache, mode)?;
        self.o_proj.forward_one(&y, mode)
    }

    /// Several sequences, one new position each (`x`: `(batch, 1, hidden)`): the projections
    /// run once for the whole batch; each sequence attends over its own cache at its own
    /// position.
    fn forward_batch(
        &self,
        x: &Tensor,
        rope: &Rope,
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> Result<Tensor> {
        let mode = Mode::Inference;
        let [q, k, v] = self.project(x, mode)?;
        let mut ys = Vec::with_capacity(caches.len());
        for (b, cache) in caches.iter_mut().enumerate() {
            let cache = &mut cache.layers[layer];
            let offset = cache.current_seq_len();
            ys.push(self.attend(
                &q.narrow(0, b, 1)?,
                &k.narrow(0, b, 1)?,
                &v.narrow(0, b, 1)?,
                rope,
                None,
                offset,
                Some(cache),
                mode,
            )?);
        }
        self.o_proj.forward_one(&Tensor::cat(&ys, 0)?, mode)
    }

    /// q, k, v of `x` `(batch, seq, hidden)`, each `(batch, seq, heads * head_dim)`.
    fn project(&self, x: &Tensor, mode: Mode) -> Result<[Tensor; 3]> {
        self.qkv
            .forward(x, mode)?
            .try_into()
            .map_err(|_| Error::InvalidConfig("attention needs q, k and v".into()))
    }

    /// Attention of projected q, k, v (rotary positions from `offset`, keys and values
    /// appended to `cache`), before the output projection: `(batch, seq, heads * head_dim)`.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rope: &Rope,
        mask: Option<&Tensor>,
        offset: usize,
        cache: Option<&mut candle_nn::kv_cache::KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (batch, seq_len, _) = q.dims3()?;
        let split = |t: &Tensor, heads: usize, norm: Option<&RmsNorm>| -> Result<Tensor> {
            let t = t.reshape((batch, seq_len, heads, self.head_dim))?;
            let t = match norm {
                Some(norm) => norm.forward(&t, mode)?,
                None => t,
            };
            Ok(t.transpose(1, 2)?)
        };
        let q = split(q, self.num_heads, self.q_norm.as_ref())?;
        let k = split(k, self.num_kv_heads, self.k_norm.as_ref())?;
        let v = split(v, self.num_kv_heads, None)?.contiguous()?;
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
            Mode::Training => crate::fused::softmax(&scores)?,
        };
        let probs = probs.reshape((batch, self.num_kv_heads, group * seq_len, kv_len))?;
        let y = probs.matmul(&v.contiguous()?)?;
        Ok(y.reshape((batch, self.num_heads, seq_len, self.head_dim))?
            .transpose(1, 2)?
            .reshape((batch, seq_len, self.num_heads * self.head_dim))?)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    /// gate, up (in that order)
    gate_up: ProjectionGroup,
    down_proj: ProjectionGroup,
}

impl Mlp {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let [gate, up]: [Tensor; 2] = self
            .gate_up
            .forward(x, mode)?
            .try_into()
            .map_err(|_| Error::InvalidConfig("the MLP needs gate and up".into()))?;
        let gate = candle_nn::ops::silu(&gate)?;
        self.down_proj.forward_one(&(gate * up)?, mode)
    }
}

#[derive(Debug, Clone)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    /// The block on `x` `(batch, seq, hidden)`: attention and MLP, each with its residual.
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        mask: Option<&Tensor>,
        offset: usize,
        cache: Option<&mut candle_nn::kv_cache::KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let h = self.input_layernorm.forward(x, mode)?;
        let h = self
            .self_attn
            .forward(&h, rope, mask, offset, cache, mode)?;
        let x = (x + h)?;
        let h = self.post_attention_layernorm.forward(&x, mode)?;
        Ok((&x + self.mlp.forward(&h, mode)?)?)
    }

    /// Which group holds `target`, and its index there.
    fn locate(target: Target) -> (fn(&Block) -> &ProjectionGroup, usize) {
        match target {
            Target::Q => (|b| &b.self_attn.qkv, 0),
            Target::K => (|b| &b.self_attn.qkv, 1),
            Target::V => (|b| &b.self_attn.qkv, 2),
            Target::O => (|b| &b.self_attn.o_proj, 0),
            Target::Gate => (|b| &b.mlp.gate_up, 0),
            Target::Up => (|b| &b.mlp.gate_up, 1),
            Target::Down => (|b| &b.mlp.down_proj, 0),
        }
    }

    fn projection(&self, target: Target) -> (&ProjectionGroup, usize) {
        let (group, index) = Self::locate(target);
        (group(self), index)
    }

    fn projection_mut(&mut self, target: Target) -> (&mut ProjectionGroup, usize) {
        let index = Self::locate(target).1;
        let group = match target {
            Target::Q | Target::K | Target::V => &mut self.self_attn.qkv,
            Target::O => &mut self.self_attn.o_proj,
            Target::Gate | Target::Up => &mut self.mlp.gate_up,
            Target::Down => &mut self.mlp.down_proj,
        };
        (group, index)
    }
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
    /// Hold every weight matrix as dense f32 instead of the stored blocks: LoRA on a float
    /// base (no quantization in the frozen weights; about 4× the memory of Q8_0).
    pub dense: bool,
    /// The element type of dense weights and of activations: f32 on the CPU, bf16 on a GPU.
    /// Logits always come out as f32.
    pub dtype: DType,
}

impl Default for DecoderOptions {
    fn default() -> Self {
        Self {
            fast_kernels: true,
            dense: false,
            dtype: DType::F32,
        }
    }
}

/// A llama / qwen2 decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    config: Config,
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: ProjectionGroup,
    rope: Rope,
    device: Device,
    dtype: DType,
    /// Activation checkpointing per layer (training): the layer inputs kept by each forward
    /// pass, until [`Decoder::backward_checkpoints`] consumes them. `None`: off.
    checkpoints: Option<Arc<checkpoint::Tapes>>,
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
        let dtype = options.dtype;
        let norm = |source: &mut dyn WeightSource, name: &str| -> Result<RmsNorm> {
            let weight = source.require(name)?.dequantize(device)?.to_dtype(dtype)?;
            Ok(RmsNorm {
                weight,
                eps: config.rms_norm_eps as f32,
            })
        };
        let bias = |source: &mut dyn WeightSource, name: &str| -> Result<Option<Tensor>> {
            if !config.attention_bias {
                return Ok(None);
            }
            source
                .get(name)?
                .map(|w| Ok(w.dequantize(device)?.to_dtype(dtype)?))
                .transpose()
        };
        // Dense matrices (all of them with `options.dense`) in the compute type, on `device`.
        let densify = |weight: Weight| -> Result<Weight> {
            Ok(match weight {
                Weight::Quantized(_) if !options.dense => weight,
                other => Weight::Dense(other.dequantize(device)?.to_dtype(dtype)?),
            })
        };
        let embed_weight = densify(source.require("model.embed_tokens.weight")?)?;
        check_dims(
            "model.embed_tokens.weight",
            embed_weight.dims(),
            &[config.vocab_size, config.hidden_size],
        )?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let kv_out = config.num_key_value_heads * head_dim;
            let q_out = config.num_attention_heads * head_dim;
            let h = config.hidden_size;
            let f = config.intermediate_size;
            // (name, shape, has a bias) of each projection of one group.
            let mut group = |specs: &[(&str, [usize; 2], bool)]| -> Result<ProjectionGroup> {
                let mut weights = Vec::with_capacity(specs.len());
                for (name, shape, with_bias) in specs {
                    let full = format!("{p}.{name}.weight");
                    let weight = densify(source.require(&full)?)?;
                    check_dims(&full, weight.dims(), shape)?;
                    let b = if *with_bias {
                        bias(source, &format!("{p}.{name}.bias"))?
                    } else {
                        None
                    };
                    weights.push((weight, b));
                }
                ProjectionGroup::new(weights, options.fast_kernels)
            };
            let self_attn = Attention {
                qkv: group(&[
                    ("self_attn.q_proj", [q_out, h], true),
                    ("self_attn.k_proj", [kv_out, h], true),
                    ("self_attn.v_proj", [kv_out, h], true),
                ])?,
                o_proj: group(&[("self_attn.o_proj", [h, q_out], false)])?,
                q_norm: None,
                k_norm: None,
                num_heads: config.num_attention_heads,
                num_kv_heads: config.num_key_value_heads,
                head_dim,
            };
            let mlp = Mlp {
                gate_up: group(&[
                    ("mlp.gate_proj", [f, h], false),
                    ("mlp.up_proj", [f, h], false),
                ])?,
                down_proj: group(&[("mlp.down_proj", [h, f], false)])?,
            };
            let self_attn = Attention {
                q_norm: match config.qk_norm {
                    true => Some(norm(source, &format!("{p}.self_attn.q_norm.weight"))?),
                    false => None,
                },
                k_norm: match config.qk_norm {
                    true => Some(norm(source, &format!("{p}.self_attn.k_norm.weight"))?),
                    false => None,
                },
                ..self_attn
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
            Some(w) if !config.tie_word_embeddings => densify(w)?,
            _ => embed_weight.clone(),
        };
        let embed_tokens = match embed_weight {
            Weight::Quantized(q) => Embedding::Quantized(q),
            Weight::Dense(t) => Embedding::Dense(t.to_dtype(dtype)?),
        };
        Ok(Self {
            config: config.clone(),
            embed_tokens,
            layers,
            norm: norm(source, "model.norm.weight")?,
            lm_head: ProjectionGroup::new(vec![(lm_head_weight, None)], options.fast_kernels)?,
            rope: Rope::new(config, device, dtype)?,
            device: device.clone(),
            dtype,
            checkpoints: None,
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
        let (group, index) = self.layers.get_mut(layer)?.projection_mut(target);
        group.part_mut(index)
    }

    /// The frozen base weight of projection `target` in layer `layer`, dense `(out, in)`.
    pub fn base_weight(&self, layer: usize, target: Target) -> Result<Tensor> {
        let block = self
            .layers
            .get(layer)
            .ok_or_else(|| Error::InvalidConfig(format!("no layer {layer}")))?;
        let (group, index) = block.projection(target);
        group.base_weight(index)
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
        Ok(Some(
            Tensor::from_vec(mask, (seq_len, kv_len), &self.device)?.to_dtype(self.dtype)?,
        ))
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
        // Training passes draw each layer's adapter-dropout masks from a seed of their own, so
        // that a checkpointed layer recomputes the same masks.
        let dropout = match mode {
            Mode::Training => checkpoint::LayerDropout::draw(self),
            Mode::Inference => None,
        };
        if let (Mode::Training, None, Some(tapes)) = (mode, &cache, &self.checkpoints) {
            x = self.checkpointed_layers(x, mask, dropout, tapes)?;
        } else {
            for (i, block) in self.layers.iter().enumerate() {
                if let Some(dropout) = &dropout {
                    dropout.reseed(i);
                }
                let layer_cache = cache.as_mut().map(|c| &mut c.layers[i]);
                x = block.forward(&x, &self.rope, mask.as_ref(), offset, layer_cache, mode)?;
            }
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
            logits_f32(self.lm_head.forward_one(&last, Mode::Inference)?)
        })
    }

    /// Inference for several sequences at once, one new token each (`tokens[b]` follows the
    /// positions in `caches[b]`): the weights are read once per step for the whole batch,
    /// which is what makes serving many conversations cheaper than serving them one by one.
    /// Returns the logits `(batch, vocab)`.
    pub fn forward_batch(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        if tokens.len() != caches.len() || tokens.is_empty() {
            return Err(Error::InvalidParameter(format!(
                "a batch needs one cache per token ({} tokens, {} caches)",
                tokens.len(),
                caches.len()
            )));
        }
        let context = self.config.max_position_embeddings;
        if let Some(full) = caches.iter().find(|c| c.len() + 1 > context) {
            return Err(Error::PromptTooLong {
                prompt_tokens: full.len() + 1,
                context,
            });
        }
        let mode = Mode::Inference;
        self.device.with_context(|| {
            let ids = Tensor::new(tokens, &self.device)?.unsqueeze(1)?;
            let mut x = self.embed_tokens.forward(&ids)?;
            for (i, block) in self.layers.iter().enumerate() {
                let h = block.input_layernorm.forward(&x, mode)?;
                let h = block.self_attn.forward_batch(&h, &self.rope, caches, i)?;
                x = (x + h)?;
                let h = block.post_attention_layernorm.forward(&x, mode)?;
                x = (x + block.mlp.forward(&h, mode)?)?;
            }
            let x = self.norm.forward(&x, mode)?.squeeze(1)?;
            logits_f32(self.lm_head.forward_one(&x, mode)?)
        })
    }

    /// Logits of every position, `(batch, seq, vocab)`, with fused kernels and no cache (for
    /// scoring and parity checks).
    pub fn forward_all(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.device.with_context(|| {
            let hidden = self.hidden_states(input_ids, None, Mode::Inference)?;
            logits_f32(self.lm_head.forward_one(&hidden, Mode::Inference)?)
        })
    }

    /// Logits of every position through differentiable ops only, so gradients reach every
    /// adapter (training).
    pub fn forward_train(&self, input_ids: &Tensor) -> Result<Tensor> {
        let hidden = self.hidden_states(input_ids, None, Mode::Training)?;
        logits_f32(self.lm_head.forward_one(&hidden, Mode::Training)?)
    }

    /// Training: the log-probability of `targets[b, s]` (`u32`, the token that follows position
    /// `s`) at every position, `(batch, seq)` f32, differentiable down to every adapter. The
    /// logits are computed a chunk of positions at a time, forward and backward, and never
    /// exist for the whole batch (see [`crate::loss`]).
    pub fn target_logprobs(&self, input_ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let chunk = crate::loss::chunk_positions(self.config.vocab_size);
        self.target_logprobs_in_chunks(input_ids, targets, chunk)
    }

    /// [`Decoder::target_logprobs`] with `chunk` positions per piece of the output projection.
    pub fn target_logprobs_in_chunks(
        &self,
        input_ids: &Tensor,
        targets: &Tensor,
        chunk: usize,
    ) -> Result<Tensor> {
        let chunk = chunk.max(1);
        let hidden = self.hidden_states(input_ids, None, Mode::Training)?;
        let (batch, seq_len, width) = hidden.dims3()?;
        let flat = hidden.reshape((batch * seq_len, width))?.contiguous()?;
        let targets = targets.flatten_all()?.to_dtype(DType::U32)?;
        let values = crate::loss::target_values(&self.lm_head, &flat, &targets, chunk)?;
        let weight = self
            .lm_head
            .base_weight(0)?
            .to_dtype(self.dtype)?
            .contiguous()?;
        let head = self.lm_head.clone();
        let logprobs = crate::loss::target_logprobs(&flat, values, head, weight, targets, chunk)?;
        Ok(logprobs.reshape((batch, seq_len))?)
    }

    /// The element type of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

/// Logits leave the decoder as f32 whatever the compute type (bf16 on a GPU).
fn logits_f32(logits: Tensor) -> Result<Tensor> {
    Ok(logits.to_dtype(DType::F32)?)
}

fn check_dims(name: &str, actual: &[usize], expected: &[usize]) -> Result<()> {
    if actual != expected {
        return Err(Error::InvalidConfig(format!(
            "tensor `{name}` has shape {actual:?}, the configuration needs {expected:?}"
        )));
    }
    Ok(())
}
