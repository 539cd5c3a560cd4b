//! The knowledge base as the loop and the server's answer pipeline read it: a knowledge
//! base's stored chunks as `rag` passages, the grounded prompt as chat messages for a model,
//! and training examples made from the documents themselves (FAQ-shaped sections as grounded
//! questions and answers, and questions whose passages lack the answer, answered with the
//! abstention reply) for a recipe's `[knowledge]`.

use anyhow::Result;
use kefu_db::{Database, StoredChunk};
use kefu_model::{ChatMessage, LoadedModel, Role};
use kefu_rag::prompt::{GroundedPrompt, grounded_prompt};
use kefu_rag::{Passage, Ranked, Retriever};

fn passage(chunk: StoredChunk) -> Passage {
    Passage {
        id: chunk.id,
        document_id: chunk.document_id,
        path: chunk.path,
        title: chunk.title,
        language: chunk.language,
        heading_path: chunk.heading_path,
        text: chunk.text,
    }
}

/// One knowledge base's stored chunks, indexed for retrieval.
pub async fn load_retriever(database: &Database, knowledge_base_id: i64) -> Result<Retriever> {
    let chunks = database.chunks(knowledge_base_id).await?;
    Ok(Retriever::new(
        knowledge_base_id,
        chunks.into_iter().map(passage).collect(),
    ))
}

/// The grounded prompt of `question` under `model`'s tokenizer (at most `max_passages`
/// passages within `context_tokens`), and its two chat messages: instructions with the
/// passages, then the question.
pub fn grounded(
    model: &LoadedModel,
    retriever: &Retriever,
    ranked: &Ranked,
    question: &str,
    max_passages: usize,
    context_tokens: usize,
) -> Result<(GroundedPrompt, Vec<ChatMessage>)> {
    let prompt = grounded_prompt(
        |text| model.encode(text).map(|ids| ids.len()),
        retriever,
        ranked,
        question,
        max_passages,
        context_tokens,
    )?;
    let messages = vec![
        ChatMessage::new(Role::System, prompt.system.clone()),
        ChatMessage::new(Role::User, prompt.question.clone()),
    ];
    Ok((prompt, messages))
}

/// A section of the knowledge base whose heading is a question (an FAQ's shape): the
/// question, its text, and the passages it is stored in (their indexes in the retriever).
#[derive(Debug, Clone, PartialEq)]
pub struct FaqSection {
    pub question: String,
    pub answer: String,
    pub document_id: i64,
    pub chunks: Vec<usize>,
}

/// A heading as a question, without its section number ("1.2. What is Debian?" → "What is
/// Debian?"); `None` when it does not end in a question mark.
fn question_heading(heading: &str) -> Option<String> {
    let heading = heading.trim();
    if !(heading.ends_with('?') || heading.ends_with('？')) {
        return None;
    }
    let question =
        heading.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace());
    (!question.is_empty()).then(|| question.to_string())
}

/// The knowledge base's sections whose last heading is a question, in the order stored, each
/// with the text of its passages joined.
pub fn faq_sections(retriever: &Retriever) -> Vec<FaqSection> {
    let mut sections: Vec<FaqSection> = Vec::new();
    let mut at: std::collections::HashMap<(i64, &[String]), usize> = Default::default();
    for (i, chunk) in retriever.chunks.iter().enumerate() {
        let Some(question) = chunk.heading_path.last().and_then(|h| question_heading(h)) else {
            continue;
        };
        let key = (chunk.document_id, chunk.heading_path.as_slice());
        match at.get(&key) {
            Some(&s) => {
                let section = &mut sections[s];
                section.answer = format!("{}\n\n{}", section.answer, chunk.text.trim());
                section.chunks.push(i);
            }
            None => {
                at.insert(key, sections.len());
                sections.push(FaqSection {
                    question,
                    answer: chunk.text.trim().to_string(),
                    document_id: chunk.document_id,
                    chunks: vec![i],
                });
            }
        }
    }
    sections.retain(|s| !s.answer.is_empty());
    sections
}

/// How many tokens a text takes, for fitting passages into a prompt without the model's
/// tokenizer: a token per three characters of alphabetic text, one and a half tokens a CJK
/// character (generous for both catalog models, so a prompt is never longer than served).
fn estimated_tokens(text: &str) -> usize {
    let (cjk, other) = text.chars().fold((0usize, 0usize), |(c, o), ch| {
        if kefu_rag::text::is_cjk(ch) {
            (c + 1, o)
        } else {
            (c, o + 1)
        }
    });
    cjk * 3 / 2 + other.div_ceil(3)
}

/// At most this many characters of a section as an answer, cut at a sentence's end (a served
/// answer is at most 256 tokens).
const ANSWER_CHARS: usize = 1_000;

fn answer_text(text: &str) -> String {
    if text.chars().count() <= ANSWER_CHARS {
        return text.to_string();
    }
    let cut: String = text.chars().take(ANSWER_CHARS).collect();
    let end = cut
        .rfind(['.', '。', '!', '?', '！', '？'])
        .map(|i| i + cut[i..].chars().next().map_or(1, char::len_utf8))
        .filter(|&i| i > ANSWER_CHARS / 3)
        .unwrap_or(cut.len());
    cut[..end].trim_end().to_string()
}

/// What the worker makes from a knowledge base (the recipe's `[knowledge]`).
#[derive(Debug, Clone)]
pub struct KnowledgeExamples {
    /// Passages a prompt holds at most, and their budget in tokens (the server's defaults).
    pub passages: usize,
    pub context_tokens: usize,
    /// Abstention examples per FAQ example.
    pub abstention: f64,
    /// FAQ examples at most.
    pub max_examples: usize,
}

/// A training example in the feedback data's shape (TRL messages), with its lineage.
fn example(
    prompt: &GroundedPrompt,
    answer: &str,
    source: &str,
    section: &FaqSection,
) -> serde_json::Value {
    serde_json::json!({
        "messages": [
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": prompt.question},
            {"role": "assistant", "content": answer},
        ],
        "kefu": {"source": source, "document_id": section.document_id},
    })
}

/// SFT examples made from the knowledge base's FAQ-shaped sections (`sections`): each
/// question with the passages keyword retrieval finds for it, answered with the section's text
/// and a citation of its passage — only where the section's own passage is among them, so no
/// example teaches answering from passages that lack the answer; and, for a share of them
/// (spread evenly), the same question with the passages of other documents only (where
/// retrieval finds some), answered with the abstention reply.
pub fn knowledge_examples(
    retriever: &Retriever,
    sections: &[FaqSection],
    settings: &KnowledgeExamples,
) -> Vec<serde_json::Value> {
    let count = |text: &str| Ok::<_, std::convert::Infallible>(estimated_tokens(text));
    let prompt_of = |ranked: &Ranked, question: &str| {
        let Ok(prompt) = grounded_prompt(
            count,
            retriever,
            ranked,
            question,
            settings.passages,
            settings.context_tokens,
        );
        prompt
    };
    let share = settings.abstention.clamp(0.0, 1.0);
    let mut examples = Vec::new();
    let mut made = 0usize;
    for section in sections {
        if made == settings.max_examples {
            break;
        }
        let ranked = retriever.search_keywords(&section.question, 50);
        let prompt = prompt_of(&ranked, &section.question);
        let Some(cited) = prompt.citations.iter().find(|c| {
            retriever.chunk_by_id(c.chunk_id).is_some_and(|p| {
                section
                    .chunks
                    .iter()
                    .any(|&i| retriever.chunks[i].id == p.id)
            })
        }) else {
            continue;
        };
        let answer = format!("{} [{}]", answer_text(&section.answer), cited.number);
        examples.push(example(&prompt, &answer, "knowledge", section));
        // Abstention examples spread evenly: one where the running share passes a whole number.
        if (made as f64 * share).floor() != ((made + 1) as f64 * share).floor() {
            let others = |list: &[kefu_rag::Scored]| -> Vec<kefu_rag::Scored> {
                list.iter()
                    .filter(|s| retriever.chunks[s.chunk].document_id != section.document_id)
                    .copied()
                    .collect()
            };
            let elsewhere = Ranked {
                dense: others(&ranked.dense),
                keyword: others(&ranked.keyword),
                fused: others(&ranked.fused),
            };
            let prompt = prompt_of(&elsewhere, &section.question);
            // Only where retrieval finds related passages elsewhere: a prompt without passages
            // teaches nothing the served prompts need.
            if !prompt.citations.is_empty() {
                let language = kefu_rag::Language::detect(&section.question);
                let reply = kefu_rag::score::abstention_reply(language);
                examples.push(example(&prompt, reply, "abstention", section));
            }
        }
        made += 1;
    }
    examples
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(id: i64, document_id: i64, title: &str, heading: &[&str], text: &str) -> Passage {
        Passage {
            id,
            document_id,
            path: format!("kb/{title}.md"),
            title: title.into(),
            language: "en".into(),
            heading_path: heading.iter().map(|h| h.to_string()).collect(),
            text: text.into(),
        }
    }

    /// Two FAQ documents (one section in two passages), a section that is no question, a
    /// Chinese FAQ section, and a Chinese note; each question's words are also in another
    /// document (so an abstention example has passages).
    fn retriever() -> Retriever {
        Retriever::new(
            1,
            vec![
                passage(
                    10,
                    1,
                    "Shipping",
                    &["Shipping", "1.1. How long does delivery take?"],
                    "Parcels arrive within three working days.",
                ),
                passage(
                    11,
                    1,
                    "Shipping",
                    &["Shipping", "1.1. How long does delivery take?"],
                    "Islands take five days.",
                ),
                passage(
                    12,
                    1,
                    "Shipping",
                    &["Shipping", "1.2 Carriers"],
                    "We ship with the postal service. A gift can be wrapped for free.",
                ),
                passage(
                    20,
                    2,
                    "Returns",
                    &["Returns", "2.1. Can I return a gift?"],
                    "Gifts can be returned for store credit within thirty days. The delivery \
                     of a return does not take long.",
                ),
                passage(
                    30,
                    3,
                    "退货",
                    &["退货", "3.1. 退货需要多久？"],
                    "退款在七天内到账。",
                ),
                passage(
                    40,
                    4,
                    "客服",
                    &["客服", "说明"],
                    "退货前请先联系客服，需要订单号。",
                ),
            ],
        )
    }

    fn settings(abstention: f64, max_examples: usize) -> KnowledgeExamples {
        KnowledgeExamples {
            passages: 4,
            context_tokens: 1536,
            abstention,
            max_examples,
        }
    }

    #[test]
    fn sections_headed_by_a_question_are_found_with_their_whole_text() {
        let sections = faq_sections(&retriever());
        let questions: Vec<&str> = sections.iter().map(|s| s.question.as_str()).collect();
        assert_eq!(
            questions,
            [
                "How long does delivery take?",
                "Can I return a gift?",
                "退货需要多久？"
            ]
        );
        assert_eq!(
            sections[0].answer,
            "Parcels arrive within three working days.\n\nIslands take five days."
        );
        assert_eq!(sections[0].chunks, [0, 1]);
    }

    #[test]
    fn faq_examples_cite_their_section_and_abstention_examples_lack_it() {
        let retriever = retriever();
        let sections = faq_sections(&retriever);
        let examples = knowledge_examples(&retriever, &sections, &settings(1.0, 10));
        let messages = |e: &serde_json::Value, i: usize| {
            e["messages"][i]["content"].as_str().unwrap().to_string()
        };
        // Each section: its FAQ example, then (every one at share 1) its abstention example.
        let sources: Vec<&str> = examples
            .iter()
            .map(|e| e["kefu"]["source"].as_str().unwrap())
            .collect();
        assert_eq!(
            sources,
            [
                "knowledge",
                "abstention",
                "knowledge",
                "abstention",
                "knowledge",
                "abstention"
            ]
        );
        let faq = &examples[0];
        assert_eq!(messages(faq, 1), "How long does delivery take?");
        assert!(messages(faq, 0).contains("Parcels arrive within three working days."));
        let answer = messages(faq, 2);
        assert!(
            answer.starts_with("Parcels arrive within three working days."),
            "{answer}"
        );
        assert!(answer.ends_with(']'), "a citation: {answer}");
        let number = answer.rsplit('[').next().unwrap().trim_end_matches(']');
        assert!(
            messages(faq, 0).contains(&format!("[{number}] Shipping")),
            "{answer}"
        );
        // Abstention: no passage of the section's document, the decline reply.
        let decline = &examples[1];
        assert!(!messages(decline, 0).contains("Parcels arrive"));
        assert!(!messages(decline, 0).contains("postal service"));
        assert_eq!(
            messages(decline, 2),
            kefu_rag::score::abstention_reply(kefu_rag::Language::En)
        );
        // The Chinese section is answered and declined in Chinese.
        assert!(messages(&examples[4], 2).starts_with("退款在七天内到账。"));
        assert_eq!(
            messages(&examples[5], 2),
            kefu_rag::score::abstention_reply(kefu_rag::Language::Zh)
        );
    }

    #[test]
    fn the_share_and_the_limit_decide_how_many_examples_there_are() {
        let retriever = retriever();
        let sections = faq_sections(&retriever);
        let count = |share: f64, max: usize, source: &str| {
            knowledge_examples(&retriever, &sections, &settings(share, max))
                .iter()
                .filter(|e| e["kefu"]["source"] == source)
                .count()
        };
        assert_eq!(count(0.0, 10, "knowledge"), 3);
        assert_eq!(count(0.0, 10, "abstention"), 0);
        assert_eq!(count(0.5, 10, "abstention"), 1);
        assert_eq!(count(1.0, 2, "knowledge"), 2);
        assert_eq!(count(1.0, 2, "abstention"), 2);
        // A knowledge base of one document has no passages elsewhere: no abstention example.
        let alone = Retriever::new(1, retriever.chunks[..3].to_vec());
        let sections = faq_sections(&alone);
        let examples = knowledge_examples(&alone, &sections, &settings(1.0, 10));
        let sources: Vec<&str> = examples
            .iter()
            .map(|e| e["kefu"]["source"].as_str().unwrap())
            .collect();
        assert_eq!(sources, ["knowledge"]);
    }

    #[test]
    fn a_section_its_prompt_lacks_makes_no_example() {
        // Another document says the question's words more often, so with one passage a prompt
        // the section's own is left out: no example; with two, it is in and cited.
        let retriever = Retriever::new(
            1,
            vec![
                passage(
                    1,
                    1,
                    "A",
                    &["A", "Why is the sky blue?"],
                    "Scattering of light.",
                ),
                passage(
                    2,
                    2,
                    "B",
                    &["B", "Notes"],
                    "Why is the sky blue? Why is the sky blue? Sky, sky, blue.",
                ),
            ],
        );
        let sections = faq_sections(&retriever);
        assert_eq!(sections.len(), 1);
        let one = KnowledgeExamples {
            passages: 1,
            ..settings(0.0, 10)
        };
        assert!(knowledge_examples(&retriever, &sections, &one).is_empty());
        let two = knowledge_examples(&retriever, &sections, &settings(0.0, 10));
        assert_eq!(two.len(), 1);
        let answer = two[0]["messages"][2]["content"].as_str().unwrap();
        assert_eq!(answer, "Scattering of light. [2]");
    }

    #[test]
    fn long_sections_are_cut_at_a_sentence() {
        let long = "A sentence that goes on. ".repeat(80);
        let cut = answer_text(&long);
        assert!(cut.len() <= ANSWER_CHARS && cut.ends_with("on."), "{cut}");
        assert_eq!(answer_text("Short."), "Short.");
    }
}
