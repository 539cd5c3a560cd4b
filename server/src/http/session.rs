//! Staff sign-in and sign-out: a session cookie (HttpOnly, SameSite=Strict) and its CSRF
//! token.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::http::error::{ApiError, ApiJson};
use crate::http::guard::Staff;
use crate::http::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Login {
    pub(crate) name: String,
    pub(crate) password: String,
}

pub(crate) async fn login(
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

pub(crate) async fn logout(
    State(state): State<Arc<AppState>>,
    staff: Staff,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if staff.by_cookie {
        let token =
            crate::http::guard::cookie(&headers, crate::auth::SESSION_COOKIE).unwrap_or_default();
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
