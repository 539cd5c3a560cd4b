//! The evaluation gate a training job's candidate passes before it becomes production. Every
//! check compares the candidate with production on the same data, and the whole report is
//! stored with the version whatever the verdict:
//! - the regression set (every question an agent corrected): answer loss against production's
//!   and the candidate's greedy answers;
//! - held-out questions (`[gate] questions`): each answered from the knowledge base's passages
//!   as the server answers it; answer loss against the reference answer, and the greedy
//!   answers scored by `kefu_rag::score` (token F1, fact recall, support, abstention — the
//!   scorer of `kefu eval answers`);
//! - held-out preference pairs (`[gate] pairs`): preference accuracy of each model (mean
//!   log-probability per token of chosen over rejected), and the candidate's reward accuracy
//!   with production as the reference (DPO's implicit reward);
//! - merged-versus-adapter logit parity, both held in f32, and chat-template parity.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kefu_model::generate::GenerationParams;
use kefu_model::sampling::SamplingConfig;
use kefu_model::{ChatMessage, LoadOptions, LoadedModel, Role};
use kefu_rag::Retriever;
use kefu_rag::score::{self, mean};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::data::{self, Conversation, OnBadLine};
use crate::dpo::{Preference, TokenizedPair};
use crate::lora::Adapters;
use crate::pipeline::StageRun;
use crate::recipe::{GateSection, Recipe};

/// Passages and prompt budget of a held-out question's prompt (the server's defaults).
pub(crate) const PASSAGES: usize = 4;
pub(crate) const CONTEXT_TOKENS: usize = 1536;
/// Longest example the gate scores, in tokens.
const MAX_LEN: usize = 4096;

/// A held-out question with its reference answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldOutQuestion {
    pub question: String,
    pub answer: String,
    pub source_doc: Option<String>,
    /// The messages it was served with (passages in the system message), for a question held
    /// out of the feedback: answered from them instead of a fresh retrieval.
    pub served: Option<Vec<ChatMessage>>,
}

#[derive(Debug, Deserialize)]
struct QuestionRecord {
    question: String,
    answer: String,
    #[serde(default)]
    source_doc: Option<String>,
    #[serde(default)]
    split: Option<String>,
}

/// What the gate holds out, read before the job trains (bad files fail the job early).
#[derive(Debug, Default)]
pub struct HeldOut {
    pub questions: Vec<HeldOutQuestion>,
    /// Why no question is held out where the gate needed some (the job does not promote).
    pub none_because: Option<String>,
    /// The knowledge base the questions are answered from.
    pub retriever: Option<Retriever>,
    pub pairs: Vec<Preference>,
}

/// A gate setting's file: relative paths are taken from the data directory (where
/// `recipe.toml` lives).
pub fn resolve(home: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        home.join(path)
    }
}

/// The held-out questions of a JSON-lines file: the `test` split when records carry `split`,
/// at most `max`, in file order.
pub fn read_questions(path: &Path, max: usize) -> Result<Vec<HeldOutQuestion>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the held-out questions {}", path.display()))?;
    let mut records = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: QuestionRecord = serde_json::from_str(line).with_context(|| {
            format!(
                "{} line {}: not a held-out question (JSON with `question` and `answer`)",
                path.display(),
                n + 1
            )
        })?;
        if record.question.trim().is_empty() || record.answer.trim().is_empty() {
            bail!(
                "{} line {}: an empty question or answer",
                path.display(),
                n + 1
            );
        }
        records.push(record);
    }
    let split = records.iter().any(|r| r.split.is_some());
    let questions: Vec<HeldOutQuestion> = records
        .into_iter()
        .filter(|r| !split || r.split.as_deref() == Some("test"))
        .take(max)
        .map(|r| HeldOutQuestion {
            question: r.question,
            answer: r.answer,
            source_doc: r.source_doc.filter(|s| !s.trim().is_empty()),
            served: None,
        })
        .collect();
    if questions.is_empty() {
        bail!("{} holds no held-out questions", path.display());
    }
    Ok(questions)
}

/// The held-out pairs of a file: the `test` split when records carry `split`, at most `max`.
pub fn read_pairs(path: &Path, max: usize) -> Result<Vec<Preference>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the held-out pairs {}", path.display()))?;
    let split = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|v| v.get("split").is_some());
    let loaded = crate::dpo::read_pairs_split(path, OnBadLine::Fail, split.then_some("test"))?;
    let pairs: Vec<Preference> = loaded.pairs.into_iter().take(max).collect();
    if pairs.is_empty() {
        bail!("{} holds no held-out pairs", path.display());
    }
    Ok(pairs)
}

fn load(path: &Path) -> Result<LoadedModel> {
    LoadedModel::load(
        path,
        &LoadOptions {
            requantize: false,
            ..LoadOptions::default()
        },
    )
    .with_context(|| format!("cannot load {}", path.display()))
}

fn normalized(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn greedy(max_tokens: usize) -> GenerationParams {
    GenerationParams {
        sampling: SamplingConfig {
            temperature: 0.0,
            repetition_penalty: 1.1,
            ..SamplingConfig::default()
        },
        max_tokens,
        stop: Vec::new(),
        ignore_eos: false,
    }
}

/// Mean answer loss per token of `conversations` (the last message is the answer).
fn answer_loss(model: &LoadedModel, conversations: &[Conversation]) -> Result<Option<f64>> {
    let mut examples = Vec::new();
    for c in conversations {
        examples.extend(data::tokenize(model, c, MAX_LEN)?);
    }
    if examples.is_empty() {
        return Ok(None);
    }
    Ok(Some(crate::sft::mean_loss(model, &examples, 2)?))
}

fn excerpt(text: &str, chars: usize) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() <= chars {
        text
    } else {
        format!("{}…", text.chars().take(chars).collect::<String>())
    }
}

/// Held-out questions: both models answer each from the same passages.
fn held_out_questions(
    production: &LoadedModel,
    candidate: &LoadedModel,
    held_out: &HeldOut,
    settings: &GateSection,
) -> Result<(Value, bool)> {
    let params = greedy(128);
    let mut conversations = Vec::new();
    let mut entries = Vec::new();
    let mut scores = Vec::new();
    for q in &held_out.questions {
        let (messages, passages, retrieved) = match &q.served {
            Some(messages) => {
                let passages = messages
                    .iter()
                    .filter(|m| m.role == Role::System)
                    .map(|m| m.content.clone())
                    .collect::<Vec<_>>()
                    .join("\n");
                (messages.clone(), passages, None)
            }
            None => {
                let retriever = held_out
                    .retriever
                    .as_ref()
                    .context("held-out questions need a knowledge base")?;
                let ranked = retriever.search_keywords(&q.question, 50);
                let (prompt, messages) = crate::knowledge::grounded(
                    production,
                    retriever,
                    &ranked,
                    &q.question,
                    PASSAGES,
                    CONTEXT_TOKENS,
                )?;
                let retrieved = q.source_doc.as_ref().map(|doc| {
                    let doc = doc.trim_start_matches("./");
                    prompt
                        .citations
                        .iter()
                        .any(|c| c.path.ends_with(&format!("/{doc}")) || c.path == doc)
                });
                (messages, prompt.system.clone(), retrieved)
            }
        };
        let mut sides = Vec::new();
        for model in [production, candidate] {
            let ids = model.chat_prompt(&messages)?;
            let said = model.generate(&ids, &params, |_| true)?.text;
            let scored = score::score(&said, Some(&q.answer), &passages);
            sides.push(json!({
                "answer": said, "f1": scored.f1, "fact_recall": scored.fact_recall,
                "support": scored.support, "abstained": scored.abstained,
            }));
            scores.push(scored);
        }
        entries.push(json!({
            "question": q.question, "reference": excerpt(&q.answer, 400),
            "source_doc": q.source_doc, "source_retrieved": retrieved,
            "production": sides[0], "candidate": sides[1],
        }));
        let mut messages = messages;
        messages.push(ChatMessage::new(Role::Assistant, q.answer.clone()));
        conversations.push(Conversation { messages });
    }
    // Even positions are production's, odd ones the candidate's.
    let side = |odd: usize, measure: fn(&score::AnswerScore) -> Option<f64>| {
        mean(scores.iter().skip(odd).step_by(2).map(measure))
    };
    let facts = |s: &score::AnswerScore| s.fact_recall;
    let (production_facts, candidate_facts) = (side(0, facts), side(1, facts));
    let (f1, support) = (
        |s: &score::AnswerScore| s.f1,
        |s: &score::AnswerScore| s.support,
    );
    let abstained = |s: &score::AnswerScore| Some(f64::from(u8::from(s.abstained)));
    let production_loss = answer_loss(production, &conversations)?;
    let candidate_loss = answer_loss(candidate, &conversations)?;
    let ratio = match (production_loss, candidate_loss) {
        (Some(p), Some(c)) if p > 0.0 => Some(c / p),
        _ => None,
    };
    let max_ratio = settings.max_held_out_loss_ratio.unwrap_or(1.05);
    let tolerance = settings.fact_tolerance.unwrap_or(0.05);
    let loss_ok = ratio.is_none_or(|r| r <= max_ratio);
    // Answers no worse than production's: facts, F1 and support within the tolerance, and no
    // more abstentions (the references answer every held-out question).
    let no_worse = |measure: fn(&score::AnswerScore) -> Option<f64>, higher_is_better: bool| match (
        side(0, measure),
        side(1, measure),
    ) {
        (Some(p), Some(c)) if higher_is_better => c >= p - tolerance,
        (Some(p), Some(c)) => c <= p + tolerance,
        _ => true,
    };
    let facts_ok = no_worse(facts, true);
    let answers_ok = no_worse(f1, true) && no_worse(support, true) && no_worse(abstained, false);
    let retrieved: Vec<bool> = entries
        .iter()
        .filter_map(|e| e["source_retrieved"].as_bool())
        .collect();
    Ok((
        json!({
            "questions": entries.len(),
            "from": if held_out.questions.iter().any(|q| q.served.is_some()) { "feedback" } else { "file" },
            "production_loss": production_loss, "candidate_loss": candidate_loss,
            "loss_ratio": ratio, "max_loss_ratio": max_ratio, "loss_ok": loss_ok,
            "production_fact_recall": production_facts, "candidate_fact_recall": candidate_facts,
            "production_f1": side(0, f1), "candidate_f1": side(1, f1),
            "production_support": side(0, support), "candidate_support": side(1, support),
            "production_abstained": side(0, abstained), "candidate_abstained": side(1, abstained),
            "fact_tolerance": tolerance, "facts_ok": facts_ok, "answers_ok": answers_ok,
            "source_retrieved": mean(retrieved.iter().map(|&r| Some(f64::from(u8::from(r))))),
            "answers": entries,
        }),
        loss_ok && facts_ok && answers_ok,
    ))
}

/// Per pair, the summed answer log-probabilities and answer tokens of chosen and rejected.
fn pair_scores(model: &LoadedModel, pairs: &[Preference]) -> Result<Vec<[(f64, usize); 2]>> {
    let mut out = Vec::new();
    for pair in pairs {
        let Some(TokenizedPair { chosen, rejected }) =
            crate::dpo::tokenize_pair(model, pair, MAX_LEN)?
        else {
            bail!("a held-out pair's prompt leaves no room for an answer in {MAX_LEN} tokens");
        };
        let (sums, _) = crate::sft::answer_logprobs(model, &[&chosen, &rejected])?;
        let sums = sums.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        out.push([
            (sums[0] as f64, chosen.answer_tokens().max(1)),
            (sums[1] as f64, rejected.answer_tokens().max(1)),
        ]);
    }
    Ok(out)
}

/// Held-out pairs: preference accuracy of both models, reward accuracy of the candidate.
fn held_out_pairs(
    production: &LoadedModel,
    candidate: &LoadedModel,
    pairs: &[Preference],
    settings: &GateSection,
    beta: f64,
) -> Result<(Value, bool)> {
    let p = pair_scores(production, pairs)?;
    let c = pair_scores(candidate, pairs)?;
    let prefers = |scores: &[[(f64, usize); 2]]| {
        mean(scores.iter().map(|[(cs, cn), (rs, rn)]| {
            Some(f64::from(u8::from(cs / *cn as f64 > rs / *rn as f64)))
        }))
    };
    let margins: Vec<f64> = p
        .iter()
        .zip(&c)
        .map(|([(pc, _), (pr, _)], [(cc, _), (cr, _)])| beta * ((cc - pc) - (cr - pr)))
        .collect();
    let production_accuracy = prefers(&p).unwrap_or(0.0);
    let candidate_accuracy = prefers(&c).unwrap_or(0.0);
    let tolerance = settings.pair_tolerance.unwrap_or(0.05);
    let ok = candidate_accuracy >= production_accuracy - tolerance;
    Ok((
        json!({
            "pairs": pairs.len(),
            "production_preference_accuracy": production_accuracy,
            "candidate_preference_accuracy": candidate_accuracy,
            "reward_accuracy": mean(margins.iter().map(|&m| Some(f64::from(u8::from(m > 0.0))))),
            "mean_reward_margin": mean(margins.iter().map(|&m| Some(m))), "beta": beta,
            "tolerance": tolerance, "ok": ok,
        }),
        ok,
    ))
}

/// The evaluation gate: a JSON report with `passed`.
/// The regression set (every corrected question): answer loss of both models, the ratio, and
/// the candidate's greedy answers to the first five; whether the ratio is within `max_ratio`.
fn regression(
    production: &LoadedModel,
    candidate: &LoadedModel,
    regression_path: &Path,
    max_ratio: f64,
) -> Result<(Vec<Conversation>, Value, bool)> {
    // No corrections (a job on thumbs or documents alone): an empty regression set.
    let empty = std::fs::read_to_string(regression_path)
        .with_context(|| format!("cannot read {}", regression_path.display()))?
        .trim()
        .is_empty();
    let conversations: Vec<Conversation> = if empty {
        Vec::new()
    } else {
        data::read_jsonl(regression_path, OnBadLine::Skip)?.conversations
    };
    let (production_loss, candidate_loss) = if conversations.is_empty() {
        (None, None)
    } else {
        (
            answer_loss(production, &conversations)?,
            answer_loss(candidate, &conversations)?,
        )
    };
    let ratio = match (production_loss, candidate_loss) {
        (Some(p), Some(c)) if p > 0.0 => Some(c / p),
        _ => None,
    };
    let params = greedy(96);
    let mut greedy_answers = Vec::new();
    for c in conversations.iter().take(5) {
        let (answer, context) = c.messages.split_last().context("an empty example")?;
        let prompt = candidate.chat_prompt(context)?;
        let said = candidate.generate(&prompt, &params, |_| true)?.text;
        greedy_answers.push(json!({
            "question": context.last().map(|m| m.content.clone()),
            "expected": answer.content, "candidate": said,
            "matches": normalized(&said).contains(&normalized(&answer.content)),
        }));
    }
    let report = json!({
        "examples": conversations.len(), "production_loss": production_loss,
        "candidate_loss": candidate_loss, "loss_ratio": ratio, "max_loss_ratio": max_ratio,
        "greedy": greedy_answers,
    });
    Ok((conversations, report, ratio.is_none_or(|r| r <= max_ratio)))
}

/// The merge's arithmetic: base + adapter against the merged weights, both held in f32 (a
/// Hugging Face export of the merge), as the relative RMS difference of their logits on
/// `sample`. The served file re-rounds the merged projections to Q8_0; its drift from base +
/// adapter and its top-1 agreement are returned beside it.
fn merge_parity(
    last: &StageRun,
    candidate: &LoadedModel,
    sample: &[ChatMessage],
) -> Result<(f64, f64, f64)> {
    let dense = LoadOptions {
        requantize: false,
        decoder: kefu_model::DecoderOptions {
            dense: true,
            ..kefu_model::DecoderOptions::default()
        },
        ..LoadOptions::default()
    };
    let mut adapted = LoadedModel::load(&last.base, &dense)
        .with_context(|| format!("cannot load {}", last.base.display()))?;
    Adapters::load(&mut adapted.decoder, &last.report.adapter_dir)?;
    let exact_dir = last.merged.with_file_name("merged-f32");
    crate::merge::merge_hf(&last.base, Some(&last.report.adapter_dir), &exact_dir)?;
    let exact = load(&exact_dir)?;
    let ids = candidate.chat_prompt(sample)?;
    let input =
        candle_core::Tensor::new(ids.as_slice(), &candle_core::Device::Cpu)?.unsqueeze(0)?;
    let reference = adapted.decoder.forward_all(&input)?;
    let rms = |t: &candle_core::Tensor| -> Result<f64> {
        Ok(t.sqr()?.mean_all()?.to_scalar::<f32>()?.sqrt() as f64)
    };
    let top1 = |logits: &candle_core::Tensor| -> Result<f64> {
        let a = logits
            .argmax(candle_core::D::Minus1)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        let b = reference
            .argmax(candle_core::D::Minus1)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        Ok(a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64)
    };
    let scale = rms(&reference)?.max(1e-6);
    let merged = exact.decoder.forward_all(&input)?;
    let parity = rms(&(&merged - &reference)?)? / scale;
    let served = candidate.decoder.forward_all(&input)?;
    let drift = rms(&(&served - &reference)?)? / scale;
    let served_top1 = top1(&served)?;
    drop(exact);
    let _ = std::fs::remove_dir_all(&exact_dir);
    Ok((parity, drift, served_top1))
}

/// The gate: every check, candidate against production; the report, whose `passed` says
/// whether the candidate may be promoted.
pub fn run(
    production_path: &Path,
    runs: &[StageRun],
    regression_path: &Path,
    recipe: &Recipe,
    held_out: &HeldOut,
) -> Result<Value> {
    let settings = recipe.gate.clone().unwrap_or_default();
    let max_ratio = settings.max_loss_ratio.unwrap_or(1.0);
    let tolerance = settings.parity_tolerance.unwrap_or(1e-3);
    let last = runs.last().context("no stage ran")?;
    let candidate = load(&last.merged)?;
    let production = load(production_path)?;
    let (conversations, regression, loss_ok) =
        regression(&production, &candidate, regression_path, max_ratio)?;
    let (questions, questions_ok) = if let Some(why) = &held_out.none_because {
        (json!({"questions": 0, "why": why}), false)
    } else if held_out.questions.is_empty() {
        (Value::Null, true)
    } else {
        held_out_questions(&production, &candidate, held_out, &settings)?
    };
    let beta = recipe.dpo.as_ref().and_then(|d| d.beta).unwrap_or(0.1);
    let (pairs, pairs_ok) = if held_out.pairs.is_empty() {
        (Value::Null, true)
    } else {
        held_out_pairs(&production, &candidate, &held_out.pairs, &settings, beta)?
    };
    let sample = conversations
        .first()
        .map(|c| c.messages.clone())
        .unwrap_or_else(|| vec![ChatMessage::new(Role::User, "Hello")]);
    let (parity, drift, served_top1) = merge_parity(last, &candidate, &sample)?;
    // The candidate renders prompts exactly as production does.
    let template_parity = candidate.chat_prompt(&sample)? == production.chat_prompt(&sample)?;
    let passed = loss_ok && questions_ok && pairs_ok && parity <= tolerance && template_parity;
    Ok(json!({
        "passed": passed,
        "regression": regression,
        "held_out_questions": questions,
        "held_out_pairs": pairs,
        "parity": {"relative_rms_difference": parity, "tolerance": tolerance,
                   "served_q8_0_relative_rms_difference": drift,
                   "served_q8_0_top1_agreement": served_top1},
        "template_parity": template_parity,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_files_are_read_with_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.jsonl");
        std::fs::write(
            &path,
            "{\"question\": \"a?\", \"answer\": \"A.\", \"split\": \"train\"}\n\
             {\"question\": \"b?\", \"answer\": \"B.\", \"source_doc\": \"kb/b.md\", \"split\": \"test\"}\n\
             {\"question\": \"c?\", \"answer\": \"C.\", \"split\": \"test\"}\n",
        )
        .unwrap();
        let questions = read_questions(&path, 16).unwrap();
        assert_eq!(questions.len(), 2);
        assert_eq!(questions[0].source_doc.as_deref(), Some("kb/b.md"));
        assert_eq!(read_questions(&path, 1).unwrap().len(), 1);
        std::fs::write(&path, "{\"question\": \"a?\"}\n").unwrap();
        let error = format!("{:#}", read_questions(&path, 16).unwrap_err());
        assert!(error.contains("line 1"), "{error}");
        std::fs::write(&path, "{\"question\": \"a?\", \"answer\": \" \"}\n").unwrap();
        assert!(read_questions(&path, 16).is_err());
        std::fs::write(&path, "\n").unwrap();
        assert!(read_questions(&path, 16).is_err());
        assert!(read_questions(&dir.path().join("none.jsonl"), 16).is_err());

        let pairs = dir.path().join("p.jsonl");
        std::fs::write(
            &pairs,
            "{\"prompt\": \"q\", \"chosen\": \"good\", \"rejected\": \"bad\", \"split\": \"test\"}\n\
             {\"prompt\": \"r\", \"chosen\": \"good\", \"rejected\": \"bad\", \"split\": \"train\"}\n",
        )
        .unwrap();
        assert_eq!(read_pairs(&pairs, 32).unwrap().len(), 1);
        std::fs::write(&pairs, "{\"prompt\": \"q\"}\n").unwrap();
        assert!(read_pairs(&pairs, 32).is_err());
        assert!(resolve(Path::new("/home"), Path::new("q.jsonl")) == Path::new("/home/q.jsonl"));
        assert!(resolve(Path::new("/home"), Path::new("/q.jsonl")) == Path::new("/q.jsonl"));
    }
}
