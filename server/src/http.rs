//! `kefu serve`'s HTTP API (axum): conversations with streamed (Server-Sent Events), grounded,
//! cited answers; feedback; the OpenAI-compatible `/v1/chat/completions` and `/v1/models`;
//! health and readiness. Every error is a 4xx / 5xx with a JSON body `{"code", "message"}`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kefu_db::{Database, NewFeedback, ServedPrompt};
use kefu_model::generate::{FinishReason, GenerationParams};
use kefu_model::sampling::SamplingConfig;
use kefu_model::{ChatMessage, Role};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{RwLock, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::access::RateLimiter;
use crate::answer::{Citation, grounded_prompt};
use crate::auth::{random_hex, sha256_hex};
use crate::generator::{Event, Generator, QueueFull, Summary};
use crate::knowledge::{Knowledge, RetrievalConfig, Retriever};

/// Limits and defaults of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Knowledge base of conversations that name none.
    pub default_kb: String,
    pub max_body_bytes: usize,
    /// Longest customer message, in characters.
    pub max_message_chars: usize,
    pub max_tokens: usize,
    pub passages: usize,
    pub context_tokens: usize,
    /// Earlier messages of the conversation given to the model.
    pub history_messages: usize,
    /// Requests a minute from one IP address (0: no limit).
    pub rate_per_ip: u32,
    /// Customer requests a minute through one widget site (0: no limit).
    pub rate_per_site: u32,
    /// The data directory: uploaded documents are kept under `uploads/` for re-ingesting.
    pub data_dir: std::path::PathBuf,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            default_kb: "default".into(),
            max_body_bytes: 64 * 1024,
            max_message_chars: 4000,
            max_tokens: 256,
            passages: 4,
            context_tokens: 1536,
            history_messages: 6,
            rate_per_ip: 600,
            rate_per_site: 3000,
            data_dir: std::path::PathBuf::from("."),
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub requests: RequestMetrics,
    pub database: Database,
    pub knowledge: Arc<Knowledge>,
    /// The generator serving now; hot-swapped when `production` moves.
    pub serving: crate::registry::Serving,
    pub config: ApiConfig,
    pub(crate) retrievers: RwLock<HashMap<i64, Arc<Retriever>>>,
    pub(crate) ip_limits: RateLimiter<std::net::IpAddr>,
    pub(crate) site_limits: RateLimiter<i64>,
}

impl AppState {
    pub fn new(
        knowledge: Knowledge,
        serving: crate::registry::Serving,
        config: ApiConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            requests: RequestMetrics::default(),
            database: knowledge.database.clone(),
            knowledge: Arc::new(knowledge),
            serving,
            ip_limits: RateLimiter::new(config.rate_per_ip),
            site_limits: RateLimiter::new(config.rate_per_site),
            config,
            retrievers: RwLock::new(HashMap::new()),
        })
    }

    /// The generator a new request uses (and keeps until it ends, across a hot-swap).
    pub fn generator(&self) -> Arc<Generator> {
        self.serving.current()
    }

    /// The knowledge base's retriever, loaded on first use.
    async fn retriever(&self, knowledge_base_id: i64) -> Result<Arc<Retriever>, ApiError> {
        if let Some(r) = self.retrievers.read().await.get(&knowledge_base_id) {
            return Ok(r.clone());
        }
        let retriever = Arc::new(
            Retriever::load(&self.database, knowledge_base_id)
                .await
                .map_err(ApiError::internal)?,
        );
        self.retrievers
            .write()
            .await
            .insert(knowledge_base_id, retriever.clone());
        Ok(retriever)
    }
}

/// Request counts by status class and total handling time, for `/metrics`.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    by_class: [std::sync::atomic::AtomicU64; 5],
    micros: std::sync::atomic::AtomicU64,
}

async fn count_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    use std::sync::atomic::Ordering;
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let class = (response.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    state.requests.by_class[class].fetch_add(1, Ordering::Relaxed);
    state
        .requests
        .micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    response
}

/// Prometheus text format.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let generator = state.generator();
    let g = &generator.metrics;
    let mut out = String::new();
    let _ = writeln!(out, "# TYPE kefu_http_requests_total counter");
    for (i, counter) in state.requests.by_class.iter().enumerate() {
        let _ = writeln!(
            out,
            "kefu_http_requests_total{{status=\"{}xx\"}} {}",
            i + 1,
            counter.load(Relaxed)
        );
    }
    let total: u64 = state
        .requests
        .by_class
        .iter()
        .map(|c| c.load(Relaxed))
        .sum();
    let _ = writeln!(out, "# TYPE kefu_http_request_duration_seconds summary");
    let _ = writeln!(
        out,
        "kefu_http_request_duration_seconds_sum {}",
        state.requests.micros.load(Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "kefu_http_request_duration_seconds_count {total}");
    let generations = g.generations.load(Relaxed);
    let _ = writeln!(out, "# TYPE kefu_time_to_first_token_seconds summary");
    let _ = writeln!(
        out,
        "kefu_time_to_first_token_seconds_sum {}",
        g.first_token_ms.load(Relaxed) as f64 / 1e3
    );
    let _ = writeln!(out, "kefu_time_to_first_token_seconds_count {generations}");
    let _ = writeln!(out, "# TYPE kefu_generated_tokens_total counter");
    let _ = writeln!(
        out,
        "kefu_generated_tokens_total {}",
        g.generated_tokens.load(Relaxed)
    );
    let _ = writeln!(out, "# TYPE kefu_generation_seconds_total counter");
    let _ = writeln!(
        out,
        "kefu_generation_seconds_total {}",
        g.generation_ms.load(Relaxed) as f64 / 1e3
    );
    let _ = writeln!(out, "# TYPE kefu_generations_total counter");
    let _ = writeln!(
        out,
        "kefu_generations_total{{outcome=\"done\"}} {generations}"
    );
    let _ = writeln!(
        out,
        "kefu_generations_total{{outcome=\"failed\"}} {}",
        g.failed.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "kefu_generations_total{{outcome=\"rejected\"}} {}",
        g.rejected.load(Relaxed)
    );
    let _ = writeln!(out, "# TYPE kefu_generation_queue_depth gauge");
    let _ = writeln!(
        out,
        "kefu_generation_queue_depth {}",
        generator.queue_depth()
    );
    let _ = writeln!(out, "# TYPE kefu_model_swaps_total counter");
    let _ = writeln!(
        out,
        "kefu_model_swaps_total {}",
        state.serving.swaps.load(Relaxed)
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// An error answer: status, a stable machine-readable code, a message for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        eprintln!("internal error: {error}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed; the error is in its log",
        )
    }

    fn busy() -> Self {
        Self {
            retry_after: Some(2),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "every generation slot is taken; retry shortly",
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "invalid_json",
        };
        Self::new(status, code, rejection.body_text())
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::BytesRejection) -> Self {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "invalid_body"
        };
        Self::new(status, code, rejection.body_text())
    }
}

/// `Json<T>` whose rejections are `ApiError`s.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(Self(value))
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    // What a widget may call, from the origins its site allows (CORS).
    let customer = Router::new()
        .route("/api/conversations", post(create_conversation))
        .route(
            "/api/conversations/{id}/messages",
            post(post_message).get(list_messages),
        )
        .route(
            "/api/conversations/{id}/messages/{message}/regenerate",
            post(regenerate),
        )
        .route(
            "/api/conversations/{id}/messages/{message}/feedback",
            post(feedback),
        )
        .route("/api/conversations/{id}/handoff", post(request_handoff))
        .route("/api/widget/site", get(widget_site))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::access::cors,
        ));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi))
        .merge(customer)
        .route("/api/auth/login", post(login))
        .route("/api/auth/logout", post(logout))
        .route("/api/agent/conversations", get(agent_conversations))
        .route("/api/agent/conversations/{id}", get(agent_transcript))
        .route(
            "/api/agent/conversations/{id}/messages/{message}/feedback",
            post(agent_feedback),
        )
        .route("/api/agent/conversations/{id}/takeover", post(take_over))
        .route("/api/agent/conversations/{id}/release", post(release))
        .route("/api/agent/conversations/{id}/reply", post(agent_reply))
        .route(
            "/api/admin/users",
            post(add_user).get(crate::admin::list_users),
        )
        .route(
            "/api/admin/users/{name}",
            axum::routing::delete(crate::admin::delete_user),
        )
        .route(
            "/api/admin/sites",
            get(crate::admin::list_sites).post(crate::admin::add_site),
        )
        .route(
            "/api/admin/sites/{site}",
            axum::routing::put(crate::admin::set_site_origins).delete(crate::admin::delete_site),
        )
        .route(
            "/api/admin/knowledge-bases",
            get(crate::admin::list_knowledge_bases),
        )
        .route("/api/admin/models", get(crate::admin::list_models))
        .route(
            "/api/admin/models/rollback",
            post(crate::admin::rollback_model),
        )
        .route(
            "/api/admin/models/{version}/promote",
            post(crate::admin::promote_model),
        )
        .route(
            "/api/admin/training/jobs",
            get(crate::admin::list_jobs).post(crate::admin::start_training),
        )
        .route("/api/admin/training/jobs/{job}", get(crate::admin::get_job))
        .route(
            "/api/admin/training/schedule",
            get(crate::admin::get_schedule).put(crate::admin::set_schedule),
        )
        .route(
            "/api/admin/training/jobs/{job}/cancel",
            post(crate::admin::cancel_job),
        )
        .route(
            "/api/admin/knowledge-bases/{kb}/documents",
            get(crate::admin::list_documents)
                .post(crate::admin::upload_document)
                .layer(DefaultBodyLimit::max(
                    kefu_rag::parse::MAX_FILE_BYTES as usize,
                )),
        )
        .route(
            "/api/admin/knowledge-bases/{kb}/documents/{document}",
            axum::routing::delete(crate::admin::delete_document),
        )
        .route(
            "/api/admin/knowledge-bases/{kb}/documents/{document}/reingest",
            post(crate::admin::reingest_document),
        )
        .route("/api/admin/feedback", get(crate::datasets::inbox))
        .route("/api/admin/feedback/review", post(crate::datasets::review))
        .route("/api/admin/datasets", get(crate::datasets::list))
        .route(
            "/api/admin/datasets/{dataset}",
            get(crate::datasets::preview),
        )
        .route("/api/admin/export/{kind}", get(export))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .merge(crate::pages::routes())
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::access::limit_per_ip,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn no_such_route(headers: HeaderMap) -> Response {
    if crate::pages::wants_html(&headers) {
        return crate::pages::error_page(StatusCode::NOT_FOUND, "There is no such page.");
    }
    ApiError::not_found("no_such_route", "there is no such route").into_response()
}

/// What the widget asks before its first question: is its key valid here, from this origin?
async fn widget_site(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let site = crate::access::requested_site(&state, &headers).await?;
    crate::access::check_origin(site.as_ref(), &headers)?;
    Ok(Json(json!({"site": site.map(|s| s.name)})))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method (see /api/openapi.json)",
    )
}

/// The OpenAPI 3.1 description of this API (kept in `server/openapi.json`).
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
        .into_response()
}

async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    state
        .database
        .knowledge_base(&state.config.default_kb)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string()))?;
    let generator = state.generator();
    Ok(Json(json!({
        "status": "ready",
        "model": generator.name,
        "model_version": generator.version,
        "queue_depth": generator.queue_depth(),
    })))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewConversation {
    #[serde(default)]
    knowledge_base: Option<String>,
}

async fn create_conversation(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let site = crate::access::requested_site(&state, &headers).await?;
    crate::access::check_origin(site.as_ref(), &headers)?;
    if let Some(site) = &site {
        crate::access::charge_site(&state, site)?;
    }
    let body = body?;
    // The body is optional: none (or `{}`) means the site's or the default knowledge base.
    let request: NewConversation = if body.iter().all(u8::is_ascii_whitespace) {
        NewConversation::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
    };
    let named = match &request.knowledge_base {
        Some(name) => Some(crate::admin::existing_kb(&state, name).await?),
        None => None,
    };
    let kb = match (&site, named) {
        (Some(site), Some(kb)) if kb != site.knowledge_base_id => {
            return Err(ApiError::bad_request(
                "knowledge_base_mismatch",
                format!(
                    "the widget site `{}` answers from its own knowledge base",
                    site.name
                ),
            ));
        }
        (Some(site), _) => site.knowledge_base_id,
        (None, Some(kb)) => kb,
        (None, None) => state
            .database
            .knowledge_base(&state.config.default_kb)
            .await
            .map_err(ApiError::internal)?,
    };
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
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": conversation.public_id,
            "customer_token": token,
            "site": site.map(|s| s.name),
        })),
    ))
}

/// The conversation `public_id`, if the request carries its customer's token, comes from an
/// origin its widget site allows, and names no other site. A wrong token answers like an
/// unknown id, so ids cannot be probed.
async fn customer_conversation(
    state: &AppState,
    headers: &HeaderMap,
    public_id: &str,
) -> Result<kefu_db::Conversation, ApiError> {
    let requested = crate::access::requested_site(state, headers).await?;
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
        .map_err(ApiError::internal)?;
    let not_found = || {
        ApiError::not_found(
            "conversation_not_found",
            "no such conversation for this customer",
        )
    };
    let conversation = match conversation {
        Some(c) if c.customer_secret_hash == sha256_hex(token.trim()) => c,
        _ => return Err(not_found()),
    };
    if requested.is_some() && requested.as_ref().map(|s| s.id) != conversation.site_id {
        return Err(not_found());
    }
    let site = match (requested, conversation.site_id) {
        (Some(site), _) => Some(site),
        (None, Some(id)) => state.database.site(id).await.map_err(ApiError::internal)?,
        (None, None) => None,
    };
    crate::access::check_origin(site.as_ref(), headers)?;
    if let Some(site) = &site {
        crate::access::charge_site(state, site)?;
    }
    Ok(conversation)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMessage {
    content: String,
}

fn check_message(state: &AppState, content: &str) -> Result<(), ApiError> {
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

async fn list_messages(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let conversation = customer_conversation(&state, &headers, &id).await?;
    let messages = state
        .database
        .messages(conversation.id)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "id": conversation.public_id,
        "status": conversation.status,
        "messages": messages.iter().map(|m| json!({
            "id": m.id, "role": m.role, "content": m.content, "reply_to": m.reply_to,
            "created_ms": m.created_ms,
        })).collect::<Vec<_>>(),
    })))
}

async fn post_message(
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

async fn regenerate(
    State(state): State<Arc<AppState>>,
    Path((id, message_id)): Path<(String, i64)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let conversation = customer_conversation(&state, &headers, &id).await?;
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

async fn conversation_message(
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

/// The last messages before `before` (all when `None`), as chat turns.
async fn history(
    state: &AppState,
    conversation_id: i64,
    before: Option<i64>,
) -> Result<Vec<ChatMessage>, ApiError> {
    let messages = state
        .database
        .messages(conversation_id)
        .await
        .map_err(ApiError::internal)?;
    let turns: Vec<ChatMessage> = messages
        .iter()
        .filter(|m| before.is_none_or(|b| m.id < b))
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
    Ok(turns.into_iter().skip(skip).collect())
}

/// What retrieval and prompt building produce for one answer.
struct Prepared {
    prompt: Vec<u32>,
    messages: Vec<ChatMessage>,
    citations: Vec<Citation>,
    retrieved: Value,
}

fn sampling_params(state: &AppState) -> GenerationParams {
    GenerationParams {
        sampling: SamplingConfig {
            temperature: 0.0,
            repetition_penalty: 1.1,
            ..SamplingConfig::default()
        },
        max_tokens: state.config.max_tokens,
        stop: Vec::new(),
        ignore_eos: false,
    }
}

/// Retrieves, builds the grounded prompt (off the async runtime: embedding and tokenizing are
/// model work).
async fn prepare(
    state: &Arc<AppState>,
    generator: &Arc<Generator>,
    knowledge_base_id: i64,
    question: String,
    history: Vec<ChatMessage>,
) -> Result<Prepared, ApiError> {
    let retriever = state.retriever(knowledge_base_id).await?;
    let state = state.clone();
    let generator = generator.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Prepared> {
        let ranked = retriever.search(&state.knowledge, &question, &RetrievalConfig::default())?;
        let model = &generator.model;
        let mut grounded = grounded_prompt(
            model,
            &retriever,
            &ranked,
            &question,
            state.config.passages,
            state.config.context_tokens,
        )?;
        // Earlier turns go between the instructions and the question.
        let question_turn = grounded.messages.pop();
        grounded.messages.extend(history);
        grounded.messages.extend(question_turn);
        let prompt = model.chat_prompt(&grounded.messages)?;
        let retrieved = json!(
            grounded
                .citations
                .iter()
                .map(|c| {
                    let chunk = retriever.chunk_by_id(c.chunk_id);
                    json!({
                        "chunk_id": c.chunk_id, "score": c.score, "title": c.title,
                        "heading": c.heading, "path": c.path,
                        "text": chunk.map(|chunk| chunk.text.clone()),
                    })
                })
                .collect::<Vec<_>>()
        );
        Ok(Prepared {
            prompt,
            messages: grounded.messages,
            citations: grounded.citations,
            retrieved,
        })
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| {
        let text = e.to_string();
        if text.contains("context") {
            ApiError::bad_request("prompt_too_long", text)
        } else {
            ApiError::internal(text)
        }
    })
}

fn finish_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::EndOfTurn | FinishReason::StopString => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
    }
}

fn citation_json(c: &Citation) -> Value {
    json!({"number": c.number, "chunk_id": c.chunk_id, "title": c.title, "heading": c.heading,
           "path": c.path, "score": c.score, "excerpt": c.excerpt})
}

/// Streams a grounded answer to `question_id` as Server-Sent Events: `token` events
/// (`{"text"}`), then `done` (`{"message_id", "citations", "finish_reason", "model_version"}`)
/// once the answer and its served-prompt record are stored, or `error`.
async fn answer(
    state: Arc<AppState>,
    conversation: kefu_db::Conversation,
    question_id: i64,
    question: String,
    history: Vec<ChatMessage>,
) -> Result<Response, ApiError> {
    // One generator for the whole answer: a hot-swap mid-stream does not move it.
    let generator = state.generator();
    let prepared = prepare(
        &state,
        &generator,
        conversation.knowledge_base_id,
        question,
        history,
    )
    .await?;
    let params = sampling_params(&state);
    let (events, mut generated) = mpsc::unbounded_channel();
    generator
        .submit(prepared.prompt.clone(), params.clone(), events)
        .map_err(|QueueFull| ApiError::busy())?;
    let (sse, stream) = mpsc::unbounded_channel::<SseEvent>();
    tokio::spawn(async move {
        while let Some(event) = generated.recv().await {
            match event {
                Event::Token(text) => {
                    let event = SseEvent::default()
                        .event("token")
                        .data(json!({"text": text}).to_string());
                    if sse.send(event).is_err() {
                        return; // the client left: dropping `generated` cancels the job
                    }
                }
                Event::Done(summary) => {
                    let outcome = store_answer(
                        &state,
                        &generator.version,
                        &conversation,
                        question_id,
                        &prepared,
                        &params,
                        &summary,
                    )
                    .await;
                    let event = match outcome {
                        Ok(message_id) => SseEvent::default().event("done").data(
                            json!({
                                "message_id": message_id,
                                "citations": prepared.citations.iter().map(citation_json).collect::<Vec<_>>(),
                                "finish_reason": finish_name(summary.finish_reason),
                                "model_version": generator.version,
                            })
                            .to_string(),
                        ),
                        Err(e) => SseEvent::default().event("error").data(
                            json!({"code": "internal", "message": e.message}).to_string(),
                        ),
                    };
                    let _ = sse.send(event);
                    return;
                }
                Event::Failed(message) => {
                    let _ = sse.send(SseEvent::default().event("error").data(
                        json!({"code": "generation_failed", "message": message}).to_string(),
                    ));
                    return;
                }
            }
        }
    });
    let stream = UnboundedReceiverStream::new(stream).map(Ok::<_, Infallible>);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

async fn store_answer(
    state: &AppState,
    model_version: &str,
    conversation: &kefu_db::Conversation,
    question_id: i64,
    prepared: &Prepared,
    params: &GenerationParams,
    summary: &Summary,
) -> Result<i64, ApiError> {
    let served = ServedPrompt {
        model_version: model_version.to_string(),
        template_id: "kefu-grounded-v1".into(),
        sampling: json!({
            "temperature": params.sampling.temperature,
            "repetition_penalty": params.sampling.repetition_penalty,
            "top_k": params.sampling.top_k, "top_p": params.sampling.top_p,
            "max_tokens": params.max_tokens,
        })
        .to_string(),
        retrieved: prepared.retrieved.to_string(),
        prompt: json!(prepared.messages).to_string(),
        prompt_tokens: summary.prompt_tokens as i64,
        completion_tokens: summary.completion_tokens as i64,
        first_token_ms: summary.first_token_ms as i64,
        latency_ms: summary.total_ms as i64,
        finish_reason: finish_name(summary.finish_reason).into(),
    };
    let message = state
        .database
        .add_answer(conversation.id, question_id, &summary.text, &served)
        .await
        .map_err(ApiError::internal)?;
    Ok(message.id)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    /// `up` or `down`.
    rating: String,
    #[serde(default)]
    reasons: Vec<String>,
    #[serde(default)]
    comment: Option<String>,
}

async fn feedback(
    State(state): State<Arc<AppState>>,
    Path((id, message_id)): Path<(String, i64)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<FeedbackBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let conversation = customer_conversation(&state, &headers, &id).await?;
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
    let event = state
        .database
        .add_feedback(&NewFeedback {
            message_id,
            rater_role: "customer".into(),
            rater: None,
            rating,
            reasons: body.reasons,
            comment: body.comment,
            corrected_answer: None,
        })
        .await
        .map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(json!({"id": event}))))
}

async fn models(
    State(state): State<Arc<AppState>>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    crate::auth::staff(&state.database, &method, &headers).await?;
    let generator = state.generator();
    Ok(Json(json!({
        "object": "list",
        "data": [{
            "id": "production", "object": "model", "created": 0, "owned_by": "kefu",
            "kefu_model": generator.name, "kefu_version": generator.version,
        }],
    })))
}

#[derive(Debug, Deserialize)]
struct OpenAiMessage {
    role: String,
    content: Value,
}

#[derive(Debug, Deserialize)]
struct ChatCompletionRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<OpenAiMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Value>,
    /// Kefu's extension: ground the answer in this knowledge base (`true` = the default one).
    #[serde(default)]
    retrieval: Option<Value>,
}

fn text_of(content: &Value) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(ApiError::bad_request(
                            "unsupported_content",
                            "only text content parts are supported",
                        ));
                    }
                }
            }
            Ok(text)
        }
        Value::Null => Ok(String::new()),
        _ => Err(ApiError::bad_request(
            "invalid_content",
            "content is a string or a list of text parts",
        )),
    }
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    method: axum::http::Method,
    headers: HeaderMap,
    ApiJson(request): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    crate::auth::staff(&state.database, &method, &headers).await?;
    let generator = state.generator();
    let model_name = request.model.clone().unwrap_or_else(|| "production".into());
    if !matches!(model_name.as_str(), "production" | "default" | "") {
        return Err(ApiError::not_found(
            "model_not_found",
            format!("model `{model_name}` is not served; use `production` (or `default`)"),
        ));
    }
    if request.messages.is_empty() {
        return Err(ApiError::bad_request(
            "empty_messages",
            "messages must hold at least one message",
        ));
    }
    let mut messages = Vec::with_capacity(request.messages.len());
    for m in &request.messages {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::bad_request(
                    "invalid_role",
                    format!("unknown role `{other}`"),
                ));
            }
        };
        let text = text_of(&m.content)?;
        check_message(&state, &text).or_else(|e| {
            if e.code == "empty_message" && role != Role::User {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        messages.push(ChatMessage::new(role, text));
    }
    let max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or(state.config.max_tokens);
    if max_tokens == 0 || max_tokens > 4096 {
        return Err(ApiError::bad_request(
            "invalid_max_tokens",
            "max_tokens is between 1 and 4096",
        ));
    }
    let temperature = request.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature)
        || request
            .top_p
            .is_some_and(|p| !(0.0..=1.0).contains(&p) || p == 0.0)
    {
        return Err(ApiError::bad_request(
            "invalid_sampling",
            "temperature is between 0 and 2, top_p in (0, 1]",
        ));
    }
    let stop = match &request.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::bad_request("invalid_stop", "stop is a string or strings"))?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_stop",
                "stop is a string or strings",
            ));
        }
    };
    let params = GenerationParams {
        sampling: SamplingConfig {
            temperature,
            top_p: request.top_p,
            seed: request.seed.unwrap_or(299_792_458),
            repetition_penalty: 1.1,
            ..SamplingConfig::default()
        },
        max_tokens,
        stop,
        ignore_eos: false,
    };
    // Retrieval: the last user message is the question; the other messages are history.
    let kb = match &request.retrieval {
        None | Some(Value::Null) | Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(state.config.default_kb.clone()),
        Some(Value::String(name)) => Some(name.clone()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_retrieval",
                "retrieval is true, false or a knowledge base name",
            ));
        }
    };
    let (prompt, citations) = match kb {
        Some(kb) => {
            let last_user = messages
                .iter()
                .rposition(|m| m.role == Role::User)
                .ok_or_else(|| {
                    ApiError::bad_request("no_question", "retrieval needs a user message")
                })?;
            let question = messages[last_user].content.clone();
            let history: Vec<ChatMessage> = messages[..last_user]
                .iter()
                .filter(|m| m.role != Role::System)
                .cloned()
                .collect();
            let kb_id = state
                .database
                .knowledge_base(&kb)
                .await
                .map_err(ApiError::internal)?;
            let prepared = prepare(&state, &generator, kb_id, question, history).await?;
            (prepared.prompt, prepared.citations)
        }
        None => {
            let model = generator.model.clone();
            let prompt = tokio::task::spawn_blocking(move || model.chat_prompt(&messages))
                .await
                .map_err(ApiError::internal)?
                .map_err(|e| ApiError::bad_request("invalid_prompt", e.to_string()))?;
            (prompt, Vec::new())
        }
    };
    let context = generator.model.config().max_position_embeddings;
    if prompt.len() >= context {
        return Err(ApiError::bad_request(
            "prompt_too_long",
            format!(
                "the prompt has {} tokens; the model's context is {context}",
                prompt.len()
            ),
        ));
    }
    let (events, mut generated) = mpsc::unbounded_channel();
    generator
        .submit(prompt, params, events)
        .map_err(|QueueFull| ApiError::busy())?;
    let id = format!("chatcmpl-{}", random_hex(12));
    let created = kefu_db::now_ms() / 1000;
    let citations: Vec<Value> = citations.iter().map(citation_json).collect();
    if !request.stream {
        let mut summary = None;
        while let Some(event) = generated.recv().await {
            match event {
                Event::Token(_) => {}
                Event::Done(s) => summary = Some(s),
                Event::Failed(message) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "generation_failed",
                        message,
                    ));
                }
            }
        }
        let summary = summary.ok_or_else(|| ApiError::internal("generation ended early"))?;
        return Ok(Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": "production",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": summary.text},
                "finish_reason": finish_name(summary.finish_reason),
            }],
            "usage": {
                "prompt_tokens": summary.prompt_tokens,
                "completion_tokens": summary.completion_tokens,
                "total_tokens": summary.prompt_tokens + summary.completion_tokens,
            },
            "kefu_citations": citations,
        }))
        .into_response());
    }
    let (sse, stream) = mpsc::unbounded_channel::<SseEvent>();
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Option<&str>| {
            SseEvent::default().data(
                json!({
                    "id": id, "object": "chat.completion.chunk", "created": created,
                    "model": "production",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                })
                .to_string(),
            )
        };
        if sse
            .send(chunk(json!({"role": "assistant", "content": ""}), None))
            .is_err()
        {
            return;
        }
        while let Some(event) = generated.recv().await {
            match event {
                Event::Token(text) => {
                    if sse.send(chunk(json!({"content": text}), None)).is_err() {
                        return;
                    }
                }
                Event::Done(summary) => {
                    let _ = sse.send(chunk(json!({}), Some(finish_name(summary.finish_reason))));
                    break;
                }
                Event::Failed(message) => {
                    let _ = sse.send(
                        SseEvent::default().data(
                            json!({"error": {"code": "generation_failed", "message": message}})
                                .to_string(),
                        ),
                    );
                    break;
                }
            }
        }
        let _ = sse.send(SseEvent::default().data("[DONE]"));
    });
    let stream = UnboundedReceiverStream::new(stream).map(Ok::<_, Infallible>);
    Ok(Sse::new(stream).into_response())
}

async fn request_handoff(
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
    }
    let status = if conversation.status == "agent" {
        "agent"
    } else {
        "handoff_requested"
    };
    Ok(Json(json!({"status": status})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    name: String,
    password: String,
}

async fn login(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<Login>,
) -> Result<Response, ApiError> {
    let user = state
        .database
        .user_by_name(&body.name)
        .await
        .map_err(ApiError::internal)?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let password = body.password.clone();
    // Verify even for unknown names (against a throwaway hash), so timing does not reveal
    // which names exist.
    let ok = tokio::task::spawn_blocking(move || {
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let hash = hash.unwrap_or_else(|| {
            DUMMY
                .get_or_init(|| crate::auth::hash_password("no such user").unwrap_or_default())
                .clone()
        });
        crate::auth::verify_password(&password, &hash)
    })
    .await
    .map_err(ApiError::internal)?;
    let Some(user) = user.filter(|_| ok) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong name or password",
        ));
    };
    let token = crate::auth::random_hex(32);
    let csrf = crate::auth::random_hex(16);
    state
        .database
        .create_session(
            &crate::auth::sha256_hex(&token),
            user.id,
            &csrf,
            kefu_db::now_ms() + crate::auth::SESSION_MS,
        )
        .await
        .map_err(ApiError::internal)?;
    let cookie = format!(
        "{}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        crate::auth::SESSION_COOKIE,
        crate::auth::SESSION_MS / 1000
    );
    let mut response =
        Json(json!({"name": user.name, "role": user.role, "csrf_token": csrf})).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(ApiError::internal)?,
    );
    Ok(response)
}

async fn logout(
    State(state): State<Arc<AppState>>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let staff = crate::auth::staff(&state.database, &method, &headers).await?;
    if staff.by_cookie {
        let token = crate::auth::cookie(&headers, crate::auth::SESSION_COOKIE).unwrap_or_default();
        state
            .database
            .delete_session(&crate::auth::sha256_hex(&token))
            .await
            .map_err(ApiError::internal)?;
    }
    let mut response = Json(json!({"signed_out": true})).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("kefu_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    Ok(response)
}

async fn agent_conversations(
    State(state): State<Arc<AppState>>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    crate::auth::staff(&state.database, &method, &headers).await?;
    let conversations = state
        .database
        .recent_conversations(200)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "conversations": conversations.iter().map(|c| json!({
            "id": c.public_id, "status": c.status, "created_ms": c.created_ms,
        })).collect::<Vec<_>>(),
    })))
}

async fn staff_conversation(
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
async fn agent_transcript(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    crate::auth::staff(&state.database, &method, &headers).await?;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFeedback {
    #[serde(default)]
    rating: Option<String>,
    #[serde(default)]
    reasons: Vec<String>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    corrected_answer: Option<String>,
}

async fn agent_feedback(
    State(state): State<Arc<AppState>>,
    Path((id, message_id)): Path<(String, i64)>,
    method: axum::http::Method,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AgentFeedback>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let staff = crate::auth::staff(&state.database, &method, &headers).await?;
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
    Ok((StatusCode::CREATED, Json(json!({"id": event}))))
}

/// A member of staff moves a conversation between the bot and a person: records the handoff
/// `event` and sets `status`.
async fn staff_handoff(
    state: &AppState,
    id: &str,
    method: &axum::http::Method,
    headers: &HeaderMap,
    event: &str,
    status: &'static str,
) -> Result<Json<Value>, ApiError> {
    let staff = crate::auth::staff(&state.database, method, headers).await?;
    let conversation = staff_conversation(state, id).await?;
    state
        .database
        .handoff(conversation.id, event, Some(staff.user.id), status)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({"status": status})))
}

async fn take_over(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    staff_handoff(&state, &id, &method, &headers, "taken", "agent").await
}

/// Hands a conversation back to the bot.
async fn release(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    staff_handoff(&state, &id, &method, &headers, "released", "assistant").await
}

async fn agent_reply(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    method: axum::http::Method,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewMessage>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    crate::auth::staff(&state.database, &method, &headers).await?;
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
    Ok((StatusCode::CREATED, Json(json!({"message_id": message.id}))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    role: String,
    password: String,
}

async fn add_user(
    State(state): State<Arc<AppState>>,
    method: axum::http::Method,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    crate::auth::admin(&state.database, &method, &headers).await?;
    crate::auth::check_role(&body.role).map_err(|m| ApiError::bad_request("invalid_role", m))?;
    if body.name.trim().is_empty() || body.name.len() > 100 {
        return Err(ApiError::bad_request(
            "invalid_name",
            "a name has 1 to 100 characters",
        ));
    }
    if body.password.chars().count() < 8 {
        return Err(ApiError::bad_request(
            "weak_password",
            "a password has at least 8 characters",
        ));
    }
    let password = body.password.clone();
    let hash = tokio::task::spawn_blocking(move || crate::auth::hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let user = state
        .database
        .upsert_user(body.name.trim(), &body.role, &hash)
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": user.name, "role": user.role})),
    ))
}

#[derive(Debug, Deserialize)]
struct ExportQuery {
    #[serde(default)]
    format: Option<String>,
}

async fn export(
    State(state): State<Arc<AppState>>,
    Path(kind): Path<String>,
    axum::extract::Query(query): axum::extract::Query<ExportQuery>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    crate::auth::admin(&state.database, &method, &headers).await?;
    let kind = match kind.as_str() {
        "sft" => crate::export::Kind::Sft,
        "pairs" => crate::export::Kind::Pairs,
        "kto" => crate::export::Kind::Kto,
        other => {
            return Err(ApiError::not_found(
                "unknown_export",
                format!("export `sft`, `pairs` or `kto`, not `{other}`"),
            ));
        }
    };
    let format = match query.format.as_deref() {
        None | Some("trl") => crate::export::Format::Trl,
        Some("llama-factory") => crate::export::Format::LlamaFactory,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_format",
                format!("format is `trl` or `llama-factory`, not `{other}`"),
            ));
        }
    };
    let examples = crate::export::compile(&state.database, kind, format)
        .await
        .map_err(ApiError::internal)?;
    let mut body = String::new();
    for example in examples {
        body.push_str(&example.to_string());
        body.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The router's paths, read from this file's `.route("…"` calls.
    fn routed_paths() -> BTreeSet<String> {
        let source = include_str!("http.rs");
        let source = source.split("#[cfg(test)]").next().unwrap();
        let mut paths = BTreeSet::new();
        let mut rest = source;
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let start = rest.find('"').expect("a route path") + 1;
            let end = start + rest[start..].find('"').expect("a closing quote");
            paths.insert(rest[start..end].to_string());
        }
        paths
    }

    #[test]
    fn the_openapi_document_describes_every_route_and_no_other() {
        let document: serde_json::Value =
            serde_json::from_str(include_str!("../openapi.json")).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        let described: BTreeSet<String> = document["paths"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let routed = routed_paths();
        assert!(routed.len() > 20, "{routed:?}");
        assert_eq!(described, routed);
    }
}
