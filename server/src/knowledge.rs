//! The knowledge base at run time: the database (documents, chunks, citations), the embedder
//! (fetched with ONNX Runtime on first use) and the vector store; `rag`'s retriever searches
//! them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kefu_db::{Database, StoredChunk};
use kefu_rag::embed::{Embedder, EmbedderOptions, EmbedderSpec, EmbedderTokens};
use kefu_rag::retrieve::indexed_text;
use kefu_rag::vector::{EdgeStore, QdrantServerStore, VectorPoint, VectorStore};
use kefu_rag::{Ranked, RetrievalConfig, Retriever};

use crate::models::catalog::{self, ONNX_RUNTIME};
use crate::models::fetch::{self, Fetcher, Sources};

/// Where the embedder and ONNX Runtime come from.
#[derive(Debug, Clone)]
pub struct KnowledgeOptions {
    /// Embedding model: a catalog name (fetched on first use) or a folder.
    pub embedder: String,
    /// Threads for the embedder (0 = one per CPU).
    pub threads: usize,
    /// A Qdrant server (gRPC URL) instead of the in-process store.
    pub qdrant_url: Option<String>,
}

impl Default for KnowledgeOptions {
    fn default() -> Self {
        Self {
            embedder: catalog::DEFAULT_EMBEDDER.into(),
            threads: 0,
            qdrant_url: None,
        }
    }
}

/// The embedding model's folder, fetched when it is a known name not installed yet.
fn embedder_dir(home: &Path, name: &str) -> Result<(String, PathBuf)> {
    let path = Path::new(name);
    if path.join("model.onnx").exists() {
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "embedder".into());
        return Ok((label, path.to_path_buf()));
    }
    let Some(entry) = catalog::find(name).filter(|e| e.kind == catalog::Kind::Embedder) else {
        let known: Vec<&str> = catalog::CATALOG
            .iter()
            .filter(|e| e.kind == catalog::Kind::Embedder)
            .map(|e| e.name)
            .collect();
        bail!(
            "`{name}` is not an embedding model Kefu knows ({}) nor a folder with model.onnx",
            known.join(", ")
        );
    };
    let dir = home.join("models").join(entry.name);
    let ready = fetch::installed_path(&home.join("models"), entry.name).is_some()
        && dir.join("model.onnx").exists();
    if !ready {
        eprintln!("{} is not installed yet; fetching it first.", entry.name);
        Fetcher::new(home, Sources::from_env()).fetch_entry(entry)?;
    }
    Ok((entry.name.to_string(), dir))
}

/// ONNX Runtime: `KEFU_ONNXRUNTIME`, else the data directory's copy, fetched on first use.
pub fn onnx_runtime(home: &Path) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("KEFU_ONNXRUNTIME") {
        return Ok(PathBuf::from(path));
    }
    let library = home
        .join("models")
        .join(ONNX_RUNTIME)
        .join("libonnxruntime.so");
    if !library.exists() {
        eprintln!("ONNX Runtime is not installed yet; fetching it first.");
        let entry = catalog::find(ONNX_RUNTIME).expect("the catalog lists ONNX Runtime");
        Fetcher::new(home, Sources::from_env()).fetch_entry(entry)?;
    }
    Ok(library)
}

/// Database, embedder and vector store of one data directory.
pub struct Knowledge {
    pub database: Database,
    pub embedder: Embedder,
    pub tokens: EmbedderTokens,
    pub store: Box<dyn VectorStore>,
    pub embedder_name: String,
    /// The embedder's settings, its calibrated relevance floors included.
    pub spec: EmbedderSpec,
}

impl std::fmt::Debug for Knowledge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Knowledge")
            .field("embedder", &self.embedder_name)
            .finish()
    }
}

impl Knowledge {
    /// Opens the database at `database_url`, starts the embedder and opens the vector store:
    /// `vectors/<embedder>` in the data directory, or the collection `kefu_<embedder>` on a
    /// Qdrant server (vectors of different models never mix).
    pub async fn open(home: &Path, database_url: &str, options: &KnowledgeOptions) -> Result<Self> {
        let database = Database::connect(database_url).await.with_context(|| {
            format!(
                "cannot open the database {}",
                kefu_db::redact_url(database_url)
            )
        })?;
        let (name, dir) = embedder_dir(home, &options.embedder)?;
        let spec = EmbedderSpec::for_model(&name).unwrap_or(EmbedderSpec {
            query_prefix: String::new(),
            passage_prefix: String::new(),
            mean_pooling: true,
            max_length: 512,
            dimension: 384,
            // An unknown model's similarities are uncalibrated: never abstain on them.
            min_relevance: -1.0,
            min_relevance_zh: -1.0,
        });
        let relevance = spec.clone();
        let runtime = onnx_runtime(home)?;
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let embedder_options = EmbedderOptions {
            threads,
            ..EmbedderOptions::default()
        };
        let dimension = spec.dimension;
        let embedder = Embedder::start(&dir, &runtime, spec, embedder_options)?;
        let tokens = EmbedderTokens::load(&dir)?;
        let store: Box<dyn VectorStore> = match &options.qdrant_url {
            Some(url) => {
                let collection = format!(
                    "kefu_{}",
                    name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                );
                Box::new(QdrantServerStore::connect(url, &collection, dimension)?)
            }
            None => {
                let store_dir = home.join("vectors").join(&name);
                let store = EdgeStore::open(&store_dir, dimension).map_err(|e| {
                    // The in-process store is one process's at a time (the lock's error is
                    // deep in the chain).
                    let e = anyhow::Error::new(e);
                    let busy = format!("{e:#}").contains("WouldBlock");
                    e.context(if busy {
                        format!(
                            "cannot open the vector store {}: another kefu process (a running \
                             `kefu serve`?) has it open; stop that process, or ask the running \
                             server through its API",
                            store_dir.display()
                        )
                    } else {
                        format!("cannot open the vector store {}", store_dir.display())
                    })
                })?;
                Box::new(store)
            }
        };
        Ok(Self {
            database,
            embedder,
            tokens,
            store,
            embedder_name: name,
            spec: relevance,
        })
    }

    /// Embeds a document's stored chunks and replaces its vectors.
    pub fn index_chunks(
        &self,
        knowledge_base_id: i64,
        document_id: i64,
        chunks: &[StoredChunk],
    ) -> Result<()> {
        // Old vectors go first: if embedding fails, the count check of the next run sees the
        // document unindexed and rebuilds it.
        self.store.delete_document(document_id)?;
        let texts: Vec<String> = chunks
            .iter()
            .map(|c| indexed_text(&c.title, &c.heading_path, &c.text))
            .collect();
        let vectors = if texts.is_empty() {
            Vec::new()
        } else {
            self.embedder.embed_passages(&texts)?
        };
        let points: Vec<VectorPoint> = chunks
            .iter()
            .zip(vectors)
            .map(|(chunk, vector)| VectorPoint {
                id: chunk.id as u64,
                vector,
                knowledge_base_id,
                document_id,
                language: chunk.language.clone(),
            })
            .collect();
        if !points.is_empty() {
            self.store.upsert(&points)?;
        }
        Ok(())
    }

    /// Dense, keyword and fused rankings of `query` in `retriever`'s knowledge base.
    pub fn search(
        &self,
        retriever: &Retriever,
        query: &str,
        config: &RetrievalConfig,
    ) -> Result<Ranked> {
        Ok(retriever.search(&self.embedder, self.store.as_ref(), query, config)?)
    }

    pub async fn close(self) -> Result<()> {
        self.store.flush()?;
        self.database.close().await;
        Ok(())
    }
}
