//! The decoder shared by the llama, qwen2, qwen3 and gemma3 families: one set of weights serves
//! inference (KV cache, quantized matmuls, fused kernels) and training (differentiable ops, LoRA
//! hooks).

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use crate::config::Config;
use crate::error::{Error, Result};
pub use crate::linear::{Linear, Lora, LoraDropout, Weight};
use crate::linear::{Mode, ProjectionGroup};
use crate::q8::PackedQ8;

mod attention;
mod checkpoint;

pub use attention::KvCache;
use attention::{Attention, Masks, Packed, Rope};

/// Where the decoder's weights come from. Names are Hugging Face names
/// (`model.layers.0.self_attn.q_proj.weight`); each source maps them to its own layout.
pub trait WeightSource {
    /// A weight, or `None` when the file does not hold it.
    fn get(&mut self, name: &str) -> Result<Option<Weight>>;

    /// The Q8_0 matrix `name` packed for `crate::q8`'s kernels without ever holding its
    /// block bytes whole (read a few rows at a time), or `None` when the source cannot or the
    /// matrix is not Q8_0 there; the caller then uses [`WeightSource::get`].
    fn packed_q8(&mut self, _name: &str) -> Result<Option<crate::q8::PackedQ8>> {
        Ok(None)
    }

    /// Some rows of the matrix `name`, dequantized (`None`: the source cannot say cheaply).
    fn sample_rows(&mut self, _name: &str, _rows: &[usize]) -> Result<Option<Vec<Vec<f32>>>> {
        Ok(None)
    }

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
struct Mlp {
    /// gate, up (in that order)
    gate_up: ProjectionGroup,
    down_proj: ProjectionGroup,
    /// The gate's activation: tanh-approximated GELU (gemma) or SiLU.
    gelu: bool,
}

impl Mlp {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let [gate, up]: [Tensor; 2] = self
            .gate_up
            .forward(x, mode)?
            .try_into()
            .map_err(|_| Error::InvalidConfig("the MLP needs gate and up".into()))?;
        let gate = match self.gelu {
            true => gate.gelu()?,
            false => candle_nn::ops::silu(&gate)?,
        };
        self.down_proj.forward_one(&(gate * up)?, mode)
    }
}

#[derive(Debug, Clone)]
struct Block {
    /// Before attention (`input_layernorm`).
    attn_norm: RmsNorm,
    self_attn: Attention,
    /// On attention's output, before the residual (gemma's `post_attention_layernorm`).
    attn_out_norm: Option<RmsNorm>,
    /// Before the MLP (llama's `post_attention_layernorm`, gemma's `pre_feedforward_layernorm`).
    mlp_norm: RmsNorm,
    mlp: Mlp,
    /// On the MLP's output, before the residual (gemma's `post_feedforward_layernorm`).
    mlp_out_norm: Option<RmsNorm>,
}

impl Block {
    /// The block on `x` `(batch, seq, hidden)`: attention and MLP, each with its residual.
    fn forward(
        &self,
        x: &Tensor,
        masks: &Masks,
        offset: usize,
        cache: Option<&mut candle_nn::kv_cache::KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let h = self.attn_norm.forward(x, mode)?;
        let h = self.self_attn.forward(&h, masks, offset, cache, mode)?;
        self.finish(x, h, mode)
    }

    /// The rest of the block once attention gave `h` for the input `x`.
    fn finish(&self, x: &Tensor, h: Tensor, mode: Mode) -> Result<Tensor> {
        let out_norm = |norm: &Option<RmsNorm>, h: Tensor| match norm {
            Some(norm) => norm.forward(&h, mode),
            None => Ok(h),
        };
        let x = (x + out_norm(&self.attn_out_norm, h)?)?;
        let h = self.mlp.forward(&self.mlp_norm.forward(&x, mode)?, mode)?;
        Ok((&x + out_norm(&self.mlp_out_norm, h)?)?)
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
    /// The tied output projection's packed table (`crate::q8`): one copy serves both.
    Packed(Arc<PackedQ8>),
    Dense(Tensor),
}

impl Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Embedding::Quantized(q) => q.embedding(ids)?,
            Embedding::Packed(p) => {
                let device = ids.device().clone();
                let (batch, seq_len) = ids.dims2()?;
                let hidden = p.cols();
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                let mut rows = vec![0f32; ids.len() * hidden];
                for (id, row) in ids.iter().zip(rows.chunks_exact_mut(hidden)) {
                    let id = *id as usize;
                    if id >= p.rows() {
                        return Err(Error::InvalidConfig(format!(
                            "token id {id} is outside the {}-entry vocabulary",
                            p.rows()
                        )));
                    }
                    p.dequantize_row(id, row);
                }
                Tensor::from_vec(rows, (batch, seq_len, hidden), &device)?
            }
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
    /// Serve Q8_0 matrices with the fastest kernels the CPU has: Kefu's packed ones
    /// (`crate::q8`) with AVX-512 VNNI, else candle's repacked ones on rows padded with zero
    /// columns to a multiple of 256 where the CPU has AVX-VNNI. Both round activations
    /// differently from candle's reference kernels, so logits move by quantization noise;
    /// `false` keeps the reference kernels (parity tests use that).
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

/// A llama / qwen2 / qwen3 / gemma3 decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    config: Config,
    embed_tokens: Embedding,
    /// Embeddings are multiplied by this (gemma: √hidden).
    embed_scale: Option<f64>,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: ProjectionGroup,
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
        let gemma = config.architecture.is_gemma();
        let norm = |source: &mut dyn WeightSource, name: &str| -> Result<RmsNorm> {
            let weight = source.require(name)?.dequantize(device)?;
            // Gemma scales by `1 + w`; sources give `w` (Hugging Face's convention).
            let weight = if gemma { (weight + 1.0)? } else { weight };
            Ok(RmsNorm {
                weight: weight.to_dtype(dtype)?,
                eps: config.rms_norm_eps as f32,
            })
        };
        let rope = Rope::new(
            config,
            config.rope_theta,
            config.rope_scaling_factor.unwrap_or(1.0),
            device,
            dtype,
        )?;
        let local_rope = match config.rope_local_theta {
            Some(theta) if config.sliding_window.is_some() => {
                Rope::new(config, theta, 1.0, device, dtype)?
            }
            _ => rope.clone(),
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
        // The output projection, packed for `q8`'s kernels straight from the source where it
        // is Q8_0: its table (Gemma's 262,144 rows, Qwen2.5's 151,936) never exists whole beside
        // the packed copy. Tied, it is the token table too and the embedding is not read.
        let fast_q8 =
            options.fast_kernels && !options.dense && device.is_cpu() && crate::q8::available();
        let head_name = if config.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        let packed_head = match fast_q8 {
            true => source.packed_q8(head_name)?.map(Arc::new),
            false => None,
        };
        if let Some(packed) = &packed_head {
            check_dims(
                head_name,
                &[packed.rows(), packed.cols()],
                &[config.vocab_size, config.hidden_size],
            )?;
        }
        let embed_weight = match &packed_head {
            Some(_) if config.tie_word_embeddings => None,
            Some(head) if stores_head_twice(source, head)? => None,
            _ => {
                let weight = densify(source.require("model.embed_tokens.weight")?)?;
                check_dims(
                    "model.embed_tokens.weight",
                    weight.dims(),
                    &[config.vocab_size, config.hidden_size],
                )?;
                Some(weight)
            }
        };
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
                window: config.layer_window(i),
                rope: match config.layer_window(i) {
                    Some(_) => local_rope.clone(),
                    None => rope.clone(),
                },
                scale: config.attention_scale(),
            };
            let mlp = Mlp {
                gate_up: group(&[
                    ("mlp.gate_proj", [f, h], false),
                    ("mlp.up_proj", [f, h], false),
                ])?,
                down_proj: group(&[("mlp.down_proj", [h, f], false)])?,
                gelu: gemma,
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
            let mut layer_norm = |name: &str| norm(source, &format!("{p}.{name}.weight"));
            layers.push(match gemma {
                true => Block {
                    attn_norm: layer_norm("input_layernorm")?,
                    self_attn,
                    attn_out_norm: Some(layer_norm("post_attention_layernorm")?),
                    mlp_norm: layer_norm("pre_feedforward_layernorm")?,
                    mlp,
                    mlp_out_norm: Some(layer_norm("post_feedforward_layernorm")?),
                },
                false => Block {
                    attn_norm: layer_norm("input_layernorm")?,
                    self_attn,
                    attn_out_norm: None,
                    mlp_norm: layer_norm("post_attention_layernorm")?,
                    mlp,
                    mlp_out_norm: None,
                },
            });
        }
        let embedding = |weight: Weight| -> Result<Embedding> {
            Ok(match weight {
                Weight::Quantized(q) => Embedding::Quantized(q),
                Weight::Dense(t) => Embedding::Dense(t.to_dtype(dtype)?),
            })
        };
        let (lm_head, embed_tokens) = match (packed_head, embed_weight) {
            (Some(packed), None) => (
                ProjectionGroup::from_packed(packed.clone()),
                Embedding::Packed(packed),
            ),
            (Some(packed), Some(embed)) => {
                (ProjectionGroup::from_packed(packed), embedding(embed)?)
            }
            (None, Some(embed)) => {
                let (lm_head_weight, tied) = match source.get("lm_head.weight")? {
                    Some(w) if !config.tie_word_embeddings => (densify(w)?, false),
                    _ => (embed.clone(), true),
                };
                let lm_head =
                    ProjectionGroup::new(vec![(lm_head_weight, None)], options.fast_kernels)?;
                let embed_tokens = match (embed, lm_head.packed()) {
                    (Weight::Quantized(_), Some(packed)) if tied => Embedding::Packed(packed),
                    (embed, _) => embedding(embed)?,
                };
                (lm_head, embed_tokens)
            }
            (None, None) => unreachable!("the embedding is read unless the packed head is it"),
        };
        Ok(Self {
            config: config.clone(),
            embed_tokens,
            embed_scale: gemma.then(|| (config.hidden_size as f64).sqrt()),
            layers,
            norm: norm(source, "model.norm.weight")?,
            lm_head,
            device: device.clone(),
            dtype,
            checkpoints: None,
        })
    }

    /// Whether token lookups read the output projection's packed table (tied embeddings, or
    /// a file that stores the tied table twice): one copy of the vocabulary's matrix.
    pub fn token_table_is_output(&self) -> bool {
        matches!(self.embed_tokens, Embedding::Packed(_))
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

    fn masks(&self, seq_len: usize, offset: usize) -> Result<Masks> {
        Masks::new(
            seq_len,
            offset,
            self.config.sliding_window,
            &self.device,
            self.dtype,
        )
    }

    /// The token embeddings of `ids`, scaled where the family scales them.
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let x = self.embed_tokens.forward(ids)?;
        Ok(match self.embed_scale {
            Some(scale) => (x * scale)?,
            None => x,
        })
    }

    fn hidden_states(
        &self,
        input_ids: &Tensor,
        cache: Option<&mut KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        self.hidden_states_of(input_ids, cache, None, mode)
    }

    /// [`Decoder::hidden_states`], of packed rows when `lengths` says how they are packed.
    /// Training passes always run as packed rows (one example a row unless told otherwise):
    /// one attention path for training, the fused op where it runs.
    fn hidden_states_of(
        &self,
        input_ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        lengths: Option<&[Vec<usize>]>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (batch, seq_len) = input_ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        if offset + seq_len > self.config.max_position_embeddings {
            return Err(Error::PromptTooLong {
                prompt_tokens: offset + seq_len,
                context: self.config.max_position_embeddings,
            });
        }
        let masks = match (lengths, mode, &cache) {
            (Some(lengths), _, _) => Masks::packed(Packed::new(lengths, seq_len, &self.device)?),
            (None, Mode::Training, None) => {
                let whole_rows = vec![vec![seq_len]; batch];
                Masks::packed(Packed::new(&whole_rows, seq_len, &self.device)?)
            }
            _ => self.masks(seq_len, offset)?,
        };
        let mut x = self.embed(input_ids)?;
        // Training passes draw each layer's adapter-dropout masks from a seed of their own, so
        // that a checkpointed layer recomputes the same masks.
        let dropout = match mode {
            Mode::Training => checkpoint::LayerDropout::draw(self),
            Mode::Inference => None,
        };
        if let (Mode::Training, None, Some(tapes)) = (mode, &cache, &self.checkpoints) {
            x = self.checkpointed_layers(x, masks, dropout, tapes)?;
        } else {
            for (i, block) in self.layers.iter().enumerate() {
                if let Some(dropout) = &dropout {
                    dropout.reseed(i);
                }
                let layer_cache = cache.as_mut().map(|c| &mut c.layers[i]);
                x = block.forward(&x, &masks, offset, layer_cache, mode)?;
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
            let mut x = self.embed(&ids)?;
            for (i, block) in self.layers.iter().enumerate() {
                let h = block.attn_norm.forward(&x, mode)?;
                let h = block.self_attn.forward_batch(&h, caches, i)?;
                x = block.finish(&x, h, mode)?;
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
        self.logprobs_of(input_ids, targets, None, chunk)
    }

    /// [`Decoder::target_logprobs`] of examples packed into rows: row `b` holds examples of
    /// `lengths[b]` tokens one after another (the rest of the row is padding). Each example
    /// reads only its own positions and counts them from 0, so its log-probabilities are those
    /// it has alone in a row, and padding between examples costs no compute.
    pub fn target_logprobs_packed(
        &self,
        input_ids: &Tensor,
        targets: &Tensor,
        lengths: &[Vec<usize>],
    ) -> Result<Tensor> {
        let batch = input_ids.dim(0)?;
        if lengths.len() != batch {
            return Err(Error::InvalidParameter(format!(
                "{} rows of examples for a batch of {batch}",
                lengths.len()
            )));
        }
        let chunk = crate::loss::chunk_positions(self.config.vocab_size);
        self.logprobs_of(input_ids, targets, Some(lengths), chunk)
    }

    fn logprobs_of(
        &self,
        input_ids: &Tensor,
        targets: &Tensor,
        lengths: Option<&[Vec<usize>]>,
        chunk: usize,
    ) -> Result<Tensor> {
        let chunk = chunk.max(1);
        let hidden = self.hidden_states_of(input_ids, None, lengths, Mode::Training)?;
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

/// Whether the source's token table is the packed output table `head` stored a second time
/// at another precision (Qwen2.5's GGUF files hold the tied matrix twice: `token_embd` as
/// Q5_0 — Q8_0 in Kefu's copy — and `output` as Q8_0): 64 rows spread over the vocabulary
/// agree within quantization error (10 % of each row's norm; unrelated tables differ by about
/// 140 %). Then the packed table serves the token lookups too, and the second copy is never
/// read.
fn stores_head_twice(source: &mut dyn WeightSource, head: &PackedQ8) -> Result<bool> {
    let picks: Vec<usize> = (0..64).map(|i| i * head.rows() / 64).collect();
    let Some(rows) = source.sample_rows("model.embed_tokens.weight", &picks)? else {
        return Ok(false);
    };
    if rows.len() != picks.len() {
        return Ok(false);
    }
    let mut packed = vec![0f32; head.cols()];
    for (&pick, row) in picks.iter().zip(&rows) {
        if row.len() != head.cols() {
            return Ok(false);
        }
        head.dequantize_row(pick, &mut packed);
        let norm: f32 = packed.iter().map(|v| v * v).sum::<f32>().sqrt();
        let diff: f32 = row
            .iter()
            .zip(&packed)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            .sqrt();
        if diff > 0.1 * norm {
            return Ok(false);
        }
    }
    Ok(true)
}

fn check_dims(name: &str, actual: &[usize], expected: &[usize]) -> Result<()> {
    if actual != expected {
        return Err(Error::InvalidConfig(format!(
            "tensor `{name}` has shape {actual:?}, the configuration needs {expected:?}"
        )));
    }
    Ok(())
}
