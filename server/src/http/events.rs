//! Live updates as Server-Sent Events, so neither the widget nor the console polls.
//!
//! `GET /api/conversations/{id}/events` (the customer's token): every new message of the
//! conversation as a `message` event whose SSE id is the message's id, and its status as a
//! `status` event whenever it changes (the first event of every connection). A reconnect that
//! sends `Last-Event-ID` gets exactly the messages after that id: none lost, none twice. Without
//! it the stream starts after the conversation's last message.
//!
//! `GET /api/agent/events` (staff): `sync` when the connection opens (and every
//! [`RESYNC`], for changes made by another server on the same database), then a `conversation`
//! event (`{"id"}`) for every conversation that changed; the console reloads what it shows.
//!
//! Both wake on [`crate::http::state::Changes`]; the widget's stream also reads the database
//! every [`RECHECK`], which catches a change made by another process. Shutting down ends them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::http::customer::{message_json, polled_conversation};
use crate::http::error::ApiError;
use crate::http::guard::Staff;
use crate::http::state::{AppState, Change};

/// How often a widget's stream reads its conversation when nothing woke it.
pub const RECHECK: Duration = Duration::from_secs(15);
/// How often the console is told to reload everything.
pub const RESYNC: Duration = Duration::from_secs(30);
/// Keep-alive comments, so proxies and browsers keep an idle stream open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How soon a browser reconnects after a stream drops (the SSE `retry` field).
const RECONNECT: Duration = Duration::from_secs(2);
/// How often the console's stream checks that its session or token is still valid.
pub const STILL_SIGNED_IN: Duration = Duration::from_secs(5);

/// The `Last-Event-ID` header: a message id, or 400 `invalid_last_event_id`.
fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|id| *id >= 0)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_last_event_id",
                "Last-Event-ID is the id of the last message received (a whole number)",
            )
        })
}

fn sse_response(events: mpsc::Receiver<SseEvent>) -> Response {
    let stream = ReceiverStream::new(events).map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// Waits until the server starts shutting down.
async fn shutting_down(closing: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, not held across the caller's awaits.
    let _ = closing.wait_for(|closing| *closing).await;
}

/// Waits until `changes` names conversation `id` (or lags: something may have been missed).
async fn changed(changes: &mut broadcast::Receiver<Change>, id: Option<i64>) -> Option<Change> {
    loop {
        match changes.recv().await {
            Ok(change) if id.is_none_or(|id| id == change.conversation_id) => {
                return Some(change);
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return None,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// The widget's stream of one conversation's messages and status.
pub(crate) async fn conversation_events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let resume = last_event_id(&headers)?;
    // Opening a stream is charged like a poll (per conversation), not to the site.
    let conversation = polled_conversation(&state, &headers, &id).await?;
    let (mut changes, mut closing) = state.changes.subscribe();
    let mut last = match resume {
        Some(id) => id,
        None => state
            .database
            .messages(conversation.id)
            .await
            .map_err(ApiError::internal)?
            .last()
            .map_or(0, |m| m.id),
    };
    let (events, received) = mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        let mut status = String::new();
        loop {
            let now = match state.database.conversation(&conversation.public_id).await {
                Ok(Some(now)) => now,
                Ok(None) => return, // deleted: nothing more to say
                Err(e) => {
                    tracing::warn!(target: "kefu::http", "event stream: {e:#}");
                    conversation.clone()
                }
            };
            if now.status != status {
                status = now.status.clone();
                let event = SseEvent::default()
                    .event("status")
                    .retry(RECONNECT)
                    .data(json!({"status": status}).to_string());
                if events.send(event).await.is_err() {
                    return;
                }
            }
            match state.database.messages(conversation.id).await {
                Ok(messages) => {
                    let after = last;
                    for m in messages.iter().filter(|m| m.id > after) {
                        let event = SseEvent::default()
                            .event("message")
                            .id(m.id.to_string())
                            .data(message_json(m).to_string());
                        if events.send(event).await.is_err() {
                            return;
                        }
                        last = m.id;
                    }
                }
                Err(e) => tracing::warn!(target: "kefu::http", "event stream: {e:#}"),
            }
            tokio::select! {
                () = events.closed() => return,
                () = shutting_down(&mut closing) => return,
                () = tokio::time::sleep(RECHECK) => {}
                _ = changed(&mut changes, Some(conversation.id)) => {}
            }
        }
    });
    Ok(sse_response(received))
}

/// The console's stream: which conversations changed. It ends when the session or token that
/// opened it does (checked every [`STILL_SIGNED_IN`]): the console's reconnect is then refused
/// and it sends the browser to sign in.
pub(crate) async fn agent_events(
    State(state): State<Arc<AppState>>,
    _: Staff,
    headers: HeaderMap,
) -> Response {
    let (mut changes, mut closing) = state.changes.subscribe();
    let (events, received) = mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        let sync = || SseEvent::default().event("sync").data("{}");
        if events.send(sync().retry(RECONNECT)).await.is_err() {
            return;
        }
        let mut resync = tokio::time::interval(RESYNC);
        resync.reset();
        let mut signed_in = tokio::time::interval(STILL_SIGNED_IN);
        signed_in.reset();
        loop {
            let event = tokio::select! {
                () = events.closed() => return,
                () = shutting_down(&mut closing) => return,
                _ = signed_in.tick() => {
                    let method = axum::http::Method::GET;
                    match crate::http::guard::authenticate(&state.database, &method, &headers).await {
                        Ok(_) => continue,
                        Err(_) => return,
                    }
                }
                _ = resync.tick() => sync(),
                change = changed(&mut changes, None) => match change {
                    Some(change) => SseEvent::default()
                        .event("conversation")
                        .data(json!({"id": change.public_id}).to_string()),
                    None => sync(),
                },
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    });
    sse_response(received)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_is_a_message_id_or_a_clear_error() {
        let mut headers = HeaderMap::new();
        assert_eq!(last_event_id(&headers).unwrap(), None);
        headers.insert("last-event-id", "42".parse().unwrap());
        assert_eq!(last_event_id(&headers).unwrap(), Some(42));
        for bad in ["-1", "abc", "1.5", ""] {
            headers.insert("last-event-id", bad.parse().unwrap());
            let error = last_event_id(&headers).unwrap_err();
            assert_eq!(error.code, "invalid_last_event_id", "{bad}");
        }
    }
}
