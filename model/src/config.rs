//! Model hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The decoder families Kefu runs. They share one implementation; they differ in biases on the
/// q/k/v projections (qwen2), per-head RMS norms of queries and keys and a head size of their
/// own (qwen3), and their GGUF tensor layout (llama's permuted q/k rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
}

impl Architecture {
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "llama" | "llamaforcausallm" | "mistral" => Ok(Self::Llama),
            "qwen2" | "qwen2forcausallm" => Ok(Self::Qwen2),
            "qwen3" | "qwen3forcausallm" => Ok(Self::Qwen3),
            other => Err(Error::UnknownArchitecture(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
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
    /// Queries and keys pass through a per-head RMS norm before RoPE (qwen3).
    #[serde(default)]
    pub qk_norm: bool,
}

impl Config {
    pub fn head_dim(&self) -> usize {
        self.head_dim_override
            .unwrap_or(self.hidden_size / self.num_attention_heads)
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
        let rope_theta = get("rope.freq_base")
            .and_then(|v| Ok(f64::from(v.to_f32()?)))
            .unwrap_or(10_000.0);
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
            qk_norm: architecture == Architecture::Qwen3,
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
            qk_norm: architecture == Architecture::Qwen3,
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
}
