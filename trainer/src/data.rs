//! Supervised fine-tuning data: JSON lines in the common shapes — alpaca (`instruction`,
//! `input`, `output`), `messages` (OpenAI / TRL, and `kefu export sft --format trl`),
//! ShareGPT `conversations` (LLaMA-Factory, and `kefu export sft --format llama-factory`),
//! `question` / `answer` — read into conversations whose last turn is the answer to learn;
//! bad lines reported with their line numbers; duplicates dropped; a deterministic train / eval
//! split; tokenized with the model's own chat template, the loss on the answer's tokens only.

use std::collections::HashSet;
use std::path::Path;

use kefu_model::{ChatMessage, LoadedModel, Role};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Result, TrainError};

/// One training conversation; its last message is the assistant's answer to learn.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub messages: Vec<ChatMessage>,
}

/// What to do with a line that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBadLine {
    /// Report it and go on.
    Skip,
    /// Stop with an error naming the line.
    Fail,
}

/// The conversations of a file, and what was left out.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub conversations: Vec<Conversation>,
    /// (line number, reason)
    pub skipped: Vec<(usize, String)>,
    pub duplicates: usize,
}

fn role_of(name: &str) -> Option<Role> {
    match name {
        "system" => Some(Role::System),
        "user" | "human" => Some(Role::User),
        "assistant" | "gpt" | "bot" => Some(Role::Assistant),
        _ => None,
    }
}

/// A list of turns (`role` / `content`, or ShareGPT's `from` / `value`) as chat messages.
pub(crate) fn messages(list: &Value, what: &str) -> std::result::Result<Vec<ChatMessage>, String> {
    let list = list.as_array().ok_or(format!("`{what}` is not a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, turn)| {
            let role = turn
                .get("role")
                .or_else(|| turn.get("from"))
                .and_then(Value::as_str)
                .ok_or(format!("{what} turn {} has no `role` / `from`", i + 1))?;
            let role = role_of(role).ok_or(format!(
                "{what} turn {} has an unknown role `{role}`",
                i + 1
            ))?;
            let content = turn
                .get("content")
                .or_else(|| turn.get("value"))
                .and_then(Value::as_str)
                .ok_or(format!(
                    "{what} turn {} has no text `content` / `value`",
                    i + 1
                ))?;
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

fn text(value: &Value, field: &str) -> std::result::Result<String, String> {
    match value.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("`{field}` is not text")),
        None => Err(format!("`{field}` is missing")),
    }
}

/// Turns (role, content) pairs into a conversation that ends with a non-empty answer.
fn conversation(turns: Vec<(Role, String)>) -> std::result::Result<Conversation, String> {
    match turns.last() {
        Some((Role::Assistant, answer)) if !answer.trim().is_empty() => {}
        Some((Role::Assistant, _)) => return Err("the answer is empty".into()),
        _ => return Err("the last turn is not the assistant's".into()),
    }
    if !turns
        .iter()
        .any(|(r, c)| *r == Role::User && !c.trim().is_empty())
    {
        return Err("there is no user turn".into());
    }
    Ok(Conversation {
        messages: turns
            .into_iter()
            .map(|(role, content)| ChatMessage::new(role, content))
            .collect(),
    })
}

/// One JSON value in any supported shape.
pub fn parse_example(value: &Value) -> std::result::Result<Conversation, String> {
    let mut turns = Vec::new();
    if let Some(Value::String(system)) = value.get("system")
        && !system.trim().is_empty()
    {
        turns.push((Role::System, system.clone()));
    }
    if let Some(list) = value.get("messages").or_else(|| value.get("conversations")) {
        let what = if value.get("messages").is_some() {
            "messages"
        } else {
            "conversations"
        };
        turns.extend(
            messages(list, what)?
                .into_iter()
                .map(|m| (m.role, m.content)),
        );
        return conversation(turns);
    }
    if value.get("instruction").is_some() {
        let mut prompt = text(value, "instruction")?;
        if let Some(Value::String(input)) = value.get("input")
            && !input.trim().is_empty()
        {
            prompt = format!("{prompt}\n\n{input}");
        }
        turns.push((Role::User, prompt));
        turns.push((Role::Assistant, text(value, "output")?));
        return conversation(turns);
    }
    if value.get("question").is_some() {
        turns.push((Role::User, text(value, "question")?));
        turns.push((Role::Assistant, text(value, "answer")?));
        return conversation(turns);
    }
    Err(
        "no known fields: expected `messages`, `conversations`, `instruction` / `output` or \
         `question` / `answer`"
            .into(),
    )
}

pub(crate) fn fingerprint(conversation: &Conversation) -> [u8; 32] {
    let mut hash = Sha256::new();
    for m in &conversation.messages {
        hash.update(format!("{:?}\u{0}{}\u{0}", m.role, m.content).as_bytes());
    }
    hash.finalize().into()
}

/// Reads a JSON-lines file of SFT examples.
pub fn read_jsonl(path: &Path, on_bad_line: OnBadLine) -> Result<Loaded> {
    read_jsonl_split(path, on_bad_line, None)
}

/// Like [`read_jsonl`], keeping only the lines whose `split` field is `split` (when given),
/// as in `../shared/data/qa/*.jsonl` (`train`, `test`).
pub fn read_jsonl_split(
    path: &Path,
    on_bad_line: OnBadLine,
    split: Option<&str>,
) -> Result<Loaded> {
    let (conversations, skipped, duplicates) =
        read_lines(path, on_bad_line, split, parse_example, fingerprint)?;
    Ok(Loaded {
        conversations,
        skipped,
        duplicates,
    })
}

/// Items, (line, reason) of the lines left out, and the duplicates dropped.
type Lines<T> = (Vec<T>, Vec<(usize, String)>, usize);

/// The JSON lines of `path`, each parsed by `parse`; duplicates (by `key`) dropped.
pub(crate) fn read_lines<T>(
    path: &Path,
    on_bad_line: OnBadLine,
    split: Option<&str>,
    parse: impl Fn(&Value) -> std::result::Result<T, String>,
    key: impl Fn(&T) -> [u8; 32],
) -> Result<Lines<T>> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        TrainError::Data(format!(
            "{}: not UTF-8 text (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    let mut duplicates = 0;
    let mut seen = HashSet::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str::<Value>(line).map_err(|e| format!("not JSON: {e}"));
        if let (Some(want), Ok(value)) = (split, &value)
            && value.get("split").and_then(Value::as_str) != Some(want)
        {
            continue;
        }
        let parsed = value.and_then(|v| parse(&v));
        match parsed {
            Ok(item) => {
                if seen.insert(key(&item)) {
                    items.push(item);
                } else {
                    duplicates += 1;
                }
            }
            Err(reason) => match on_bad_line {
                OnBadLine::Skip => skipped.push((number, reason)),
                OnBadLine::Fail => {
                    return Err(TrainError::Data(format!(
                        "{} line {number}: {reason}",
                        path.display()
                    )));
                }
            },
        }
    }
    if items.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no usable examples{} ({} lines skipped)",
            path.display(),
            split
                .map(|s| format!(" in split `{s}`"))
                .unwrap_or_default(),
            skipped.len()
        )));
    }
    Ok((items, skipped, duplicates))
}

/// Splits by content hash: the same example always lands on the same side, whatever the
/// order of the file. `eval_fraction` in [0, 0.5].
pub fn split(
    conversations: Vec<Conversation>,
    eval_fraction: f64,
) -> (Vec<Conversation>, Vec<Conversation>) {
    split_by(conversations, eval_fraction, fingerprint)
}

/// [`split`] for any item with a content hash.
pub fn split_by<T>(
    items: Vec<T>,
    eval_fraction: f64,
    key: impl Fn(&T) -> [u8; 32],
) -> (Vec<T>, Vec<T>) {
    let threshold = (eval_fraction.clamp(0.0, 0.5) * 10_000.0) as u32;
    items.into_iter().partition(|item| {
        let hash = key(item);
        u32::from_le_bytes([hash[0], hash[1], hash[2], hash[3]]) % 10_000 >= threshold
    })
}

/// A tokenized example: inputs and, per position, the token to predict next (`None` where no
/// loss is taken: the prompt and padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    pub input: Vec<u32>,
    pub targets: Vec<Option<u32>>,
}

impl Tokenized {
    /// Positions that count in the loss.
    pub fn answer_tokens(&self) -> usize {
        self.targets.iter().filter(|t| t.is_some()).count()
    }
}

/// Renders `conversation` with the model's chat template (the code the server uses) and marks
/// the answer's tokens, end-of-turn included, as the only targets. Longer than `max_len`
/// tokens: the answer is cut; `None` when the prompt alone leaves no room.
pub fn tokenize(
    model: &LoadedModel,
    conversation: &Conversation,
    max_len: usize,
) -> Result<Option<Tokenized>> {
    let tokenized = tokenize_messages(model, &conversation.messages, max_len)?;
    if tokenized.is_some() {
        return Ok(tokenized);
    }
    // A conversation that continued its grounded prompt (each follow-up brings its passages in
    // its own turn) keeps the first turn's passages in the system message; too long, it is
    // learned without them: the answer's own passages are in its turn.
    match compacted(&conversation.messages) {
        Some(messages) => tokenize_messages(model, &messages, max_len),
        None => Ok(None),
    }
}

/// `messages` with the first turn's passages left out of the system message, when it is a
/// grounded prompt's and a later user turn follows.
fn compacted(messages: &[ChatMessage]) -> Option<Vec<ChatMessage>> {
    let (first, rest) = messages.split_first()?;
    let users = rest.iter().filter(|m| m.role == Role::User).count();
    if first.role != Role::System || users < 2 {
        return None;
    }
    let instructions = kefu_rag::prompt::instructions_of(&first.content)?;
    if instructions.len() == first.content.len() {
        return None;
    }
    let mut messages = messages.to_vec();
    messages[0].content = instructions.to_string();
    Some(messages)
}

fn tokenize_messages(
    model: &LoadedModel,
    messages: &[ChatMessage],
    max_len: usize,
) -> Result<Option<Tokenized>> {
    let (answer, context) = messages
        .split_last()
        .ok_or_else(|| TrainError::Data("an empty conversation".into()))?;
    let prompt = model.chat_prompt(context)?;
    let full_text = model.template.render(messages, false)?;
    let full = model.encode(&full_text)?;
    // The template renders the answer after the prompt; if a template does something else,
    // fall back to the prompt followed by the answer's own tokens and an end of turn.
    let ids = if full.len() > prompt.len() && full.starts_with(&prompt) {
        full
    } else {
        let mut ids = prompt.clone();
        ids.extend(model.encode(&answer.content)?);
        ids.extend(model.stop_token_ids.first());
        ids
    };
    if prompt.len() + 1 >= max_len || ids.len() <= prompt.len() {
        return Ok(None);
    }
    let ids: Vec<u32> = ids.into_iter().take(max_len).collect();
    let input = ids[..ids.len() - 1].to_vec();
    let targets = (1..ids.len())
        .map(|i| (i >= prompt.len()).then_some(ids[i]))
        .collect();
    Ok(Some(Tokenized { input, targets }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_continued_conversation_is_compacted_without_its_first_passages() {
        use kefu_rag::prompt::SYSTEM_PROMPT;
        let grounded = format!("{SYSTEM_PROMPT}\n\nPassages:\n\n[1] Sid\nUnstable is sid.");
        let turn = |role, text: &str| ChatMessage::new(role, text.to_string());
        let chain = vec![
            turn(Role::System, &grounded),
            turn(Role::User, "What is unstable called?"),
            turn(Role::Assistant, "Sid [1]."),
            turn(
                Role::User,
                "Passages:\n\n[1] Buster\nBuster is 10.\n\nAnd buster?",
            ),
            turn(Role::Assistant, "Debian 10 [1]."),
        ];
        let compact = compacted(&chain).unwrap();
        assert_eq!(compact[0].content, SYSTEM_PROMPT);
        assert_eq!(compact[1..], chain[1..]);
        // One question: nothing to compact; a system message of another origin is kept.
        assert!(compacted(&chain[..3]).is_none());
        let mut other = chain.clone();
        other[0].content = "You are a pirate.".into();
        assert!(compacted(&other).is_none());
    }

    #[test]
    fn every_shape_becomes_a_conversation_ending_in_the_answer() {
        let shapes = [
            json!({"instruction": "Translate", "input": "bonjour", "output": "hello"}),
            json!({"messages": [{"role": "user", "content": "Translate bonjour"},
                                {"role": "assistant", "content": "hello"}]}),
            json!({"system": "Be brief.", "conversations": [{"from": "human", "value": "hi"},
                                                             {"from": "gpt", "value": "hello"}]}),
            json!({"question": "Say hello", "answer": "hello"}),
        ];
        for shape in shapes {
            let c = parse_example(&shape).unwrap();
            let last = c.messages.last().unwrap();
            assert_eq!(
                (last.role, last.content.as_str()),
                (Role::Assistant, "hello")
            );
        }
        let alpaca =
            parse_example(&json!({"instruction": "A", "input": "B", "output": "C"})).unwrap();
        assert_eq!(alpaca.messages[0].content, "A\n\nB");
    }

    #[test]
    fn unusable_examples_say_why() {
        for (value, reason) in [
            (json!({"foo": 1}), "no known fields"),
            (json!({"question": "q"}), "`answer` is missing"),
            (json!({"question": "q", "answer": ""}), "empty"),
            (
                json!({"messages": [{"role": "user", "content": "hi"}]}),
                "not the assistant",
            ),
            (
                json!({"messages": [{"role": "wizard", "content": "hi"}]}),
                "unknown role",
            ),
            (json!({"messages": "hi"}), "not a list"),
            (
                json!({"messages": [{"role": "assistant", "content": "hi"}]}),
                "no user turn",
            ),
        ] {
            let err = parse_example(&value).unwrap_err();
            assert!(err.contains(reason), "{value}: {err}");
        }
    }

    #[test]
    fn the_split_is_stable_and_near_the_fraction() {
        let conversations: Vec<Conversation> = (0..2000)
            .map(|i| parse_example(&json!({"question": format!("q{i}"), "answer": "a"})).unwrap())
            .collect();
        let (train, eval) = split(conversations.clone(), 0.1);
        assert_eq!(train.len() + eval.len(), 2000);
        assert!((150..250).contains(&eval.len()), "{}", eval.len());
        let mut reversed = conversations;
        reversed.reverse();
        let (_, eval_again) = split(reversed, 0.1);
        assert_eq!(eval_again.len(), eval.len());
        assert!(eval.iter().all(|c| eval_again.contains(c)));
    }
}
