//! The datasets: what the next job would learn from, each job's snapshot under
//! `jobs/<id>/data/`, previewed page by page; and the training-data export.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use kefu_trainer::dataset::{Format, Kind};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::admin::query::{invalid, only, paging};
use crate::http::error::ApiError;
use crate::http::guard::Admin;
use crate::http::state::AppState;

/// The kinds of example a dataset holds, as files of a job's snapshot.
pub(crate) const KINDS: [&str; 3] = ["sft", "pairs", "regression"];

/// Examples in a snapshot file (`None` when it is missing); read off the async workers.
pub(crate) async fn count_lines(path: std::path::PathBuf) -> Option<usize> {
    tokio::fs::read_to_string(path)
        .await
        .ok()
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
}

/// `GET /api/admin/datasets`: what the next job would learn from now, and each job's
/// snapshot with its example counts.
pub async fn list(State(state): State<Arc<AppState>>, _: Admin) -> Result<Json<Value>, ApiError> {
    let current = current_examples(&state).await?;
    let jobs = state.database.jobs(50).await.map_err(ApiError::internal)?;
    let mut snapshots = Vec::new();
    for job in jobs {
        let dir = state
            .config
            .data_dir
            .join("jobs")
            .join(job.id.to_string())
            .join("data");
        if !tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let mut counts = serde_json::Map::new();
        for kind in KINDS {
            counts.insert(
                kind.into(),
                json!(count_lines(dir.join(format!("{kind}.jsonl"))).await),
            );
        }
        snapshots.push(json!({
            "id": job.id.to_string(), "job": job.id, "status": job.status.as_str(),
            "trigger": job.trigger, "created_ms": job.created_ms, "version": job.result_version,
            "counts": counts,
        }));
    }
    Ok(Json(json!({
        "current": {
            "id": "current",
            "counts": {"sft": current.0.len(), "pairs": current.1.len(),
                       "regression": kefu_trainer::dataset::regression(&current.0).len()},
        },
        "snapshots": snapshots,
    })))
}

/// The SFT examples and pairs the feedback log gives now.
pub(crate) async fn current_examples(
    state: &AppState,
) -> Result<(Vec<Value>, Vec<Value>), ApiError> {
    let policy = state.config.feedback_policy;
    let sft = kefu_trainer::dataset::compile(&state.database, Kind::Sft, Format::Trl, policy)
        .await
        .map_err(ApiError::internal)?;
    let pairs = kefu_trainer::dataset::compile(&state.database, Kind::Pairs, Format::Trl, policy)
        .await
        .map_err(ApiError::internal)?;
    Ok((sft, pairs))
}

/// `GET /api/admin/datasets/{id}?kind=sft|pairs|regression`: a page of one dataset's examples
/// (`current` or a job's id), each with its lineage.
pub async fn preview(
    State(state): State<Arc<AppState>>,
    _: Admin,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    only(&query, &["kind", "offset", "limit"])?;
    let kind = query.get("kind").map(String::as_str).unwrap_or("sft");
    if !KINDS.contains(&kind) {
        return Err(invalid(format!(
            "kind is sft, pairs or regression, not `{kind}`"
        )));
    }
    let (offset, limit) = paging(&query)?;
    let examples: Vec<Value> = if id == "current" {
        let (sft, pairs) = current_examples(&state).await?;
        match kind {
            "sft" => sft,
            "pairs" => pairs,
            _ => kefu_trainer::dataset::regression(&sft),
        }
    } else {
        let missing = || ApiError::not_found("dataset_not_found", format!("no dataset `{id}`"));
        let job: i64 = id.parse().map_err(|_| missing())?;
        if job <= 0 {
            return Err(missing());
        }
        let path = state
            .config
            .data_dir
            .join("jobs")
            .join(job.to_string())
            .join("data")
            .join(format!("{kind}.jsonl"));
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|_| missing())?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| json!({"unreadable": l})))
            .collect()
    };
    let total = examples.len();
    Ok(Json(json!({
        "id": id, "kind": kind, "total": total, "offset": offset, "limit": limit,
        "examples": examples.into_iter().skip(offset).take(limit).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ExportQuery {
    #[serde(default)]
    pub(crate) format: Option<String>,
}

pub(crate) async fn export(
    State(state): State<Arc<AppState>>,
    _: Admin,
    Path(kind): Path<String>,
    axum::extract::Query(query): axum::extract::Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let kind = match kind.as_str() {
        "sft" => kefu_trainer::dataset::Kind::Sft,
        "pairs" => kefu_trainer::dataset::Kind::Pairs,
        "kto" => kefu_trainer::dataset::Kind::Kto,
        other => {
            return Err(ApiError::not_found(
                "unknown_export",
                format!("export `sft`, `pairs` or `kto`, not `{other}`"),
            ));
        }
    };
    let format = match query.format.as_deref() {
        None | Some("trl") => kefu_trainer::dataset::Format::Trl,
        Some("llama-factory") => kefu_trainer::dataset::Format::LlamaFactory,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_format",
                format!("format is `trl` or `llama-factory`, not `{other}`"),
            ));
        }
    };
    let examples =
        kefu_trainer::dataset::compile(&state.database, kind, format, state.config.feedback_policy)
            .await
            .map_err(ApiError::internal)?;
    let mut body = String::new();
    for example in examples {
        body.push_str(&example.to_string());
        body.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}
