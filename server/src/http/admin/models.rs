//! Admin routes for the model registry: versions and labels, promote, roll back.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::http::error::ApiError;
use crate::http::guard::Admin;
use crate::http::state::AppState;

pub(crate) fn version_json(version: &kefu_db::ModelVersion, labels: &[(String, String)]) -> Value {
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
    _: Admin,
) -> Result<Json<Value>, ApiError> {
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
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
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
    _: Admin,
) -> Result<Json<Value>, ApiError> {
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
