//! What the command groups share: the knowledge-base flags, the database URL, a runtime for
//! the async parts, opening the knowledge base.

use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::Args;
use kefu_rag::Retriever;

use crate::knowledge::{Knowledge, KnowledgeOptions};
use crate::models::catalog::{self};

/// Where the knowledge base lives.
#[derive(Debug, Args)]
pub struct KnowledgeArgs {
    /// Knowledge base (created on first use).
    #[arg(long, default_value = "default")]
    pub kb: String,
    /// Database: sqlite://PATH or postgres://... (default: kefu.db in the data directory).
    #[arg(long, env = "KEFU_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Embedding model: a known name (fetched on first use) or a folder with model.onnx.
    #[arg(long, env = "KEFU_EMBEDDER", default_value = catalog::DEFAULT_EMBEDDER)]
    pub embedder: String,
    /// A Qdrant server's gRPC URL (e.g. http://localhost:6334) instead of the in-process store.
    #[arg(long, env = "KEFU_QDRANT_URL")]
    pub qdrant_url: Option<String>,
}

/// What a command does with a line of a data file it cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BadLines {
    /// Report bad lines and go on.
    Skip,
    /// Stop at the first bad line.
    Fail,
}

impl BadLines {
    pub fn rule(self) -> kefu_trainer::data::OnBadLine {
        match self {
            Self::Skip => kefu_trainer::data::OnBadLine::Skip,
            Self::Fail => kefu_trainer::data::OnBadLine::Fail,
        }
    }
}

/// How answers are built (`kefu serve` and `kefu eval answers` share them, so an evaluation
/// measures what the server does).
#[derive(Debug, Args)]
pub struct AnswerArgs {
    /// Passages given to the model at most.
    #[arg(long, env = "KEFU_PASSAGES", default_value_t = 4)]
    pub passages: usize,
    /// Prompt budget in the chat model's tokens (instructions, passages, question).
    #[arg(long, env = "KEFU_CONTEXT_TOKENS", default_value_t = 1536)]
    pub context_tokens: usize,
    /// Budget of a conversation's earlier turns in the prompt (oldest dropped first).
    #[arg(long, env = "KEFU_HISTORY_TOKENS", default_value_t = 512)]
    pub history_tokens: usize,
    /// Longest answer, in tokens.
    #[arg(long, env = "KEFU_MAX_TOKENS", default_value_t = 256)]
    pub max_tokens: usize,
    /// Abstain ("I don't have that information") when less than this share of an answer's
    /// content terms is found in its passages; 0 turns the check off.
    #[arg(long, env = "KEFU_MIN_SUPPORT", default_value_t = 0.5)]
    pub min_support: f64,
    /// Generate even when no passage resembles the question (by default the assistant then
    /// abstains without generating).
    #[arg(long, env = "KEFU_ANSWER_UNRELATED")]
    pub answer_unrelated: bool,
}

impl AnswerArgs {
    /// The settings, or a clear error for values that cannot work.
    pub fn settings(&self) -> Result<crate::answering::AnswerSettings> {
        if self.passages == 0 || self.max_tokens == 0 || self.context_tokens < 64 {
            bail!(
                "--passages and --max-tokens must be at least 1 and --context-tokens at least 64"
            );
        }
        if !(0.0..=1.0).contains(&self.min_support) {
            bail!("--min-support is a share between 0 and 1");
        }
        Ok(crate::answering::AnswerSettings {
            passages: self.passages,
            context_tokens: self.context_tokens,
            history_tokens: self.history_tokens,
            max_tokens: self.max_tokens,
            abstain_unrelated: !self.answer_unrelated,
            min_support: self.min_support,
        })
    }
}

/// The database URL: the flag or variable, else the SQLite file in the data directory.
pub fn database_url(home: &Path, flag: Option<&str>) -> Result<String> {
    if let Some(url) = flag {
        return Ok(url.to_string());
    }
    std::fs::create_dir_all(home)
        .with_context(|| format!("cannot create the data directory {}", home.display()))?;
    Ok(format!("sqlite://{}", home.join("kefu.db").display()))
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub(super) async fn open_knowledge(
    home: &Path,
    threads: usize,
    args: &KnowledgeArgs,
) -> Result<Knowledge> {
    let url = database_url(home, args.database_url.as_deref())?;
    let options = KnowledgeOptions {
        embedder: args.embedder.clone(),
        threads,
        qdrant_url: args.qdrant_url.clone(),
    };
    Knowledge::open(home, &url, &options).await
}

/// The knowledge base `args.kb`, ready to search; an empty one is an error.
pub(super) async fn open_retriever(
    home: &Path,
    threads: usize,
    args: &KnowledgeArgs,
) -> Result<(Knowledge, Retriever)> {
    let knowledge = open_knowledge(home, threads, args).await?;
    let kb = &args.kb;
    let id = knowledge.database.knowledge_base(kb).await?;
    let retriever = kefu_trainer::knowledge::load_retriever(&knowledge.database, id).await?;
    if retriever.chunks.is_empty() {
        bail!(
            "the knowledge base `{kb}` is empty: add documents with `kefu ingest PATH --kb {kb}`"
        );
    }
    Ok((knowledge, retriever))
}

pub(super) async fn connect(home: &Path, flag: Option<&str>) -> Result<kefu_db::Database> {
    let url = database_url(home, flag)?;
    kefu_db::Database::connect(&url)
        .await
        .with_context(|| format!("cannot open the database {}", kefu_db::redact_url(&url)))
}

/// Which feedback becomes training data (`--feedback-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FeedbackPolicy {
    /// Agents' ratings and corrections count at once; a customer's thumbs once an agent or
    /// admin accepts them in the feedback inbox.
    #[default]
    Review,
    /// As review, and customers' unreviewed thumbs also make preference pairs (never SFT).
    PairsOnly,
    /// Every rating counts at once (a trusted internal deployment).
    All,
}

impl From<FeedbackPolicy> for kefu_trainer::dataset::Policy {
    fn from(policy: FeedbackPolicy) -> Self {
        match policy {
            FeedbackPolicy::Review => Self::Review,
            FeedbackPolicy::PairsOnly => Self::PairsOnly,
            FeedbackPolicy::All => Self::All,
        }
    }
}
