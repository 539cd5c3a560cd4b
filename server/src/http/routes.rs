//! Every API path in one place: the router, its layers (CORS on the customer routes, the
//! per-IP rate limit, request metrics, body limits) and the JSON 404 / 405 answers. The OpenAPI
//! document (`server/openapi.json`) lists exactly these paths (tested).

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::http::admin;
use crate::http::admin::datasets::export;
use crate::http::admin::users::add_user;
use crate::http::agent::*;
use crate::http::customer::*;
use crate::http::error::ApiError;
use crate::http::layers::{REQUEST_DEADLINE, deadline};
use crate::http::metrics::{count_requests, metrics};
use crate::http::openai::{chat_completions, models};
use crate::http::session::{login, logout};
use crate::http::state::AppState;

/// Documents: uploads and re-ingests embed in the request, so they have no deadline.
fn document_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/api/admin/knowledge-bases/{kb}/documents",
            get(admin::documents::list_documents)
                .post(admin::documents::upload_document)
                .layer(DefaultBodyLimit::max(
                    kefu_rag::parse::MAX_FILE_BYTES as usize,
                )),
        )
        .route(
            "/api/admin/knowledge-bases/{kb}/documents/{document}",
            axum::routing::delete(admin::documents::delete_document),
        )
        .route(
            "/api/admin/knowledge-bases/{kb}/documents/{document}/reingest",
            post(admin::documents::reingest_document),
        )
}

/// The admin API but documents, each request within [`REQUEST_DEADLINE`].
fn admin_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/api/admin/users",
            post(add_user).get(admin::users::list_users),
        )
        .route(
            "/api/admin/users/{name}",
            axum::routing::delete(admin::users::delete_user),
        )
        .route("/api/admin/tokens", get(admin::users::list_tokens))
        .route(
            "/api/admin/tokens/{token}",
            axum::routing::delete(admin::users::revoke_token),
        )
        .route(
            "/api/admin/sites",
            get(admin::sites::list_sites).post(admin::sites::add_site),
        )
        .route(
            "/api/admin/sites/{site}",
            axum::routing::put(admin::sites::set_site_origins).delete(admin::sites::delete_site),
        )
        .route(
            "/api/admin/knowledge-bases",
            get(admin::documents::list_knowledge_bases),
        )
        .route("/api/admin/models", get(admin::models::list_models))
        .route(
            "/api/admin/models/rollback",
            post(admin::models::rollback_model),
        )
        .route(
            "/api/admin/models/{version}/promote",
            post(admin::models::promote_model),
        )
        .route(
            "/api/admin/training/jobs",
            get(admin::training::list_jobs).post(admin::training::start_training),
        )
        .route(
            "/api/admin/training/jobs/{job}",
            get(admin::training::get_job),
        )
        .route(
            "/api/admin/training/schedule",
            get(admin::training::get_schedule).put(admin::training::set_schedule),
        )
        .route(
            "/api/admin/training/jobs/{job}/cancel",
            post(admin::training::cancel_job),
        )
        .route("/api/admin/feedback", get(admin::feedback::inbox))
        .route("/api/admin/feedback/review", post(admin::feedback::review))
        .route("/api/admin/datasets", get(admin::datasets::list))
        .route(
            "/api/admin/datasets/{dataset}",
            get(admin::datasets::preview),
        )
        .route("/api/admin/export/{kind}", get(export))
        .route_layer(axum::middleware::from_fn_with_state(
            REQUEST_DEADLINE,
            deadline,
        ))
}

/// Staff sign-in and the agent console, each request within [`REQUEST_DEADLINE`].
fn staff_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/auth/login", post(login))
        .route("/api/auth/logout", post(logout))
        .route("/api/agent/conversations", get(agent_conversations))
        .route("/api/agent/conversations/{id}", get(agent_transcript))
        .route(
            "/api/agent/conversations/{id}/export",
            get(export_transcript),
        )
        .route(
            "/api/agent/conversations/{id}/messages/{message}/feedback",
            post(agent_feedback),
        )
        .route("/api/agent/conversations/{id}/takeover", post(take_over))
        .route("/api/agent/conversations/{id}/release", post(release))
        .route("/api/agent/conversations/{id}/reply", post(agent_reply))
        .route_layer(axum::middleware::from_fn_with_state(
            REQUEST_DEADLINE,
            deadline,
        ))
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
        .route("/api/conversations/{id}/stop", post(stop_answer))
        .route(
            "/api/conversations/{id}/events",
            get(crate::http::events::conversation_events),
        )
        .route("/api/widget/site", get(widget_site))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http::access::cors,
        ));
    let router = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi))
        .merge(customer)
        .merge(staff_routes())
        // Staff's live updates: an event stream, so outside the request deadline.
        .route("/api/agent/events", get(crate::http::events::agent_events))
        .merge(admin_routes())
        .merge(document_routes())
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .merge(crate::http::pages::routes())
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http::access::limit_per_ip,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http::access::client_address,
        ))
        .with_state(state);
    crate::http::layers::wrap(router)
}

async fn no_such_route(headers: HeaderMap) -> Response {
    if crate::http::pages::wants_html(&headers) {
        return crate::http::pages::error_page(StatusCode::NOT_FOUND, "There is no such page.");
    }
    ApiError::not_found("no_such_route", "there is no such route").into_response()
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
        include_str!("../../openapi.json"),
    )
        .into_response()
}

/// Readiness: one read-only round trip to the database (no writes, no error text: the log has
/// the cause, the caller the request id) and the serving model.
async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    if let Err(error) = state.database.ping().await {
        tracing::error!(target: "kefu::http", "readiness check failed: {error}");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the database is not reachable; the server's log says why",
        ));
    }
    let generator = state.generator();
    Ok(Json(json!({
        "status": "ready",
        "model": generator.name,
        "model_version": generator.version,
        "queue_depth": generator.queue_depth(),
    })))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The router's paths, read from this file's `.route("…"` calls.
    fn routed_paths() -> BTreeSet<String> {
        let source = include_str!("routes.rs");
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
            serde_json::from_str(include_str!("../../openapi.json")).unwrap();
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
