//! The layers around every route (tower-http): sensitive headers kept out of logs, a request
//! id (kept from `X-Request-Id` or made here, sent back, in every log line of the request and
//! in every JSON error body), one access-log line per request, panics turned into JSON 500s,
//! gzip for what is worth compressing (never event streams), a deadline on request bodies and
//! the security headers (`nosniff`, a content security policy and no framing for HTML pages).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Response, StatusCode, header};
use axum::middleware::Next;
use axum::response::IntoResponse;
use serde_json::Value;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::http::error::ApiError;

/// The request id's header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request headers whose values never reach a log.
fn sensitive_headers() -> [HeaderName; 4] {
    [
        header::AUTHORIZATION,
        header::COOKIE,
        HeaderName::from_static(crate::auth::CSRF_HEADER),
        HeaderName::from_static(crate::http::access::SITE_HEADER),
    ]
}

/// Request ids: 16 random hex digits.
#[derive(Debug, Clone, Copy)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&crate::auth::random_hex(8))
            .ok()
            .map(RequestId::new)
    }
}

fn request_id_of(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

/// The span every event of a request is logged in.
fn request_span(request: &axum::http::Request<Body>) -> Span {
    tracing::info_span!(
        "request",
        id = %request_id_of(request.headers()),
        method = %request.method(),
        path = %request.uri().path(),
    )
}

/// The access log: one line when the response starts.
fn log_response(response: &Response<Body>, latency: Duration, _: &Span) {
    tracing::info!(
        target: "kefu::http",
        status = response.status().as_u16(),
        latency_ms = (latency.as_secs_f64() * 1e6).round() / 1e3,
        "request finished"
    );
}

/// A panic in a handler: a JSON 500 (the panic goes to the log, not to the caller).
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic");
    ApiError::internal(format!("handler panicked: {detail}")).into_response()
}

/// Adds the request id to JSON error bodies (`{"code", "message", "request_id"}`), so a
/// caller can quote it and the log line be found.
async fn request_id_in_errors(request: Request, next: Next) -> Response<Body> {
    let id = request_id_of(request.headers()).to_string();
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status().as_u16() < 400 || !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "").into_response();
    };
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(mut object)) => {
            object.insert("request_id".into(), Value::String(id));
            let text = Value::Object(object).to_string();
            parts.headers.remove(header::CONTENT_LENGTH);
            Body::from(text)
        }
        _ => Body::from(bytes),
    };
    Response::from_parts(parts, body)
}

/// How long a request may take before it is answered 503 `timeout`, on the routes that do
/// bounded work (not event streams, not uploads that ingest a document, not generation).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(60);

/// A route layer: answers 503 `timeout` when the handler takes longer than `deadline` (the
/// handler's future is dropped, as a client that left would drop it).
pub async fn deadline(
    axum::extract::State(deadline): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response<Body> {
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request took longer than {} s; try again",
                deadline.as_secs_f64()
            ),
        )
        .into_response(),
    }
}

/// Gives a request body its deadline ([`crate::http::listen::body_deadline`]): a client that
/// sends it too slowly gets an error instead of holding the handler.
async fn body_in_time(request: Request, next: Next) -> Response<Body> {
    use http_body::Body as _;
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let deadline = crate::http::listen::body_deadline(declared);
    let request =
        request.map(|body| Body::new(crate::http::listen::DeadlineBody::new(body, deadline)));
    next.run(request).await
}

/// Headers every response carries: no MIME sniffing, no referrer beyond this server; HTML
/// pages get a content security policy (scripts, styles and connections from this server only)
/// and may not be framed — the staff pages nowhere, the demo page only by itself.
async fn security_headers(request: Request, next: Next) -> Response<Body> {
    let staff_page = !request.uri().path().starts_with("/api/") && request.uri().path() != "/";
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    if content_type.starts_with(b"text/event-stream") {
        // Each event as it happens, through proxies too (nginx buffers responses otherwise).
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    let html = content_type.starts_with(b"text/html");
    if html {
        // The widget on the demo page adds its own <style> element.
        let policy = if staff_page {
            STAFF_PAGE_POLICY
        } else {
            DEMO_PAGE_POLICY
        };
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(policy),
        );
        headers.insert(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static(if staff_page { "DENY" } else { "SAMEORIGIN" }),
        );
    }
    response
}

/// The content security policy of the staff pages (sign-in, agent console, admin).
pub const STAFF_PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";
/// The demo page's: the same, with the inline styles the widget adds, framed only by itself.
pub const DEMO_PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     form-action 'self'; base-uri 'none'; frame-ancestors 'self'";

/// `router` inside the layers (the last added is the outermost).
pub fn wrap(router: Router) -> Router {
    router
        .layer(axum::middleware::from_fn(body_in_time))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::middleware::from_fn(request_id_in_errors))
        .layer(CompressionLayer::new())
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(log_response)
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, NewRequestId))
        .layer(SetSensitiveRequestHeadersLayer::new(sensitive_headers()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn body_json(response: Response<Body>) -> Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn app() -> Router {
        wrap(
            Router::new()
                .route("/ok", get(|| async { "fine" }))
                .route(
                    "/missing",
                    get(|| async { ApiError::not_found("nothing", "there is nothing here") }),
                )
                .route(
                    "/panic",
                    get(|| async {
                        let numbers: Vec<u8> = Vec::new();
                        // Out of bounds: a handler bug.
                        numbers[std::hint::black_box(3)].to_string()
                    }),
                ),
        )
    }

    fn get_request(path: &str, id: Option<&str>) -> axum::http::Request<Body> {
        let mut request = axum::http::Request::get(path);
        if let Some(id) = id {
            request = request.header("x-request-id", id);
        }
        request.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn every_response_carries_a_request_id_and_errors_quote_it() {
        let ok = app().oneshot(get_request("/ok", None)).await.unwrap();
        let made = ok.headers()[REQUEST_ID].to_str().unwrap().to_string();
        assert_eq!(made.len(), 16, "{made}");
        let kept = app()
            .oneshot(get_request("/missing", Some("abc123")))
            .await
            .unwrap();
        assert_eq!(kept.status(), StatusCode::NOT_FOUND);
        assert_eq!(kept.headers()[REQUEST_ID], "abc123");
        let body = body_json(kept).await;
        assert_eq!(body["code"], "nothing");
        assert_eq!(body["request_id"], "abc123");
    }

    #[tokio::test]
    async fn a_slow_handler_meets_its_deadline() {
        let app = wrap(
            Router::new()
                .route(
                    "/slow",
                    get(|| async {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        "late"
                    }),
                )
                .route("/quick", get(|| async { "on time" }))
                .route_layer(axum::middleware::from_fn_with_state(
                    Duration::from_millis(50),
                    deadline,
                )),
        );
        let slow = app
            .clone()
            .oneshot(get_request("/slow", Some("slow1")))
            .await
            .unwrap();
        assert_eq!(slow.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = body_json(slow).await;
        assert_eq!(
            (body["code"].as_str(), body["request_id"].as_str()),
            (Some("timeout"), Some("slow1"))
        );
        let quick = app.oneshot(get_request("/quick", None)).await.unwrap();
        assert_eq!(quick.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_panic_is_a_json_500_with_the_request_id() {
        let response = app()
            .oneshot(get_request("/panic", Some("feed42")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_json(response).await;
        assert_eq!(body["code"], "internal");
        assert_eq!(body["request_id"], "feed42");
        assert!(!body["message"].as_str().unwrap().contains("out of bounds"));
    }
}
