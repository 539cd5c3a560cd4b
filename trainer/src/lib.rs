//! Kefu's trainer: LoRA adapters on the shared decoder (the same code the server runs, on a
//! quantized or float base), trained on the CPU: continued pre-training on documents,
//! supervised fine-tuning and DPO from JSON-lines files in the common shapes, one loop with
//! AdamW, warmup and cosine decay, gradient accumulation and clipping, eval and early stopping,
//! checkpoints that resume exactly; adapters in PEFT's layout; TOML recipes; merging into GGUF
//! or Hugging Face weights.

pub mod cpt;
pub mod data;
pub mod dpo;
pub mod error;
pub mod lora;
pub mod merge;
pub mod optim;
pub mod recipe;
pub mod run;
pub mod sft;

pub use error::{Result, TrainError};
