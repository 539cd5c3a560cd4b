//! How good an answer is, as numbers: token F1 against a reference answer, key-fact recall,
//! support in the passages it was written from, and whether it abstained. `kefu eval answers`,
//! the answer pipeline's abstention check and the trainer's evaluation gate all score here.

use std::collections::{HashMap, HashSet};

use crate::parse::Language;
use crate::text::is_cjk;

/// What the assistant says when the documents do not hold the answer, per language.
pub fn abstention_reply(language: Language) -> &'static str {
    match language {
        Language::En => {
            "I don't have that information in our documents. Would you like me to connect you \
             with a person?"
        }
        Language::Zh => "抱歉，我们的资料里没有这方面的信息。需要为您转接人工客服吗？",
    }
}

/// Phrases by which an answer says it does not know (lower-case).
const ABSTENTION_PHRASES: &[&str] = &[
    "i don't know",
    "i do not know",
    "i don't have that information",
    "i do not have that information",
    "i don't have information",
    "i do not have information",
    "i don't have any information",
    "i do not have any information",
    "do not contain the answer",
    "don't contain the answer",
    "does not contain the answer",
    "do not contain information",
    "does not contain information",
    "do not provide information",
    "does not provide information",
    "do not mention",
    "does not mention",
    "i'm not sure",
    "i am not sure",
    "i cannot answer",
    "i can't answer",
    "unable to answer",
    "不知道",
    "没有这方面的信息",
    "没有相关信息",
    "没有相关的信息",
    "没有提到",
    "未提及",
    "没有提及",
    "无法回答",
    "无法找到",
];

/// Whether `answer` says that it does not know (the assistant's own reply included).
pub fn abstained(answer: &str) -> bool {
    let lower = answer.to_lowercase().replace('’', "'");
    ABSTENTION_PHRASES.iter().any(|p| lower.contains(p))
}

/// Removes Markdown link targets (`[text](target)` keeps `text`) and citation markers (`[1]`).
fn strip_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let inner = &after[..close];
        let tail = &after[close + 1..];
        if !inner.is_empty()
            && inner
                .chars()
                .all(|c| c.is_ascii_digit() || c == ',' || c == ' ')
        {
            rest = tail; // a citation marker
        } else if let Some(target) = tail.strip_prefix('(')
            && let Some(end) = target.find(')')
        {
            out.push_str(inner);
            rest = &target[end + 1..];
        } else {
            out.push_str(inner);
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// The tokens F1 counts: lower-cased words for English (articles dropped), one token per
/// character for Chinese; punctuation, Markdown link targets and citation markers dropped.
pub fn answer_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, tokens: &mut Vec<String>| {
        if !word.is_empty() && !matches!(word.as_str(), "a" | "an" | "the") {
            tokens.push(std::mem::take(word));
        }
        word.clear();
    };
    for c in strip_markup(text).chars() {
        if is_cjk(c) {
            flush(&mut word, &mut tokens);
            tokens.push(c.to_string());
        } else if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else {
            flush(&mut word, &mut tokens);
        }
    }
    flush(&mut word, &mut tokens);
    tokens
}

/// Token F1 of `answer` against `reference` (SQuAD's measure; Chinese by characters).
pub fn token_f1(answer: &str, reference: &str) -> f64 {
    let answer = answer_tokens(answer);
    let reference = answer_tokens(reference);
    if answer.is_empty() || reference.is_empty() {
        return if answer.is_empty() && reference.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &reference {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0usize;
    for t in &answer {
        if let Some(n) = counts.get_mut(t.as_str())
            && *n > 0
        {
            *n -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / answer.len() as f64;
    let recall = common as f64 / reference.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// The content terms of a text: the keyword index's (stop words dropped, English words
/// folded, Chinese character bigrams), markup and citation markers dropped.
fn terms(text: &str) -> HashSet<String> {
    crate::keyword::analyze(&strip_markup(text))
        .into_iter()
        .collect()
}

/// The share of `part`'s content terms that `whole` holds (`None` when `part` has none).
fn covered(part: &str, whole: &str) -> Option<f64> {
    let part = terms(part);
    if part.is_empty() {
        return None;
    }
    let whole = terms(whole);
    Some(part.intersection(&whole).count() as f64 / part.len() as f64)
}

/// The share of `reference`'s content terms that `answer` states (`None` when it has none).
pub fn fact_recall(answer: &str, reference: &str) -> Option<f64> {
    covered(reference, answer)
}

/// The share of `answer`'s content terms found in `passages` (`None` for an answer without
/// any): an answer that invents shows low support.
pub fn support(answer: &str, passages: &str) -> Option<f64> {
    covered(answer, passages)
}

/// One answer's scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnswerScore {
    /// Against the reference; `None` without one.
    pub f1: Option<f64>,
    pub fact_recall: Option<f64>,
    pub support: Option<f64>,
    pub abstained: bool,
}

/// Scores `answer`, written from `passages`, against `reference` when there is one.
pub fn score(answer: &str, reference: Option<&str>, passages: &str) -> AnswerScore {
    AnswerScore {
        f1: reference.map(|r| token_f1(answer, r)),
        fact_recall: reference.and_then(|r| fact_recall(answer, r)),
        support: support(answer, passages),
        abstained: abstained(answer),
    }
}

/// The mean of the values present (`None` when there are none).
pub fn mean(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let (sum, n) = values
        .into_iter()
        .flatten()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f1_counts_words_in_english_and_characters_in_chinese() {
        assert_eq!(
            token_f1("The answer is yes.", "answer: YES, it is"),
            6.0 / 7.0
        );
        assert_eq!(token_f1("completely different", "nothing shared"), 0.0);
        assert_eq!(token_f1("", "reference"), 0.0);
        // Citation markers, link targets and punctuation are not words.
        assert_eq!(
            token_f1(
                "See [the guide](https://example.com/guide) [2].",
                "see guide"
            ),
            1.0
        );
        // 退款五天 vs 退款在五天内: 4 shared characters, 4 and 6 long.
        let zh = token_f1("退款五天。", "退款在五天内");
        assert!((zh - 0.8).abs() < 1e-9, "{zh}");
    }

    #[test]
    fn facts_and_support_are_shares_of_content_terms() {
        let reference = "Refunds are paid to the original card within five days.";
        assert_eq!(fact_recall(reference, reference), Some(1.0));
        let half = fact_recall("Refunds go to the original card.", reference).unwrap();
        assert!(half > 0.3 && half < 0.8, "{half}");
        assert_eq!(fact_recall("I do not know.", reference), Some(0.0));
        assert_eq!(fact_recall("anything", "the of a"), None);
        let zh = fact_recall("退款将在五天内退回原卡。", "退款在五天内退回原卡").unwrap();
        assert!(zh > 0.6, "{zh}");
        assert_eq!(
            support("original card [1]", "Paid to the original card."),
            Some(1.0)
        );
        assert_eq!(
            support("blue moon", "Paid to the original card."),
            Some(0.0)
        );
        assert_eq!(support("", "Paid."), None);
    }

    #[test]
    fn abstentions_are_recognized_in_both_languages() {
        for language in [Language::En, Language::Zh] {
            assert!(abstained(abstention_reply(language)));
        }
        assert!(abstained("I’m sorry, I don't know the answer to that."));
        assert!(abstained("The passages do not contain the answer."));
        assert!(abstained("文档中没有提到这个问题。"));
        assert!(!abstained("Yes, Debian runs on ARM64."));
        assert!(!abstained("可以，Debian 支持 ARM64。"));
    }

    #[test]
    fn a_score_holds_every_measure() {
        let s = score(
            "Paid to the card [1].",
            Some("Paid to the card."),
            "Paid to the card.",
        );
        assert_eq!(s.f1, Some(1.0));
        assert_eq!(s.fact_recall, Some(1.0));
        assert_eq!(s.support, Some(1.0));
        assert!(!s.abstained);
        assert_eq!(score("x", None, "").f1, None);
        assert_eq!(mean([Some(1.0), None, Some(0.0)]), Some(0.5));
        assert_eq!(mean([None]), None);
    }
}
