//! Kefu's trainer: LoRA adapters on the shared decoder (the same code the server runs), trained
//! on the CPU. So far: supervised fine-tuning from JSON-lines files in the common shapes, an
//! AdamW optimizer with warmup and cosine decay, gradient accumulation and clipping, eval
//! loss, checkpoints that resume exactly, and adapters saved and loaded in PEFT's layout.

pub mod data;
pub mod dpo;
pub mod error;
pub mod lora;
pub mod merge;
pub mod optim;
pub mod run;
pub mod sft;

pub use error::{Result, TrainError};
