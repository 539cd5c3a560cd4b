//! Tokenizers rebuilt from GGUF metadata give the same ids as the reference converter
//! (transformers' GGUF tokenizer conversion; `fixtures/make_tokenizer_ids.py` made the fixture)
//! on mixed English / Chinese / digits / emoji / code text, for byte-level BPE (SmolLM2, Qwen2.5)
//! and SentencePiece (Gemma 3) vocabularies.

mod common;

use std::path::PathBuf;

use kefu_model::gguf::GgufFile;

fn check(model: &str, path: PathBuf) {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/tokenizer_ids.json")).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let tokenizer = kefu_model::tokenizer::from_gguf_metadata(file.metadata()).unwrap();
    let cases = fixture[model].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids, expected, "{model}: {text:?}");
        // Decoding gives the text back (specials included when not skipped).
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), text, "{model}");
    }
}

#[test]
fn smollm2_tokenizer_matches_the_reference() {
    check("smollm2-135m-instruct", common::small_model_path());
}

#[test]
fn qwen2_tokenizer_matches_the_reference() {
    check(
        "qwen2.5-coder-0.5b-instruct",
        common::model_path("qwen2.5-coder-0.5b-instruct"),
    );
}

/// Gemma 3's SentencePiece vocabulary (pieces with scores, no merges): merges rebuilt from the
/// scores, user-defined runs of spaces and newlines matched whole, bytes for the rest.
#[test]
fn gemma3_tokenizer_matches_the_reference() {
    check("gemma3-270m", common::model_path("gemma3-270m"));
}
