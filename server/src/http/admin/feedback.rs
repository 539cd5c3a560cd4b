//! The feedback inbox: every rated answer with its question, label and the pair it makes,
//! filtered and paged; bulk reviews (all or none).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use kefu_trainer::dataset::InboxFilter;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::admin::query::{choice, only, paging};
use crate::http::error::{ApiError, ApiJson};
use crate::http::guard::Admin;
use crate::http::state::AppState;

pub(crate) const MAX_REVIEW: usize = 1000;

/// `GET /api/admin/feedback`: the inbox, filtered and paged.
pub async fn inbox(
    State(state): State<Arc<AppState>>,
    _: Admin,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    only(
        &query,
        &[
            "label", "review", "rater", "q", "flagged", "offset", "limit",
        ],
    )?;
    let filter = InboxFilter {
        label: choice(&query, "label", &["up", "down", "corrected"])?,
        review: choice(&query, "review", &["pending", "accepted", "rejected"])?,
        rater: choice(&query, "rater", &["customer", "agent"])?,
        text: query
            .get("q")
            .map(|q| q.trim().to_string())
            .filter(|q| !q.is_empty()),
        flagged: choice(&query, "flagged", &["true", "false"])?.map(|f| f == "true"),
    };
    let (offset, limit) = paging(&query)?;
    let (total, items) = kefu_trainer::dataset::inbox(&state.database, &filter, offset, limit)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "total": total, "offset": offset, "limit": limit, "items": items,
        "policy": state.config.feedback_policy.name(),
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
    Admin(me): Admin,
    ApiJson(body): ApiJson<ReviewBody>,
) -> Result<Json<Value>, ApiError> {
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
    // A rejected answer's correction stops answering customers too.
    let withdrawn = if decision == kefu_db::REJECTED {
        withdraw_corrections(&state, &ids).await?
    } else {
        0
    };
    Ok(Json(json!({
        "reviewed": reviewed, "decision": decision, "knowledge_documents_removed": withdrawn,
    })))
}

/// Removes the correction documents (`corrections`) of `answer_ids` from every knowledge base;
/// returns how many were removed.
async fn withdraw_corrections(state: &AppState, answer_ids: &[i64]) -> Result<usize, ApiError> {
    let bases = state
        .database
        .knowledge_bases()
        .await
        .map_err(ApiError::internal)?;
    let mut removed = 0;
    for (kb, _, _) in &bases {
        for id in answer_ids {
            let key = crate::http::corrections::key(*id);
            let document = state
                .database
                .document(*kb, &key)
                .await
                .map_err(ApiError::internal)?;
            if let Some(document) = document {
                crate::http::admin::documents::remove_document(state, &document).await?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}
