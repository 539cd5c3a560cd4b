//! Admin routes: users, widget sites, knowledge bases and their documents (upload, list,
//! delete, re-ingest). Every handler starts by checking that the caller is an admin.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::SITE_KEY_PREFIX;
use crate::auth::{admin, random_hex};
use crate::http::{ApiError, ApiJson, AppState};
use crate::ingest::Outcome;

/// Bytes of a request body, or the reason it could not be read.
type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

pub async fn list_users(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state.database, &method, &headers).await?;
    let users = state.database.users().await.map_err(ApiError::internal)?;
    Ok(Json(json!({
        "users": users.iter().map(|u| json!({"name": u.name, "role": u.role}))
            .collect::<Vec<_>>(),
    })))
}

/// Removes a user (their sessions and tokens stop working at once). Admins cannot remove
/// themselves, so there is always one left.
pub async fn delete_user(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let me = admin(&state.database, &method, &headers).await?;
    if me.user.name == name {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "cannot_delete_self",
            "an admin cannot remove their own account; ask another admin",
        ));
    }
    let user = state
        .database
        .user_by_name(&name)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("user_not_found", format!("no user `{name}`")))?;
    state
        .database
        .delete_user(user.id)
        .await
        .map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

fn site_json(site: &kefu_db::WidgetSite, knowledge_base: &str) -> Value {
    json!({
        "id": site.id, "name": site.name, "site_key": site.site_key,
        "allowed_origins": site.allowed_origins, "knowledge_base": knowledge_base,
        "created_ms": site.created_ms,
    })
}

pub async fn list_sites(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state.database, &method, &headers).await?;
    let sites = state.database.sites().await.map_err(ApiError::internal)?;
    let bases = state
        .database
        .knowledge_bases()
        .await
        .map_err(ApiError::internal)?;
    let name_of = |id: i64| {
        bases
            .iter()
            .find(|(kb, _, _)| *kb == id)
            .map_or("", |(_, name, _)| name.as_str())
    };
    Ok(Json(json!({
        "sites": sites.iter().map(|s| site_json(s, name_of(s.knowledge_base_id)))
            .collect::<Vec<_>>(),
    })))
}

/// `scheme://host[:port]`, as browsers send it in `Origin`.
fn check_origins(origins: &[String]) -> Result<(), ApiError> {
    if origins.len() > 50 {
        return Err(ApiError::bad_request(
            "invalid_origin",
            "a site has at most 50 allowed origins",
        ));
    }
    for origin in origins {
        let rest = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        let valid = rest.is_some_and(|host| {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        });
        if !valid {
            return Err(ApiError::bad_request(
                "invalid_origin",
                format!(
                    "`{origin}` is not an origin: write scheme, host and port only, like \
                     https://shop.example or http://localhost:3000"
                ),
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSite {
    name: String,
    allowed_origins: Vec<String>,
    #[serde(default)]
    knowledge_base: Option<String>,
}

/// Adds a widget site with a fresh key; its knowledge base must exist.
pub async fn add_site(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewSite>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&state.database, &method, &headers).await?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::bad_request(
            "invalid_name",
            "a site name has 1 to 100 characters",
        ));
    }
    check_origins(&body.allowed_origins)?;
    let kb_name = body
        .knowledge_base
        .unwrap_or_else(|| state.config.default_kb.clone());
    let kb = existing_kb(&state, &kb_name).await?;
    let key = format!("{SITE_KEY_PREFIX}{}", random_hex(16));
    let site = state
        .database
        .create_site(name, &key, &body.allowed_origins, kb)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "site_exists",
                format!("there is already a site named `{name}`"),
            )
        })?;
    Ok((StatusCode::CREATED, Json(site_json(&site, &kb_name))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteOrigins {
    allowed_origins: Vec<String>,
}

pub async fn set_site_origins(
    State(state): State<Arc<AppState>>,
    Path(site): Path<i64>,
    method: Method,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SiteOrigins>,
) -> Result<StatusCode, ApiError> {
    admin(&state.database, &method, &headers).await?;
    check_origins(&body.allowed_origins)?;
    let found = state
        .database
        .set_site_origins(site, &body.allowed_origins)
        .await
        .map_err(ApiError::internal)?;
    if !found {
        return Err(site_not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

fn site_not_found() -> ApiError {
    ApiError::not_found("site_not_found", "no such widget site")
}

/// Removes a site: its key stops working at once; its conversations are kept.
pub async fn delete_site(
    State(state): State<Arc<AppState>>,
    Path(site): Path<i64>,
    method: Method,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    admin(&state.database, &method, &headers).await?;
    if !state
        .database
        .delete_site(site)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(site_not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_knowledge_bases(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state.database, &method, &headers).await?;
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
    Path(kb): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state.database, &method, &headers).await?;
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
const UPLOAD_PREFIX: &str = "upload:";

fn upload_file(state: &AppState, kb_id: i64, name: &str) -> PathBuf {
    state
        .config
        .data_dir
        .join("uploads")
        .join(kb_id.to_string())
        .join(name)
}

/// Where a stored document's bytes are read from again: its upload copy or its file.
fn source_of(state: &AppState, kb_id: i64, path: &str) -> PathBuf {
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
async fn ingest_in_request(
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
    .map_err(ApiError::internal)?;
    let outcome = outcome.map_err(|e| {
        let code = match &e {
            kefu_rag::ParseError::Unsupported(_) => "unsupported_type",
            kefu_rag::ParseError::TooLarge { .. } => "too_large",
            _ => "unreadable_document",
        };
        ApiError::bad_request(code, format!("{name}: {e}"))
    })?;
    state.retrievers.write().await.remove(&kb_id);
    Ok(outcome)
}

fn outcome_json(outcome: Outcome, id: Option<i64>) -> (StatusCode, Json<Value>) {
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
    Path(kb): Path<String>,
    Query(query): Query<UploadQuery>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&state.database, &method, &headers).await?;
    let body = body?;
    let name = query.name.unwrap_or_default();
    if name.is_empty() || name.len() > 200 || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(ApiError::bad_request(
            "invalid_name",
            "give the file name as ?name=FILE.md (no folders, 1 to 200 characters)",
        ));
    }
    check_kb_name(&kb)?;
    let kb_id = state
        .database
        .knowledge_base(&kb)
        .await
        .map_err(ApiError::internal)?;
    let key = format!("{UPLOAD_PREFIX}{kb}/{name}");
    let outcome = ingest_in_request(&state, kb_id, &key, &name, &body, false).await?;
    // Keep the bytes, so the document can be re-ingested (new chunking, new embedder).
    let file = upload_file(&state, kb_id, &name);
    let saved = async {
        tokio::fs::create_dir_all(file.parent().expect("an upload file has a folder")).await?;
        tokio::fs::write(&file, &body).await
    };
    saved.await.map_err(|e| {
        ApiError::internal(format!("cannot keep the upload {}: {e}", file.display()))
    })?;
    let document = state
        .database
        .document(kb_id, &key)
        .await
        .map_err(ApiError::internal)?;
    Ok(outcome_json(outcome, document.map(|d| d.id)))
}

async fn stored_document(
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
    Path((kb, document_id)): Path<(String, i64)>,
    method: Method,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&state.database, &method, &headers).await?;
    let kb_id = existing_kb(&state, &kb).await?;
    let document = stored_document(&state, kb_id, document_id).await?;
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
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let outcome = ingest_in_request(&state, kb_id, &document.path, &name, &bytes, true).await?;
    let (_, body) = outcome_json(outcome, Some(document.id));
    Ok((StatusCode::OK, body))
}

pub async fn delete_document(
    State(state): State<Arc<AppState>>,
    Path((kb, document_id)): Path<(String, i64)>,
    method: Method,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    admin(&state.database, &method, &headers).await?;
    let kb_id = existing_kb(&state, &kb).await?;
    let document = stored_document(&state, kb_id, document_id).await?;
    state
        .database
        .delete_document(kb_id, &document.path)
        .await
        .map_err(ApiError::internal)?;
    if document.path.starts_with(UPLOAD_PREFIX) {
        let _ = tokio::fs::remove_file(source_of(&state, kb_id, &document.path)).await;
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
    Ok(StatusCode::NO_CONTENT)
}

fn version_json(version: &kefu_db::ModelVersion, labels: &[(String, String)]) -> Value {
    let report: Value = serde_json::from_str(&version.report).unwrap_or(Value::Null);
    json!({
        "id": version.id, "path": version.path, "parent": version.parent_id,
        "job": version.job_id, "created_ms": version.created_ms, "report": report,
        "labels": labels.iter().filter(|(_, v)| *v == version.id).map(|(l, _)| l)
            .collect::<Vec<_>>(),
    })
}

/// The registry: every version with its labels and report, and what this server serves.
pub async fn list_models(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state.database, &method, &headers).await?;
    let versions = state
        .database
        .model_versions()
        .await
        .map_err(ApiError::internal)?;
    let labels = state.database.labels().await.map_err(ApiError::internal)?;
    let serving = state.generator().version.clone();
    Ok(Json(json!({
        "serving": serving,
        "serving_refused": labels.iter().find(|(l, _)| l == kefu_db::PRODUCTION)
            .and_then(|(_, v)| state.serving.refused(v)),
        "labels": labels.iter().map(|(l, v)| (l.clone(), json!(v)))
            .collect::<serde_json::Map<_, _>>(),
        "versions": versions.iter().map(|v| version_json(v, &labels)).collect::<Vec<_>>(),
    })))
}

/// Labels a version `production` (the old one becomes `previous`); every server follows.
pub async fn promote_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state.database, &method, &headers).await?;
    let version = state
        .database
        .model_version(&id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::not_found(
                "model_version_not_found",
                format!("no model version `{id}`"),
            )
        })?;
    let previous = state
        .database
        .promote(&version.id)
        .await
        .map_err(ApiError::internal)?;
    state.serving.wake.notify_one();
    Ok(Json(json!({
        "production": version.id,
        "previous": previous.filter(|p| *p != version.id),
    })))
}

/// Puts `previous` back into production (and the current one into `previous`).
pub async fn rollback_model(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state.database, &method, &headers).await?;
    let swapped = state
        .database
        .rollback()
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "no_previous_version",
                "there is no previous model version to roll back to",
            )
        })?;
    state.serving.wake.notify_one();
    Ok(Json(
        json!({"production": swapped.1, "previous": swapped.0}),
    ))
}

/// The one chat model jobs train (one job at a time for it).
pub const TRAINED_MODEL: &str = "production";

/// A job as the API shows it (a finished job's report is left out of its progress: `get_job`
/// gives it).
fn job_json(job: &kefu_db::TrainingJob) -> Value {
    let mut progress = serde_json::from_str::<Value>(&job.progress).unwrap_or(Value::Null);
    if let Some(object) = progress.as_object_mut() {
        object.remove("report");
    }
    json!({
        "id": job.id, "status": job.status.as_str(), "trigger": job.trigger,
        "attempts": job.attempts, "error": job.error, "version": job.result_version,
        "progress": progress,
        "created_ms": job.created_ms, "started_ms": job.started_ms,
        "finished_ms": job.finished_ms,
    })
}

/// 409 `job_in_progress`, with the queued or running job.
fn in_progress(active: &kefu_db::TrainingJob) -> (StatusCode, Json<Value>) {
    (
        StatusCode::CONFLICT,
        Json(json!({
            "code": "job_in_progress",
            "message": format!("job {} is {} already; one job runs at a time", active.id,
                active.status.as_str()),
            "job": job_json(active),
        })),
    )
}

/// Queues a training job (the worker takes it): 202 with the job; 409 `job_in_progress` with
/// the queued or running one; 422 `nothing_to_learn` when the feedback log holds nothing new.
pub async fn start_training(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let me = admin(&state.database, &method, &headers).await?;
    if let Some(active) = state
        .database
        .active_job(TRAINED_MODEL)
        .await
        .map_err(ApiError::internal)?
    {
        return Ok(in_progress(&active));
    }
    let material =
        crate::worker::new_material(&state.config.data_dir, &state.database, TRAINED_MODEL)
            .await
            .map_err(ApiError::internal)?;
    if !material.anything() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "nothing_to_learn",
            material.why_nothing(),
        ));
    }
    match state
        .database
        .enqueue_job(TRAINED_MODEL, "admin", Some(me.user.id))
        .await
        .map_err(ApiError::internal)?
    {
        Ok(job) => Ok((StatusCode::ACCEPTED, Json(job_json(&job)))),
        Err(active) => Ok(in_progress(&active)),
    }
}

fn schedule_json(schedule: &kefu_db::TrainingSchedule) -> Value {
    json!({
        "every_minutes": schedule.every_minutes,
        "after_new_feedback": schedule.after_new_feedback,
    })
}

/// The automatic triggers of training jobs.
pub async fn get_schedule(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state.database, &method, &headers).await?;
    let schedule = state
        .database
        .training_schedule(TRAINED_MODEL)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(schedule_json(&schedule)))
}

/// Both triggers at once; a missing or null one is off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    every_minutes: Option<i64>,
    after_new_feedback: Option<i64>,
}

/// The longest schedule: a year.
const MAX_SCHEDULE_MINUTES: i64 = 366 * 24 * 60;
const MAX_FEEDBACK_THRESHOLD: i64 = 1_000_000;

pub async fn set_schedule(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ScheduleBody>,
) -> Result<Json<Value>, ApiError> {
    admin(&state.database, &method, &headers).await?;
    if body
        .every_minutes
        .is_some_and(|m| !(1..=MAX_SCHEDULE_MINUTES).contains(&m))
    {
        return Err(ApiError::bad_request(
            "invalid_schedule",
            format!("every_minutes is a whole number from 1 to {MAX_SCHEDULE_MINUTES}, or null"),
        ));
    }
    if body
        .after_new_feedback
        .is_some_and(|n| !(1..=MAX_FEEDBACK_THRESHOLD).contains(&n))
    {
        return Err(ApiError::bad_request(
            "invalid_schedule",
            format!(
                "after_new_feedback is a whole number from 1 to {MAX_FEEDBACK_THRESHOLD}, or null"
            ),
        ));
    }
    let schedule = kefu_db::TrainingSchedule {
        every_minutes: body.every_minutes,
        after_new_feedback: body.after_new_feedback,
    };
    state
        .database
        .set_training_schedule(TRAINED_MODEL, &schedule)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(schedule_json(&schedule)))
}

pub async fn list_jobs(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state.database, &method, &headers).await?;
    let jobs = state.database.jobs(50).await.map_err(ApiError::internal)?;
    Ok(Json(
        json!({"jobs": jobs.iter().map(job_json).collect::<Vec<_>>()}),
    ))
}

async fn find_job(state: &AppState, id: i64) -> Result<kefu_db::TrainingJob, ApiError> {
    state
        .database
        .job(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("job_not_found", format!("no training job {id}")))
}

/// A job with its progress, and the report of the version it made.
pub async fn get_job(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    method: Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state.database, &method, &headers).await?;
    let job = find_job(&state, id).await?;
    let mut out = job_json(&job);
    let own = serde_json::from_str::<Value>(&job.progress).unwrap_or(Value::Null)["report"].take();
    if own.is_object() {
        out["report"] = own;
    } else if let Some(version) = &job.result_version
        && let Some(version) = state
            .database
            .model_version(version)
            .await
            .map_err(ApiError::internal)?
    {
        out["report"] = serde_json::from_str(&version.report).unwrap_or(Value::Null);
    }
    Ok(Json(out))
}

pub async fn cancel_job(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    method: Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state.database, &method, &headers).await?;
    let job = find_job(&state, id).await?;
    if !state
        .database
        .cancel_job(id)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_finished",
            format!("job {id} has already {}", job.status.as_str()),
        ));
    }
    Ok(Json(job_json(&find_job(&state, id).await?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        let ok = |o: &str| check_origins(&[o.to_string()]).is_ok();
        assert!(ok("https://shop.example"));
        assert!(ok("http://localhost:3000"));
        assert!(ok("http://[::1]:8080"));
        assert!(!ok("shop.example"));
        assert!(!ok("https://shop.example/"));
        assert!(!ok("https://shop.example/path"));
        assert!(!ok("ftp://shop.example"));
        assert!(!ok("https://"));
        assert!(!ok("https://shop example"));
    }
}
