//! The dataset compiler (`kefu export`, the admin export and datasets routes, the worker's
//! snapshots): feedback events become training data.
//!
//! For each customer question, every answer the model gave (regenerations included) gets one
//! label from its feedback events: agents outweigh customers, and among equals the latest
//! event wins (a customer who rates one answer many times gives one rating). A label is
//! *trusted* when an agent gave it or the feedback inbox accepted it; the [`Policy`] says what
//! untrusted (customer) labels may become. Then:
//! - an agent's corrected answer is *chosen* against the model's answer, *rejected*;
//! - a thumbs-up answer is chosen against a thumbs-down answer to the same question (under
//!   the default policy only when the thumbs-up is trusted);
//! - SFT examples are the corrected and the (trusted) thumbs-up answers;
//! - KTO examples are every (trusted) labelled answer with its label (desirable or not).
//!
//! Each example keeps the exact messages the model was served (retrieved passages included)
//! and its lineage (question, answer and feedback ids, model version).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use kefu_db::{ACCEPTED, Database, FeedbackEvent, Message, REJECTED, Review};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Which examples to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sft,
    Pairs,
    Kto,
}

/// How to write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Hugging Face TRL conversational format (`prompt` / `chosen` / `rejected` message lists).
    Trl,
    /// LLaMA-Factory ShareGPT format (`conversations` with `from` / `value`).
    LlamaFactory,
}

impl Kind {
    /// `sft`, `pairs` or `kto`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sft" => Some(Self::Sft),
            "pairs" => Some(Self::Pairs),
            "kto" => Some(Self::Kto),
            _ => None,
        }
    }
}

impl Format {
    /// `trl` or `llama-factory`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "trl" => Some(Self::Trl),
            "llama-factory" => Some(Self::LlamaFactory),
            _ => None,
        }
    }
}

/// Which feedback becomes training data (`--feedback-policy`, `KEFU_FEEDBACK_POLICY`).
/// Agents' ratings and corrections, and answers the feedback inbox accepted, count under every
/// policy; the inbox's rejections under none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// A customer's thumbs are weak evidence: they become examples only once an agent or admin
    /// accepts them in the inbox.
    #[default]
    Review,
    /// As `review`, and customers' unreviewed thumbs also make preference pairs (a liked
    /// against a disliked answer to one question), never SFT or KTO examples.
    PairsOnly,
    /// Every rating counts at once: for a trusted internal deployment.
    All,
}

impl Policy {
    /// `review`, `pairs-only` or `all`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "review" => Some(Self::Review),
            "pairs-only" => Some(Self::PairsOnly),
            "all" => Some(Self::All),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Review => "review",
            Self::PairsOnly => "pairs-only",
            Self::All => "all",
        }
    }

    /// Whether a label of this trust makes SFT and KTO examples.
    fn admits_single(self, trusted: bool) -> bool {
        trusted || self == Self::All
    }

    /// Whether a liked answer of this trust is chosen in a pair.
    fn admits_chosen(self, trusted: bool) -> bool {
        trusted || self != Self::Review
    }
}

/// Writes `examples` as JSON lines; their sha256.
pub fn write_lines(path: &Path, examples: &[Value]) -> Result<String> {
    let mut text = String::new();
    for example in examples {
        text.push_str(&example.to_string());
        text.push('\n');
    }
    std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(text.as_bytes())))
}

/// The regression set: the SFT examples an agent's correction made.
pub fn regression(sft: &[Value]) -> Vec<Value> {
    sft.iter()
        .filter(|e| e["kefu"]["chosen_message_id"].is_null())
        .filter(|e| {
            !matches!(
                e["kefu"]["source"].as_str(),
                Some("knowledge" | "abstention")
            )
        })
        .cloned()
        .collect()
}

/// An answer with what it was served and its winning label.
#[derive(Debug, Clone)]
struct Labelled {
    /// The customer's question, as asked.
    question: String,
    answer: Message,
    prompt: Value,
    model_version: String,
    /// +1, −1 (a correction counts as −1 for the model's answer).
    label: i64,
    /// The decisive event.
    event: FeedbackEvent,
    /// The latest agent correction, if any.
    correction: Option<(String, i64)>,
    /// The feedback inbox's latest decision on it; a rejected answer gives no examples.
    review: Option<Review>,
    /// An agent decided the label, or the inbox accepted it.
    trusted: bool,
    /// Every customer rating on it (a customer may rate one answer many times).
    customer_ratings: Vec<FeedbackEvent>,
}

/// Where a label comes from, least authoritative first: when several answers to the same
/// question could each be an SFT example, the one whose label has the most authority wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    /// A customer's rating nobody reviewed.
    Customer,
    /// A customer's rating the inbox accepted.
    AcceptedCustomer,
    AgentRating,
    AgentCorrection,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Customer => "customer",
            Source::AcceptedCustomer => "accepted_customer",
            Source::AgentRating => "agent_rating",
            Source::AgentCorrection => "agent_correction",
        }
    }
}

impl Labelled {
    /// Where its label comes from.
    fn source(&self) -> Source {
        if self.correction.is_some() {
            Source::AgentCorrection
        } else if self.event.feedback.rater_role == "agent" {
            Source::AgentRating
        } else if self.trusted {
            Source::AcceptedCustomer
        } else {
            Source::Customer
        }
    }

    /// When the label became what it is: its event, or the inbox's acceptance.
    fn decided_ms(&self) -> i64 {
        let accepted = self
            .review
            .as_ref()
            .filter(|r| r.decision == ACCEPTED)
            .map_or(0, |r| r.created_ms);
        self.event.created_ms.max(accepted)
    }
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

/// Every rated answer with its label, by question (reviewed-out ones included).
async fn labelled_answers(database: &Database) -> Result<BTreeMap<i64, Vec<Labelled>>> {
    let mut reviews = database.reviews().await?;
    let mut by_question: BTreeMap<i64, Vec<Labelled>> = BTreeMap::new();
    // Each question's text, read once however many of its answers were rated.
    let mut asked: HashMap<i64, String> = HashMap::new();
    for answer_id in database.rated_answers().await? {
        let Some(answer) = database.message(answer_id).await? else {
            continue;
        };
        let Some(question) = answer.reply_to else {
            continue;
        };
        if let std::collections::hash_map::Entry::Vacant(slot) = asked.entry(question) {
            let Some(message) = database.message(question).await? else {
                continue;
            };
            slot.insert(message.content);
        }
        let Some(served) = database.served_prompt(answer_id).await? else {
            continue;
        };
        let events = database.feedback(answer_id).await?;
        let Some((event, label)) = decide(&events) else {
            continue;
        };
        // An answer the customer stopped is cut short: never an example of a good answer
        // (its correction, or its rating down, still counts).
        let correction_given = events.iter().any(|e| e.feedback.corrected_answer.is_some());
        if served.finish_reason == "cancelled" && label > 0 && !correction_given {
            continue;
        }
        let correction = events
            .iter()
            .filter(|e| e.feedback.rater_role == "agent")
            .filter_map(|e| Some((e.feedback.corrected_answer.clone()?, e.id)))
            .next_back();
        let review = reviews.remove(&answer.id);
        let trusted = event.feedback.rater_role == "agent"
            || review.as_ref().is_some_and(|r| r.decision == ACCEPTED);
        by_question.entry(question).or_default().push(Labelled {
            question: asked[&question].clone(),
            prompt: serde_json::from_str(&served.prompt)?,
            model_version: served.model_version,
            label,
            event: event.clone(),
            correction,
            review,
            trusted,
            customer_ratings: events
                .iter()
                .filter(|e| e.feedback.rater_role == "customer" && e.feedback.rating != 0)
                .cloned()
                .collect(),
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

/// Every rated answer the inbox has not rejected, by question.
async fn admissible(database: &Database) -> Result<BTreeMap<i64, Vec<Labelled>>> {
    let mut by_question = labelled_answers(database).await?;
    // The inbox's rejections keep an answer's feedback out of every kind of example.
    for answers in by_question.values_mut() {
        answers.retain(|a| a.review.as_ref().is_none_or(|r| r.decision != REJECTED));
    }
    Ok(by_question)
}

/// The answers whose feedback `policy` turns into SFT examples or pairs, each with the moment
/// its label became what it is: what the threshold trigger counts.
pub async fn admitted(database: &Database, policy: Policy) -> Result<Vec<(i64, i64)>> {
    let mut out = Vec::new();
    for answers in admissible(database).await?.values() {
        for a in answers {
            let single = a.correction.is_some() || (a.label > 0 && policy.admits_single(a.trusted));
            let paired = a.label > 0
                && policy.admits_chosen(a.trusted)
                && answers
                    .iter()
                    .any(|b| b.label < 0 && b.answer.id != a.answer.id);
            let rejected_side = a.label < 0
                && answers.iter().any(|b| {
                    b.label > 0 && b.answer.id != a.answer.id && policy.admits_chosen(b.trusted)
                });
            if single || paired || rejected_side {
                out.push((a.answer.id, a.decided_ms()));
            }
        }
    }
    Ok(out)
}

/// The examples of one kind that `policy` admits, one JSON value each.
pub async fn compile(
    database: &Database,
    kind: Kind,
    format: Format,
    policy: Policy,
) -> Result<Vec<Value>> {
    let by_question = admissible(database).await?;
    let mut out = Vec::new();
    // SFT: one example per question text (the same question asked again, by another customer
    // or in a later round, is one lesson, not several): the one with the most authority, then
    // the latest; its place is its question's first.
    let mut lessons: Vec<((Source, i64), Value)> = Vec::new();
    let mut lesson_of: HashMap<String, usize> = HashMap::new();
    for (question, answers) in &by_question {
        for a in answers {
            let lineage = |chosen: Option<i64>, rejected: Option<i64>| {
                json!({
                    "question_message_id": question, "answer_message_id": a.answer.id,
                    "feedback_event_id": a.event.id, "model_version": a.model_version,
                    "chosen_message_id": chosen, "rejected_message_id": rejected,
                    "source": a.source().name(),
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
                    let example = if let Some((corrected, _)) = &a.correction {
                        single(format, &a.prompt, corrected, None, lineage(None, None))
                    } else if a.label > 0 && policy.admits_single(a.trusted) {
                        let lineage = lineage(Some(a.answer.id), None);
                        single(format, &a.prompt, &a.answer.content, None, lineage)
                    } else {
                        continue;
                    };
                    let weight = (a.source(), a.decided_ms());
                    let key = normalized(&a.question);
                    match lesson_of.get(&key).copied() {
                        Some(at) if lessons[at].0 < weight => lessons[at] = (weight, example),
                        Some(_) => {}
                        None => {
                            lesson_of.insert(key, lessons.len());
                            lessons.push((weight, example));
                        }
                    }
                }
                Kind::Kto if policy.admits_single(a.trusted) => out.push(single(
                    format,
                    &a.prompt,
                    &a.answer.content,
                    Some(a.label > 0),
                    lineage(None, None),
                )),
                Kind::Kto => {}
            }
        }
        // Liked against disliked answers to the same question (regenerations included).
        if kind == Kind::Pairs {
            for good in answers
                .iter()
                .filter(|a| a.label > 0 && policy.admits_chosen(a.trusted))
            {
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
                            "source": good.source().name(),
                        }),
                    ));
                }
            }
        }
    }
    out.extend(lessons.into_iter().map(|(_, example)| example));
    Ok(out)
}

/// An answer its own customer rated this many times is flagged `repeated_ratings`.
const REPEATED_RATINGS: usize = 3;
/// One source (client address) rating this many answers flags them `one_source_many_answers`.
const MANY_ANSWERS: usize = 10;
/// This many identical customer ratings within [`BURST_MS`] flag their answers `burst`.
const BURST: usize = 10;
const BURST_MS: i64 = 60_000;
/// The same answer text rated on this many answers flags them `same_text`.
const SAME_TEXT: usize = 3;

/// A text with case and spacing ignored: how the inbox compares answers and the gate's
/// held-out share recognizes a question.
pub fn normalized(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Why the inbox flags answers' feedback as suspicious, by answer id.
fn suspicious(by_question: &BTreeMap<i64, Vec<Labelled>>) -> BTreeMap<i64, Vec<&'static str>> {
    let answers: Vec<&Labelled> = by_question.values().flatten().collect();
    let mut flags: BTreeMap<i64, Vec<&'static str>> = BTreeMap::new();
    let mut flag = |id: i64, why: &'static str| {
        let list = flags.entry(id).or_default();
        if !list.contains(&why) {
            list.push(why);
        }
    };
    // (when, rating, answer) of every customer rating; sources by rater (or conversation).
    let mut ratings = Vec::new();
    let mut by_source: BTreeMap<String, std::collections::BTreeSet<i64>> = BTreeMap::new();
    let mut by_text: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for a in &answers {
        if a.customer_ratings.len() >= REPEATED_RATINGS {
            flag(a.answer.id, "repeated_ratings");
        }
        for e in &a.customer_ratings {
            ratings.push((e.created_ms, e.feedback.rating.signum(), a.answer.id));
            let source = e
                .feedback
                .rater
                .clone()
                .unwrap_or_else(|| format!("conversation:{}", a.answer.conversation_id));
            by_source.entry(source).or_default().insert(a.answer.id);
        }
        by_text
            .entry(normalized(&a.answer.content))
            .or_default()
            .push(a.answer.id);
    }
    for ids in by_source.values().filter(|ids| ids.len() >= MANY_ANSWERS) {
        for id in ids {
            flag(*id, "one_source_many_answers");
        }
    }
    for ids in by_text.values().filter(|ids| ids.len() >= SAME_TEXT) {
        for id in ids {
            flag(*id, "same_text");
        }
    }
    for sign in [-1, 1] {
        let mut same: Vec<(i64, i64)> = ratings
            .iter()
            .filter(|r| r.1 == sign)
            .map(|r| (r.0, r.2))
            .collect();
        same.sort_unstable();
        let mut start = 0;
        for end in 0..same.len() {
            while same[end].0 - same[start].0 > BURST_MS {
                start += 1;
            }
            if end + 1 - start >= BURST {
                for (_, id) in &same[start..=end] {
                    flag(*id, "burst");
                }
            }
        }
    }
    flags
}

/// What the feedback inbox lists, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxFilter {
    /// `up`, `down` or `corrected`.
    pub label: Option<String>,
    /// `pending`, `accepted` or `rejected`.
    pub review: Option<String>,
    /// Who gave the deciding feedback: `customer` or `agent`.
    pub rater: Option<String>,
    /// Words the question or the answer contains (case-insensitive).
    pub text: Option<String>,
    /// Only answers whose feedback looks suspicious (`true`) or does not (`false`).
    pub flagged: Option<bool>,
}

/// The feedback inbox: every rated answer, newest feedback first, with its question, its
/// label, the pair it makes (chosen against rejected) and its review state; those `filter`
/// admits, as `(total, page)`.
pub async fn inbox(
    database: &Database,
    filter: &InboxFilter,
    offset: usize,
    limit: usize,
) -> Result<(usize, Vec<Value>)> {
    let by_question = labelled_answers(database).await?;
    let flags = suspicious(&by_question);
    let mut items = Vec::new();
    for (question_id, answers) in &by_question {
        let question = answers.first().map_or("", |a| a.question.as_str());
        for a in answers {
            let label = match (&a.correction, a.label) {
                (Some(_), _) => "corrected",
                (None, l) if l > 0 => "up",
                _ => "down",
            };
            let review = a.review.as_ref().map_or("pending", |r| r.decision.as_str());
            let sibling = |want: i64| {
                answers
                    .iter()
                    .find(|b| b.answer.id != a.answer.id && b.label.signum() == want)
                    .map(|b| b.answer.content.clone())
            };
            let pair = match (&a.correction, a.label) {
                (Some((corrected, _)), _) => Some((corrected.clone(), a.answer.content.clone())),
                (None, l) if l > 0 => sibling(-1).map(|bad| (a.answer.content.clone(), bad)),
                _ => sibling(1).map(|good| (good, a.answer.content.clone())),
            };
            let wanted =
                |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
            let flags = flags.get(&a.answer.id).cloned().unwrap_or_default();
            if !wanted(&filter.label, label)
                || !wanted(&filter.review, review)
                || !wanted(&filter.rater, &a.event.feedback.rater_role)
                || filter.flagged.is_some_and(|f| f == flags.is_empty())
            {
                continue;
            }
            if let Some(text) = &filter.text {
                let text = text.to_lowercase();
                if !question.to_lowercase().contains(&text)
                    && !a.answer.content.to_lowercase().contains(&text)
                {
                    continue;
                }
            }
            items.push(json!({
                "message_id": a.answer.id, "question_message_id": question_id,
                "question": question, "answer": a.answer.content, "label": label,
                "correction": a.correction.as_ref().map(|(c, _)| c),
                "rater_role": a.event.feedback.rater_role, "rater": a.event.feedback.rater,
                "reasons": a.event.feedback.reasons, "comment": a.event.feedback.comment,
                "feedback_ms": a.event.created_ms, "model_version": a.model_version,
                "pair": pair.map(|(chosen, rejected)| json!({"chosen": chosen, "rejected": rejected})),
                "review": review, "reviewer": a.review.as_ref().and_then(|r| r.reviewer.clone()),
                "trusted": a.trusted, "customer_ratings": a.customer_ratings.len(),
                "flags": flags,
            }));
        }
    }
    items.sort_by_key(|i| std::cmp::Reverse((i["feedback_ms"].as_i64(), i["message_id"].as_i64())));
    let total = items.len();
    Ok((total, items.into_iter().skip(offset).take(limit).collect()))
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
