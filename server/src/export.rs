//! The dataset compiler: feedback events become training data.
//!
//! For each customer question, every answer the model gave (regenerations included) gets one
//! label from its feedback events: agents outweigh customers, and among equals the latest
//! event wins. Then:
//! - an agent's corrected answer is *chosen* against the model's answer, *rejected*;
//! - a thumbs-up answer is chosen against a thumbs-down answer to the same question;
//! - SFT examples are the corrected and the thumbs-up answers;
//! - KTO examples are every labelled answer with its label (desirable or not).
//!
//! Each example keeps the exact messages the model was served (retrieved passages included)
//! and its lineage (question, answer and feedback ids, model version).

use std::collections::BTreeMap;

use anyhow::Result;
use kefu_db::{Database, FeedbackEvent, Message};
use serde_json::{Value, json};

/// Which examples to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Sft,
    Pairs,
    Kto,
}

/// How to write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Hugging Face TRL conversational format (`prompt` / `chosen` / `rejected` message lists).
    Trl,
    /// LLaMA-Factory ShareGPT format (`conversations` with `from` / `value`).
    LlamaFactory,
}

/// An answer with what it was served and its winning label.
#[derive(Debug, Clone)]
struct Labelled {
    answer: Message,
    prompt: Value,
    model_version: String,
    /// +1, −1 (a correction counts as −1 for the model's answer).
    label: i64,
    /// The decisive event.
    event: FeedbackEvent,
    /// The latest agent correction, if any.
    correction: Option<(String, i64)>,
}

fn role_rank(role: &str) -> i64 {
    if role == "agent" { 2 } else { 1 }
}

/// The deciding event: ratings and corrections only; agent over customer, then the latest.
fn decide(events: &[FeedbackEvent]) -> Option<(&FeedbackEvent, i64)> {
    events
        .iter()
        .filter(|e| e.feedback.rating != 0 || e.feedback.corrected_answer.is_some())
        .max_by_key(|e| (role_rank(&e.feedback.rater_role), e.created_ms, e.id))
        .map(|e| {
            let label = if e.feedback.corrected_answer.is_some() {
                -1
            } else {
                e.feedback.rating.signum()
            };
            (e, label)
        })
}

async fn labelled_answers(database: &Database) -> Result<BTreeMap<i64, Vec<Labelled>>> {
    let mut by_question: BTreeMap<i64, Vec<Labelled>> = BTreeMap::new();
    for answer_id in database.rated_answers().await? {
        let Some(answer) = database.message(answer_id).await? else {
            continue;
        };
        let Some(question) = answer.reply_to else {
            continue;
        };
        let Some(served) = database.served_prompt(answer_id).await? else {
            continue;
        };
        let events = database.feedback(answer_id).await?;
        let Some((event, label)) = decide(&events) else {
            continue;
        };
        let correction = events
            .iter()
            .filter(|e| e.feedback.rater_role == "agent")
            .filter_map(|e| Some((e.feedback.corrected_answer.clone()?, e.id)))
            .next_back();
        by_question.entry(question).or_default().push(Labelled {
            prompt: serde_json::from_str(&served.prompt)?,
            model_version: served.model_version,
            label,
            event: event.clone(),
            correction,
            answer,
        });
    }
    Ok(by_question)
}

fn sharegpt(messages: &Value) -> (Option<String>, Vec<Value>) {
    let mut system = None;
    let mut turns = Vec::new();
    for m in messages.as_array().into_iter().flatten() {
        let content = m["content"].as_str().unwrap_or_default().to_string();
        match m["role"].as_str() {
            Some("system") => system = Some(content),
            Some("assistant") => turns.push(json!({"from": "gpt", "value": content})),
            _ => turns.push(json!({"from": "human", "value": content})),
        }
    }
    (system, turns)
}

fn assistant(text: &str) -> Value {
    json!([{"role": "assistant", "content": text}])
}

fn pair(format: Format, prompt: &Value, chosen: &str, rejected: &str, lineage: Value) -> Value {
    match format {
        Format::Trl => json!({
            "prompt": prompt, "chosen": assistant(chosen), "rejected": assistant(rejected),
            "kefu": lineage,
        }),
        Format::LlamaFactory => {
            let (system, conversations) = sharegpt(prompt);
            json!({
                "system": system, "conversations": conversations,
                "chosen": {"from": "gpt", "value": chosen},
                "rejected": {"from": "gpt", "value": rejected},
                "kefu": lineage,
            })
        }
    }
}

fn single(
    format: Format,
    prompt: &Value,
    completion: &str,
    label: Option<bool>,
    lineage: Value,
) -> Value {
    match (format, label) {
        (Format::Trl, None) => {
            let mut messages = prompt.as_array().cloned().unwrap_or_default();
            messages.push(json!({"role": "assistant", "content": completion}));
            json!({"messages": messages, "kefu": lineage})
        }
        (Format::Trl, Some(label)) => json!({
            "prompt": prompt, "completion": assistant(completion), "label": label,
            "kefu": lineage,
        }),
        (Format::LlamaFactory, label) => {
            let (system, mut conversations) = sharegpt(prompt);
            conversations.push(json!({"from": "gpt", "value": completion}));
            let mut example =
                json!({"system": system, "conversations": conversations, "kefu": lineage});
            if let Some(label) = label {
                example["kto_tag"] = json!(label);
            }
            example
        }
    }
}

/// The examples of one kind, one JSON value each.
pub async fn compile(database: &Database, kind: Kind, format: Format) -> Result<Vec<Value>> {
    let by_question = labelled_answers(database).await?;
    let mut out = Vec::new();
    for (question, answers) in &by_question {
        for a in answers {
            let lineage = |chosen: Option<i64>, rejected: Option<i64>| {
                json!({
                    "question_message_id": question, "answer_message_id": a.answer.id,
                    "feedback_event_id": a.event.id, "model_version": a.model_version,
                    "chosen_message_id": chosen, "rejected_message_id": rejected,
                })
            };
            match kind {
                Kind::Pairs => {
                    if let Some((corrected, event_id)) = &a.correction {
                        let mut l = lineage(None, Some(a.answer.id));
                        l["correction_event_id"] = json!(event_id);
                        out.push(pair(format, &a.prompt, corrected, &a.answer.content, l));
                    }
                }
                Kind::Sft => {
                    if let Some((corrected, _)) = &a.correction {
                        out.push(single(
                            format,
                            &a.prompt,
                            corrected,
                            None,
                            lineage(None, None),
                        ));
                    } else if a.label > 0 {
                        out.push(single(
                            format,
                            &a.prompt,
                            &a.answer.content,
                            None,
                            lineage(Some(a.answer.id), None),
                        ));
                    }
                }
                Kind::Kto => out.push(single(
                    format,
                    &a.prompt,
                    &a.answer.content,
                    Some(a.label > 0),
                    lineage(None, None),
                )),
            }
        }
        // Liked against disliked answers to the same question (regenerations included).
        if kind == Kind::Pairs {
            for good in answers.iter().filter(|a| a.label > 0) {
                for bad in answers
                    .iter()
                    .filter(|a| a.label < 0 && a.answer.id != good.answer.id)
                {
                    out.push(pair(
                        format,
                        &good.prompt,
                        &good.answer.content,
                        &bad.answer.content,
                        json!({
                            "question_message_id": question,
                            "chosen_message_id": good.answer.id,
                            "rejected_message_id": bad.answer.id,
                            "chosen_feedback_event_id": good.event.id,
                            "rejected_feedback_event_id": bad.event.id,
                            "model_version": good.model_version,
                        }),
                    ));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kefu_db::NewFeedback;

    fn event(id: i64, role: &str, rating: i64, corrected: Option<&str>, at: i64) -> FeedbackEvent {
        FeedbackEvent {
            id,
            created_ms: at,
            feedback: NewFeedback {
                message_id: 1,
                rater_role: role.into(),
                rater: None,
                rating,
                reasons: Vec::new(),
                comment: None,
                corrected_answer: corrected.map(str::to_string),
            },
        }
    }

    #[test]
    fn agents_outweigh_customers_then_the_latest_wins() {
        let events = [
            event(1, "customer", 1, None, 10),
            event(2, "agent", -1, None, 5),
            event(3, "customer", 1, None, 20),
        ];
        assert_eq!(decide(&events).map(|(e, l)| (e.id, l)), Some((2, -1)));
        let events = [
            event(1, "customer", -1, None, 10),
            event(2, "customer", 1, None, 20),
        ];
        assert_eq!(decide(&events).map(|(e, l)| (e.id, l)), Some((2, 1)));
        let events = [
            event(1, "agent", 1, None, 10),
            event(2, "agent", 0, Some("better"), 20),
        ];
        assert_eq!(decide(&events).map(|(e, l)| (e.id, l)), Some((2, -1)));
        assert!(decide(&[event(1, "customer", 0, None, 1)]).is_none());
    }
}
