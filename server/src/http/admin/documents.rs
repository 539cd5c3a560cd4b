//! Admin routes for knowledge bases and their documents: list, upload (kept under
//! `uploads/`), delete, re-ingest from the upload copy or the ingested file.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::error::ApiError;
use crate::http::guard::Admin;
use crate::http::state::AppState;
use crate::ingest::Outcome;

/// Bytes of a request body, or the reason it could not be read.
type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

pub async fn list_knowledge_bases(
    State(state): State<Arc<AppState>>,
    _: Admin,
) -> Result<Json<Value>, ApiError> {
    let bases = state
        .database
        .knowledge_bases()
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "knowledge_bases": bases.iter().map(|(id, name, documents)| json!({
            "id": id, "name": name, "documents": documents,
        })).collect::<Vec<_>>(),
    })))
}

pub(crate) fn check_kb_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(ApiError::bad_request(
            "invalid_knowledge_base",
            "a knowledge base name has 1 to 200 characters",
        ));
    }
    Ok(())
}

/// The knowledge base `name`, which must exist.
pub(crate) async fn existing_kb(state: &AppState, name: &str) -> Result<i64, ApiError> {
    check_kb_name(name)?;
    state
        .database
        .find_knowledge_base(name)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::not_found(
                "knowledge_base_not_found",
                format!("there is no knowledge base `{name}`"),
            )
        })
}

pub async fn list_documents(
    State(state): State<Arc<AppState>>,
    _: Admin,
    Path(kb): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let kb_id = existing_kb(&state, &kb).await?;
    let documents = state
        .database
        .documents(kb_id)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "knowledge_base": kb,
        "documents": documents.iter().map(|d| json!({
            "id": d.id, "path": d.path, "title": d.title, "language": d.language,
            "bytes": d.byte_count, "sha256": d.content_hash,
        })).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    name: Option<String>,
}

/// Uploaded documents are stored under this key; their bytes are kept in the data directory.
pub(crate) const UPLOAD_PREFIX: &str = "upload:";

pub(crate) fn upload_file(state: &AppState, kb_id: i64, name: &str) -> PathBuf {
    state
        .config
        .data_dir
        .join("uploads")
        .join(kb_id.to_string())
        .join(name)
}

/// Where a stored document's bytes are read from again: its upload copy or its file.
pub(crate) fn source_of(state: &AppState, kb_id: i64, path: &str) -> PathBuf {
    match path.strip_prefix(UPLOAD_PREFIX) {
        Some(rest) => {
            let name = rest.rsplit('/').next().unwrap_or(rest);
            upload_file(state, kb_id, name)
        }
        None => PathBuf::from(path),
    }
}

/// Parses, chunks and embeds one document inside a request, and drops the knowledge base's
/// cached retriever so the next question sees the change.
pub(crate) async fn ingest_in_request(
    state: &AppState,
    kb_id: i64,
    key: &str,
    name: &str,
    bytes: &[u8],
    force: bool,
) -> Result<Outcome, ApiError> {
    let knowledge = state.knowledge.clone();
    let config = kefu_rag::chunk::ChunkConfig::default();
    // Embedding waits on the embedder's thread: keep it off the async workers' schedule.
    let outcome = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            let outcome = crate::ingest::ingest_bytes(
                &knowledge,
                kb_id,
                key,
                FsPath::new(name),
                bytes,
                &config,
                force,
            )
            .await?;
            knowledge.store.optimize()?;
            knowledge.store.flush()?;
            anyhow::Ok(outcome)
        })
    })
    .map_err(|e| storage_error(format!("{e:#}")))?;
    let outcome = outcome.map_err(|e| unusable(name, &e))?;
    state.retrievers.write().await.remove(&kb_id);
    Ok(outcome)
}

/// 400 with what is wrong with the document `name`.
fn unusable(name: &str, error: &kefu_rag::ParseError) -> ApiError {
    let code = match error {
        kefu_rag::ParseError::Unsupported(_) => "unsupported_type",
        kefu_rag::ParseError::TooLarge { .. } => "too_large",
        _ => "unreadable_document",
    };
    ApiError::bad_request(code, format!("{name}: {error}"))
}

/// 507 `storage_full` when `error` says the disk is full, else 500.
fn storage_error(error: impl std::fmt::Display) -> ApiError {
    let text = error.to_string();
    if text.contains("No space left") || text.contains("disk is full") {
        tracing::error!(target: "kefu::http", "out of disk space: {text}");
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "storage_full",
            "the server's disk is full; the document was not stored",
        )
    } else {
        ApiError::internal(text)
    }
}

/// The kept copy of an upload being replaced: the new bytes are in place, the earlier ones
/// (if any) kept aside under a hard link until the database has the new document.
struct CopyInPlace {
    file: PathBuf,
    earlier: Option<PathBuf>,
}

impl CopyInPlace {
    /// Writes `bytes` as `file` atomically and durably: a temporary name beside it, flushed to
    /// the disk, renamed over it, the folder flushed; the earlier copy stays linked aside. A
    /// failure (a full disk) leaves the earlier copy as it was and no temporary file behind.
    async fn write(file: &FsPath, bytes: &[u8]) -> Result<Self, ApiError> {
        let file = file.to_path_buf();
        let bytes = bytes.to_vec();
        tokio::task::spawn_blocking(move || {
            let folder = file.parent().expect("an upload file has a folder");
            std::fs::create_dir_all(folder)?;
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            let tag = crate::auth::random_hex(4);
            let partial = folder.join(format!(".{name}.partial-{tag}"));
            let aside = folder.join(format!(".{name}.earlier-{tag}"));
            let earlier = file.exists().then_some(aside);
            let written = (|| {
                use std::io::Write;
                let mut out = std::fs::File::create(&partial)?;
                out.write_all(&bytes)?;
                out.sync_all()?;
                if let Some(aside) = &earlier {
                    std::fs::hard_link(&file, aside)?;
                }
                std::fs::rename(&partial, &file)?;
                std::fs::File::open(folder)?.sync_all()
            })();
            match written {
                Ok(()) => Ok(Self { file, earlier }),
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    if let Some(aside) = &earlier {
                        let _ = std::fs::remove_file(aside);
                    }
                    Err(e)
                }
            }
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(storage_error)
    }

    /// The database has the new document: the earlier copy goes.
    fn keep(self) {
        if let Some(earlier) = &self.earlier {
            let _ = std::fs::remove_file(earlier);
        }
    }

    /// The database kept the earlier document: its copy is put back (or, for a new name,
    /// the new copy removed).
    fn undo(self) {
        match &self.earlier {
            Some(earlier) => {
                let _ = std::fs::rename(earlier, &self.file);
            }
            None => {
                let _ = std::fs::remove_file(&self.file);
            }
        }
    }
}

pub(crate) fn outcome_json(outcome: Outcome, id: Option<i64>) -> (StatusCode, Json<Value>) {
    let (status, what, chunks) = match outcome {
        Outcome::Added { chunks } => (StatusCode::CREATED, "added", chunks),
        Outcome::Updated { chunks } => (StatusCode::OK, "updated", chunks),
        Outcome::Unchanged { .. } => (StatusCode::OK, "unchanged", 0),
    };
    (
        status,
        Json(json!({"outcome": what, "chunks": chunks, "id": id})),
    )
}

/// Uploads one document (the raw file as the body, its file name in `?name=`): stored,
/// chunked and embedded like `kefu ingest`; uploading the same name again replaces it. The
/// knowledge base is created on first upload.
pub async fn upload_document(
    State(state): State<Arc<AppState>>,
    _: Admin,
    Path(kb): Path<String>,
    Query(query): Query<UploadQuery>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body?;
    let name = query.name.unwrap_or_default();
    if name.is_empty() || name.len() > 200 || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(ApiError::bad_request(
            "invalid_name",
            "give the file name as ?name=FILE.md (no folders, 1 to 200 characters)",
        ));
    }
    check_kb_name(&kb)?;
    // Made on first upload; an existing one is only read (no write on a full disk).
    let kb_id = match state
        .database
        .find_knowledge_base(&kb)
        .await
        .map_err(ApiError::internal)?
    {
        Some(id) => id,
        None => state
            .database
            .knowledge_base(&kb)
            .await
            .map_err(storage_error)?,
    };
    let key = format!("{UPLOAD_PREFIX}{kb}/{name}");
    // Bytes that do not parse replace nothing, neither the copy nor the stored document.
    let format =
        kefu_rag::parse::Format::of(FsPath::new(&name)).map_err(|e| unusable(&name, &e))?;
    let checked = body.clone();
    tokio::task::spawn_blocking(move || kefu_rag::parse::parse_bytes(&checked, format, "upload"))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| unusable(&name, &e))?;
    // The copy first (kept for re-ingesting: new chunking, a new embedder), then the
    // database: whatever the database holds has its copy.
    let copy = CopyInPlace::write(&upload_file(&state, kb_id, &name), &body).await?;
    let outcome = match ingest_in_request(&state, kb_id, &key, &name, &body, false).await {
        Ok(outcome) => {
            copy.keep();
            outcome
        }
        Err(error) => {
            copy.undo();
            return Err(error);
        }
    };
    let document = state
        .database
        .document(kb_id, &key)
        .await
        .map_err(ApiError::internal)?;
    Ok(outcome_json(outcome, document.map(|d| d.id)))
}

pub(crate) async fn stored_document(
    state: &AppState,
    kb_id: i64,
    document_id: i64,
) -> Result<kefu_db::Document, ApiError> {
    let documents = state
        .database
        .documents(kb_id)
        .await
        .map_err(ApiError::internal)?;
    documents
        .into_iter()
        .find(|d| d.id == document_id)
        .ok_or_else(|| {
            ApiError::not_found(
                "document_not_found",
                "no such document in this knowledge base",
            )
        })
}

/// Reads the document's source again (its upload copy or its file) and parses, chunks and
/// embeds it anew, even when the bytes did not change.
pub async fn reingest_document(
    State(state): State<Arc<AppState>>,
    _: Admin,
    Path((kb, document_id)): Path<(String, i64)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let kb_id = existing_kb(&state, &kb).await?;
    let document = stored_document(&state, kb_id, document_id).await?;
    // A correction's document is rebuilt from the stored correction, others from their source.
    let (bytes, name) = if document.path.starts_with(crate::http::corrections::PREFIX) {
        let bytes = crate::http::corrections::source(&state, &document.path).await?;
        (bytes, crate::http::corrections::NAME.to_string())
    } else {
        let source = source_of(&state, kb_id, &document.path);
        let bytes = tokio::fs::read(&source).await.map_err(|e| {
            ApiError::new(
                StatusCode::CONFLICT,
                "source_missing",
                format!(
                    "the document's source {} cannot be read ({e}); upload it again",
                    source.display()
                ),
            )
        })?;
        // An upload's copy must be the bytes that were ingested: a truncated or damaged copy never
        // replaces good chunks. (A file ingested from disk is read as it is now.)
        if document.path.starts_with(UPLOAD_PREFIX)
            && crate::ingest::sha256_hex(&bytes) != document.content_hash
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "source_changed",
                format!(
                    "the kept copy {} is not what was ingested (its sha256 differs); upload the \
                     document again",
                    source.display()
                ),
            ));
        }
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (bytes, name)
    };
    let outcome = ingest_in_request(&state, kb_id, &document.path, &name, &bytes, true).await?;
    let (_, body) = outcome_json(outcome, Some(document.id));
    Ok((StatusCode::OK, body))
}

pub async fn delete_document(
    State(state): State<Arc<AppState>>,
    _: Admin,
    Path((kb, document_id)): Path<(String, i64)>,
) -> Result<StatusCode, ApiError> {
    let kb_id = existing_kb(&state, &kb).await?;
    let document = stored_document(&state, kb_id, document_id).await?;
    remove_document(&state, &document).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a stored document: its chunks, its vectors, an upload's kept copy; the next
/// question sees it gone.
pub(crate) async fn remove_document(
    state: &AppState,
    document: &kefu_db::Document,
) -> Result<(), ApiError> {
    let kb_id = document.knowledge_base_id;
    state
        .database
        .delete_document(kb_id, &document.path)
        .await
        .map_err(ApiError::internal)?;
    if document.path.starts_with(UPLOAD_PREFIX) {
        let _ = tokio::fs::remove_file(source_of(state, kb_id, &document.path)).await;
    }
    let knowledge = state.knowledge.clone();
    let id = document.id;
    tokio::task::spawn_blocking(move || {
        knowledge.store.delete_document(id)?;
        knowledge.store.flush()
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    state.retrievers.write().await.remove(&kb_id);
    Ok(())
}
