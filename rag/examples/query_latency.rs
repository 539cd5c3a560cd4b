//! Query latency at scale for `benches/query_latency.sh`: embeds the real chunks of a
//! knowledge-base folder, grows them to N points (each further point a real chunk's vector with
//! a little noise, its text repeated) in the in-process Qdrant store and a BM25 index, builds
//! the HNSW index, then times every question of the QA files (embed the question, vector
//! search, keyword search, fusion) and prints the percentiles as JSON.
//!
//! cargo run --release -p rag --example query_latency -- KB_DIR MODEL_DIR RUNTIME N QA.jsonl...

use std::path::{Path, PathBuf};
use std::time::Instant;

use kefu_rag::chunk::{ChunkConfig, chunk_document};
use kefu_rag::embed::{Embedder, EmbedderOptions, EmbedderSpec, EmbedderTokens};
use kefu_rag::fusion::{FusionConfig, reciprocal_rank_fusion};
use kefu_rag::keyword::{Bm25Config, KeywordIndex};
use kefu_rag::parse::parse_file;
use kefu_rag::vector::{EdgeStore, VectorPoint, VectorStore};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files_under(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
    Ok(())
}

/// A small deterministic pseudo-random sequence (xorshift), so runs are repeatable.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kb, model, runtime, n, qa @ ..] = args.as_slice() else {
        return Err("usage: query_latency KB_DIR MODEL_DIR RUNTIME N QA.jsonl...".into());
    };
    let n: usize = n.parse()?;
    let model = Path::new(model);
    let spec = EmbedderSpec::for_model("multilingual-e5-small").ok_or("unknown model")?;
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
    let dimension = spec.dimension;
    let embedder = Embedder::start(model, Path::new(runtime), spec, EmbedderOptions::default())?;
    let started = Instant::now();
    let real = embedder.embed_passages(&texts)?;
    let embed_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "embedded {} real chunks in {embed_seconds:.1}s ({:.1} chunks/s)",
        real.len(),
        real.len() as f64 / embed_seconds
    );

    let dir = tempfile::tempdir()?;
    let store = EdgeStore::open(&dir.path().join("vectors"), dimension)?;
    let mut keyword = KeywordIndex::new(Bm25Config::default());
    let mut noise = Noise(0x9e3779b97f4a7c15);
    let started = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    for i in 0..n {
        let base = &real[i % real.len()];
        let vector: Vec<f32> = if i < real.len() {
            base.clone()
        } else {
            let v: Vec<f32> = base.iter().map(|x| x + 0.02 * noise.next()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect()
        };
        keyword.add(&texts[i % texts.len()]);
        batch.push(VectorPoint {
            id: i as u64 + 1,
            vector,
            knowledge_base_id: 1,
            document_id: (i / 20) as i64,
            language: "en".into(),
        });
        if batch.len() == 1000 {
            store.upsert(&batch)?;
            batch.clear();
        }
    }
    store.upsert(&batch)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    store.optimize()?;
    let optimize_seconds = started.elapsed().as_secs_f64();
    eprintln!("{n} points stored in {load_seconds:.1}s, HNSW built in {optimize_seconds:.1}s");

    let mut questions = Vec::new();
    for file in qa {
        for line in std::fs::read_to_string(file)?.lines() {
            let record: serde_json::Value = serde_json::from_str(line)?;
            if record["source_doc"].is_string() {
                questions.push(record["question"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    // Warm-up.
    for q in questions.iter().take(10) {
        embedder.embed_query(q)?;
    }
    let (mut total, mut embed, mut search, mut bm25) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Each question four times, so the 99th percentile rests on about ten samples.
    for q in questions
        .iter()
        .chain(&questions)
        .chain(&questions)
        .chain(&questions)
    {
        let t0 = Instant::now();
        let vector = embedder.embed_query(q)?;
        let t1 = Instant::now();
        let dense: Vec<u64> = store.search(&vector, 1, 50)?.iter().map(|h| h.id).collect();
        let t2 = Instant::now();
        let words: Vec<u64> = keyword
            .search(q, 50)
            .iter()
            .map(|(i, _)| u64::from(*i) + 1)
            .collect();
        let fused = reciprocal_rank_fusion(
            &[(&dense[..], 1.0), (&words[..], 1.0)],
            FusionConfig::default(),
        );
        let t3 = Instant::now();
        assert!(!fused.is_empty());
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
        total.push(ms(t0, t3));
        embed.push(ms(t0, t1));
        search.push(ms(t1, t2));
        bm25.push(ms(t2, t3));
    }
    for v in [&mut total, &mut embed, &mut search, &mut bm25] {
        v.sort_by(f64::total_cmp);
    }
    let stats = |v: &[f64]| serde_json::json!({"p50_ms": percentile(v, 50.0), "p99_ms": percentile(v, 99.0)});
    println!(
        "{}",
        serde_json::json!({
            "points": n,
            "real_chunks": real.len(),
            "queries": total.len(),
            "embed_chunks_per_second": real.len() as f64 / embed_seconds,
            "hnsw_build_seconds": optimize_seconds,
            "total": stats(&total),
            "embed_query": stats(&embed),
            "vector_search": stats(&search),
            "keyword_and_fusion": stats(&bm25),
        })
    );
    Ok(())
}
