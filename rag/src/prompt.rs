//! The grounded prompt: the best passages of a ranking, fitted into the chat model's context
//! budget and numbered so the answer can cite them. The token count comes from the caller (the
//! chat model's tokenizer), so this crate needs no model.

use crate::parse::Language;
use crate::retrieve::{Passage, Ranked, Retriever, indexed_text};

/// The instructions every grounded answer to an English question is generated under.
pub const SYSTEM_PROMPT: &str = "You are a customer-service assistant. Answer the question \
using only the numbered passages below. Answer briefly, in one to three sentences, in the \
language of the question, and cite the passages you use by their number in brackets, like \
[1]. If the passages do not contain the answer, say \"I don't know\".";

/// The same instructions for a Chinese question (small models follow instructions in the
/// language they answer in more closely).
pub const SYSTEM_PROMPT_ZH: &str = "你是客服助手。只根据下面编号的资料回答问题，用中文简要回答\
（一到三句话），并用方括号注明所用资料的编号，例如 [1]。如果资料中没有答案，就回答“我不知道”。";

/// The instructions and the passages' heading for a question in `language`.
fn instructions(language: Language) -> (&'static str, &'static str, &'static str) {
    match language {
        Language::En => (SYSTEM_PROMPT, "Passages:", "Passages: none were found."),
        Language::Zh => (SYSTEM_PROMPT_ZH, "资料：", "资料：没有找到相关资料。"),
    }
}

/// The instructions a grounded prompt's system message starts with, without the passages that
/// follow them; `None` for a system message this module did not write.
pub fn instructions_of(system: &str) -> Option<&'static str> {
    [SYSTEM_PROMPT, SYSTEM_PROMPT_ZH]
        .into_iter()
        .find(|instructions| system.starts_with(instructions))
}

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
    fn of(number: usize, chunk: &Passage, score: f32) -> Self {
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

/// The two turns of a grounded answer (instructions with the passages, then the question) and
/// the passages they cite.
#[derive(Debug, Clone)]
pub struct GroundedPrompt {
    /// The instructions, then the passages.
    pub system: String,
    /// The passages alone under their heading (or the line saying none were found).
    pub passages: String,
    pub question: String,
    pub citations: Vec<Citation>,
}

impl GroundedPrompt {
    /// The question as the next turn of a conversation whose earlier turns are kept as they
    /// were given to the model: its passages, then the question, in one user message.
    pub fn follow_up_turn(&self) -> String {
        format!("{}\n\n{}", self.passages, self.question)
    }
}

/// Takes the best fused passages (at most `max_passages`) while the prompt stays within
/// `context_tokens`, counted by `count_tokens`; at least one passage is always kept.
pub fn grounded_prompt<E>(
    count_tokens: impl Fn(&str) -> Result<usize, E>,
    retriever: &Retriever,
    ranked: &Ranked,
    question: &str,
    max_passages: usize,
    context_tokens: usize,
) -> Result<GroundedPrompt, E> {
    let (instructions, heading, none) = instructions(Language::detect(question));
    let mut used = count_tokens(instructions)? + count_tokens(question)?;
    let mut passages = String::new();
    let mut citations = Vec::new();
    for scored in ranked.fused.iter().take(max_passages) {
        let chunk = &retriever.chunks[scored.chunk];
        let citation = Citation::of(citations.len() + 1, chunk, scored.score);
        let block = format!(
            "[{}] {}\n{}\n\n",
            citation.number,
            indexed_text(&chunk.title, &chunk.heading_path, "").trim_end(),
            chunk.text.trim()
        );
        let tokens = count_tokens(&block)?;
        if !citations.is_empty() && used + tokens > context_tokens {
            break;
        }
        used += tokens;
        passages.push_str(&block);
        citations.push(citation);
    }
    let passages = if citations.is_empty() {
        none.to_string()
    } else {
        format!("{heading}\n\n{}", passages.trim_end())
    };
    Ok(GroundedPrompt {
        system: format!("{instructions}\n\n{passages}"),
        passages,
        question: question.to_string(),
        citations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrieve::Scored;

    fn passage(id: i64, text: &str) -> Passage {
        Passage {
            id,
            document_id: 1,
            path: "faq.md".into(),
            title: "FAQ".into(),
            language: "en".into(),
            heading_path: vec!["FAQ".into(), format!("Question {id}")],
            text: text.into(),
        }
    }

    fn words(text: &str) -> Result<usize, std::convert::Infallible> {
        Ok(text.split_whitespace().count())
    }

    #[test]
    fn instructions_are_found_in_front_of_their_passages() {
        let system = format!("{SYSTEM_PROMPT}\n\nPassages:\n\n[1] A\nB");
        assert_eq!(instructions_of(&system), Some(SYSTEM_PROMPT));
        assert_eq!(instructions_of(SYSTEM_PROMPT_ZH), Some(SYSTEM_PROMPT_ZH));
        assert_eq!(instructions_of("You are a pirate."), None);
    }

    #[test]
    fn passages_fill_the_budget_and_keep_at_least_one() {
        let retriever = Retriever::new(
            1,
            vec![passage(1, "one two three"), passage(2, "four five six")],
        );
        let ranked = Ranked {
            fused: vec![
                Scored {
                    chunk: 1,
                    score: 0.9,
                },
                Scored {
                    chunk: 0,
                    score: 0.5,
                },
            ],
            ..Ranked::default()
        };
        let all = grounded_prompt(words, &retriever, &ranked, "why?", 4, 10_000).unwrap();
        assert_eq!(all.citations.len(), 2);
        assert_eq!(all.citations[0].chunk_id, 2);
        assert!(all.system.contains("[1] FAQ > Question 2\nfour five six"));
        assert_eq!(all.citations[1].line(), "[2] FAQ — Question 1 (faq.md)");
        let tight = grounded_prompt(words, &retriever, &ranked, "why?", 4, 1).unwrap();
        assert_eq!(tight.citations.len(), 1);
        let none = grounded_prompt(words, &retriever, &Ranked::default(), "why?", 4, 10).unwrap();
        assert!(none.system.ends_with("Passages: none were found."));
        assert_eq!(none.question, "why?");
        // A Chinese question gets the instructions in Chinese.
        let zh = grounded_prompt(words, &retriever, &ranked, "为什么？", 4, 10_000).unwrap();
        assert!(zh.system.starts_with(SYSTEM_PROMPT_ZH), "{}", zh.system);
        assert!(zh.system.contains("资料：\n\n[1]"), "{}", zh.system);
    }
}
