//! Loading a chat model from a GGUF file or a Hugging Face folder into a ready-to-use bundle:
//! decoder, tokenizer, chat template and end-of-turn tokens.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;

use crate::chat::{ChatTemplate, default_template};
use crate::config::Config;
use crate::decoder::{Decoder, DecoderOptions, Weight, WeightSource};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, GgufSource, requantize};
use crate::tokenizer::{from_gguf_metadata, gguf_token_id};

/// How the weights were stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    Gguf,
    HuggingFace,
}

/// Options for [`LoadedModel::load`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Re-quantize block types without fast CPU kernels (GGUF) or dense projections
    /// (Hugging Face) to Q8_0. For GGUF the result is cached beside the file.
    pub requantize: bool,
    pub device: Device,
    pub decoder: DecoderOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            requantize: true,
            device: Device::Cpu,
            decoder: DecoderOptions::default(),
        }
    }
}

/// A model ready to generate.
#[derive(Debug)]
pub struct LoadedModel {
    pub decoder: Decoder,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// Tokens that end the assistant's turn.
    pub stop_token_ids: Vec<u32>,
    pub format: ModelFormat,
    /// The file or folder the weights were read from (after any re-quantization).
    pub weights_path: PathBuf,
}

impl LoadedModel {
    /// Loads a `.gguf` file, a folder holding one, or a Hugging Face model folder.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self> {
        if !path.exists() {
            return Err(Error::NotFound(path.to_path_buf()));
        }
        if path.is_dir() {
            if path.join("config.json").exists() {
                return load_hf(path, options);
            }
            let gguf = find_gguf(path)?;
            return load_gguf(&gguf, options);
        }
        load_gguf(path, options)
    }

    pub fn config(&self) -> &Config {
        self.decoder.config()
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(Error::tokenizer)?
            .get_ids()
            .to_vec())
    }
}

fn find_gguf(dir: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .filter(|p| !is_requantized_cache(p))
        .collect();
    found.sort();
    found.into_iter().next().ok_or_else(|| Error::Corrupt {
        path: dir.to_path_buf(),
        reason: "the folder holds neither config.json nor a .gguf file".into(),
    })
}

const REQUANTIZED_SUFFIX: &str = ".kefu-q8_0.gguf";

fn is_requantized_cache(path: &Path) -> bool {
    path.to_string_lossy().ends_with(REQUANTIZED_SUFFIX)
}

/// Where the re-quantized copy of `path` is cached.
pub fn requantized_path(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    path.with_file_name(format!("{stem}{REQUANTIZED_SUFFIX}"))
}

fn load_gguf(path: &Path, options: &LoadOptions) -> Result<LoadedModel> {
    let mut file = GgufFile::open(path)?;
    // Fail on an unknown architecture before spending seconds on re-quantization.
    file.architecture()?;
    let slow = file.has_slow_weights();
    if options.requantize && slow && !is_requantized_cache(path) {
        let cached = requantized_path(path);
        let fresh = GgufFile::open(&cached)
            .ok()
            .filter(|_| newer(&cached, path));
        file = match fresh {
            Some(cached) => cached,
            None => {
                requantize(&mut file, &cached, GgmlDType::Q8_0)?;
                GgufFile::open(&cached)?
            }
        };
    }
    let config = file.config()?;
    let tokenizer = from_gguf_metadata(file.metadata())?;
    let metadata = file.metadata().clone();
    let token = |key: &str| gguf_token_id(&metadata, key).and_then(|id| tokenizer.id_to_token(id));
    let bos = token("tokenizer.ggml.bos_token_id").unwrap_or_default();
    let eos = token("tokenizer.ggml.eos_token_id").unwrap_or_default();
    let template_source = metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| default_template(config.architecture).to_string());
    let template = ChatTemplate::new(&template_source, &bos, &eos)?;
    let mut stop_token_ids: Vec<u32> = gguf_token_id(&metadata, "tokenizer.ggml.eos_token_id")
        .into_iter()
        .collect();
    add_known_stops(&tokenizer, &mut stop_token_ids);
    let weights_path = file.path.clone();
    let device = options.device.clone();
    let decoder = Decoder::load_with(
        &mut GgufSource::new(&mut file, config.clone(), device.clone()),
        &config,
        &device,
        options.decoder,
    )?;
    check_vocab(&tokenizer, &config)?;
    Ok(LoadedModel {
        decoder,
        tokenizer,
        template,
        stop_token_ids,
        format: ModelFormat::Gguf,
        weights_path,
    })
}

fn newer(a: &Path, b: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((modified(a), modified(b)), (Some(a), Some(b)) if a >= b)
}

fn add_known_stops(tokenizer: &Tokenizer, stops: &mut Vec<u32>) {
    for name in [
        "<|im_end|>",
        "<|endoftext|>",
        "<|eot_id|>",
        "</s>",
        "<end_of_turn>",
    ] {
        if let Some(id) = tokenizer.token_to_id(name)
            && !stops.contains(&id)
        {
            stops.push(id);
        }
    }
}

fn check_vocab(tokenizer: &Tokenizer, config: &Config) -> Result<()> {
    let size = tokenizer.get_vocab_size(true);
    if size > config.vocab_size {
        return Err(Error::InvalidConfig(format!(
            "the tokenizer has {size} tokens but the model's vocabulary is {}",
            config.vocab_size
        )));
    }
    Ok(())
}

/// Dense tensors read from safetensors files, optionally quantized on the way in.
struct TensorMapSource {
    tensors: HashMap<String, Tensor>,
    quantize: bool,
}

impl WeightSource for TensorMapSource {
    fn get(&mut self, name: &str) -> Result<Option<Weight>> {
        let Some(tensor) = self.tensors.remove(name) else {
            return Ok(None);
        };
        let tensor = tensor.to_dtype(DType::F32)?;
        let projection = name.ends_with("_proj.weight") && tensor.rank() == 2;
        if self.quantize && projection && tensor.dim(1)? % GgmlDType::Q8_0.block_size() == 0 {
            let quantized = QTensor::quantize(&tensor, GgmlDType::Q8_0)?;
            return Ok(Some(Weight::Quantized(Arc::new(quantized))));
        }
        Ok(Some(Weight::Dense(tensor)))
    }
}

fn read_to_string(path: &Path) -> Result<String> {
    if !path.exists() {
        return Err(Error::NotFound(path.to_path_buf()));
    }
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn load_hf(dir: &Path, options: &LoadOptions) -> Result<LoadedModel> {
    let config = Config::from_hf_json(&read_to_string(&dir.join("config.json"))?)?;
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.exists() {
        return Err(Error::NotFound(tokenizer_path));
    }
    let tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(Error::tokenizer)?;
    let tokenizer_config: serde_json::Value = match dir.join("tokenizer_config.json") {
        p if p.exists() => serde_json::from_str(&read_to_string(&p)?)
            .map_err(|e| Error::InvalidConfig(format!("tokenizer_config.json: {e}")))?,
        _ => serde_json::Value::Null,
    };
    let special = |key: &str| -> String {
        match &tokenizer_config[key] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => o
                .get("content")
                .and_then(|c| c.as_str())
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        }
    };
    let eos = special("eos_token");
    let template_source = tokenizer_config["chat_template"]
        .as_str()
        .unwrap_or(default_template(config.architecture))
        .to_string();
    let template = ChatTemplate::new(&template_source, &special("bos_token"), &eos)?;
    let mut stop_token_ids: Vec<u32> = tokenizer.token_to_id(&eos).into_iter().collect();
    add_known_stops(&tokenizer, &mut stop_token_ids);

    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name == "model.safetensors" || name.starts_with("model-")
        })
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(Error::NotFound(dir.join("model.safetensors")));
    }
    let mut tensors = HashMap::new();
    for shard in &shards {
        let loaded =
            candle_core::safetensors::load(shard, &options.device).map_err(|e| Error::Corrupt {
                path: shard.clone(),
                reason: e.to_string(),
            })?;
        tensors.extend(loaded);
    }
    let mut source = TensorMapSource {
        tensors,
        quantize: options.requantize,
    };
    let decoder = Decoder::load_with(&mut source, &config, &options.device, options.decoder)?;
    check_vocab(&tokenizer, &config)?;
    Ok(LoadedModel {
        decoder,
        tokenizer,
        template,
        stop_token_ids,
        format: ModelFormat::HuggingFace,
        weights_path: dir.to_path_buf(),
    })
}
