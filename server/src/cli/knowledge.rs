//! `kefu ingest`, `kefu ask`, `kefu eval retrieval` and `kefu eval answers`: the knowledge
//! base from the command line.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kefu_model::{LoadOptions, LoadedModel};
use kefu_rag::RetrievalConfig;
use kefu_rag::chunk::ChunkConfig;
use kefu_rag::fusion::FusionConfig;

use super::common::*;
use crate::evaluate::answers::{self as answer_eval, Selection};
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
    #[command(flatten)]
    pub answers: AnswerArgs,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Recall@k and MRR (document level) of dense, keyword and fused retrieval.
    Retrieval(EvalRetrievalArgs),
    /// Answer quality: each question asked through the server's answer pipeline and scored
    /// against its reference answer (token F1, fact recall, support, abstention).
    Answers(EvalAnswersArgs),
    /// The answer scorer alone: JSON lines with `answer`, `reference` and optionally
    /// `passages` in (a file, or `-` for standard input); token F1, fact recall, support and
    /// abstention out, one JSON line each.
    Score {
        /// The file, or `-` for standard input.
        input: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct EvalAnswersArgs {
    /// Question file: JSON lines with `question` and `answer` (the reference), optionally
    /// `source_doc` (the document that answers it: a question whose document is not in the
    /// knowledge base counts as unanswerable), `id`, `split`, `source`.
    #[arg(long)]
    pub qa: PathBuf,
    #[command(flatten)]
    pub knowledge: KnowledgeArgs,
    /// Chat model: a name (installed or known) or a path [default: the registry's
    /// `production` version, else the default model].
    #[arg(long, conflicts_with = "version")]
    pub model: Option<String>,
    /// A registry version (its sha256, or a unique prefix of at least 8 characters).
    #[arg(long)]
    pub version: Option<String>,
    /// Only records whose `split` is this (e.g. test).
    #[arg(long)]
    pub split: Option<String>,
    /// Only records whose `source` is this (e.g. debian-faq, bitext).
    #[arg(long)]
    pub source: Option<String>,
    /// Ask at most this many questions, drawn with --seed.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write every question with its answer and scores here (JSON lines).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_enum, default_value_t = BadLines::Fail)]
    pub on_bad_line: BadLines,
    /// Retrieval and the abstention decided before generation only (no answers generated):
    /// how the relevance floor splits answerable from unanswerable questions.
    #[arg(long)]
    pub retrieval_only: bool,
    #[command(flatten)]
    pub answers: AnswerArgs,
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

/// `kefu ask`: one question through the server's answer pipeline (abstention included),
/// streamed to standard output with its sources.
pub(super) fn ask(home: &Path, threads: usize, args: &AskArgs) -> Result<()> {
    if args.question.trim().is_empty() {
        bail!("the question is empty");
    }
    let settings = args.answers.settings()?;
    let runtime = runtime()?;
    let (knowledge, retriever) =
        runtime.block_on(open_retriever(home, threads, &args.knowledge))?;
    let path = resolve_model(home, &args.model)?;
    let model = LoadedModel::load(&path, &LoadOptions::default())
        .with_context(|| format!("cannot load the model at {}", path.display()))?;
    let prepared = crate::answering::prepare(
        &knowledge,
        &retriever,
        &model,
        &args.question,
        Default::default(),
        &settings,
    )?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let draft = match prepared.abstention {
        Some(_) => String::new(),
        None => {
            let params = crate::answering::generation_params(&settings);
            model
                .generate(&prepared.prompt, &params, |piece| {
                    out.write_all(piece.as_bytes()).is_ok() && out.flush().is_ok()
                })?
                .text
        }
    };
    if let Some(reason) = crate::answering::review(&prepared, &draft, &settings) {
        if !draft.is_empty() {
            let _ = writeln!(out, "\n\n(not shown to customers: {})", reason.name());
        }
        let _ = write!(out, "{}", prepared.abstention_reply());
    }
    let _ = writeln!(out, "\n\nSources:");
    for citation in &prepared.citations {
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
    let (questions, skipped) =
        crate::evaluate::retrieval::read_questions(&args.qa, args.split.as_deref())?;
    let runtime = runtime()?;
    let (knowledge, retriever) =
        runtime.block_on(open_retriever(home, threads, &args.knowledge))?;
    let config = RetrievalConfig {
        depth: args.depth,
        fusion: FusionConfig { k: args.rrf_k },
        dense_weight: args.dense_weight,
        keyword_weight: args.keyword_weight,
    };
    let report =
        crate::evaluate::retrieval::evaluate(&knowledge, &retriever, &questions, skipped, &config)?;
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

/// The model `kefu eval answers` asks: `--version`, `--model`, else what `kefu serve` would
/// serve (the `production` version, else the default model). Returns its path and a name.
async fn eval_model(
    home: &Path,
    database: &kefu_db::Database,
    args: &EvalAnswersArgs,
) -> Result<(PathBuf, String)> {
    if let Some(wanted) = &args.version {
        if wanted.len() < 8 {
            bail!("--version takes a version id or a prefix of at least 8 characters");
        }
        let versions = database.model_versions().await?;
        let matching: Vec<_> = versions
            .iter()
            .filter(|v| v.id.starts_with(wanted))
            .collect();
        return match matching.as_slice() {
            [version] => Ok((
                kefu_trainer::registry::version_path(home, version),
                format!("version {}", version.id),
            )),
            [] => {
                bail!("no model version `{wanted}` in the registry (`kefu models list` shows them)")
            }
            _ => bail!(
                "`{wanted}` matches {} versions: give more of the id",
                matching.len()
            ),
        };
    }
    if let Some(model) = &args.model {
        return Ok((resolve_model(home, model)?, model.clone()));
    }
    if let Some(production) = database.labelled(kefu_db::PRODUCTION).await? {
        let path = kefu_trainer::registry::version_path(home, &production);
        return Ok((path, format!("production ({})", production.id)));
    }
    Ok((
        resolve_model(home, DEFAULT_MODEL)?,
        DEFAULT_MODEL.to_string(),
    ))
}

pub(super) fn eval_answers(home: &Path, threads: usize, args: &EvalAnswersArgs) -> Result<()> {
    if args.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let settings = args.answers.settings()?;
    let selection = Selection {
        split: args.split.clone(),
        source: args.source.clone(),
        limit: args.limit,
        seed: args.seed,
    };
    let file = answer_eval::read_questions(&args.qa, &selection, args.on_bad_line.rule())?;
    for (line, reason) in &file.bad_lines {
        eprintln!(
            "warning: {} line {line} skipped: {reason}",
            args.qa.display()
        );
    }
    let runtime = runtime()?;
    let (knowledge, retriever) = runtime.block_on(async {
        let knowledge = open_knowledge(home, threads, &args.knowledge).await?;
        let kb = &args.knowledge.kb;
        let Some(id) = knowledge.database.find_knowledge_base(kb).await? else {
            bail!("there is no knowledge base `{kb}`: create it with `kefu ingest PATH --kb {kb}`");
        };
        let retriever = kefu_trainer::knowledge::load_retriever(&knowledge.database, id).await?;
        if retriever.chunks.is_empty() {
            bail!("the knowledge base `{kb}` is empty: add documents with `kefu ingest PATH --kb {kb}`");
        }
        Ok((knowledge, retriever))
    })?;
    let (path, name) = runtime.block_on(eval_model(home, &knowledge.database, args))?;
    let model = LoadedModel::load(&path, &LoadOptions::default())
        .with_context(|| format!("cannot load the model at {}", path.display()))?;
    let generator = crate::generator::Generator::start(
        model,
        name.clone(),
        &crate::generator::GeneratorSettings::single(&name, candle_core::Device::Cpu),
    )?;
    let mut output = match &args.output {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => None,
    };
    let answered = answer_eval::evaluate(
        &knowledge,
        &retriever,
        &generator,
        &file.questions,
        &settings,
        !args.retrieval_only,
        output.as_mut().map(|w| w as &mut dyn Write),
    )?;
    if let Some(mut out) = output {
        out.flush().context("cannot write the answers file")?;
    }
    let summary = answer_eval::summarize(&answered);
    if args.json {
        let mut object = serde_json::Map::new();
        object.insert("model".into(), name.into());
        object.insert("knowledge_base".into(), args.knowledge.kb.clone().into());
        object.insert("without_answer".into(), file.without_answer.into());
        object.insert("bad_lines".into(), file.bad_lines.len().into());
        for (group, figures) in &summary {
            object.insert((*group).into(), figures.to_json());
        }
        println!("{}", serde_json::Value::from(object));
    } else {
        println!(
            "answers on `{}` by {name}: {} questions; {} records without an answer skipped{}",
            args.knowledge.kb,
            answered.len(),
            file.without_answer,
            if file.bad_lines.is_empty() {
                String::new()
            } else {
                format!(", {} bad lines skipped", file.bad_lines.len())
            }
        );
        print!("{}", answer_eval::table(&summary));
        if let Some(path) = &args.output {
            println!("every answer with its scores: {}", path.display());
        }
    }
    runtime.block_on(knowledge.close())
}

pub(super) fn eval_score(input: &Path) -> Result<()> {
    let stdout = std::io::stdout();
    if input == Path::new("-") {
        crate::evaluate::score::score_lines(std::io::stdin().lock(), stdout.lock())?;
    } else {
        let file = std::fs::File::open(input)
            .with_context(|| format!("cannot read {}", input.display()))?;
        crate::evaluate::score::score_lines(std::io::BufReader::new(file), stdout.lock())?;
    }
    Ok(())
}
