//! KTO (Kahneman–Tversky optimization, Ethayarajh et al. 2024) with LoRA: learning from single
//! answers marked good or bad. Most feedback is one answer and one thumb — no pair for DPO.
//! Lines come as TRL's unpaired format (`prompt` — text or messages, with optional `history`
//! and `system` —, `completion`, `label` true / false: what `kefu export kto` writes) or
//! LLaMA-Factory's (`system`, `conversations`
//! ending with the answer, `kto_tag`).
//!
//! Per example, with `r = π − ref` the summed answer log-probability ratio against the model
//! training starts from and `z` the batch's estimate of KL(π ‖ ref):
//! a desirable answer costs `1 − σ(β·(r − z))`, an undesirable one `1 − σ(β·(z − r))`. `z` is
//! the same ratio on mismatched prompt / answer pairs (each prompt with another example's
//! answer), averaged over the batch, floored at zero, and not differentiated through. Both
//! kinds weigh 1 (KTO's λ_D = λ_U). The run reports the rewards `β·r` of each kind and `z`.

use std::path::Path;

use candle_core::{DType, Tensor};
use kefu_model::{ChatMessage, LoadedModel, Role};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::data::{Conversation, OnBadLine, Tokenized, messages, read_lines, tokenize};
use crate::dpo::answer;
use crate::error::Result;
use crate::preference::{Scored, Scores};
use crate::run::{Figures, Report, TrainConfig};

/// A prompt (ending with the user), one answer to it, and whether the answer is good.
#[derive(Debug, Clone, PartialEq)]
pub struct Unpaired {
    pub prompt: Vec<ChatMessage>,
    pub completion: String,
    pub desirable: bool,
}

/// The examples of a file, and what was left out.
#[derive(Debug, Clone, Default)]
pub struct LoadedUnpaired {
    pub examples: Vec<Unpaired>,
    pub skipped: Vec<(usize, String)>,
    pub duplicates: usize,
}

/// One JSON value in either supported shape.
pub fn parse_unpaired(value: &Value) -> std::result::Result<Unpaired, String> {
    let desirable = match value.get("label").or_else(|| value.get("kto_tag")) {
        Some(Value::Bool(label)) => *label,
        Some(other) => return Err(format!("`label` is true or false, not {other}")),
        None => {
            return Err("`label` (true for a good answer, false for a bad one) is missing".into());
        }
    };
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
    let completion = match (value.get("prompt"), value.get("conversations")) {
        (Some(Value::String(text)), _) => {
            prompt.push(ChatMessage::new(Role::User, text.clone()));
            answer(value.get("completion"), "completion")?
        }
        (Some(list @ Value::Array(_)), _) => {
            prompt.extend(messages(list, "prompt")?);
            answer(value.get("completion"), "completion")?
        }
        (None, Some(list)) => {
            let mut turns = messages(list, "conversations")?;
            let completion = match value.get("completion") {
                Some(_) => answer(value.get("completion"), "completion")?,
                None => match turns.pop() {
                    Some(m) if m.role == Role::Assistant && !m.content.trim().is_empty() => {
                        m.content
                    }
                    _ => return Err("the conversation does not end with the answer".into()),
                },
            };
            prompt.extend(turns);
            completion
        }
        _ => {
            return Err(
                "no known fields: expected `prompt` (or `conversations`), `completion` and `label`"
                    .into(),
            );
        }
    };
    match prompt.last() {
        Some(m) if m.role == Role::User && !m.content.trim().is_empty() => {}
        _ => return Err("the prompt does not end with a user message".into()),
    }
    Ok(Unpaired {
        prompt,
        completion,
        desirable,
    })
}

fn fingerprint(example: &Unpaired) -> [u8; 32] {
    let mut hash = Sha256::new();
    for m in &example.prompt {
        hash.update(format!("{:?}\u{0}{}\u{0}", m.role, m.content).as_bytes());
    }
    hash.update(example.completion.as_bytes());
    hash.update([u8::from(example.desirable)]);
    hash.finalize().into()
}

/// Reads a JSON-lines file of labelled answers, keeping only the lines whose `split` field is
/// `split` (when given).
pub fn read_unpaired_split(
    path: &Path,
    on_bad_line: OnBadLine,
    split: Option<&str>,
) -> Result<LoadedUnpaired> {
    let (examples, skipped, duplicates) =
        read_lines(path, on_bad_line, split, parse_unpaired, fingerprint)?;
    Ok(LoadedUnpaired {
        examples,
        skipped,
        duplicates,
    })
}

/// [`crate::data::split_by`] for labelled answers.
pub fn split(examples: Vec<Unpaired>, eval_fraction: f64) -> (Vec<Unpaired>, Vec<Unpaired>) {
    crate::data::split_by(examples, eval_fraction, fingerprint)
}

/// An example tokenized with the model's chat template, and its prompt with a mismatched
/// answer (another example's) for the KL estimate.
#[derive(Debug, Clone)]
pub struct TokenizedUnpaired {
    pub example: Tokenized,
    pub mismatched: Tokenized,
    pub desirable: bool,
}

/// Tokenizes `examples`, each prompt also with the next example's answer (the last with the
/// first's). Examples whose prompt leaves no room for an answer within `max_len` are left out;
/// returns how many.
pub fn tokenize_all(
    model: &LoadedModel,
    examples: &[Unpaired],
    max_len: usize,
) -> Result<(Vec<TokenizedUnpaired>, usize)> {
    let with = |prompt: &[ChatMessage], completion: &str| {
        let mut messages = prompt.to_vec();
        messages.push(ChatMessage::new(Role::Assistant, completion));
        tokenize(model, &Conversation { messages }, max_len)
    };
    let mut out = Vec::with_capacity(examples.len());
    let mut too_long = 0;
    for (i, example) in examples.iter().enumerate() {
        let other = &examples[(i + 1) % examples.len()];
        match (
            with(&example.prompt, &example.completion)?,
            with(&example.prompt, &other.completion)?,
        ) {
            (Some(tokenized), Some(mismatched)) => out.push(TokenizedUnpaired {
                example: tokenized,
                mismatched,
                desirable: example.desirable,
            }),
            _ => too_long += 1,
        }
    }
    Ok((out, too_long))
}

/// The KTO loss of each example `(n,)` from the log-ratios `r` (policy − reference, summed over
/// the answer), the labels and the KL estimate `z`; and the rewards `β·r`.
pub fn kto_loss(
    log_ratios: &Tensor,
    desirable: &[bool],
    kl: f64,
    beta: f64,
) -> Result<(Tensor, Tensor)> {
    let device = log_ratios.device();
    // +1 for a desirable answer, −1 for an undesirable one: 1 − σ(β·s·(r − z)).
    let sign: Vec<f32> = desirable
        .iter()
        .map(|&d| if d { 1.0 } else { -1.0 })
        .collect();
    let sign = Tensor::from_vec(sign, desirable.len(), device)?.to_dtype(log_ratios.dtype())?;
    let scaled = ((log_ratios - kl)? * beta)?.mul(&sign)?;
    let loss = (candle_nn::ops::sigmoid(&scaled)?.neg()? + 1.0)?;
    Ok((loss, (log_ratios * beta)?))
}

impl Scored for TokenizedUnpaired {
    fn sequences(&self) -> [&Tokenized; 2] {
        [&self.example, &self.mismatched]
    }
}

/// Loss and figures of a batch from its scores (the answers', then the mismatched answers').
fn batch_figures(
    examples: &[&TokenizedUnpaired],
    scores: Scores,
    beta: f64,
) -> Result<(Tensor, Figures)> {
    let Scores {
        policy: [policy, policy_mismatched],
        reference: [reference, reference_mismatched],
    } = scores;
    let n = examples.len();
    let kl = (policy_mismatched.detach() - reference_mismatched)?
        .to_dtype(DType::F64)?
        .mean_all()?
        .to_scalar::<f64>()?
        .max(0.0);
    let desirable: Vec<bool> = examples.iter().map(|e| e.desirable).collect();
    let (loss, rewards) = kto_loss(&(policy - reference)?, &desirable, kl, beta)?;
    let rewards = rewards.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let sum_of = |wanted: bool| -> f64 {
        rewards
            .iter()
            .zip(&desirable)
            .filter(|(_, d)| **d == wanted)
            .map(|(r, _)| r)
            .sum()
    };
    let figures = vec![
        ("desirable_reward", sum_of(true)),
        ("undesirable_reward", sum_of(false)),
        ("kl", kl * n as f64),
    ];
    Ok((loss.sum_all()?, figures))
}

/// Trains a LoRA adapter with KTO on `train`, evaluating on `eval` (see
/// [`crate::run::train_loop`]). The reference log-probabilities are those of `model` as given
/// (before any adapter).
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &mut LoadedModel,
    base_name: &str,
    train: &[TokenizedUnpaired],
    eval: &[TokenizedUnpaired],
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
        "example",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use serde_json::json;

    #[test]
    fn the_loss_equals_the_hand_computed_value() {
        let ratios = Tensor::new(&[2.0f32, -1.0, 0.5], &Device::Cpu).unwrap();
        let (loss, rewards) = kto_loss(&ratios, &[true, false, false], 0.5, 0.1).unwrap();
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let expected = [
            1.0 - sigmoid(0.1 * (2.0 - 0.5)),
            1.0 - sigmoid(0.1 * (0.5 - -1.0)),
            1.0 - sigmoid(0.1 * (0.5 - 0.5)),
        ];
        for (got, want) in loss.to_vec1::<f32>().unwrap().iter().zip(expected) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
        }
        let rewards = rewards.to_vec1::<f32>().unwrap();
        assert!((rewards[0] - 0.2).abs() < 1e-6 && (rewards[1] + 0.1).abs() < 1e-6);
        // A good answer made likelier, or a bad one less likely, costs less.
        let (better, _) = kto_loss(
            &Tensor::new(&[3.0f32, -2.0], &Device::Cpu).unwrap(),
            &[true, false],
            0.5,
            0.1,
        )
        .unwrap();
        let better = better.to_vec1::<f32>().unwrap();
        let before = loss.to_vec1::<f32>().unwrap();
        assert!(better[0] < before[0] && better[1] < before[1]);
    }

    #[test]
    fn both_shapes_are_read_and_bad_lines_say_why() {
        let shapes = [
            json!({"prompt": "Cancel my order", "completion": "Done.", "label": true}),
            json!({"prompt": [{"role": "system", "content": "Passages: …"},
                              {"role": "user", "content": "Cancel my order"}],
                   "completion": [{"role": "assistant", "content": "Done."}], "label": true}),
            json!({"system": "Passages: …", "conversations": [{"from": "human", "value": "Cancel my order"},
                   {"from": "gpt", "value": "Done."}], "kto_tag": true}),
        ];
        for shape in shapes {
            let example = parse_unpaired(&shape).unwrap_or_else(|e| panic!("{shape}: {e}"));
            assert_eq!(example.completion, "Done.");
            assert!(example.desirable);
            assert_eq!(example.prompt.last().unwrap().content, "Cancel my order");
        }
        for (bad, reason) in [
            (json!({"prompt": "q", "completion": "a"}), "`label`"),
            (
                json!({"prompt": "q", "completion": "a", "label": "yes"}),
                "true or false",
            ),
            (
                json!({"prompt": "q", "completion": " ", "label": false}),
                "empty",
            ),
            (json!({"completion": "a", "label": true}), "no known fields"),
            (
                json!({"conversations": [{"from": "human", "value": "q"}], "kto_tag": false}),
                "does not end with the answer",
            ),
            (
                json!({"prompt": [{"role": "assistant", "content": "x"}], "completion": "a", "label": true}),
                "user message",
            ),
        ] {
            let err = parse_unpaired(&bad).unwrap_err();
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }
}
