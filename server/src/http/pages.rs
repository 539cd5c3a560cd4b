//! The web pages (templates and assets from the `web` crate): the demo page with the widget,
//! `/widget.js`, the sign-in page, the agent console and the admin pages. Staff pages need a
//! session cookie (anyone else is sent to sign in); admin pages need an admin. Browsers get an
//! HTML error page for 4xx / 5xx; API clients keep their JSON errors.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use kefu_web as web;
use serde::Deserialize;

use crate::auth::{SESSION_COOKIE, sha256_hex};
use crate::http::error::ApiError;
use crate::http::guard::cookie;
use crate::http::state::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(demo))
        .route("/widget.js", get(widget))
        .route("/static/{file}", get(asset))
        .route("/login", get(login))
        .route("/language/{lang}", get(switch_language))
        .route("/agent", get(agent))
        .route("/admin", get(|| async { Redirect::to("/admin/documents") }))
        .route("/admin/documents", get(documents))
        .route("/admin/users", get(users))
        .route("/admin/sites", get(sites))
        .route("/admin/training", get(training))
        .route("/admin/feedback", get(feedback))
        .route("/admin/datasets", get(datasets))
}

fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => ApiError::internal(format!("page template: {e}")).into_response(),
    }
}

/// `en` unless the request asks for Chinese (`?lang=zh` or `Accept-Language: zh…`).
fn language(headers: &HeaderMap, asked: Option<&str>) -> String {
    let wanted = asked.map(str::to_string).or_else(|| {
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    match wanted {
        Some(l) if l.trim().to_ascii_lowercase().starts_with("zh") => "zh".into(),
        _ => "en".into(),
    }
}

/// The cookie that remembers a staff member's language.
const LANGUAGE_COOKIE: &str = "kefu_lang";

/// The staff pages' language: the one chosen on a page (remembered in a cookie), else the
/// browser's (`Accept-Language`).
fn staff_language(headers: &HeaderMap) -> String {
    match cookie(headers, LANGUAGE_COOKIE).as_deref() {
        Some(lang @ ("en" | "zh")) => lang.to_string(),
        _ => language(headers, None),
    }
}

#[derive(Debug, Deserialize, Default)]
struct NextQuery {
    next: Option<String>,
}

/// `/language/zh?next=/agent`: remembers the language (a year, this browser) and goes back.
async fn switch_language(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(lang): axum::extract::Path<String>,
    Query(query): Query<NextQuery>,
) -> Response {
    if lang != "en" && lang != "zh" {
        return error_page(StatusCode::NOT_FOUND, "There is no such page.");
    }
    let next = query
        .next
        .filter(|n| is_local_path(n))
        .unwrap_or_else(|| "/agent".into());
    let secure = if state.config.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    let cookie =
        format!("{LANGUAGE_COOKIE}={lang}; Path=/; Max-Age=31536000; SameSite=Lax{secure}");
    match HeaderValue::from_str(&cookie) {
        Ok(cookie) => ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// This server's address as browsers reach it: `--public-url` when set (behind a proxy, with
/// its `https://`), else the request's own `Host` over plain HTTP.
fn origin(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(public) = &state.config.public_url {
        return public.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// An HTML error page with `status`.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    error_page_in("en", status, message)
}

/// [`error_page`] in `lang` (its message too, when the staff texts have it).
fn error_page_in(lang: &str, status: StatusCode, message: &str) -> Response {
    let page = web::ErrorPage {
        page: web::Page {
            lang: lang.into(),
            ..web::Page::default()
        },
        status: status.as_u16(),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        message: message.to_string(),
    };
    let mut response = render(&page);
    *response.status_mut() = status;
    response
}

/// Whether a browser is navigating (it wants HTML, not JSON).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

#[derive(Debug, Deserialize, Default)]
struct LangQuery {
    lang: Option<String>,
}

async fn demo(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<LangQuery>,
) -> Response {
    render(&web::Demo {
        lang: language(&headers, query.lang.as_deref()),
        origin: origin(&state, &headers),
    })
}

/// A static file, revalidated on every use (`no-cache`) by its `ETag` (a hash of its bytes):
/// a browser that has it gets a 304 without the body.
fn asset_response(asset: web::Asset, headers: &HeaderMap) -> Response {
    let etag = format!("\"{}\"", &sha256_hex(asset.body)[..16]);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let etag = HeaderValue::from_str(&etag).expect("hex digits make a valid header");
    let cache = [
        (header::ETAG, etag),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.body,
    )
        .into_response()
}

async fn widget(headers: HeaderMap) -> Response {
    asset_response(web::WIDGET_JS, &headers)
}

async fn asset(
    axum::extract::Path(file): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    match web::asset(&file) {
        Some(asset) => asset_response(asset, &headers),
        None => error_page(StatusCode::NOT_FOUND, "There is no such file."),
    }
}

/// Whether `next` is a path on this server, where sign-in may send the browser: it starts with
/// one `/`, and nothing in it lets a browser read it as another host (`//host`, `/\host` —
/// browsers treat a backslash as a slash —, control characters, a scheme).
fn is_local_path(next: &str) -> bool {
    next.starts_with('/')
        && !next[1..].starts_with(['/', '\\'])
        && !next.contains('\\')
        && !next.chars().any(char::is_control)
        && next.len() <= 2048
}

#[derive(Debug, Deserialize, Default)]
struct LoginQuery {
    next: Option<String>,
    expired: Option<String>,
}

async fn login(headers: HeaderMap, Query(query): Query<LoginQuery>) -> Response {
    let next = query
        .next
        .filter(|n| is_local_path(n))
        .unwrap_or_else(|| "/agent".into());
    render(&web::Login {
        page: web::Page {
            lang: staff_language(&headers),
            path: "/login".into(),
            ..web::Page::default()
        },
        next,
        expired: query.expired.is_some(),
    })
}

/// The signed-in staff member of a page request, or where to send the browser instead.
async fn signed_in(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
    section: &'static str,
    admin_only: bool,
) -> Result<web::Page, Response> {
    let to_login = || Redirect::to(&format!("/login?next={path}")).into_response();
    let Some(token) = cookie(headers, SESSION_COOKIE) else {
        return Err(to_login());
    };
    let session = state
        .database
        .session(&sha256_hex(&token))
        .await
        .map_err(|e| ApiError::internal(e).into_response())?;
    let Some(session) = session else {
        return Err(Redirect::to(&format!("/login?expired=1&next={path}")).into_response());
    };
    let admin = session.user.role == "admin";
    if admin_only && !admin {
        return Err(error_page_in(
            &staff_language(headers),
            StatusCode::FORBIDDEN,
            "This page is for admins. Ask an admin for access.",
        ));
    }
    Ok(web::Page {
        lang: staff_language(headers),
        path: path.to_string(),
        csrf: session.csrf_token,
        user: session.user.name,
        admin,
        section,
    })
}

async fn agent(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match signed_in(&state, &headers, "/agent", "agent", false).await {
        Ok(page) => render(&web::Agent { page }),
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize, Default)]
struct KbQuery {
    kb: Option<String>,
}

async fn documents(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<KbQuery>,
) -> Response {
    let page = match signed_in(&state, &headers, "/admin/documents", "documents", true).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    let kb = query.kb.unwrap_or_else(|| state.config.default_kb.clone());
    let found = match state.database.find_knowledge_base(&kb).await {
        Ok(found) => found,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let documents = match found {
        Some(id) => match state.database.documents(id).await {
            Ok(documents) => documents,
            Err(e) => return ApiError::internal(e).into_response(),
        },
        None => Vec::new(),
    };
    render(&web::Documents {
        page,
        kb,
        documents: documents
            .into_iter()
            .map(|d| web::DocumentRow {
                id: d.id,
                title: d.title,
                path: d.path,
                language: d.language,
                bytes: d.byte_count,
            })
            .collect(),
    })
}

async fn users(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let page = match signed_in(&state, &headers, "/admin/users", "users", true).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    match state.database.users().await {
        Ok(users) => render(&web::Users {
            page,
            users: users
                .into_iter()
                .map(|u| web::UserRow {
                    name: u.name,
                    role: u.role,
                })
                .collect(),
        }),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

async fn sites(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let page = match signed_in(&state, &headers, "/admin/sites", "sites", true).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    match state.database.sites().await {
        Ok(sites) => render(&web::Sites {
            page,
            origin: origin(&state, &headers),
            sites: sites
                .into_iter()
                .map(|s| web::SiteRow {
                    id: s.id,
                    name: s.name,
                    key: s.site_key,
                    origins: s.allowed_origins.join(" "),
                })
                .collect(),
        }),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

async fn training(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match signed_in(&state, &headers, "/admin/training", "training", true).await {
        Ok(page) => render(&web::Training { page }),
        Err(response) => response,
    }
}

async fn feedback(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match signed_in(&state, &headers, "/admin/feedback", "feedback", true).await {
        Ok(page) => render(&web::Feedback { page }),
        Err(response) => response,
    }
}

async fn datasets(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match signed_in(&state, &headers, "/admin/datasets", "datasets", true).await {
        Ok(page) => render(&web::Datasets { page }),
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::is_local_path;

    #[test]
    fn sign_in_sends_browsers_only_to_paths_on_this_server() {
        for local in ["/agent", "/admin/training?job=3", "/a/b#c"] {
            assert!(is_local_path(local), "{local}");
        }
        // `/%5Cexample.com` arrives decoded as `/\example.com`.
        for elsewhere in [
            "//example.com",
            "/\\example.com",
            "/\\/example.com",
            "/agent\\..\\/\\example.com",
            "https://example.com",
            "example.com",
            "/\texample",
            "",
        ] {
            assert!(!is_local_path(elsewhere), "{elsewhere:?}");
        }
    }
}
