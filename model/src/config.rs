//! Model hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The decoder families Kefu runs. They share one implementation; they differ in biases on the
/// q/k/v projections (qwen2), per-head RMS norms of queries and keys and a head size of their
/// own (qwen3, gemma3), their GGUF tensor layout (llama's permuted q/k rows), and for gemma3 in
/// four norms per layer, norm weights stored as an offset from one, scaled embeddings, a GELU
/// MLP and layers that attend over a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
}

impl Architecture {
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "llama" | "llamaforcausallm" | "mistral" => Ok(Self::Llama),
            "qwen2" | "qwen2forcausallm" => Ok(Self::Qwen2),
            "qwen3" | "qwen3forcausallm" => Ok(Self::Qwen3),
            "gemma3" | "gemma3_text" | "gemma3forcausallm" => Ok(Self::Gemma3),
            other => Err(Error::UnknownArchitecture(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma3 => "gemma3",
        }
    }

    /// Every family, for tests and listings.
    pub const ALL: [Architecture; 4] = [Self::Llama, Self::Qwen2, Self::Qwen3, Self::Gemma3];

    /// Gemma: a norm after attention and after the MLP as well as before each, RMS-norm
    /// weights applied as `1 + w` (Hugging Face stores `w`; GGUF stores `1 + w`), embeddings
    /// scaled by √hidden, and a tanh-approximated GELU gate in the MLP.
    pub fn is_gemma(self) -> bool {
        self == Self::Gemma3
    }
}

/// Hyper-parameters of a decoder, named as in Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q, k and v projections carry a bias (qwen2).
    pub attention_bias: bool,
    /// The size of each attention head when it is not `hidden_size / num_attention_heads`
    /// (qwen3: 128 for a 1,024-wide model with 16 heads).
    #[serde(default)]
    pub head_dim_override: Option<usize>,
    /// Queries and keys pass through a per-head RMS norm before RoPE (qwen3, gemma3).
    #[serde(default)]
    pub qk_norm: bool,
    /// Local layers attend to this many positions, their own included (gemma3).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Every `n`-th layer attends globally, the others over the sliding window (gemma3: 6).
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
    /// RoPE base of the sliding-window layers (gemma3: 10,000 beside the global 1,000,000).
    #[serde(default)]
    pub rope_local_theta: Option<f64>,
    /// Linear RoPE scaling of the global layers (positions divided by this factor).
    #[serde(default)]
    pub rope_scaling_factor: Option<f64>,
    /// Attention scores are scaled by `1/√this` instead of `1/√head_dim` (gemma3).
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
}

impl Config {
    pub fn head_dim(&self) -> usize {
        self.head_dim_override
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// The window layer `layer` attends over, or `None` for a layer that sees every position.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        let window = self.sliding_window?;
        match self.sliding_window_pattern {
            Some(n) if n > 0 && (layer + 1).is_multiple_of(n) => None,
            _ => Some(window),
        }
    }

    /// The factor attention scores are multiplied by.
    pub fn attention_scale(&self) -> f64 {
        1.0 / self
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim() as f64)
            .sqrt()
    }

    /// Checks the relations the decoder relies on, so a bad file fails at load time.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::InvalidConfig(msg));
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 {
            return fail("head counts must be positive".into());
        }
        if self.head_dim_override == Some(0) {
            return fail("the head size must be positive".into());
        }
        if self.head_dim_override.is_none()
            && !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return fail(format!(
                "hidden size {} is not a multiple of {} heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return fail(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return fail(format!("head dimension {} is odd", self.head_dim()));
        }
        if self.vocab_size == 0 || self.num_hidden_layers == 0 || self.max_position_embeddings == 0
        {
            return fail("vocabulary, layer count and context length must be positive".into());
        }
        if self.sliding_window == Some(0) {
            return fail("the sliding window must be positive".into());
        }
        let positive = |v: Option<f64>| v.is_none_or(|v| v.is_finite() && v > 0.0);
        if !positive(self.rope_local_theta)
            || !positive(self.rope_scaling_factor)
            || !positive(self.query_pre_attn_scalar)
        {
            return fail("RoPE bases, scaling factors and score scalars must be positive".into());
        }
        Ok(())
    }

    /// Reads the configuration of a GGUF file from its metadata.
    pub fn from_gguf_metadata(metadata: &HashMap<String, Value>) -> Result<Self> {
        let arch_name = metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| Error::InvalidConfig("missing general.architecture".into()))?;
        let architecture = Architecture::parse(arch_name)?;
        let prefix = architecture.as_str();
        let get = |key: &str| -> Result<&Value> {
            metadata
                .get(&format!("{prefix}.{key}"))
                .ok_or_else(|| Error::InvalidConfig(format!("missing {prefix}.{key}")))
        };
        let as_usize = |v: &Value| -> Result<usize> {
            let n = match v {
                Value::U32(n) => u64::from(*n),
                Value::U64(n) => *n,
                Value::I32(n) => u64::try_from(*n).unwrap_or(0),
                Value::I64(n) => u64::try_from(*n).unwrap_or(0),
                other => {
                    return Err(Error::InvalidConfig(format!(
                        "expected an integer, got {other:?}"
                    )));
                }
            };
            usize::try_from(n).map_err(|_| Error::InvalidConfig(format!("{n} is too large")))
        };
        let hidden_size = as_usize(get("embedding_length")?)?;
        let num_attention_heads = as_usize(get("attention.head_count")?)?;
        let num_key_value_heads = match get("attention.head_count_kv") {
            Ok(v) => as_usize(v)?,
            Err(_) => num_attention_heads,
        };
        let vocab_size = match get("vocab_size") {
            Ok(v) => as_usize(v)?,
            Err(_) => metadata
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.len())
                .ok_or_else(|| Error::InvalidConfig("cannot tell the vocabulary size".into()))?,
        };
        let rms_norm_eps = f64::from(get("attention.layer_norm_rms_epsilon")?.to_f32()?);
        let float = |key: &str| -> Option<f64> { Some(f64::from(get(key).ok()?.to_f32().ok()?)) };
        let rope_theta = float("rope.freq_base").unwrap_or(10_000.0);
        let gemma = architecture.is_gemma();
        let rope_scaling_factor = match get("rope.scaling.type") {
            Ok(kind) if kind.to_string().is_ok_and(|k| k == "linear") => {
                float("rope.scaling.factor").filter(|&f| f != 1.0)
            }
            Ok(kind) if kind.to_string().is_ok_and(|k| k != "none") => {
                return Err(Error::InvalidConfig(format!(
                    "RoPE scaling {:?} is not supported (linear is)",
                    kind.to_string().map(|s| s.as_str()).unwrap_or("?")
                )));
            }
            _ => None,
        };
        let config = Config {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: as_usize(get("feed_forward_length")?)?,
            num_hidden_layers: as_usize(get("block_count")?)?,
            num_attention_heads,
            num_key_value_heads,
            rms_norm_eps,
            rope_theta,
            max_position_embeddings: as_usize(get("context_length")?)?,
            // Decided by the loader from the presence of `output.weight`.
            tie_word_embeddings: false,
            attention_bias: architecture == Architecture::Qwen2,
            head_dim_override: match get("attention.key_length") {
                Ok(v) => Some(as_usize(v)?).filter(|&d| d * num_attention_heads != hidden_size),
                Err(_) => None,
            },
            qk_norm: matches!(architecture, Architecture::Qwen3 | Architecture::Gemma3),
            sliding_window: match get("attention.sliding_window") {
                Ok(v) if gemma => Some(as_usize(v)?),
                _ => None,
            },
            // llama.cpp's gemma3 default: every sixth layer global.
            sliding_window_pattern: match get("attention.sliding_window_pattern")
                .or_else(|_| get("attention.sliding_window_type"))
            {
                Ok(v) => Some(as_usize(v)?),
                Err(_) => gemma.then_some(6),
            },
            rope_local_theta: float("rope.local_freq_base").or(gemma.then_some(10_000.0)),
            rope_scaling_factor,
            query_pre_attn_scalar: None,
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct HfConfig {
            model_type: Option<String>,
            #[serde(default)]
            architectures: Vec<String>,
            vocab_size: usize,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            rms_norm_eps: f64,
            rope_theta: Option<f64>,
            max_position_embeddings: usize,
            #[serde(default)]
            tie_word_embeddings: bool,
            attention_bias: Option<bool>,
            head_dim: Option<usize>,
            sliding_window: Option<usize>,
            sliding_window_pattern: Option<usize>,
            rope_local_base_freq: Option<f64>,
            query_pre_attn_scalar: Option<f64>,
            rope_scaling: Option<serde_json::Value>,
            #[serde(default)]
            use_sliding_window: Option<bool>,
        }
        let hf: HfConfig = serde_json::from_str(text)
            .map_err(|e| Error::InvalidConfig(format!("config.json: {e}")))?;
        let arch_name = hf
            .model_type
            .clone()
            .or_else(|| hf.architectures.first().cloned())
            .ok_or_else(|| Error::InvalidConfig("config.json names no model_type".into()))?;
        let architecture = Architecture::parse(&arch_name)?;
        let config = Config {
            architecture,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: hf.rope_theta.unwrap_or(10_000.0),
            max_position_embeddings: hf.max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings,
            attention_bias: hf
                .attention_bias
                .unwrap_or(architecture == Architecture::Qwen2),
            head_dim_override: hf
                .head_dim
                .filter(|&d| d * hf.num_attention_heads != hf.hidden_size),
            qk_norm: matches!(architecture, Architecture::Qwen3 | Architecture::Gemma3),
            // Qwen's configs name a window they do not use (`use_sliding_window: false`).
            sliding_window: hf
                .sliding_window
                .filter(|_| architecture.is_gemma() || hf.use_sliding_window == Some(true)),
            sliding_window_pattern: hf
                .sliding_window_pattern
                .or(architecture.is_gemma().then_some(6)),
            rope_local_theta: hf.rope_local_base_freq,
            rope_scaling_factor: match &hf.rope_scaling {
                None | Some(serde_json::Value::Null) => None,
                Some(v) if v["rope_type"] == "linear" || v["type"] == "linear" => {
                    v["factor"].as_f64().filter(|&f| f != 1.0)
                }
                Some(v) => {
                    return Err(Error::InvalidConfig(format!(
                        "config.json: RoPE scaling {v} is not supported (linear is)"
                    )));
                }
            },
            query_pre_attn_scalar: hf.query_pre_attn_scalar,
        };
        config.validate()?;
        Ok(config)
    }

    /// The Hugging Face `config.json` for this configuration (used when exporting).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let (model_type, class) = match self.architecture {
            Architecture::Llama => ("llama", "LlamaForCausalLM"),
            Architecture::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
            Architecture::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
            Architecture::Gemma3 => return self.gemma3_hf_json(),
        };
        serde_json::json!({
            "model_type": model_type,
            "architectures": [class],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "head_dim": self.head_dim(),
            "hidden_act": "silu",
            "sliding_window": self.max_position_embeddings,
            "max_window_layers": self.num_hidden_layers,
            "use_sliding_window": false,
            "torch_dtype": "float32",
        })
    }

    /// `config.json` of a Gemma 3 text model (`Gemma3ForCausalLM`, as transformers writes it).
    fn gemma3_hf_json(&self) -> serde_json::Value {
        let pattern = self.sliding_window_pattern.unwrap_or(0);
        let layer_types: Vec<&str> = (0..self.num_hidden_layers)
            .map(|i| match self.layer_window(i) {
                Some(_) => "sliding_attention",
                None => "full_attention",
            })
            .collect();
        serde_json::json!({
            "model_type": "gemma3_text",
            "architectures": ["Gemma3ForCausalLM"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim(),
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_local_base_freq": self.rope_local_theta.unwrap_or(10_000.0),
            "rope_scaling": self.rope_scaling_factor
                .map(|f| serde_json::json!({"rope_type": "linear", "factor": f})),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": match self.query_pre_attn_scalar {
                Some(q) if q.fract() != 0.0 => serde_json::json!(q),
                Some(q) => serde_json::json!(q as u64),
                None => serde_json::json!(self.head_dim()),
            },
            "sliding_window": self.sliding_window.unwrap_or(self.max_position_embeddings),
            "sliding_window_pattern": pattern,
            "layer_types": layer_types,
            "final_logit_softcapping": null,
            "attn_logit_softcapping": null,
            "torch_dtype": "float32",
        })
    }
}
