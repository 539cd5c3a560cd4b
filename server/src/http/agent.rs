//! The agent console's routes: conversations (searched by text) and transcripts (exported as
//! Markdown or JSON), ratings and corrections, taking a conversation over, handing it back,
//! and replying as a person.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kefu_db::NewFeedback;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::customer::NewMessage;
use crate::http::customer::check_message;
use crate::http::customer::conversation_message;
use crate::http::error::{ApiError, ApiJson};
use crate::http::guard::Staff;
use crate::http::state::AppState;

/// The most recent 200 conversations, or with `?q=TEXT` those with a message containing it.
pub(crate) async fn agent_conversations(
    State(state): State<Arc<AppState>>,
    _: Staff,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    crate::http::admin::query::only(&query, &["q"])?;
    let conversations = match query.get("q").map(|q| q.trim()) {
        None => state.database.recent_conversations(200).await,
        Some(q) if q.is_empty() || q.chars().count() > 200 => {
            return Err(crate::http::admin::query::invalid(
                "q is the text to search for, 1 to 200 characters",
            ));
        }
        Some(q) => state.database.search_conversations(q, 200).await,
    }
    .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "conversations": conversations.iter().map(|c| json!({
            "id": c.public_id, "status": c.status, "created_ms": c.created_ms,
        })).collect::<Vec<_>>(),
    })))
}

pub(crate) async fn staff_conversation(
    state: &AppState,
    public_id: &str,
) -> Result<kefu_db::Conversation, ApiError> {
    state
        .database
        .conversation(public_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("conversation_not_found", "no such conversation"))
}

/// The transcript with, for every answer, the context it was served and its feedback.
pub(crate) async fn agent_transcript(
    State(state): State<Arc<AppState>>,
    _: Staff,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let conversation = staff_conversation(&state, &id).await?;
    let messages = state
        .database
        .messages(conversation.id)
        .await
        .map_err(ApiError::internal)?;
    let mut out = Vec::with_capacity(messages.len());
    for m in &messages {
        let mut entry = json!({
            "id": m.id, "role": m.role, "content": m.content, "reply_to": m.reply_to,
            "created_ms": m.created_ms,
        });
        if m.role == "assistant" {
            if let Some(served) = state
                .database
                .served_prompt(m.id)
                .await
                .map_err(ApiError::internal)?
            {
                entry["served"] = json!({
                    "model_version": served.model_version,
                    "template_id": served.template_id,
                    "sampling": serde_json::from_str::<Value>(&served.sampling).unwrap_or(Value::Null),
                    "retrieved": serde_json::from_str::<Value>(&served.retrieved).unwrap_or(Value::Null),
                    "prompt": serde_json::from_str::<Value>(&served.prompt).unwrap_or(Value::Null),
                    "prompt_tokens": served.prompt_tokens,
                    "completion_tokens": served.completion_tokens,
                    "first_token_ms": served.first_token_ms,
                    "latency_ms": served.latency_ms,
                    "finish_reason": served.finish_reason,
                });
            }
            let feedback = state
                .database
                .feedback(m.id)
                .await
                .map_err(ApiError::internal)?;
            entry["feedback"] = json!(feedback.iter().map(|e| json!({
                "id": e.id, "rater_role": e.feedback.rater_role, "rating": e.feedback.rating,
                "reasons": e.feedback.reasons, "comment": e.feedback.comment,
                "corrected_answer": e.feedback.corrected_answer, "created_ms": e.created_ms,
            })).collect::<Vec<_>>());
        }
        out.push(entry);
    }
    Ok(Json(
        json!({"id": conversation.public_id, "status": conversation.status, "messages": out}),
    ))
}

/// A conversation to keep or send on: `?format=markdown` (the default) or `json`, as a
/// download.
pub(crate) async fn export_transcript(
    State(state): State<Arc<AppState>>,
    staff: Staff,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    crate::http::admin::query::only(&query, &["format"])?;
    let format = query.get("format").map_or("markdown", String::as_str);
    if !matches!(format, "markdown" | "json") {
        return Err(ApiError::bad_request(
            "invalid_format",
            format!("format is markdown or json, not `{format}`"),
        ));
    }
    let Json(transcript) = agent_transcript(State(state), staff, Path(id.clone())).await?;
    let (body, content_type, extension) = if format == "json" {
        let text = serde_json::to_string_pretty(&transcript).map_err(ApiError::internal)?;
        (text, "application/json", "json")
    } else {
        (
            transcript_markdown(&transcript),
            "text/markdown; charset=utf-8",
            "md",
        )
    };
    let disposition = format!("attachment; filename=\"conversation-{id}.{extension}\"");
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// A transcript as Markdown: who said what, with the answers' sources and ratings.
fn transcript_markdown(transcript: &Value) -> String {
    let mut out = format!(
        "# Conversation {}\n\nStatus: {}\n",
        transcript["id"].as_str().unwrap_or_default(),
        transcript["status"].as_str().unwrap_or_default()
    );
    for message in transcript["messages"].as_array().into_iter().flatten() {
        let who = match message["role"].as_str().unwrap_or_default() {
            "customer" => "Customer",
            "assistant" => "Assistant",
            "agent" => "Agent",
            other => other,
        };
        let when = message["created_ms"]
            .as_i64()
            .map(|ms| format!(" ({})", crate::time::utc_time(ms)))
            .unwrap_or_default();
        out.push_str(&format!(
            "\n## {who}{when}\n\n{}\n",
            message["content"].as_str().unwrap_or_default().trim()
        ));
        let sources: Vec<String> = message["served"]["retrieved"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                let heading = r["heading"].as_str().filter(|h| !h.is_empty());
                format!(
                    "{}. {}{}",
                    i + 1,
                    r["title"].as_str().unwrap_or_default(),
                    heading.map(|h| format!(" — {h}")).unwrap_or_default()
                )
            })
            .collect();
        if !sources.is_empty() {
            out.push_str(&format!("\nSources:\n\n{}\n", sources.join("\n")));
        }
        for feedback in message["feedback"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "\n> Rated {} by {}{}\n",
                feedback["rating"].as_str().unwrap_or_default(),
                feedback["rater_role"].as_str().unwrap_or_default(),
                feedback["corrected_answer"]
                    .as_str()
                    .map(|c| format!("; corrected: {c}"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentFeedback {
    #[serde(default)]
    pub(crate) rating: Option<String>,
    #[serde(default)]
    pub(crate) reasons: Vec<String>,
    #[serde(default)]
    pub(crate) comment: Option<String>,
    #[serde(default)]
    pub(crate) corrected_answer: Option<String>,
}

pub(crate) async fn agent_feedback(
    State(state): State<Arc<AppState>>,
    staff: Staff,
    Path((id, message_id)): Path<(String, i64)>,
    ApiJson(body): ApiJson<AgentFeedback>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let conversation = staff_conversation(&state, &id).await?;
    let message = conversation_message(&state, &conversation, message_id).await?;
    if message.role != "assistant" {
        return Err(ApiError::bad_request(
            "not_an_answer",
            "feedback is given on the assistant's answers",
        ));
    }
    let rating = match body.rating.as_deref() {
        None => 0,
        Some("up") => 1,
        Some("down") => -1,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_rating",
                format!("rating is `up` or `down`, not `{other}`"),
            ));
        }
    };
    if let Some(corrected) = &body.corrected_answer {
        check_message(&state, corrected)?;
    }
    if rating == 0 && body.corrected_answer.is_none() && body.comment.is_none() {
        return Err(ApiError::bad_request(
            "empty_feedback",
            "give a rating, a corrected answer or a comment",
        ));
    }
    if body.reasons.len() > 16 || body.reasons.iter().any(|r| r.is_empty() || r.len() > 64) {
        return Err(ApiError::bad_request(
            "invalid_reasons",
            "reasons are at most 16 tags of 1 to 64 characters",
        ));
    }
    let corrected = body.corrected_answer.is_some();
    let event = state
        .database
        .add_feedback(&NewFeedback {
            message_id,
            rater_role: "agent".into(),
            rater: Some(staff.user.name),
            rating,
            reasons: body.reasons,
            comment: body.comment,
            corrected_answer: body.corrected_answer,
        })
        .await
        .map_err(ApiError::internal)?;
    state.changes.changed(&conversation);
    // The correction is stored whatever happens next; a knowledge base that cannot take it
    // now is said in the reply (and the log), and re-ingesting the document retries.
    let knowledge = if corrected && state.config.corrections_to_knowledge {
        match publish_correction(&state, &conversation, &message).await {
            Ok(key) => json!(key),
            Err(e) => {
                tracing::warn!(target: "kefu::http", "correction {message_id} not added to the knowledge base: {e:?}");
                Value::Null
            }
        }
    } else {
        Value::Null
    };
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": event, "knowledge_document": knowledge})),
    ))
}

/// Stores the document of `answer`'s latest correction in the conversation's knowledge base
/// (see `corrections`); returns its key.
async fn publish_correction(
    state: &AppState,
    conversation: &kefu_db::Conversation,
    answer: &kefu_db::Message,
) -> Result<Option<String>, ApiError> {
    let Some((key, text)) = crate::http::corrections::document_of(state, answer).await? else {
        return Ok(None);
    };
    crate::http::admin::documents::ingest_in_request(
        state,
        conversation.knowledge_base_id,
        &key,
        crate::http::corrections::NAME,
        text.as_bytes(),
        false,
    )
    .await?;
    Ok(Some(key))
}

/// A member of staff moves a conversation between the bot and a person: records the handoff
/// `event` and sets `status`.
pub(crate) async fn staff_handoff(
    state: &AppState,
    id: &str,
    method: &axum::http::Method,
    headers: &HeaderMap,
    event: &str,
    status: &'static str,
) -> Result<Json<Value>, ApiError> {
    let staff = crate::http::guard::authenticate(&state.database, method, headers).await?;
    let conversation = staff_conversation(state, id).await?;
    state
        .database
        .handoff(conversation.id, event, Some(staff.user.id), status)
        .await
        .map_err(ApiError::internal)?;
    state.changes.changed(&conversation);
    Ok(Json(json!({"status": status})))
}

pub(crate) async fn take_over(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    staff_handoff(&state, &id, &method, &headers, "taken", "agent").await
}

/// Hands a conversation back to the bot.
pub(crate) async fn release(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    staff_handoff(&state, &id, &method, &headers, "released", "assistant").await
}

pub(crate) async fn agent_reply(
    State(state): State<Arc<AppState>>,
    _: Staff,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<NewMessage>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let conversation = staff_conversation(&state, &id).await?;
    if conversation.status != "agent" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_taken_over",
            "take the conversation over before replying",
        ));
    }
    check_message(&state, &body.content)?;
    let message = state
        .database
        .add_message(conversation.id, "agent", &body.content, None)
        .await
        .map_err(ApiError::internal)?;
    state.changes.changed(&conversation);
    Ok((StatusCode::CREATED, Json(json!({"message_id": message.id}))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transcript_reads_as_markdown() {
        let transcript = json!({"id": "abc", "status": "bot", "messages": [
            {"role": "customer", "content": "Where is my parcel?", "created_ms": 0},
            {"role": "assistant", "content": "At the depot [1].", "created_ms": 60_000,
             "served": {"retrieved": [{"title": "Shipping", "heading": "Depots"}]},
             "feedback": [{"rating": "down", "rater_role": "agent",
                           "corrected_answer": "On its way."}]},
        ]});
        let markdown = transcript_markdown(&transcript);
        assert!(markdown.starts_with("# Conversation abc\n"), "{markdown}");
        assert!(markdown.contains("## Customer (1970-01-01 00:00 UTC)\n\nWhere is my parcel?"));
        assert!(markdown.contains("## Assistant (1970-01-01 00:01 UTC)\n\nAt the depot [1]."));
        assert!(markdown.contains("1. Shipping — Depots"), "{markdown}");
        assert!(markdown.contains("> Rated down by agent; corrected: On its way."));
    }
}
