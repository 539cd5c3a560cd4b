//! Kefu's model crate: one decoder for the llama and qwen2 families (inference and, later,
//! training through the same weights), tokenizers, chat templates, sampling and generation.

pub mod chat;
pub mod config;
pub mod decoder;
pub mod device;
pub mod error;
pub mod export;
mod fused;
pub mod generate;
pub mod gguf;
pub mod linear;
pub mod loader;
mod loss;
pub mod prefix;
pub mod q8;
pub mod sampling;
pub mod testing;
pub mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate, Role};
pub use config::{Architecture, Config};
pub use decoder::{Decoder, DecoderOptions, KvCache, Lora, LoraDropout};
pub use device::{compute_dtype, parse_device};
pub use error::{Error, Result};
pub use generate::{FinishReason, Generation, GenerationParams};
pub use loader::{LoadOptions, LoadedModel, ModelFormat};
pub use prefix::{PrefixCache, PrefixStats};
pub use sampling::Sampler;
pub use tokenizer::TextStreamer;
