//! `kefu ingest`, `kefu ask` and `kefu eval retrieval`: the knowledge base from the command
//! line.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kefu_model::generate::GenerationParams;
use kefu_model::sampling::SamplingConfig;
use kefu_model::{LoadOptions, LoadedModel};
use kefu_rag::RetrievalConfig;
use kefu_rag::chunk::ChunkConfig;
use kefu_rag::fusion::FusionConfig;

use super::common::*;
use crate::models::catalog::DEFAULT_MODEL;
use crate::models::resolve_model;

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Files and folders to ingest.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub knowledge: KnowledgeArgs,
    /// Remove documents ingested from these folders whose files no longer exist.
    #[arg(long)]
    pub prune: bool,
    /// Largest chunk, in the embedder's tokens.
    #[arg(long, default_value_t = 256)]
    pub chunk_tokens: usize,
    /// Tokens of whole sentences repeated between consecutive chunks.
    #[arg(long, default_value_t = 32)]
    pub overlap_tokens: usize,
}

#[derive(Debug, Args)]
pub struct AskArgs {
    /// The question.
    pub question: String,
    #[command(flatten)]
    pub knowledge: KnowledgeArgs,
    /// Chat model: a name (installed or known) or a path.
    #[arg(long, env = "KEFU_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Passages given to the model at most.
    #[arg(long, default_value_t = 4)]
    pub passages: usize,
    /// Prompt budget in the chat model's tokens (instructions, passages, question).
    #[arg(long, default_value_t = 1536)]
    pub context_tokens: usize,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.1)]
    pub repetition_penalty: f32,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Recall@k and MRR (document level) of dense, keyword and fused retrieval.
    Retrieval(EvalRetrievalArgs),
}

#[derive(Debug, Args)]
pub struct EvalRetrievalArgs {
    /// Question file: JSON lines with `question` and `source_doc` (a path suffix of the
    /// ingested file that answers it); records without `source_doc` are skipped and counted.
    #[arg(long)]
    pub qa: PathBuf,
    #[command(flatten)]
    pub knowledge: KnowledgeArgs,
    /// Only records whose `split` is this (e.g. test).
    #[arg(long)]
    pub split: Option<String>,
    /// Cut-offs for recall.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    pub k: Vec<usize>,
    /// Candidates each retriever contributes before fusion.
    #[arg(long, default_value_t = 50)]
    pub depth: usize,
    /// Reciprocal-rank fusion constant.
    #[arg(long, default_value_t = 60.0)]
    pub rrf_k: f64,
    /// Weight of the dense ranking in fusion.
    #[arg(long, default_value_t = 1.0)]
    pub dense_weight: f64,
    /// Weight of the keyword ranking in fusion.
    #[arg(long, default_value_t = 1.0)]
    pub keyword_weight: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn ingest(home: &Path, threads: usize, args: &IngestArgs) -> Result<()> {
    if args.chunk_tokens < 16 || args.overlap_tokens >= args.chunk_tokens {
        bail!("--chunk-tokens must be at least 16 and larger than --overlap-tokens");
    }
    let config = ChunkConfig {
        max_tokens: args.chunk_tokens,
        overlap_tokens: args.overlap_tokens,
    };
    let report = runtime()?.block_on(async {
        let knowledge = open_knowledge(home, threads, &args.knowledge).await?;
        let report = crate::ingest::ingest(
            &knowledge,
            &args.knowledge.kb,
            &args.paths,
            &config,
            args.prune,
        )
        .await;
        knowledge.close().await?;
        report
    })?;
    for (path, reason) in &report.failed {
        eprintln!("error: {}: {reason}", path.display());
    }
    println!(
        "knowledge base `{}`: {} added, {} updated, {} unchanged, {} removed, {} failed; \
         {} chunks written{}",
        args.knowledge.kb,
        report.added,
        report.updated,
        report.unchanged,
        report.removed,
        report.failed.len(),
        report.chunks,
        if report.reindexed > 0 {
            format!("; vectors rebuilt for {} documents", report.reindexed)
        } else {
            String::new()
        }
    );
    if !report.failed.is_empty() {
        bail!(
            "{} of the files could not be ingested (the others were)",
            report.failed.len()
        );
    }
    Ok(())
}

pub(super) fn ask(home: &Path, threads: usize, args: &AskArgs) -> Result<()> {
    if args.question.trim().is_empty() {
        bail!("the question is empty");
    }
    let runtime = runtime()?;
    let (knowledge, retriever) =
        runtime.block_on(open_retriever(home, threads, &args.knowledge))?;
    let ranked = knowledge.search(&retriever, &args.question, &RetrievalConfig::default())?;
    let path = resolve_model(home, &args.model)?;
    let model = LoadedModel::load(&path, &LoadOptions::default())
        .with_context(|| format!("cannot load the model at {}", path.display()))?;
    let (prompt, messages) = kefu_trainer::knowledge::grounded(
        &model,
        &retriever,
        &ranked,
        &args.question,
        args.passages,
        args.context_tokens,
    )?;
    let ids = model.chat_prompt(&messages)?;
    let params = GenerationParams {
        sampling: SamplingConfig {
            temperature: args.temperature,
            repetition_penalty: args.repetition_penalty,
            ..SamplingConfig::default()
        },
        max_tokens: args.max_tokens,
        stop: Vec::new(),
        ignore_eos: false,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    model.generate(&ids, &params, |piece| {
        out.write_all(piece.as_bytes()).is_ok() && out.flush().is_ok()
    })?;
    let _ = writeln!(out, "\n\nSources:");
    for citation in &prompt.citations {
        let _ = writeln!(out, "{}", citation.line());
    }
    runtime.block_on(knowledge.close())
}

pub(super) fn eval_retrieval(home: &Path, threads: usize, args: &EvalRetrievalArgs) -> Result<()> {
    if args.k.is_empty() || args.k.contains(&0) {
        bail!("--k takes cut-offs of 1 or more, like 1,5,10");
    }
    if args.depth == 0 || args.rrf_k < 0.0 || args.dense_weight < 0.0 || args.keyword_weight < 0.0 {
        bail!("--depth must be positive and --rrf-k and the weights must not be negative");
    }
    let (questions, skipped) = crate::evaluate::read_questions(&args.qa, args.split.as_deref())?;
    let runtime = runtime()?;
    let (knowledge, retriever) =
        runtime.block_on(open_retriever(home, threads, &args.knowledge))?;
    let config = RetrievalConfig {
        depth: args.depth,
        fusion: FusionConfig { k: args.rrf_k },
        dense_weight: args.dense_weight,
        keyword_weight: args.keyword_weight,
    };
    let report = crate::evaluate::evaluate(&knowledge, &retriever, &questions, skipped, &config)?;
    let mut k = args.k.clone();
    k.sort_unstable();
    k.dedup();
    if args.json {
        println!("{}", report.to_json(&k));
    } else {
        println!(
            "retrieval on `{}` ({}): {} questions; {} records without source_doc skipped; \
             {} whose source is not ingested",
            args.knowledge.kb,
            knowledge.embedder_name,
            report.questions,
            report.skipped,
            report.source_missing
        );
        print!("{}", report.to_table(&k));
    }
    runtime.block_on(knowledge.close())
}
