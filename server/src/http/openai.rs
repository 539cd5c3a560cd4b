//! The OpenAI-compatible API for staff tokens: `/v1/models` and `/v1/chat/completions`
//! (plain or grounded in a knowledge base with Kefu's `retrieval` extension; streamed or not).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use kefu_model::generate::GenerationParams;
use kefu_model::sampling::SamplingConfig;
use kefu_model::{ChatMessage, Role};
use kefu_rag::prompt::Citation;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::auth::random_hex;
use crate::generator::Event;
use crate::generator::Generator;
use crate::http::answer::citation_json;
use crate::http::answer::finish_name;
use crate::http::answer::{prepare, start_generation};
use crate::http::customer::check_message;
use crate::http::error::{ApiError, ApiJson};
use crate::http::guard::Staff;
use crate::http::state::AppState;

pub(crate) async fn models(
    State(state): State<Arc<AppState>>,
    _: Staff,
) -> Result<Json<Value>, ApiError> {
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
pub(crate) struct OpenAiMessage {
    pub(crate) role: String,
    pub(crate) content: Value,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChatCompletionRequest {
    #[serde(default)]
    pub(crate) model: Option<String>,
    pub(crate) messages: Vec<OpenAiMessage>,
    #[serde(default)]
    pub(crate) stream: bool,
    #[serde(default)]
    pub(crate) max_tokens: Option<usize>,
    #[serde(default)]
    pub(crate) max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub(crate) temperature: Option<f64>,
    #[serde(default)]
    pub(crate) top_p: Option<f64>,
    #[serde(default)]
    pub(crate) seed: Option<u64>,
    #[serde(default)]
    pub(crate) stop: Option<Value>,
    /// Kefu's extension: ground the answer in this knowledge base (`true` = the default one).
    #[serde(default)]
    pub(crate) retrieval: Option<Value>,
}

pub(crate) fn text_of(content: &Value) -> Result<String, ApiError> {
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

/// The request's messages as chat messages, each checked (only a user message may be empty).
fn chat_messages(
    state: &AppState,
    request: &ChatCompletionRequest,
) -> Result<Vec<ChatMessage>, ApiError> {
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
        check_message(state, &text).or_else(|e| {
            if e.code == "empty_message" && role != Role::User {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        messages.push(ChatMessage::new(role, text));
    }
    Ok(messages)
}

/// At most this many stop strings (OpenAI's limit), of at most this many characters each.
const MAX_STOP_STRINGS: usize = 4;
const MAX_STOP_CHARS: usize = 64;

/// The request's sampling settings, checked.
fn generation_params(
    state: &AppState,
    request: &ChatCompletionRequest,
) -> Result<GenerationParams, ApiError> {
    // The server's answer length (`--max-tokens`) is the most a request may ask for: a larger
    // request is cut to it (its `finish_reason` says `length` when it ran out).
    let limit = state.config.answers.max_tokens;
    let max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or(limit);
    if max_tokens == 0 {
        return Err(ApiError::bad_request(
            "invalid_max_tokens",
            format!("max_tokens is at least 1 (this server's limit is {limit})"),
        ));
    }
    let max_tokens = max_tokens.min(limit);
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
    if stop.len() > MAX_STOP_STRINGS
        || stop
            .iter()
            .any(|s| s.is_empty() || s.chars().count() > MAX_STOP_CHARS)
    {
        return Err(ApiError::bad_request(
            "invalid_stop",
            format!(
                "stop is at most {MAX_STOP_STRINGS} strings of 1 to {MAX_STOP_CHARS} characters"
            ),
        ));
    }
    Ok(GenerationParams {
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
    })
}

/// The knowledge base Kefu's `retrieval` extension names, if any (`true`: the default one).
fn retrieval_knowledge_base(
    state: &AppState,
    request: &ChatCompletionRequest,
) -> Result<Option<String>, ApiError> {
    match &request.retrieval {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(Value::Bool(true)) => Ok(Some(state.config.default_kb.clone())),
        Some(Value::String(name)) => Ok(Some(name.clone())),
        Some(_) => Err(ApiError::bad_request(
            "invalid_retrieval",
            "retrieval is true, false or a knowledge base name",
        )),
    }
}

/// The prompt's token ids and the passages it cites: grounded through the answer pipeline
/// (the last user message is the question, the others its history), or the messages as they
/// are.
async fn prompt_of(
    state: &Arc<AppState>,
    generator: &Arc<Generator>,
    messages: Vec<ChatMessage>,
    knowledge_base: Option<String>,
) -> Result<(Vec<u32>, Vec<Citation>), ApiError> {
    let Some(kb) = knowledge_base else {
        let model = generator.model.clone();
        let prompt = tokio::task::spawn_blocking(move || model.chat_prompt(&messages))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::bad_request("invalid_prompt", e.to_string()))?;
        return Ok((prompt, Vec::new()));
    };
    let last_user = messages
        .iter()
        .rposition(|m| m.role == Role::User)
        .ok_or_else(|| ApiError::bad_request("no_question", "retrieval needs a user message"))?;
    let question = messages[last_user].content.clone();
    let history: Vec<ChatMessage> = messages[..last_user]
        .iter()
        .filter(|m| m.role != Role::System)
        .cloned()
        .collect();
    // Only the default knowledge base is made on first use; another name must exist.
    let kb_id = if kb == state.config.default_kb {
        state
            .database
            .knowledge_base(&kb)
            .await
            .map_err(ApiError::internal)?
    } else {
        crate::http::admin::documents::existing_kb(state, &kb).await?
    };
    let prepared = prepare(state, generator, kb_id, question, history.into()).await?;
    Ok((prepared.prompt, prepared.citations))
}

pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    _: Staff,
    ApiJson(request): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let generator = state.generator();
    let model_name = request.model.clone().unwrap_or_else(|| "production".into());
    if !matches!(model_name.as_str(), "production" | "default" | "") {
        return Err(ApiError::not_found(
            "model_not_found",
            format!("model `{model_name}` is not served; use `production` (or `default`)"),
        ));
    }
    let messages = chat_messages(&state, &request)?;
    let params = generation_params(&state, &request)?;
    let knowledge_base = retrieval_knowledge_base(&state, &request)?;
    let (prompt, citations) = prompt_of(&state, &generator, messages, knowledge_base).await?;
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
    let generated = start_generation(&generator, prompt, params)?;
    let id = format!("chatcmpl-{}", random_hex(12));
    let created = kefu_db::now_ms() / 1000;
    let citations: Vec<Value> = citations.iter().map(citation_json).collect();
    if request.stream {
        Ok(completion_stream(generated, id, created))
    } else {
        completion(generated, id, created, citations).await
    }
}

/// The whole completion, once generated, as one JSON object.
async fn completion(
    mut generated: mpsc::UnboundedReceiver<Event>,
    id: String,
    created: i64,
    citations: Vec<Value>,
) -> Result<Response, ApiError> {
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
    Ok(Json(json!({
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
            "prompt_tokens_details": {"cached_tokens": summary.cached_tokens},
        },
        "kefu_citations": citations,
    }))
    .into_response())
}

/// The completion as OpenAI's `chat.completion.chunk` events, then `[DONE]`.
fn completion_stream(
    mut generated: mpsc::UnboundedReceiver<Event>,
    id: String,
    created: i64,
) -> Response {
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
    Sse::new(stream).into_response()
}
