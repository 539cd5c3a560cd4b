//! `kefu ingest`: files and folders into a knowledge base: parse, chunk (in the embedder's
//! tokens), store the chunks, embed them into the vector store. A file whose content hash is
//! unchanged is skipped (its vectors are rebuilt if they went missing), a changed one replaces
//! its chunks and vectors, files deleted from an ingested folder are removed with `--prune`,
//! and each file that cannot be read is reported while the rest of the batch goes on.

use std::path::{Path, PathBuf};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use kefu_db::{NewChunk, NewDocument};
use kefu_rag::chunk::{ChunkConfig, chunk_document};
use kefu_rag::parse::{Format, ParseError, parse_bytes};
use sha2::{Digest, Sha256};

use crate::knowledge::Knowledge;

/// What one `ingest` call did.
#[derive(Debug, Default)]
pub struct IngestReport {
    pub added: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// Documents removed because their file is gone (`--prune`).
    pub removed: usize,
    /// Unchanged documents whose missing vectors were rebuilt.
    pub reindexed: usize,
    pub chunks: usize,
    /// Files that could not be ingested, with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

/// Expands folders (recursively, sorted, hidden entries skipped); a missing path is reported.
fn expand(paths: &[PathBuf], report: &mut IngestReport) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>, report: &mut IngestReport) {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                report.failed.push((dir.to_path_buf(), e.to_string()));
                return;
            }
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                walk(&path, out, report);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut files, report);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            report
                .failed
                .push((path.clone(), "no such file or folder".into()));
        }
    }
    files
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// What ingesting one document did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Added {
        chunks: usize,
    },
    Updated {
        chunks: usize,
    },
    /// The same bytes were stored already; `reindexed` when its vectors had to be rebuilt.
    Unchanged {
        reindexed: bool,
    },
}

/// Stores one document's `bytes` under `key` in knowledge base `kb`: unchanged bytes are
/// skipped (their vectors rebuilt if they went missing), new or changed ones are parsed (the
/// format and fallback title come from `name`), chunked, stored and embedded; `force` treats
/// unchanged bytes as changed (re-chunked and re-embedded). The outer error
/// is the database's or the vector store's; the inner one says why the document is unusable.
/// The caller optimizes and flushes the vector store after a batch.
pub async fn ingest_bytes(
    knowledge: &Knowledge,
    kb: i64,
    key: &str,
    name: &Path,
    bytes: &[u8],
    config: &ChunkConfig,
    force: bool,
) -> Result<std::result::Result<Outcome, ParseError>> {
    let database = &knowledge.database;
    if bytes.len() as u64 > kefu_rag::parse::MAX_FILE_BYTES {
        return Ok(Err(ParseError::TooLarge {
            bytes: bytes.len() as u64,
            limit: kefu_rag::parse::MAX_FILE_BYTES,
        }));
    }
    let hash = sha256_hex(bytes);
    let existing = database.document(kb, key).await?;
    if let Some(document) = existing
        .as_ref()
        .filter(|d| d.content_hash == hash && !force)
    {
        // Vectors lost to an interrupted run (or never made by a new embedder) are rebuilt.
        let chunks = database.document_chunks(document.id).await?;
        let reindexed = knowledge.store.count_document(document.id)? != chunks.len();
        if reindexed {
            knowledge.index_chunks(kb, document.id, &chunks)?;
        }
        return Ok(Ok(Outcome::Unchanged { reindexed }));
    }
    let fallback_title = name
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parsed = match Format::of(name).and_then(|f| parse_bytes(bytes, f, &fallback_title)) {
        Ok(parsed) => parsed,
        Err(e) => return Ok(Err(e)),
    };
    let chunks: Vec<NewChunk> = chunk_document(&parsed, config, &knowledge.tokens)
        .into_iter()
        .map(|c| NewChunk {
            heading_path: c.heading_path,
            text: c.text,
            token_count: c.tokens as i64,
        })
        .collect();
    let count = chunks.len();
    let document = NewDocument {
        path: key.to_string(),
        title: parsed.title,
        language: parsed.language.as_str().to_string(),
        content_hash: hash,
        byte_count: bytes.len() as i64,
        chunks,
    };
    let document_id = database.replace_document(kb, &document).await?;
    let stored = database.document_chunks(document_id).await?;
    knowledge.index_chunks(kb, document_id, &stored)?;
    Ok(Ok(if existing.is_some() {
        Outcome::Updated { chunks: count }
    } else {
        Outcome::Added { chunks: count }
    }))
}

/// The key a file is stored under: its canonical path.
fn key_of(file: &Path) -> String {
    std::fs::canonicalize(file)
        .unwrap_or_else(|_| file.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

/// Ingests `paths` into the knowledge base `knowledge_base`; with `prune`, documents stored
/// from inside the given folders whose files no longer exist are removed.
pub async fn ingest(
    knowledge: &Knowledge,
    knowledge_base: &str,
    paths: &[PathBuf],
    config: &ChunkConfig,
    prune: bool,
) -> Result<IngestReport> {
    let database = &knowledge.database;
    let mut report = IngestReport::default();
    let kb = database.knowledge_base(knowledge_base).await?;
    let files = expand(paths, &mut report);
    if prune {
        let folders: Vec<String> = paths
            .iter()
            .filter(|p| p.is_dir())
            .map(|p| format!("{}/", key_of(p).trim_end_matches('/')))
            .collect();
        for document in database.documents(kb).await? {
            let inside = folders
                .iter()
                .any(|f| document.path.starts_with(f.as_str()));
            if inside && !Path::new(&document.path).exists() {
                database.delete_document(kb, &document.path).await?;
                knowledge.store.delete_document(document.id)?;
                report.removed += 1;
            }
        }
    }
    let mut changed = report.removed > 0;
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:12} [{bar:30}] {pos}/{len} files, eta {eta}")
            .expect("progress template is valid")
            .progress_chars("=> "),
    );
    bar.set_message("ingesting");
    for file in files {
        bar.inc(1);
        let key = key_of(&file);
        let bytes = match std::fs::metadata(&file) {
            Ok(meta) if meta.len() > kefu_rag::parse::MAX_FILE_BYTES => {
                let error = ParseError::TooLarge {
                    bytes: meta.len(),
                    limit: kefu_rag::parse::MAX_FILE_BYTES,
                };
                report.failed.push((file, error.to_string()));
                continue;
            }
            _ => match std::fs::read(&file) {
                Ok(bytes) => bytes,
                Err(e) => {
                    report.failed.push((file, e.to_string()));
                    continue;
                }
            },
        };
        match ingest_bytes(knowledge, kb, &key, &file, &bytes, config, false).await? {
            Ok(Outcome::Added { chunks }) => {
                report.added += 1;
                report.chunks += chunks;
                changed = true;
            }
            Ok(Outcome::Updated { chunks }) => {
                report.updated += 1;
                report.chunks += chunks;
                changed = true;
            }
            Ok(Outcome::Unchanged { reindexed }) => {
                report.unchanged += 1;
                if reindexed {
                    report.reindexed += 1;
                    changed = true;
                }
            }
            Err(e) => report.failed.push((file, e.to_string())),
        }
    }
    bar.finish_and_clear();
    if changed {
        // Qdrant builds its search index only when asked.
        knowledge.store.optimize()?;
        knowledge.store.flush()?;
    }
    Ok(report)
}
