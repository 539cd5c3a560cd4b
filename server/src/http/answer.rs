//! The answer pipeline the customer routes and the OpenAI route share: retrieval and the
//! grounded prompt (off the async runtime), generation on the serving generator, the stored
//! answer with its served-prompt record, and the customer's Server-Sent Events stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use kefu_db::ServedPrompt;
use kefu_model::ChatMessage;
use kefu_model::generate::{FinishReason, GenerationParams};
use kefu_model::sampling::SamplingConfig;
use kefu_rag::RetrievalConfig;
use kefu_rag::prompt::Citation;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::generator::{Event, Generator, QueueFull, Summary};
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// What retrieval and prompt building produce for one answer.
pub(crate) struct Prepared {
    pub(crate) prompt: Vec<u32>,
    pub(crate) messages: Vec<ChatMessage>,
    pub(crate) citations: Vec<Citation>,
    pub(crate) retrieved: Value,
}

pub(crate) fn sampling_params(state: &AppState) -> GenerationParams {
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
pub(crate) async fn prepare(
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
        let ranked = state
            .knowledge
            .search(&retriever, &question, &RetrievalConfig::default())?;
        let model = &generator.model;
        let (grounded, mut messages) = kefu_trainer::knowledge::grounded(
            model,
            &retriever,
            &ranked,
            &question,
            state.config.passages,
            state.config.context_tokens,
        )?;
        // Earlier turns go between the instructions and the question.
        let question_turn = messages.pop();
        messages.extend(history);
        messages.extend(question_turn);
        let prompt = model.chat_prompt(&messages)?;
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
            messages,
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

pub(crate) fn finish_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::EndOfTurn | FinishReason::StopString => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
    }
}

pub(crate) fn citation_json(c: &Citation) -> Value {
    json!({"number": c.number, "chunk_id": c.chunk_id, "title": c.title, "heading": c.heading,
           "path": c.path, "score": c.score, "excerpt": c.excerpt})
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

/// Streams a grounded answer to `question_id` as Server-Sent Events: `token` events
/// (`{"text"}`), then `done` (`{"message_id", "citations", "finish_reason", "model_version"}`)
/// once the answer and its served-prompt record are stored, or `error`.
pub(crate) async fn answer(
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
    let mut generated = start_generation(&generator, prepared.prompt.clone(), params.clone())?;
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

pub(crate) async fn store_answer(
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
