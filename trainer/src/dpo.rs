//! Direct preference optimization with LoRA. Pairs come as JSON lines — `prompt` (text, or
//! messages) with optional `history` and `system`, and `chosen` / `rejected` (text, an
//! assistant message, or a one-message list: the shared pairs files and both
//! `kefu export pairs` formats) — or ShareGPT `conversations` with `chosen` / `rejected`
//! (LLaMA-Factory). The reference is the model DPO starts from (the base; B = 0 makes the
//! fresh adapter exactly that), its log-probabilities computed once before training. The loss
//! per pair is `−log σ(β·((π_c − ref_c) − (π_r − ref_r)))` over summed answer log-probabilities;
//! the run reports reward accuracy, margins and the chosen and rejected rewards.

use std::path::Path;

use candle_core::{DType, Tensor};
use kefu_model::{ChatMessage, LoadedModel, Role};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::data::{Conversation, OnBadLine, Tokenized, messages, read_lines, tokenize};
use crate::error::Result;
use crate::preference::{Scored, Scores};
use crate::run::{Figures, Report, TrainConfig};

/// A prompt (the conversation so far, ending with the user) and two answers to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Preference {
    pub prompt: Vec<ChatMessage>,
    pub chosen: String,
    pub rejected: String,
}

/// The pairs of a file, and what was left out.
#[derive(Debug, Clone, Default)]
pub struct LoadedPairs {
    pub pairs: Vec<Preference>,
    pub skipped: Vec<(usize, String)>,
    pub duplicates: usize,
}

/// An answer: text, `{"role"/"from", "content"/"value"}`, or a list ending with one.
pub(crate) fn answer(value: Option<&Value>, field: &str) -> std::result::Result<String, String> {
    let value = value.ok_or(format!("`{field}` is missing"))?;
    let text = match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(_) => value
            .get("content")
            .or_else(|| value.get("value"))
            .and_then(Value::as_str)
            .map(str::to_string),
        Value::Array(list) => list
            .last()
            .and_then(|m| m.get("content").or_else(|| m.get("value")))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
    .ok_or(format!("`{field}` is not an answer"))?;
    if text.trim().is_empty() {
        return Err(format!("`{field}` is empty"));
    }
    Ok(text)
}

/// One JSON value in any supported shape.
pub fn parse_preference(value: &Value) -> std::result::Result<Preference, String> {
    let mut prompt = Vec::new();
    if let Some(Value::String(system)) = value.get("system")
        && !system.trim().is_empty()
    {
        prompt.push(ChatMessage::new(Role::System, system.clone()));
    }
    if let Some(history) = value.get("history")
        && !history.is_null()
    {
        prompt.extend(messages(history, "history")?);
    }
    match (value.get("prompt"), value.get("conversations")) {
        (Some(Value::String(text)), _) => prompt.push(ChatMessage::new(Role::User, text.clone())),
        (Some(list @ Value::Array(_)), _) => prompt.extend(messages(list, "prompt")?),
        (None, Some(list)) => prompt.extend(messages(list, "conversations")?),
        _ => {
            return Err(
                "no known fields: expected `prompt` (or `conversations`), `chosen` and `rejected`"
                    .into(),
            );
        }
    }
    match prompt.last() {
        Some(m) if m.role == Role::User && !m.content.trim().is_empty() => {}
        _ => return Err("the prompt does not end with a user message".into()),
    }
    let chosen = answer(value.get("chosen"), "chosen")?;
    let rejected = answer(value.get("rejected"), "rejected")?;
    if chosen == rejected {
        return Err("`chosen` and `rejected` are the same answer".into());
    }
    Ok(Preference {
        prompt,
        chosen,
        rejected,
    })
}

fn fingerprint(pair: &Preference) -> [u8; 32] {
    let mut hash = Sha256::new();
    for m in &pair.prompt {
        hash.update(format!("{:?}\u{0}{}\u{0}", m.role, m.content).as_bytes());
    }
    hash.update(pair.chosen.as_bytes());
    hash.update([0]);
    hash.update(pair.rejected.as_bytes());
    hash.finalize().into()
}

/// Reads a JSON-lines file of preference pairs.
pub fn read_pairs(path: &Path, on_bad_line: OnBadLine) -> Result<LoadedPairs> {
    read_pairs_split(path, on_bad_line, None)
}

/// Like [`read_pairs`], keeping only the lines whose `split` field is `split` (when given).
pub fn read_pairs_split(
    path: &Path,
    on_bad_line: OnBadLine,
    split: Option<&str>,
) -> Result<LoadedPairs> {
    let (pairs, skipped, duplicates) =
        read_lines(path, on_bad_line, split, parse_preference, fingerprint)?;
    Ok(LoadedPairs {
        pairs,
        skipped,
        duplicates,
    })
}

/// [`crate::data::split_by`] for pairs.
pub fn split(pairs: Vec<Preference>, eval_fraction: f64) -> (Vec<Preference>, Vec<Preference>) {
    crate::data::split_by(pairs, eval_fraction, fingerprint)
}

/// A pair tokenized with the model's chat template, chosen and rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    pub chosen: Tokenized,
    pub rejected: Tokenized,
}

/// `None` when the prompt leaves no room for an answer within `max_len`.
pub fn tokenize_pair(
    model: &LoadedModel,
    pair: &Preference,
    max_len: usize,
) -> Result<Option<TokenizedPair>> {
    let with = |answer: &str| {
        let mut messages = pair.prompt.clone();
        messages.push(ChatMessage::new(Role::Assistant, answer));
        tokenize(model, &Conversation { messages }, max_len)
    };
    Ok(match (with(&pair.chosen)?, with(&pair.rejected)?) {
        (Some(chosen), Some(rejected)) => Some(TokenizedPair { chosen, rejected }),
        _ => None,
    })
}

/// The DPO loss of each pair `(n,)` from the summed answer log-probabilities of the policy and
/// of the reference, and the implicit rewards `β·(π − ref)` of chosen and rejected.
pub fn dpo_loss(
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    reference_chosen: &Tensor,
    reference_rejected: &Tensor,
    beta: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let chosen_reward = ((policy_chosen - reference_chosen)? * beta)?;
    let rejected_reward = ((policy_rejected - reference_rejected)? * beta)?;
    let margin = (&chosen_reward - &rejected_reward)?;
    // −log σ(m) = log(1 + e^(−m)), written stably as max(−m, 0) + log(1 + e^(−|m|)).
    let loss = (margin.neg()?.relu()? + (margin.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    Ok((loss, chosen_reward, rejected_reward))
}

impl Scored for TokenizedPair {
    fn sequences(&self) -> [&Tokenized; 2] {
        [&self.chosen, &self.rejected]
    }
}

/// Loss and figures of a batch of pairs from their scores.
fn batch_figures(
    _pairs: &[&TokenizedPair],
    scores: Scores,
    beta: f64,
) -> Result<(Tensor, Figures)> {
    let Scores {
        policy: [policy_chosen, policy_rejected],
        reference: [reference_chosen, reference_rejected],
    } = scores;
    let (loss, chosen, rejected) = dpo_loss(
        &policy_chosen,
        &policy_rejected,
        &reference_chosen,
        &reference_rejected,
        beta,
    )?;
    let chosen = chosen.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let rejected = rejected.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let correct = chosen.iter().zip(&rejected).filter(|(c, r)| c > r).count() as f64;
    let figures = vec![
        ("reward_accuracy", correct),
        (
            "margin",
            chosen.iter().zip(&rejected).map(|(c, r)| c - r).sum(),
        ),
        ("chosen_reward", chosen.iter().sum()),
        ("rejected_reward", rejected.iter().sum()),
    ];
    Ok((loss.sum_all()?, figures))
}

/// Trains a LoRA adapter with DPO on `train`, evaluating on `eval` (see
/// [`crate::run::train_loop`]). The reference log-probabilities are those of `model` as given
/// (before any adapter).
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &mut LoadedModel,
    base_name: &str,
    train: &[TokenizedPair],
    eval: &[TokenizedPair],
    config: &TrainConfig,
    output: &Path,
    resume: bool,
    on_step: impl FnMut(usize, usize, f64) -> bool,
) -> Result<Report> {
    crate::preference::train(
        model,
        base_name,
        train,
        eval,
        config,
        output,
        resume,
        on_step,
        batch_figures,
        "pair",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use serde_json::json;

    #[test]
    fn the_loss_equals_the_hand_computed_value() {
        let t = |v: f32| Tensor::new(&[v], &Device::Cpu).unwrap();
        // β = 0.5; chosen moved +2 from the reference, rejected −1: margin 0.5·(2 − (−1)) = 1.5.
        let (loss, chosen, rejected) =
            dpo_loss(&t(-8.0), &t(-13.0), &t(-10.0), &t(-12.0), 0.5).unwrap();
        let expected = (1.0 + (-1.5f64).exp()).ln();
        let got = loss.to_vec1::<f32>().unwrap()[0] as f64;
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        assert_eq!(chosen.to_vec1::<f32>().unwrap(), [1.0]);
        assert_eq!(rejected.to_vec1::<f32>().unwrap(), [-0.5]);
        // Equal rewards: log 2; a large negative margin stays finite.
        let (even, _, _) = dpo_loss(&t(-1.0), &t(-1.0), &t(-1.0), &t(-1.0), 0.1).unwrap();
        assert!((even.to_vec1::<f32>().unwrap()[0] as f64 - 2f64.ln()).abs() < 1e-6);
        let (far, _, _) = dpo_loss(&t(-500.0), &t(0.0), &t(0.0), &t(-500.0), 1.0).unwrap();
        assert!((far.to_vec1::<f32>().unwrap()[0] - 1000.0).abs() < 1e-2);
    }

    #[test]
    fn every_pair_shape_is_read() {
        let shapes = [
            json!({"prompt": "Cancel my order", "history": [], "chosen": "Sure.", "rejected": "No."}),
            json!({"prompt": "Cancel my order", "history": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "hello"}], "chosen": "Sure.", "rejected": "No."}),
            json!({"prompt": [{"role": "system", "content": "Passages: …"},
                              {"role": "user", "content": "Cancel my order"}],
                   "chosen": [{"role": "assistant", "content": "Sure."}],
                   "rejected": [{"role": "assistant", "content": "No."}]}),
            json!({"system": "Passages: …", "conversations": [{"from": "human", "value": "Cancel my order"}],
                   "chosen": {"from": "gpt", "value": "Sure."}, "rejected": {"from": "gpt", "value": "No."}}),
        ];
        for shape in shapes {
            let pair = parse_preference(&shape).unwrap_or_else(|e| panic!("{shape}: {e}"));
            assert_eq!(
                (pair.chosen.as_str(), pair.rejected.as_str()),
                ("Sure.", "No.")
            );
            assert_eq!(pair.prompt.last().unwrap().content, "Cancel my order");
        }
        for (bad, reason) in [
            (
                json!({"prompt": "q", "chosen": "a"}),
                "`rejected` is missing",
            ),
            (
                json!({"prompt": "q", "chosen": "a", "rejected": "a"}),
                "the same answer",
            ),
            (
                json!({"prompt": "q", "chosen": "", "rejected": "b"}),
                "empty",
            ),
            (json!({"chosen": "a", "rejected": "b"}), "no known fields"),
            (
                json!({"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}),
                "user message",
            ),
        ] {
            let err = parse_preference(&bad).unwrap_err();
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }
}
