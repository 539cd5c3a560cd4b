//! Heading-aware chunking bounded in tokens: sections are cut at sentence boundaries (English
//! `.!?` before a space, Chinese `。！？；`, and paragraph breaks), sentences are packed up to the
//! bound, and consecutive chunks share an overlap of whole sentences.

use serde::{Deserialize, Serialize};

use crate::parse::ParsedDocument;

/// Counts tokens the way the embedder will (its own tokenizer in production).
pub trait TokenCounter {
    fn count(&self, text: &str) -> usize;
}

/// Words and CJK characters: a stand-in count where no tokenizer is at hand.
#[derive(Debug, Clone, Copy, Default)]
pub struct WordCounter;

impl TokenCounter for WordCounter {
    fn count(&self, text: &str) -> usize {
        let mut count = 0;
        let mut in_word = false;
        for c in text.chars() {
            if crate::text::is_cjk(c) {
                count += 1;
                in_word = false;
            } else if c.is_alphanumeric() {
                if !in_word {
                    count += 1;
                }
                in_word = true;
            } else {
                if !c.is_whitespace() {
                    count += 1;
                }
                in_word = false;
            }
        }
        count
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkConfig {
    /// No chunk's text counts more tokens than this.
    pub max_tokens: usize,
    /// Consecutive chunks of a section share up to this many tokens of whole sentences.
    pub overlap_tokens: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            overlap_tokens: 32,
        }
    }
}

/// A piece of a section: `text` is `section.text[start..end]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub section: usize,
    pub heading_path: Vec<String>,
    pub start: usize,
    pub end: usize,
    pub text: String,
    pub tokens: usize,
}

/// Byte ranges of the sentences of `text`, covering it completely (whitespace after a sentence
/// belongs to that sentence).
pub fn sentence_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        let boundary = match c {
            '。' | '！' | '？' | '；' => true,
            '.' | '!' | '?' => next.is_none_or(char::is_whitespace),
            '\n' => next == Some('\n'),
            _ => false,
        };
        if boundary {
            let mut end = i + c.len_utf8();
            while let Some(&(j, n)) = chars.peek() {
                if n.is_whitespace() {
                    end = j + n.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            spans.push((start, end));
            start = end;
        }
    }
    if start < text.len() {
        spans.push((start, text.len()));
    }
    spans
}

/// Splits a span that alone exceeds the bound into pieces within it, cutting after whitespace
/// where possible, else between characters.
fn split_long(
    text: &str,
    (start, end): (usize, usize),
    max: usize,
    counter: &dyn TokenCounter,
) -> Vec<(usize, usize)> {
    let mut pieces = Vec::new();
    let mut from = start;
    while from < end {
        if counter.count(&text[from..end]) <= max {
            pieces.push((from, end));
            break;
        }
        // Largest char boundary `to` with count(from..to) <= max, by binary search.
        let boundaries: Vec<usize> = text[from..end]
            .char_indices()
            .map(|(i, _)| from + i)
            .skip(1)
            .chain(std::iter::once(end))
            .collect();
        let fits = boundaries.partition_point(|&to| counter.count(&text[from..to]) <= max);
        let mut to = if fits == 0 {
            boundaries[0]
        } else {
            boundaries[fits - 1]
        };
        // Prefer cutting after whitespace in the last third of the piece.
        if let Some(space) = text[from..to].rfind(char::is_whitespace)
            && from + space + 1 > from + (to - from) * 2 / 3
        {
            to = from + space + 1;
            while !text.is_char_boundary(to) {
                to += 1;
            }
        }
        pieces.push((from, to));
        from = to;
    }
    pieces
}

/// Cuts every section of `document` into chunks within `config.max_tokens`.
pub fn chunk_document(
    document: &ParsedDocument,
    config: &ChunkConfig,
    counter: &dyn TokenCounter,
) -> Vec<Chunk> {
    let max = config.max_tokens.max(1);
    let mut chunks = Vec::new();
    for (index, section) in document.sections.iter().enumerate() {
        let text = section.text.as_str();
        let units: Vec<(usize, usize)> = sentence_spans(text)
            .into_iter()
            .flat_map(|span| split_long(text, span, max, counter))
            .collect();
        let mut first = 0;
        while first < units.len() {
            let mut last = first;
            while last + 1 < units.len()
                && counter.count(&text[units[first].0..units[last + 1].1]) <= max
            {
                last += 1;
            }
            let (start, end) = (units[first].0, units[last].1);
            let body = &text[start..end];
            chunks.push(Chunk {
                section: index,
                heading_path: section.heading_path.clone(),
                start,
                end,
                text: body.to_string(),
                tokens: counter.count(body),
            });
            if last + 1 >= units.len() {
                break;
            }
            // Step back over whole sentences that fit the overlap, always moving forward.
            let mut next = last + 1;
            while next > first + 1
                && counter.count(&text[units[next - 1].0..units[last].1]) <= config.overlap_tokens
            {
                next -= 1;
            }
            first = next;
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_in_english_and_chinese() {
        let text = "Reset it. Then log in!退款需要三天。请稍等？ok\n\nNew para";
        let spans = sentence_spans(text);
        let pieces: Vec<&str> = spans.iter().map(|&(a, b)| &text[a..b]).collect();
        assert_eq!(
            pieces,
            vec![
                "Reset it. ",
                "Then log in!退款需要三天。",
                "请稍等？",
                "ok\n\n",
                "New para"
            ]
        );
    }

    #[test]
    fn decimals_and_versions_do_not_end_sentences() {
        let text = "Debian 12.4 is out. Version 1.2.3 too.";
        let spans = sentence_spans(text);
        assert_eq!(spans.len(), 2);
    }
}
