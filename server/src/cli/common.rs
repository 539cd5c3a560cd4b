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
    #[arg(long, env = "KEFU_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Embedding model: a known name (fetched on first use) or a folder with model.onnx.
    #[arg(long, env = "KEFU_EMBEDDER", default_value = catalog::DEFAULT_EMBEDDER)]
    pub embedder: String,
    /// A Qdrant server's gRPC URL (e.g. http://localhost:6334) instead of the in-process store.
    #[arg(long, env = "KEFU_QDRANT_URL")]
    pub qdrant_url: Option<String>,
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
        .with_context(|| format!("cannot open the database {url}"))
}
