//! Kefu's trainer: LoRA adapters on the shared decoder (the same code the server runs, on a
//! quantized or float base), trained on the CPU: continued pre-training on documents,
//! supervised fine-tuning and DPO from JSON-lines files in the common shapes, one loop with
//! AdamW, warmup and cosine decay, gradient accumulation and clipping, eval and early stopping,
//! checkpoints that resume exactly; adapters in PEFT's layout; TOML recipes; merging into GGUF
//! or Hugging Face weights.
//!
//! It also owns the loop around training: the dataset compiler (`dataset`), the training
//! pipeline (`pipeline`), the evaluation gate (`gate`), the registry's store side
//! (`registry`), what there is to learn and when (`triggers`), and the worker that takes jobs
//! from the database (`worker`). It reaches serving only through the database's labels and
//! the registry's files; it never imports the server.

pub mod cpt;
pub mod data;
pub mod dataset;
pub mod dpo;
pub mod error;
pub mod gate;
pub mod knowledge;
pub mod kto;
pub mod lora;
pub mod merge;
pub mod optim;
pub mod pipeline;
pub mod preference;
pub mod recipe;
pub mod registry;
pub mod run;
pub mod sft;
pub mod triggers;
pub mod worker;

pub use error::{Result, TrainError};
