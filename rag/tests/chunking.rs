//! Property tests of the chunker against a naive reference: concatenating the chunks of a
//! section without overlap gives the section back character for character, with overlap every
//! character still lands in some chunk, and no chunk exceeds the token bound.

use kefu_rag::chunk::{ChunkConfig, TokenCounter, WordCounter, chunk_document};
use kefu_rag::{Language, ParsedDocument, Section};
use proptest::prelude::*;

/// One token per character: a second, stricter counter (tokenizers differ; the bound must hold
/// for whichever one the embedder uses).
struct CharCounter;

impl TokenCounter for CharCounter {
    fn count(&self, text: &str) -> usize {
        text.chars().count()
    }
}

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Debian".to_string()),
        Just("packages".to_string()),
        Just("install".to_string()),
        Just("apt-get".to_string()),
        Just("12.4".to_string()),
        Just("密码".to_string()),
        Just("退款需要三天".to_string()),
        Just("。".to_string()),
        Just("！".to_string()),
        Just(". ".to_string()),
        Just("? ".to_string()),
        Just(" ".to_string()),
        Just("\n".to_string()),
        Just("\n\n".to_string()),
        Just("😀".to_string()),
        // a long run without any boundary, to force splitting inside a sentence
        "[a-z]{30,90}",
        "[一-龥]{10,40}",
    ]
}

fn section_text() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 1..80).prop_map(|parts| parts.concat())
}

fn document(texts: Vec<String>) -> ParsedDocument {
    ParsedDocument {
        title: "t".into(),
        language: Language::En,
        sections: texts
            .into_iter()
            .enumerate()
            .map(|(i, text)| Section {
                heading_path: vec![format!("h{i}")],
                text,
            })
            .collect(),
    }
}

fn check(doc: &ParsedDocument, config: ChunkConfig, counter: &dyn TokenCounter) {
    let chunks = chunk_document(doc, &config, counter);
    for (index, section) in doc.sections.iter().enumerate() {
        let text = &section.text;
        let mine: Vec<_> = chunks.iter().filter(|c| c.section == index).collect();
        assert!(!mine.is_empty() || text.is_empty());
        let mut covered = 0usize;
        let mut previous_start = None;
        for chunk in &mine {
            assert_eq!(chunk.text, text[chunk.start..chunk.end]);
            assert_eq!(chunk.heading_path, section.heading_path);
            assert!(
                counter.count(&chunk.text) <= config.max_tokens,
                "chunk of {} tokens over the bound {}: {:?}",
                counter.count(&chunk.text),
                config.max_tokens,
                chunk.text
            );
            assert!(chunk.start <= covered, "a gap before byte {}", chunk.start);
            if let Some(p) = previous_start {
                assert!(chunk.start > p, "chunks move forward");
            }
            previous_start = Some(chunk.start);
            covered = covered.max(chunk.end);
        }
        assert_eq!(covered, text.len(), "every character lands in a chunk");
        if config.overlap_tokens == 0 {
            let rebuilt: String = mine.iter().map(|c| c.text.as_str()).collect();
            assert_eq!(&rebuilt, text, "without overlap the chunks are the section");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn chunks_cover_the_text_and_respect_the_bound(
        texts in prop::collection::vec(section_text(), 1..4),
        max in 3usize..60,
        overlap_fraction in 0usize..3,
    ) {
        let doc = document(texts);
        let config = ChunkConfig { max_tokens: max, overlap_tokens: max * overlap_fraction / 4 };
        check(&doc, config, &WordCounter);
        check(&doc, config, &CharCounter);
        check(&doc, ChunkConfig { max_tokens: max, overlap_tokens: 0 }, &CharCounter);
    }
}
