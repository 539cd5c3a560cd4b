//! Embedding throughput for `benches/embed_vs_fastembed_python.sh`: chunks the knowledge-base
//! folder given, writes the texts as the model sees them (with the model's passage prefix) as
//! JSON, so the Python peer embeds the very same input, embeds the chunks with Kefu's embedder
//! and prints `texts`, `seconds`, `texts_per_second`.
//!
//! cargo run --release -p rag --example embed_throughput -- KB_DIR MODEL_NAME MODEL_DIR RUNTIME THREADS OUT.json

use std::path::{Path, PathBuf};
use std::time::Instant;

use kefu_rag::chunk::{ChunkConfig, chunk_document};
use kefu_rag::embed::{Embedder, EmbedderOptions, EmbedderSpec, EmbedderTokens};
use kefu_rag::parse::parse_file;

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files_under(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kb, name, model, runtime, threads, out] = args.as_slice() else {
        return Err(
            "usage: embed_throughput KB_DIR MODEL_NAME MODEL_DIR RUNTIME THREADS OUT.json".into(),
        );
    };
    let spec = EmbedderSpec::for_model(name).ok_or("unknown model")?;
    let model = Path::new(model);
    let tokens = EmbedderTokens::load(model)?;
    let mut files = Vec::new();
    files_under(Path::new(kb), &mut files)?;
    files.sort();
    let mut texts = Vec::new();
    for file in files {
        // Documents only (the folder may also hold an index or question files).
        let Ok(doc) = parse_file(&file) else {
            continue;
        };
        for chunk in chunk_document(&doc, &ChunkConfig::default(), &tokens) {
            texts.push(chunk.text);
        }
    }
    // At most MAX_TEXTS (default 800) texts, evenly spread over the folder's documents.
    let max: usize = std::env::var("MAX_TEXTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(800);
    if texts.len() > max {
        let step = texts.len() as f64 / max as f64;
        texts = (0..max)
            .map(|i| texts[(i as f64 * step) as usize].clone())
            .collect();
    }
    let prefixed: Vec<String> = texts
        .iter()
        .map(|t| format!("{}{t}", spec.passage_prefix))
        .collect();
    std::fs::write(out, serde_json::to_string(&prefixed)?)?;
    let options = EmbedderOptions {
        threads: threads.parse()?,
        ..EmbedderOptions::default()
    };
    let embedder = Embedder::start(model, Path::new(runtime), spec, options)?;
    embedder.embed_passages(&texts[..texts.len().min(32)])?; // warm-up
    let started = Instant::now();
    let vectors = embedder.embed_passages(&texts)?;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(vectors.len(), texts.len());
    println!(
        "{{\"texts\": {}, \"seconds\": {seconds:.3}, \"texts_per_second\": {:.1}}}",
        texts.len(),
        texts.len() as f64 / seconds
    );
    Ok(())
}
