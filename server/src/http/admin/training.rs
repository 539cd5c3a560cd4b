//! Admin routes for training: jobs (start, list, show, cancel) and the automatic triggers
//! (a schedule, a feedback threshold).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kefu_trainer::registry::TRAINED_MODEL;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::error::{ApiError, ApiJson};
use crate::http::guard::Admin;
use crate::http::state::AppState;

/// A job as the API shows it (a finished job's report is left out of its progress: `get_job`
/// gives it).
pub(crate) fn job_json(job: &kefu_db::TrainingJob) -> Value {
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
pub(crate) fn in_progress(active: &kefu_db::TrainingJob) -> (StatusCode, Json<Value>) {
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
/// the queued or running one; 422 `nothing_to_learn` when the feedback log holds nothing new,
/// 422 `bad_recipe` when the data directory's `recipe.toml` cannot be read.
pub async fn start_training(
    State(state): State<Arc<AppState>>,
    Admin(me): Admin,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if let Some(active) = state
        .database
        .active_job(TRAINED_MODEL)
        .await
        .map_err(ApiError::internal)?
    {
        return Ok(in_progress(&active));
    }
    // The worker's recipe decides what is material; a broken one is the admin's to mend.
    if let Err(e) = kefu_trainer::triggers::learns_documents(&state.config.data_dir) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_recipe",
            format!("{e:#}"),
        ));
    }
    let material = kefu_trainer::triggers::new_material(
        &state.config.data_dir,
        &state.database,
        TRAINED_MODEL,
        state.config.feedback_policy,
    )
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

pub(crate) fn schedule_json(schedule: &kefu_db::TrainingSchedule) -> Value {
    json!({
        "every_minutes": schedule.every_minutes,
        "after_new_feedback": schedule.after_new_feedback,
    })
}

/// The automatic triggers of training jobs.
pub async fn get_schedule(
    State(state): State<Arc<AppState>>,
    _: Admin,
) -> Result<Json<Value>, ApiError> {
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
pub(crate) const MAX_SCHEDULE_MINUTES: i64 = 366 * 24 * 60;

pub(crate) const MAX_FEEDBACK_THRESHOLD: i64 = 1_000_000;

pub async fn set_schedule(
    State(state): State<Arc<AppState>>,
    _: Admin,
    ApiJson(body): ApiJson<ScheduleBody>,
) -> Result<Json<Value>, ApiError> {
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
    _: Admin,
) -> Result<Json<Value>, ApiError> {
    let jobs = state.database.jobs(50).await.map_err(ApiError::internal)?;
    Ok(Json(
        json!({"jobs": jobs.iter().map(job_json).collect::<Vec<_>>()}),
    ))
}

pub(crate) async fn find_job(state: &AppState, id: i64) -> Result<kefu_db::TrainingJob, ApiError> {
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
    _: Admin,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
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
    _: Admin,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
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
