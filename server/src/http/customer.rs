//! The customer routes a widget calls: conversations (opened through a widget site or
//! without an `Origin`), questions answered as a stream, regeneration, feedback, hand-off to a
//! person, and the widget's site check. A customer proves a conversation is theirs with its
//! token (a wrong token looks like an unknown id).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kefu_db::NewFeedback;
use kefu_model::{ChatMessage, Role};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::answering::History;
use crate::auth::{random_hex, sha256_hex};
use crate::http::answer::answer;
use crate::http::error::{ApiError, ApiJson};
use crate::http::state::AppState;

/// What the widget asks before its first question: is its key valid here, from this origin?
pub(crate) async fn widget_site(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let site = crate::http::access::requested_site(&state, &headers).await?;
    crate::http::access::check_origin(site.as_ref(), &headers)?;
    Ok(Json(json!({"site": site.map(|s| s.name)})))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewConversation {
    #[serde(default)]
    pub(crate) knowledge_base: Option<String>,
}

pub(crate) async fn create_conversation(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let site = crate::http::access::requested_site(&state, &headers).await?;
    crate::http::access::check_origin(site.as_ref(), &headers)?;
    if let Some(site) = &site {
        crate::http::access::charge_site(&state, site)?;
    }
    let body = body?;
    // The body is optional: none (or `{}`) means the site's or the default knowledge base.
    let request: NewConversation = if body.iter().all(u8::is_ascii_whitespace) {
        NewConversation::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
    };
    let kb = conversation_kb(&state, &headers, site.as_ref(), request.knowledge_base).await?;
    let token = random_hex(24);
    let conversation = state
        .database
        .create_conversation(
            kb,
            &random_hex(16),
            &sha256_hex(&token),
            site.as_ref().map(|s| s.id),
        )
        .await
        .map_err(ApiError::internal)?;
    state.changes.changed(&conversation);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": conversation.public_id,
            "customer_token": token,
            "site": site.map(|s| s.name),
        })),
    ))
}

/// The knowledge base a new conversation answers from: a widget site's own; the default one
/// for an anonymous caller; a named one only for staff (a session or an API token). Whether a
/// name exists is told to staff only, so anonymous callers cannot enumerate knowledge bases.
async fn conversation_kb(
    state: &AppState,
    headers: &HeaderMap,
    site: Option<&kefu_db::WidgetSite>,
    named: Option<String>,
) -> Result<i64, ApiError> {
    let default = || async {
        state
            .database
            .knowledge_base(&state.config.default_kb)
            .await
            .map_err(ApiError::internal)
    };
    let Some(name) = named.filter(|n| site.is_some() || *n != state.config.default_kb) else {
        return match site {
            Some(site) => Ok(site.knowledge_base_id),
            None => default().await,
        };
    };
    if let Some(site) = site {
        let found = state
            .database
            .find_knowledge_base(&name)
            .await
            .map_err(ApiError::internal)?;
        if found != Some(site.knowledge_base_id) {
            return Err(ApiError::bad_request(
                "knowledge_base_mismatch",
                format!(
                    "the widget site `{}` answers from its own knowledge base",
                    site.name
                ),
            ));
        }
        return Ok(site.knowledge_base_id);
    }
    let staff =
        crate::http::guard::authenticate(&state.database, &axum::http::Method::POST, headers).await;
    if staff.is_err() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "knowledge_base_not_allowed",
            "customers' conversations use the default knowledge base (or their widget site's); \
             only staff may name another",
        ));
    }
    crate::http::admin::documents::existing_kb(state, &name).await
}

/// The conversation `public_id` and its widget site, if the request carries its customer's
/// token, comes from an origin its widget site allows, and names no other site. A wrong token
/// answers like an unknown id, so ids cannot be probed.
async fn owned_conversation(
    state: &AppState,
    headers: &HeaderMap,
    public_id: &str,
) -> Result<(kefu_db::Conversation, Option<kefu_db::WidgetSite>), ApiError> {
    let requested = crate::http::access::requested_site(state, headers).await?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send the conversation's customer token as `Authorization: Bearer TOKEN`",
            )
        })?;
    let conversation = state
        .database
        .conversation(public_id)
        .await
        .map_err(ApiError::internal)?
        .filter(|c| c.customer_secret_hash == sha256_hex(token.trim()))
        .filter(|c| requested.is_none() || requested.as_ref().map(|s| s.id) == c.site_id)
        .ok_or_else(|| {
            ApiError::not_found(
                "conversation_not_found",
                "no such conversation for this customer",
            )
        })?;
    let site = match (requested, conversation.site_id) {
        (Some(site), _) => Some(site),
        (None, Some(id)) => state.database.site(id).await.map_err(ApiError::internal)?,
        (None, None) => None,
    };
    crate::http::access::check_origin(site.as_ref(), headers)?;
    Ok((conversation, site))
}

/// [`owned_conversation`], charged to its widget site's budget.
pub(crate) async fn customer_conversation(
    state: &AppState,
    headers: &HeaderMap,
    public_id: &str,
) -> Result<kefu_db::Conversation, ApiError> {
    let (conversation, site) = owned_conversation(state, headers, public_id).await?;
    if let Some(site) = &site {
        crate::http::access::charge_site(state, site)?;
    }
    Ok(conversation)
}

/// [`owned_conversation`] for the widget's background poll of its messages: charged to the
/// conversation's own budget ([`crate::http::state::POLLS_PER_MINUTE`]) instead of the site's
/// and the address's, so open widgets do not use up what customers' questions need.
pub(crate) async fn polled_conversation(
    state: &AppState,
    headers: &HeaderMap,
    public_id: &str,
) -> Result<kefu_db::Conversation, ApiError> {
    let (conversation, _) = owned_conversation(state, headers, public_id).await?;
    state.poll_limits.check(&conversation.id).map_err(|wait| {
        crate::http::access::rate_limited("for this conversation's updates", wait)
    })?;
    Ok(conversation)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewMessage {
    pub(crate) content: String,
}

pub(crate) fn check_message(state: &AppState, content: &str) -> Result<(), ApiError> {
    if content.trim().is_empty() {
        return Err(ApiError::bad_request(
            "empty_message",
            "the message is empty",
        ));
    }
    let chars = content.chars().count();
    if chars > state.config.max_message_chars {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_long",
            format!(
                "the message has {chars} characters; the limit is {}",
                state.config.max_message_chars
            ),
        ));
    }
    Ok(())
}

pub(crate) async fn list_messages(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let conversation = polled_conversation(&state, &headers, &id).await?;
    let messages = state
        .database
        .messages(conversation.id)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "id": conversation.public_id,
        "status": conversation.status,
        "messages": messages.iter().map(message_json).collect::<Vec<_>>(),
    })))
}

/// A message as the customer sees it (the message list and the event stream).
pub(crate) fn message_json(m: &kefu_db::Message) -> Value {
    json!({
        "id": m.id, "role": m.role, "content": m.content, "reply_to": m.reply_to,
        "created_ms": m.created_ms,
    })
}

/// Stops the answer being generated in this conversation: its stream ends with `done`
/// (`finish_reason` `cancelled`) and what was written so far is stored as the answer.
/// 409 `not_answering` when no answer is being generated.
pub(crate) async fn stop_answer(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let conversation = customer_conversation(&state, &headers, &id).await?;
    if !state.answering.stop(conversation.id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_answering",
            "no answer is being written in this conversation",
        ));
    }
    Ok(Json(json!({"stopped": true})))
}

pub(crate) async fn post_message(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewMessage>,
) -> Result<Response, ApiError> {
    let conversation = customer_conversation(&state, &headers, &id).await?;
    check_message(&state, &body.content)?;
    let history = history(&state, conversation.id, None).await?;
    let message = state
        .database
        .add_message(conversation.id, "customer", &body.content, None)
        .await
        .map_err(ApiError::internal)?;
    state.changes.changed(&conversation);
    if conversation.status == "agent" {
        // A person has taken over: the message waits for them; no model answer.
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"message_id": message.id, "status": "agent"})),
        )
            .into_response());
    }
    answer(state, conversation, message.id, body.content, history).await
}

pub(crate) async fn regenerate(
    State(state): State<Arc<AppState>>,
    Path((id, message_id)): Path<(String, i64)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let conversation = customer_conversation(&state, &headers, &id).await?;
    if conversation.status == "agent" {
        // A person answers this conversation now; the model stays out of it.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "agent_has_conversation",
            "a support agent has taken this conversation over; they will answer",
        ));
    }
    let message = conversation_message(&state, &conversation, message_id).await?;
    // Regenerating an answer answers its question again; a question can be named directly.
    let question_id = match (message.role.as_str(), message.reply_to) {
        ("customer", _) => message.id,
        ("assistant", Some(question)) => question,
        _ => {
            return Err(ApiError::bad_request(
                "not_regenerable",
                "only a customer message or an assistant answer can be regenerated",
            ));
        }
    };
    let question = conversation_message(&state, &conversation, question_id).await?;
    let history = history(&state, conversation.id, Some(question_id)).await?;
    answer(state, conversation, question_id, question.content, history).await
}

pub(crate) async fn conversation_message(
    state: &AppState,
    conversation: &kefu_db::Conversation,
    message_id: i64,
) -> Result<kefu_db::Message, ApiError> {
    match state
        .database
        .message(message_id)
        .await
        .map_err(ApiError::internal)?
    {
        Some(m) if m.conversation_id == conversation.id => Ok(m),
        _ => Err(ApiError::not_found(
            "message_not_found",
            "no such message in this conversation",
        )),
    }
}

/// The conversation before `before` (all of it when `None`): its last messages as chat turns,
/// and — when the last of them is the model's answer — that answer's prompt as served followed
/// by the answer, which the next question continues.
pub(crate) async fn history(
    state: &AppState,
    conversation_id: i64,
    before: Option<i64>,
) -> Result<History, ApiError> {
    let messages = state
        .database
        .messages(conversation_id)
        .await
        .map_err(ApiError::internal)?;
    let earlier: Vec<_> = messages
        .iter()
        .filter(|m| before.is_none_or(|b| m.id < b))
        .collect();
    let turns: Vec<ChatMessage> = earlier
        .iter()
        .map(|m| {
            let role = if m.role == "customer" {
                Role::User
            } else {
                Role::Assistant
            };
            ChatMessage::new(role, m.content.clone())
        })
        .collect();
    let skip = turns.len().saturating_sub(state.config.history_messages);
    let served = match earlier.last() {
        Some(last) if last.role == "assistant" => state
            .database
            .served_prompt(last.id)
            .await
            .map_err(ApiError::internal)?
            .and_then(|served| serde_json::from_str::<Vec<ChatMessage>>(&served.prompt).ok())
            .filter(|prompt| !prompt.is_empty())
            .map(|mut prompt| {
                prompt.push(ChatMessage::new(Role::Assistant, last.content.clone()));
                prompt
            }),
        _ => None,
    };
    Ok(History {
        turns: turns.into_iter().skip(skip).collect(),
        served,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeedbackBody {
    /// `up` or `down`.
    pub(crate) rating: String,
    #[serde(default)]
    pub(crate) reasons: Vec<String>,
    #[serde(default)]
    pub(crate) comment: Option<String>,
}

/// A customer's ratings are counted per source: a hash of the client address (the address
/// itself is not stored).
fn rater_of(ip: std::net::IpAddr) -> String {
    format!("ip:{}", &sha256_hex(&format!("kefu-rater:{ip}"))[..16])
}

/// The feedback caps: per conversation (in all) and per source (in the last hour).
async fn check_feedback_caps(
    state: &AppState,
    conversation: &kefu_db::Conversation,
    rater: &str,
) -> Result<(), ApiError> {
    let limits = &state.config.feedback_limits;
    let given = state
        .database
        .customer_feedback_in(conversation.id)
        .await
        .map_err(ApiError::internal)?;
    if limits.per_conversation > 0 && given >= limits.per_conversation {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "feedback_limit",
            format!(
                "this conversation has given its {} ratings; the latest rating of each answer \
                 is the one that counts",
                limits.per_conversation
            ),
        ));
    }
    let hour = 3_600_000;
    let (recent, oldest) = state
        .database
        .feedback_by_rater_since(rater, kefu_db::now_ms() - hour)
        .await
        .map_err(ApiError::internal)?;
    if limits.per_source_hour > 0 && recent >= limits.per_source_hour {
        let seconds = ((oldest + hour - kefu_db::now_ms()) / 1000).max(1) as u64;
        return Err(ApiError {
            retry_after: Some(seconds),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "feedback_limit",
                format!(
                    "too many ratings from this address ({} in the last hour); try again in {seconds} s",
                    limits.per_source_hour
                ),
            )
        });
    }
    Ok(())
}

pub(crate) async fn feedback(
    State(state): State<Arc<AppState>>,
    Path((id, message_id)): Path<(String, i64)>,
    crate::http::access::ClientIp(ip): crate::http::access::ClientIp,
    headers: HeaderMap,
    ApiJson(body): ApiJson<FeedbackBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let conversation = customer_conversation(&state, &headers, &id).await?;
    if conversation.status == "agent" {
        // A person answers this conversation now; the model stays out of it.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "agent_has_conversation",
            "a support agent has taken this conversation over; they will answer",
        ));
    }
    let message = conversation_message(&state, &conversation, message_id).await?;
    if message.role != "assistant" {
        return Err(ApiError::bad_request(
            "not_an_answer",
            "feedback is given on the assistant's answers",
        ));
    }
    let rating = match body.rating.as_str() {
        "up" => 1,
        "down" => -1,
        other => {
            return Err(ApiError::bad_request(
                "invalid_rating",
                format!("rating is `up` or `down`, not `{other}`"),
            ));
        }
    };
    if body.reasons.len() > 16 || body.reasons.iter().any(|r| r.is_empty() || r.len() > 64) {
        return Err(ApiError::bad_request(
            "invalid_reasons",
            "reasons are at most 16 tags of 1 to 64 characters",
        ));
    }
    if body
        .comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > 4000)
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "comment_too_long",
            "the comment is longer than 4000 characters",
        ));
    }
    let rater = rater_of(ip);
    check_feedback_caps(&state, &conversation, &rater).await?;
    let event = state
        .database
        .add_feedback(&NewFeedback {
            message_id,
            rater_role: "customer".into(),
            rater: Some(rater),
            rating,
            reasons: body.reasons,
            comment: body.comment,
            corrected_answer: None,
        })
        .await
        .map_err(ApiError::internal)?;
    state.changes.changed(&conversation);
    Ok((StatusCode::CREATED, Json(json!({"id": event}))))
}

pub(crate) async fn request_handoff(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let conversation = customer_conversation(&state, &headers, &id).await?;
    if conversation.status != "agent" {
        state
            .database
            .handoff(conversation.id, "requested", None, "handoff_requested")
            .await
            .map_err(ApiError::internal)?;
        state.changes.changed(&conversation);
    }
    let status = if conversation.status == "agent" {
        "agent"
    } else {
        "handoff_requested"
    };
    Ok(Json(json!({"status": status})))
}
