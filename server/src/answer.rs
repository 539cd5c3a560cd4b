//! Retrieval-augmented answers: the best passages of a knowledge base, fitted into the
//! generator's context budget, numbered so the answer can cite them.

use kefu_db::StoredChunk;
use kefu_model::{ChatMessage, LoadedModel, Role};

use crate::knowledge::{Ranked, Retriever};

/// The instructions every grounded answer is generated under.
pub const SYSTEM_PROMPT: &str = "You are a helpful customer-service assistant. Answer the \
question using only the numbered passages below, in the language of the question. Cite the \
passages you use by their number in brackets, like [1]. If the passages do not contain the \
answer, say that you do not know.";

/// A passage given to the model, with what its citation shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Citation {
    pub number: usize,
    pub chunk_id: i64,
    pub title: String,
    pub heading: String,
    pub path: String,
    pub score: f32,
    /// The passage's first words, for a citation a reader can check at a glance.
    pub excerpt: String,
}

/// At most this many characters of a passage in a citation's excerpt.
const EXCERPT_CHARS: usize = 240;

/// `text` cut at a word boundary near [`EXCERPT_CHARS`], with an ellipsis when cut.
fn excerpt(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() <= EXCERPT_CHARS {
        return text;
    }
    let cut: String = text.chars().take(EXCERPT_CHARS).collect();
    let at = cut
        .rfind(' ')
        .filter(|&i| i > EXCERPT_CHARS / 2)
        .unwrap_or(cut.len());
    format!("{}…", &cut[..at])
}

impl Citation {
    fn of(number: usize, chunk: &StoredChunk, score: f32) -> Self {
        Self {
            number,
            chunk_id: chunk.id,
            title: chunk.title.clone(),
            heading: chunk
                .heading_path
                .iter()
                .skip_while(|h| **h == chunk.title)
                .cloned()
                .collect::<Vec<_>>()
                .join(" > "),
            path: chunk.path.clone(),
            score,
            excerpt: excerpt(&chunk.text),
        }
    }

    /// `[1] Title — Heading (path)`.
    pub fn line(&self) -> String {
        let heading = if self.heading.is_empty() {
            String::new()
        } else {
            format!(" — {}", self.heading)
        };
        format!("[{}] {}{heading} ({})", self.number, self.title, self.path)
    }
}

/// The chat messages of a grounded answer and the passages they cite.
#[derive(Debug, Clone)]
pub struct GroundedPrompt {
    pub messages: Vec<ChatMessage>,
    pub citations: Vec<Citation>,
}

/// Takes the best fused passages (at most `max_passages`) while the prompt stays within
/// `context_tokens` of the generator's tokenizer; at least one passage is always kept.
pub fn grounded_prompt(
    model: &LoadedModel,
    retriever: &Retriever,
    ranked: &Ranked,
    question: &str,
    max_passages: usize,
    context_tokens: usize,
) -> anyhow::Result<GroundedPrompt> {
    let mut used = model.encode(SYSTEM_PROMPT)?.len() + model.encode(question)?.len();
    let mut passages = String::new();
    let mut citations = Vec::new();
    for scored in ranked.fused.iter().take(max_passages) {
        let chunk = &retriever.chunks[scored.chunk];
        let citation = Citation::of(citations.len() + 1, chunk, scored.score);
        let block = format!(
            "[{}] {}\n{}\n\n",
            citation.number,
            crate::knowledge::indexed_text(&chunk.title, &chunk.heading_path, "").trim_end(),
            chunk.text.trim()
        );
        let tokens = model.encode(&block)?.len();
        if !citations.is_empty() && used + tokens > context_tokens {
            break;
        }
        used += tokens;
        passages.push_str(&block);
        citations.push(citation);
    }
    let system = if citations.is_empty() {
        format!("{SYSTEM_PROMPT}\n\nPassages: none were found.")
    } else {
        format!("{SYSTEM_PROMPT}\n\nPassages:\n\n{}", passages.trim_end())
    };
    Ok(GroundedPrompt {
        messages: vec![
            ChatMessage::new(Role::System, system),
            ChatMessage::new(Role::User, question.to_string()),
        ],
        citations,
    })
}
