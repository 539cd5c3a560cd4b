//! The answer pipeline the customer routes and the OpenAI route share: retrieval and the
//! grounded prompt (off the async runtime), generation on the serving generator, the stored
//! answer with its served-prompt record, and the customer's Server-Sent Events stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use kefu_db::ServedPrompt;
use kefu_model::generate::{FinishReason, GenerationParams};
use kefu_rag::prompt::Citation;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::answering::{self, Abstention, History, Prepared};
use crate::generator::{Event, Generator, QueueFull, Summary};
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Retrieves and builds the grounded prompt through [`crate::answering::prepare`], off the
/// async runtime (embedding and tokenizing are model work).
pub(crate) async fn prepare(
    state: &Arc<AppState>,
    generator: &Arc<Generator>,
    knowledge_base_id: i64,
    question: String,
    history: History,
) -> Result<Prepared, ApiError> {
    let retriever = state.retriever(knowledge_base_id).await?;
    let state = state.clone();
    let generator = generator.clone();
    tokio::task::spawn_blocking(move || {
        answering::prepare(
            &state.knowledge,
            &retriever,
            &generator.model,
            &question,
            history,
            &state.config.answers,
        )
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

pub(crate) fn finish_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::EndOfTurn | FinishReason::StopString => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
    }
}

/// A citation as callers see it: title, heading, excerpt, and the document's public `url` when
/// it was ingested from one — never the server's file path (a document ingested from disk is
/// named by its file name only, `source`).
pub(crate) fn citation_json(c: &Citation) -> Value {
    let is_url = c.path.starts_with("https://") || c.path.starts_with("http://");
    let source = if is_url {
        c.path.as_str()
    } else {
        c.path.rsplit(['/', '\\']).next().unwrap_or_default()
    };
    json!({"number": c.number, "chunk_id": c.chunk_id, "title": c.title, "heading": c.heading,
           "url": is_url.then_some(c.path.as_str()), "source": source,
           "score": c.score, "excerpt": c.excerpt})
}

/// Queues `prompt` on `generator`; its events arrive on the receiver (dropping it cancels the
/// job). A full queue is a 503 with `Retry-After`.
pub(crate) fn start_generation(
    generator: &Generator,
    prompt: Vec<u32>,
    params: GenerationParams,
) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
    let (events, generated) = mpsc::unbounded_channel();
    generator
        .submit(prompt, params, events)
        .map_err(|QueueFull| ApiError::busy())?;
    Ok(generated)
}

/// The `done` event's data, or the `error` event when the answer could not be stored.
fn done_event(
    stored: Result<i64, ApiError>,
    prepared: &Prepared,
    version: &str,
    summary: &Summary,
    outcome: &Outcome,
) -> SseEvent {
    match stored {
        Ok(message_id) => SseEvent::default().event("done").data(
            json!({
                "message_id": message_id,
                // An abstention cites nothing: the passages did not hold the answer (the
                // served-prompt record keeps them).
                "citations": match outcome.abstention {
                    None => prepared.citations.iter().map(citation_json).collect::<Vec<_>>(),
                    Some(_) => Vec::new(),
                },
                "finish_reason": finish_name(summary.finish_reason),
                "model_version": version,
                // Prompt tokens, and those the prefix cache supplied (the model ran the rest).
                "usage": {
                    "prompt_tokens": summary.prompt_tokens,
                    "cached_tokens": summary.cached_tokens,
                    "completion_tokens": summary.completion_tokens,
                },
                "abstained": outcome.abstention.is_some(),
                "abstention_reason": outcome.abstention.map(Abstention::name),
                // What the customer should see when it differs from the streamed text.
                "replacement": outcome.abstention.map(|_| outcome.text.clone()),
            })
            .to_string(),
        ),
        Err(e) => SseEvent::default()
            .event("error")
            .data(json!({"code": "internal", "message": e.message}).to_string()),
    }
}

/// What is stored and shown for one answer after the checks.
pub(crate) struct Outcome {
    /// The answer as stored: the model's text, or the abstention reply that replaced it.
    pub(crate) text: String,
    pub(crate) abstention: Option<Abstention>,
    /// The model's text when the reply replaced it.
    pub(crate) draft: Option<String>,
}

impl Outcome {
    fn of(state: &AppState, prepared: &Prepared, summary: &Summary) -> Self {
        match answering::review(prepared, &summary.text, &state.config.answers) {
            None => Self {
                text: summary.text.clone(),
                abstention: None,
                draft: None,
            },
            Some(reason) => Self {
                text: prepared.abstention_reply().to_string(),
                abstention: Some(reason),
                draft: Some(summary.text.clone()).filter(|t| !t.is_empty()),
            },
        }
    }
}

/// The abstention reply, stored and streamed without generating (no passage resembles the
/// question).
async fn abstain_at_once(
    state: Arc<AppState>,
    version: String,
    conversation: kefu_db::Conversation,
    question_id: i64,
    prepared: Prepared,
) -> Response {
    let params = answering::generation_params(&state.config.answers);
    let summary = Summary {
        text: String::new(),
        prompt_tokens: 0,
        cached_tokens: 0,
        completion_tokens: 0,
        finish_reason: FinishReason::EndOfTurn,
        first_token_ms: 0,
        total_ms: 0,
        queued_ms: 0,
    };
    let outcome = Outcome::of(&state, &prepared, &summary);
    let done = stored_done_event(
        &state,
        &version,
        &conversation,
        question_id,
        &prepared,
        &params,
        &summary,
        &outcome,
    )
    .await;
    let events = vec![
        SseEvent::default()
            .event("token")
            .data(json!({"text": outcome.text}).to_string()),
        done,
    ];
    let stream = tokio_stream::iter(events.into_iter().map(Ok::<_, Infallible>));
    Sse::new(stream).into_response()
}

/// Streams a grounded answer to `question_id` as Server-Sent Events: `token` events
/// (`{"text"}`), then `done` (`{"message_id", "citations", "finish_reason", "model_version",
/// "abstained", "abstention_reason", "replacement"}`) once the answer and its served-prompt
/// record are stored, or `error`. An answer the checks reject is stored as the abstention
/// reply, which `replacement` carries for the widget to show instead of the streamed text.
pub(crate) async fn answer(
    state: Arc<AppState>,
    conversation: kefu_db::Conversation,
    question_id: i64,
    question: String,
    history: History,
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
    if prepared.abstention.is_some() {
        let version = generator.version.clone();
        return Ok(abstain_at_once(state, version, conversation, question_id, prepared).await);
    }
    let params = answering::generation_params(&state.config.answers);
    let mut generated = start_generation(&generator, prepared.prompt.clone(), params.clone())?;
    let (sse, stream) = mpsc::unbounded_channel::<SseEvent>();
    // The customer's stop button reaches this answer through its registration.
    let registration = state.answering.start(conversation.id);
    let started = std::time::Instant::now();
    tokio::spawn(async move {
        let mut written = String::new();
        let mut first_token_ms = None;
        let finished = loop {
            let event = tokio::select! {
                event = generated.recv() => event,
                () = registration.stop.notified() => None,
            };
            match event {
                Some(Event::Token(text)) => {
                    first_token_ms.get_or_insert(started.elapsed().as_millis() as u64);
                    written.push_str(&text);
                    let event = SseEvent::default()
                        .event("token")
                        .data(json!({"text": text}).to_string());
                    if sse.send(event).is_err() {
                        break None; // the client left: stored below as stopped
                    }
                }
                Some(Event::Done(summary)) => break Some(summary),
                Some(Event::Failed(message)) => {
                    // The cause goes to the log; the customer gets the request's id there.
                    tracing::error!(target: "kefu::http", "generation failed: {message}");
                    let _ = sse.send(
                        SseEvent::default().event("error").data(
                            json!({"code": "generation_failed",
                               "message": "the answer could not be generated; try again"})
                            .to_string(),
                        ),
                    );
                    return;
                }
                None => break None, // stopped by the customer
            }
        };
        let (summary, outcome) = match finished {
            Some(summary) => {
                let outcome = Outcome::of(&state, &prepared, &summary);
                (summary, outcome)
            }
            // Stopped (the stop button, or the client left): dropping the receiver cancels
            // the job; what was written so far is the answer, stored as cancelled.
            None => {
                drop(generated);
                drop(registration);
                if written.trim().is_empty() {
                    let _ = sse.send(
                        SseEvent::default().event("done").data(
                            json!({"message_id": null, "finish_reason": "cancelled",
                               "model_version": generator.version, "citations": []})
                            .to_string(),
                        ),
                    );
                    return;
                }
                let total_ms = started.elapsed().as_millis() as u64;
                let summary = Summary {
                    completion_tokens: generator.model.encode(&written).map_or(0, |t| t.len()),
                    text: written,
                    prompt_tokens: prepared.prompt.len(),
                    cached_tokens: 0,
                    finish_reason: FinishReason::Cancelled,
                    first_token_ms: first_token_ms.unwrap_or(total_ms),
                    total_ms,
                    queued_ms: 0,
                };
                let outcome = Outcome {
                    text: summary.text.clone(),
                    abstention: None,
                    draft: None,
                };
                (summary, outcome)
            }
        };
        let event = stored_done_event(
            &state,
            &generator.version,
            &conversation,
            question_id,
            &prepared,
            &params,
            &summary,
            &outcome,
        )
        .await;
        let _ = sse.send(event);
    });
    let stream = UnboundedReceiverStream::new(stream).map(Ok::<_, Infallible>);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Stores the answer ([`store_answer`]) and returns the stream's closing event: `done`, or
/// `error` when it could not be stored.
#[allow(clippy::too_many_arguments)]
async fn stored_done_event(
    state: &AppState,
    version: &str,
    conversation: &kefu_db::Conversation,
    question_id: i64,
    prepared: &Prepared,
    params: &GenerationParams,
    summary: &Summary,
    outcome: &Outcome,
) -> SseEvent {
    let stored = store_answer(
        state,
        version,
        conversation,
        question_id,
        prepared,
        params,
        summary,
        outcome,
    )
    .await;
    done_event(stored, prepared, version, summary, outcome)
}

/// Stores the answer as `outcome` has it, with its served-prompt record (the settings JSON
/// also names an abstention and keeps the model's replaced draft).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn store_answer(
    state: &AppState,
    model_version: &str,
    conversation: &kefu_db::Conversation,
    question_id: i64,
    prepared: &Prepared,
    params: &GenerationParams,
    summary: &Summary,
    outcome: &Outcome,
) -> Result<i64, ApiError> {
    let served = ServedPrompt {
        model_version: model_version.to_string(),
        template_id: "kefu-grounded-v2".into(),
        sampling: json!({
            "temperature": params.sampling.temperature,
            "repetition_penalty": params.sampling.repetition_penalty,
            "top_k": params.sampling.top_k, "top_p": params.sampling.top_p,
            "max_tokens": params.max_tokens,
            "abstention": outcome.abstention.map(Abstention::name),
            "best_similarity": prepared.best_similarity,
            "draft": outcome.draft,
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
        .add_answer(conversation.id, question_id, &outcome.text, &served)
        .await
        .map_err(ApiError::internal)?;
    state.changes.changed(conversation);
    Ok(message.id)
}
