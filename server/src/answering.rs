//! The answer pipeline without HTTP: retrieval, the grounded prompt with the conversation's
//! history in its budget, the generation settings, and the abstention checks before and after
//! generation. The customer routes, `/v1/chat/completions` and `kefu eval answers` all answer
//! through it, so what is measured is what customers get.

use anyhow::Result;
use kefu_model::generate::GenerationParams;
use kefu_model::sampling::SamplingConfig;
use kefu_model::{ChatMessage, LoadedModel, Role};
use kefu_rag::prompt::Citation;
use kefu_rag::score::{abstained, abstention_reply, support};
use kefu_rag::{Language, Ranked, RetrievalConfig, Retriever};
use serde_json::{Value, json};

use crate::knowledge::Knowledge;

/// How answers are built; `kefu serve` and `kefu eval answers` take the same flags.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerSettings {
    /// Passages given to the model at most.
    pub passages: usize,
    /// Budget of instructions, passages and question, in the chat model's tokens.
    pub context_tokens: usize,
    /// Budget of the earlier turns of the conversation (oldest dropped first).
    pub history_tokens: usize,
    pub max_tokens: usize,
    /// Abstain when the best passage's similarity is below the embedder's floor.
    pub abstain_unrelated: bool,
    /// Abstain when less than this share of the answer's content terms is in its passages
    /// (0 turns the check off).
    pub min_support: f64,
}

impl Default for AnswerSettings {
    fn default() -> Self {
        Self {
            passages: 4,
            context_tokens: 1536,
            history_tokens: 512,
            max_tokens: 256,
            abstain_unrelated: true,
            min_support: 0.5,
        }
    }
}

/// Why an answer was replaced by the abstention reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abstention {
    /// Nothing in the knowledge base resembles the question (no generation ran).
    NoRelevantPassage,
    /// The model said it does not know.
    ModelDeclined,
    /// Too little of the answer is found in its passages.
    Unsupported,
}

impl Abstention {
    pub fn name(self) -> &'static str {
        match self {
            Self::NoRelevantPassage => "no_relevant_passage",
            Self::ModelDeclined => "model_declined",
            Self::Unsupported => "unsupported",
        }
    }
}

/// What retrieval and prompt building produce for one answer.
pub struct Prepared {
    pub prompt: Vec<u32>,
    pub messages: Vec<ChatMessage>,
    pub citations: Vec<Citation>,
    /// The cited passages with scores and text, as the served-prompt record keeps them.
    pub retrieved: Value,
    /// The cited passages' text, for the support check.
    pub passages: String,
    pub language: Language,
    /// The best passage's dense similarity (`None` without dense retrieval).
    pub best_similarity: Option<f32>,
    /// Set when the answer is decided before generation.
    pub abstention: Option<Abstention>,
}

impl Prepared {
    /// The reply for an abstention, in the question's language.
    pub fn abstention_reply(&self) -> &'static str {
        abstention_reply(self.language)
    }
}

/// The earlier turns that fit `budget` tokens, newest kept, in their order.
fn fit_history(
    model: &LoadedModel,
    history: Vec<ChatMessage>,
    budget: usize,
) -> Result<Vec<ChatMessage>> {
    let mut kept = Vec::new();
    let mut used = 0;
    for message in history.into_iter().rev() {
        let tokens = model.encode(&message.content)?.len() + 4;
        if used + tokens > budget {
            break;
        }
        used += tokens;
        kept.push(message);
    }
    kept.reverse();
    Ok(kept)
}

fn retrieved_json(retriever: &Retriever, citations: &[Citation]) -> Value {
    json!(
        citations
            .iter()
            .map(|c| {
                let chunk = retriever.chunk_by_id(c.chunk_id);
                json!({
                    "chunk_id": c.chunk_id, "score": c.score, "title": c.title,
                    "heading": c.heading, "path": c.path,
                    "text": chunk.map(|chunk| chunk.text.clone()),
                })
            })
            .collect::<Vec<_>>()
    )
}

/// Whether the best passage clears the embedder's floor (no passage never does).
fn unrelated(ranked: &Ranked, floor: f32) -> (Option<f32>, bool) {
    let best = ranked.dense.first().map(|s| s.score);
    let unrelated = ranked.fused.is_empty() || best.is_some_and(|b| b < floor);
    (best, unrelated)
}

/// The conversation before a question.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Earlier turns as plain text, oldest first.
    pub turns: Vec<ChatMessage>,
    /// The previous answer's prompt as the model was given it, followed by that answer: the
    /// question then continues it (its passages in its own turn), so the model's state after
    /// the previous answer — kept by the prefix cache — is reused and only the new turn runs.
    pub served: Option<Vec<ChatMessage>>,
}

impl From<Vec<ChatMessage>> for History {
    fn from(turns: Vec<ChatMessage>) -> Self {
        Self {
            turns,
            served: None,
        }
    }
}

/// Retrieves and builds the grounded prompt of `question` after `history` (blocking: embedding
/// and tokenizing). A conversation continues its previous prompt while the whole stays within
/// twice the passages' budget plus the history's; past that it starts over: instructions and
/// the new passages, the earlier turns as text that fit `history_tokens`, the question.
pub fn prepare(
    knowledge: &Knowledge,
    retriever: &Retriever,
    model: &LoadedModel,
    question: &str,
    history: History,
    settings: &AnswerSettings,
) -> Result<Prepared> {
    let ranked = knowledge.search(retriever, question, &RetrievalConfig::default())?;
    let language = Language::detect(question);
    let (best_similarity, unrelated) = unrelated(&ranked, knowledge.spec.min_relevance(language));
    let (grounded, mut messages) = kefu_trainer::knowledge::grounded(
        model,
        retriever,
        &ranked,
        question,
        settings.passages,
        settings.context_tokens,
    )?;
    let continued = match history.served {
        Some(mut chain) => {
            chain.push(ChatMessage::new(Role::User, grounded.follow_up_turn()));
            let prompt = model.chat_prompt(&chain)?;
            let budget = 2 * settings.context_tokens + settings.history_tokens;
            (prompt.len() <= budget).then_some((prompt, chain))
        }
        None => None,
    };
    let (prompt, messages) = match continued {
        Some(continued) => continued,
        None => {
            // Earlier turns go between the instructions and the question.
            let question_turn = messages.pop();
            messages.extend(fit_history(model, history.turns, settings.history_tokens)?);
            messages.extend(question_turn);
            (model.chat_prompt(&messages)?, messages)
        }
    };
    let passages = grounded
        .citations
        .iter()
        .filter_map(|c| retriever.chunk_by_id(c.chunk_id))
        .map(|p| format!("{}\n{}\n{}", p.title, p.heading_path.join("\n"), p.text))
        .collect::<Vec<_>>()
        .join("\n\n");
    Ok(Prepared {
        prompt,
        retrieved: retrieved_json(retriever, &grounded.citations),
        messages,
        citations: grounded.citations,
        passages,
        language,
        best_similarity,
        abstention: (settings.abstain_unrelated && unrelated)
            .then_some(Abstention::NoRelevantPassage),
    })
}

/// The generation settings of every answer: greedy, a light repetition penalty.
pub fn generation_params(settings: &AnswerSettings) -> GenerationParams {
    GenerationParams {
        sampling: SamplingConfig {
            temperature: 0.0,
            repetition_penalty: 1.1,
            ..SamplingConfig::default()
        },
        max_tokens: settings.max_tokens,
        stop: Vec::new(),
        ignore_eos: false,
    }
}

/// The check after generation: an answer that says it does not know, or whose content is
/// mostly not in its passages, is replaced by the abstention reply.
pub fn review(prepared: &Prepared, answer: &str, settings: &AnswerSettings) -> Option<Abstention> {
    if let Some(reason) = prepared.abstention {
        return Some(reason);
    }
    if abstained(answer) {
        return Some(Abstention::ModelDeclined);
    }
    let supported = support(answer, &prepared.passages);
    if settings.min_support > 0.0 && supported.is_some_and(|s| s < settings.min_support) {
        return Some(Abstention::Unsupported);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstention_reasons_have_stable_names() {
        assert_eq!(Abstention::NoRelevantPassage.name(), "no_relevant_passage");
        assert_eq!(Abstention::ModelDeclined.name(), "model_declined");
        assert_eq!(Abstention::Unsupported.name(), "unsupported");
    }

    #[test]
    fn history_keeps_the_newest_turns_that_fit_its_budget() {
        use kefu_model::testing::{TinySpec, write_tiny_gguf};
        use kefu_model::{Architecture, LoadOptions, Role};
        let dir = tempfile::tempdir().unwrap();
        let path = write_tiny_gguf(dir.path(), &TinySpec::new(Architecture::Llama));
        let model = LoadedModel::load(&path, &LoadOptions::default()).unwrap();
        let turns: Vec<ChatMessage> = (0..6)
            .map(|i| {
                let role = if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                };
                ChatMessage::new(role, format!("turn {i}: {}", "word ".repeat(20)))
            })
            .collect();
        assert_eq!(fit_history(&model, turns.clone(), 1 << 20).unwrap(), turns);
        let cost = |m: &ChatMessage| model.encode(&m.content).unwrap().len() + 4;
        let two = cost(&turns[4]) + cost(&turns[5]);
        assert_eq!(
            fit_history(&model, turns.clone(), two).unwrap(),
            turns[4..].to_vec(),
            "the oldest turns go first"
        );
        assert_eq!(
            fit_history(&model, turns.clone(), two - 1).unwrap(),
            turns[5..].to_vec()
        );
        assert!(fit_history(&model, turns, 0).unwrap().is_empty());
    }

    #[test]
    fn no_passage_or_a_weak_best_one_is_unrelated() {
        use kefu_rag::Scored;
        let scored = |score| Scored { chunk: 0, score };
        assert!(unrelated(&Ranked::default(), 0.8).1);
        let ranked = Ranked {
            dense: vec![scored(0.79)],
            keyword: Vec::new(),
            fused: vec![scored(0.1)],
        };
        assert_eq!(unrelated(&ranked, 0.8), (Some(0.79), true));
        assert_eq!(unrelated(&ranked, 0.7), (Some(0.79), false));
    }
}
