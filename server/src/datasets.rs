//! The admin console's data routes: the feedback inbox (every rated answer with the pair it
//! makes, filters, bulk accept / reject) and the datasets (what the next job would learn from,
//! and each job's stored snapshot, previewed example by example).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::admin;
use crate::export::{Format, InboxFilter, Kind};
use crate::http::{ApiError, ApiJson, AppState};

/// The most items one page lists, and one review may decide.
const MAX_PAGE: usize = 500;
const MAX_REVIEW: usize = 1000;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_filter", message)
}

/// `offset` and `limit` (1 to [`MAX_PAGE`], 50 unless given) from a query.
fn paging(query: &HashMap<String, String>) -> Result<(usize, usize), ApiError> {
    let number = |name: &str, default: usize| -> Result<usize, ApiError> {
        match query.get(name) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| invalid(format!("{name} is a whole number, not `{text}`"))),
        }
    };
    let offset = number("offset", 0)?;
    let limit = number("limit", 50)?;
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(invalid(format!(
            "limit is from 1 to {MAX_PAGE}, not {limit}"
        )));
    }
    Ok((offset, limit))
}

/// The query's keys must all be `known`.
fn only(query: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match query.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(invalid(format!(
            "unknown parameter `{key}`; this route takes {}",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// One of `allowed`, or none.
fn choice(
    query: &HashMap<String, String>,
    name: &str,
    allowed: &[&str],
) -> Result<Option<String>, ApiError> {
    match query.get(name).map(String::as_str) {
        None | Some("") | Some("all") => Ok(None),
        Some(v) if allowed.contains(&v) => Ok(Some(v.to_string())),
        Some(v) => Err(invalid(format!(
            "{name} is {} or all, not `{v}`",
            allowed.join(", ")
        ))),
    }
}

/// `GET /api/admin/feedback`: the inbox, filtered and paged.
pub async fn inbox(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state.database, &method, &headers).await?;
    only(
        &query,
        &["label", "review", "rater", "q", "offset", "limit"],
    )?;
    let filter = InboxFilter {
        label: choice(&query, "label", &["up", "down", "corrected"])?,
        review: choice(&query, "review", &["pending", "accepted", "rejected"])?,
        rater: choice(&query, "rater", &["customer", "agent"])?,
        text: query
            .get("q")
            .map(|q| q.trim().to_string())
            .filter(|q| !q.is_empty()),
    };
    let (offset, limit) = paging(&query)?;
    let (total, items) = crate::export::inbox(&state.database, &filter, offset, limit)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "total": total, "offset": offset, "limit": limit, "items": items,
    })))
}

/// A bulk decision on rated answers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    message_ids: Vec<i64>,
    decision: String,
}

/// `POST /api/admin/feedback/review`: accept or reject rated answers, all or none.
pub async fn review(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ReviewBody>,
) -> Result<Json<Value>, ApiError> {
    let me = admin(&state.database, &method, &headers).await?;
    let decision = match body.decision.as_str() {
        "accept" | "accepted" => kefu_db::ACCEPTED,
        "reject" | "rejected" => kefu_db::REJECTED,
        other => {
            return Err(ApiError::bad_request(
                "invalid_review",
                format!("decision is `accept` or `reject`, not `{other}`"),
            ));
        }
    };
    let mut ids = body.message_ids;
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() || ids.len() > MAX_REVIEW {
        return Err(ApiError::bad_request(
            "invalid_review",
            format!("message_ids lists from 1 to {MAX_REVIEW} rated answers"),
        ));
    }
    // All or none: every id must be a rated answer before anything is written.
    let rated: std::collections::HashSet<i64> = state
        .database
        .rated_answers()
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .collect();
    let unknown: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !rated.contains(id))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::not_found(
            "unknown_message",
            format!(
                "not rated answers (nothing was reviewed): {}",
                unknown
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let reviewed = state
        .database
        .add_reviews(&ids, decision, Some(&me.user.name))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({"reviewed": reviewed, "decision": decision})))
}

/// The kinds of example a dataset holds, as files of a job's snapshot.
const KINDS: [&str; 3] = ["sft", "pairs", "regression"];

/// Examples in a snapshot file (`None` when it is missing); read off the async workers.
async fn count_lines(path: std::path::PathBuf) -> Option<usize> {
    tokio::fs::read_to_string(path)
        .await
        .ok()
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
}

/// `GET /api/admin/datasets`: what the next job would learn from now, and each job's
/// snapshot with its example counts.
pub async fn list(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state.database, &method, &headers).await?;
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
                       "regression": regression(&current.0).len()},
        },
        "snapshots": snapshots,
    })))
}

/// The SFT examples and pairs the feedback log gives now.
async fn current_examples(state: &AppState) -> Result<(Vec<Value>, Vec<Value>), ApiError> {
    let sft = crate::export::compile(&state.database, Kind::Sft, Format::Trl)
        .await
        .map_err(ApiError::internal)?;
    let pairs = crate::export::compile(&state.database, Kind::Pairs, Format::Trl)
        .await
        .map_err(ApiError::internal)?;
    Ok((sft, pairs))
}

/// The regression set: the SFT examples an agent's correction made.
pub fn regression(sft: &[Value]) -> Vec<Value> {
    sft.iter()
        .filter(|e| e["kefu"]["chosen_message_id"].is_null())
        .cloned()
        .collect()
}

/// `GET /api/admin/datasets/{id}?kind=sft|pairs|regression`: a page of one dataset's examples
/// (`current` or a job's id), each with its lineage.
pub async fn preview(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state.database, &method, &headers).await?;
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
            _ => regression(&sft),
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
