//! Embedding throughput for `benches/embed_vs_fastembed_python.sh`: chunks the knowledge-base
//! folder given, writes the chunk texts as JSON (so the Python peer embeds the very same
//! texts), embeds them with Kefu's embedder and prints `texts`, `seconds`, `texts_per_second`.
//!
//! cargo run --release -p rag --example embed_throughput -- KB_DIR MODEL_DIR RUNTIME THREADS OUT.json

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
    let [kb, model, runtime, threads, out] = args.as_slice() else {
        return Err("usage: embed_throughput KB_DIR MODEL_DIR RUNTIME THREADS OUT.json".into());
    };
    let model = Path::new(model);
    let tokens = EmbedderTokens::load(model)?;
    let mut files = Vec::new();
    files_under(Path::new(kb), &mut files)?;
    files.sort();
    let mut texts = Vec::new();
    for file in files {
        let doc = parse_file(&file)?;
        for chunk in chunk_document(&doc, &ChunkConfig::default(), &tokens) {
            texts.push(chunk.text);
        }
    }
    std::fs::write(out, serde_json::to_string(&texts)?)?;
    let options = EmbedderOptions {
        threads: threads.parse()?,
        ..EmbedderOptions::default()
    };
    let spec = EmbedderSpec::for_model("all-minilm-l6-v2").ok_or("unknown model")?;
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
