//! Who is calling: staff are signed in by a session cookie (whose writes need the session's
//! `X-CSRF-Token`) or an API token (`Authorization: Bearer kefu_pat_…`). [`Staff`] and [`Admin`]
//! are extractors: a handler that names one is reached only by such a caller.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};

use crate::auth::{API_TOKEN_PREFIX, CSRF_HEADER, SESSION_COOKIE, secrets_equal, sha256_hex};
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// A member of staff making a request.
#[derive(Debug, Clone)]
pub struct Staff {
    pub user: kefu_db::User,
    /// Signed in with a session cookie (so writes need the CSRF token).
    pub by_cookie: bool,
}

impl Staff {
    pub fn is_admin(&self) -> bool {
        self.user.role == "admin"
    }
}

/// The value of the cookie `name`, if the request carries it.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "sign in (POST /api/auth/login) or send an API token as `Authorization: Bearer kefu_pat_…`",
    )
}

/// The staff member behind a request: an API token, or a session cookie (whose writes must
/// carry the session's CSRF token in `X-CSRF-Token`).
pub async fn authenticate(
    database: &kefu_db::Database,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Staff, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(token) = bearer.filter(|t| t.starts_with(API_TOKEN_PREFIX)) {
        let user = database
            .api_token_user(&sha256_hex(token))
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(unauthorized)?;
        return Ok(Staff {
            user,
            by_cookie: false,
        });
    }
    let token = cookie(headers, SESSION_COOKIE).ok_or_else(unauthorized)?;
    let session = database
        .session(&sha256_hex(&token))
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(unauthorized)?;
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !sent.is_some_and(|sent| secrets_equal(sent, &session.csrf_token)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf_token_invalid",
                "cookie-authenticated writes need the session's X-CSRF-Token header",
            ));
        }
    }
    Ok(Staff {
        user: session.user,
        by_cookie: true,
    })
}

/// Like [`staff`], and the user must be an admin.
async fn admin(
    database: &kefu_db::Database,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Staff, ApiError> {
    let staff = authenticate(database, method, headers).await?;
    if !staff.is_admin() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route is for admins",
        ));
    }
    Ok(staff)
}

impl FromRequestParts<Arc<AppState>> for Staff {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        authenticate(&state.database, &parts.method, &parts.headers).await
    }
}

/// A staff member who is an admin (anyone else: 401 or 403).
#[derive(Debug, Clone)]
pub struct Admin(pub Staff);

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        admin(&state.database, &parts.method, &parts.headers)
            .await
            .map(Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; kefu_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}
