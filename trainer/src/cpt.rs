//! Continued pre-training: the language-model loss over every token of plain documents. The
//! documents are tokenized, joined with an end-of-text token and packed into blocks of equal
//! length (no padding, nothing thrown away but the last partial block); a share of the blocks
//! is held out to measure perplexity. Training runs through SFT's objective, whose targets are
//! here every next token.

use sha2::{Digest, Sha256};

use kefu_model::LoadedModel;

use crate::data::{Tokenized, split_by};
use crate::error::{Result, TrainError};

/// Blocks of `block_len` tokens (each predicting its next `block_len` tokens) from `texts`.
pub fn blocks(model: &LoadedModel, texts: &[String], block_len: usize) -> Result<Vec<Tokenized>> {
    if block_len < 2 {
        return Err(TrainError::Config(
            "a CPT block holds at least 2 tokens".into(),
        ));
    }
    let separator = ["<|endoftext|>", "</s>", "<|end_of_text|>"]
        .iter()
        .find_map(|t| model.tokenizer.token_to_id(t))
        .or_else(|| model.stop_token_ids.first().copied());
    let mut stream = Vec::new();
    for text in texts.iter().filter(|t| !t.trim().is_empty()) {
        stream.extend(model.encode(text)?);
        stream.extend(separator);
    }
    if stream.len() <= block_len {
        return Err(TrainError::Data(format!(
            "the documents hold {} tokens, less than one block of {block_len} + 1",
            stream.len()
        )));
    }
    Ok(stream
        .windows(block_len + 1)
        .step_by(block_len)
        .map(|window| Tokenized {
            input: window[..block_len].to_vec(),
            targets: window[1..].iter().copied().map(Some).collect(),
        })
        .collect())
}

/// Training and held-out blocks, chosen by a hash of each block's tokens (stable across runs).
pub fn split(blocks: Vec<Tokenized>, eval_fraction: f64) -> (Vec<Tokenized>, Vec<Tokenized>) {
    split_by(blocks, eval_fraction, |block| {
        let mut hash = Sha256::new();
        for token in &block.input {
            hash.update(token.to_le_bytes());
        }
        hash.finalize().into()
    })
}
