//! Who may use the customer routes, from where, and how often: widget site keys and their
//! allowed origins (answered with CORS headers), and per-IP and per-site rate limits.
//!
//! A browser page on another origin reaches the customer routes only through a widget site:
//! it sends the site's public key in `X-Kefu-Site` when it opens a conversation, and every
//! later request from a foreign origin is checked against the allowed origins of the site the
//! conversation was opened through. Requests without an `Origin` header (servers, scripts) and
//! same-origin pages (the demo page) need no site.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kefu_db::WidgetSite;

use crate::http::error::ApiError;
use crate::http::proxy::{ClientAddress, peer_ip};
use crate::http::state::AppState;

pub const SITE_HEADER: &str = "x-kefu-site";
/// Site keys start with this (they are public, unlike API tokens).
pub const SITE_KEY_PREFIX: &str = "kefu_site_";

/// The request's `Origin` when it is not this server's own origin. An `Origin` that is not
/// text counts as foreign (and matches no site).
pub fn foreign_origin(headers: &HeaderMap) -> Option<String> {
    let origin = headers.get(header::ORIGIN)?;
    let Ok(origin) = origin.to_str() else {
        return Some(String::from_utf8_lossy(origin.as_bytes()).into_owned());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let same = host.is_some_and(|host| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            == Some(host)
    });
    (!same).then(|| origin.to_string())
}

/// The site named by `X-Kefu-Site`, if the request sends one; an unknown key is refused.
pub async fn requested_site(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<WidgetSite>, ApiError> {
    let Some(key) = headers.get(SITE_HEADER) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_site_key",
            "the widget's site key (X-Kefu-Site) is not known here; check the data-site \
             attribute of the script tag",
        )
    };
    let key = key.to_str().map_err(|_| invalid())?.trim();
    if !key.starts_with(SITE_KEY_PREFIX) || key.len() > 100 {
        return Err(invalid());
    }
    state
        .database
        .site_by_key(key)
        .await
        .map_err(ApiError::internal)?
        .map(Some)
        .ok_or_else(invalid)
}

/// A foreign origin must be one of `site`'s allowed origins.
pub fn check_origin(site: Option<&WidgetSite>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = foreign_origin(headers) else {
        return Ok(());
    };
    if site.is_some_and(|s| s.allows(&origin)) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        match site {
            Some(s) => format!(
                "{origin} is not an allowed origin of the widget site `{}`",
                s.name
            ),
            None => format!(
                "requests from {origin} need a widget site key (X-Kefu-Site) that allows that \
                 origin"
            ),
        },
    ))
}

pub(crate) fn rate_limited(what: &str, wait: Duration) -> ApiError {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    ApiError {
        retry_after: Some(seconds),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests {what}; try again in {seconds} s"),
        )
    }
}

/// Charges one request to a widget site's budget.
pub fn charge_site(state: &AppState, site: &WidgetSite) -> Result<(), ApiError> {
    state
        .site_limits
        .check(&site.id)
        .map_err(|wait| rate_limited(&format!("for the widget site `{}`", site.name), wait))
}

/// The client's address: through trusted proxies, the one they forwarded
/// ([`client_address`]), else the connection's.
pub fn client_ip(extensions: &axum::http::Extensions) -> IpAddr {
    match extensions.get::<ClientAddress>() {
        Some(resolved) => resolved.0,
        None => peer_ip(extensions),
    }
}

/// Middleware: resolves the client's address once (`--trusted-proxies`), before the rate
/// limits read it.
pub async fn client_address(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: axum::middleware::Next,
) -> Response {
    let trusted = &state.config.trusted_proxies;
    if !trusted.is_empty() {
        let peer = peer_ip(request.extensions());
        let client = trusted.client(peer, request.headers());
        request.extensions_mut().insert(ClientAddress(client));
    }
    next.run(request).await
}

/// The client's address, as an extractor.
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(client_ip(&parts.extensions)))
    }
}

/// Middleware: the per-IP limit, for every route but health, readiness and metrics.
pub async fn limit_per_ip(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    // The widget's poll of a conversation has its own budget per conversation
    // (`customer::polled_conversation`): an office behind one address keeps its questions.
    let poll = request.method() == Method::GET
        && path.starts_with("/api/conversations/")
        && path.ends_with("/messages");
    let exempt = poll || matches!(path, "/healthz" | "/readyz" | "/metrics");
    if !exempt {
        let ip = client_ip(request.extensions());
        if let Err(wait) = state.ip_limits.check(&ip) {
            return rate_limited("from this address", wait).into_response();
        }
    }
    next.run(request).await
}

/// Middleware for the customer routes: answers CORS preflights for origins some widget site
/// allows, and lets pages on those origins read the answers.
pub async fn cors(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(origin) = foreign_origin(request.headers()) else {
        return next.run(request).await;
    };
    let allowed = match state.database.sites().await {
        Ok(sites) => sites.iter().any(|s| s.allows(&origin)),
        Err(e) => return ApiError::internal(e).into_response(),
    };
    if request.method() == Method::OPTIONS {
        if !allowed {
            return check_origin(None, request.headers())
                .err()
                .map(IntoResponse::into_response)
                .unwrap_or_else(|| StatusCode::NO_CONTENT.into_response());
        }
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, x-kefu-site, last-event-id"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        allow_origin(headers, &origin);
        return response;
    }
    let mut response = next.run(request).await;
    if allowed {
        allow_origin(response.headers_mut(), &origin);
        response.headers_mut().insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        );
    }
    response
}

fn allow_origin(headers: &mut HeaderMap, origin: &str) {
    if let Ok(value) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    headers.insert(header::VARY, HeaderValue::from_static("origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: &str, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, origin.parse().unwrap());
        headers.insert(header::HOST, host.parse().unwrap());
        headers
    }

    #[test]
    fn the_servers_own_origin_is_not_foreign() {
        assert_eq!(
            foreign_origin(&headers("http://127.0.0.1:8080", "127.0.0.1:8080")),
            None
        );
        assert_eq!(
            foreign_origin(&headers("http://127.0.0.1:9090", "127.0.0.1:8080")).as_deref(),
            Some("http://127.0.0.1:9090")
        );
        assert_eq!(
            foreign_origin(&headers("null", "127.0.0.1:8080")).as_deref(),
            Some("null")
        );
        assert_eq!(foreign_origin(&HeaderMap::new()), None);
    }

    #[test]
    fn a_foreign_origin_needs_a_site_that_allows_it() {
        let site = WidgetSite {
            id: 1,
            name: "shop".into(),
            site_key: "kefu_site_x".into(),
            allowed_origins: vec!["https://shop.example".into()],
            knowledge_base_id: 1,
            created_ms: 0,
        };
        let from_shop = headers("https://shop.example", "kefu.example");
        let from_elsewhere = headers("https://evil.example", "kefu.example");
        assert!(check_origin(Some(&site), &from_shop).is_ok());
        assert_eq!(
            check_origin(Some(&site), &from_elsewhere).unwrap_err().code,
            "origin_not_allowed"
        );
        assert_eq!(
            check_origin(None, &from_shop).unwrap_err().code,
            "origin_not_allowed"
        );
        assert!(check_origin(None, &HeaderMap::new()).is_ok());
    }
}
