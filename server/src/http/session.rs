//! Staff sign-in and sign-out: a session cookie (HttpOnly, SameSite=Strict, Secure behind
//! HTTPS) and its CSRF token; failed sign-ins back off per account and per address.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::http::access::ClientIp;
use crate::http::error::{ApiError, ApiJson};
use crate::http::guard::Staff;
use crate::http::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Login {
    pub(crate) name: String,
    pub(crate) password: String,
}

/// 429 `too_many_sign_ins` with how long to wait.
fn locked(what: &str, wait: std::time::Duration) -> ApiError {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    ApiError {
        retry_after: Some(seconds),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sign_ins",
            format!("too many failed sign-ins {what}; try again in {seconds} s"),
        )
    }
}

/// Signs in. Failed attempts lock the account name and the client address for a while
/// (doubling), checked before any password is; password checks run a few at a time.
pub(crate) async fn login(
    State(state): State<Arc<AppState>>,
    ClientIp(address): ClientIp,
    ApiJson(body): ApiJson<Login>,
) -> Result<Response, ApiError> {
    let account = body.name.trim().to_lowercase();
    let unlocked = || {
        state
            .address_failures
            .check(&address)
            .map_err(|wait| locked("from this address", wait))?;
        state
            .account_failures
            .check(&account)
            .map_err(|wait| locked("for this account", wait))
    };
    unlocked()?;
    // Checked again once a password slot is free: a lock set while this request waited counts.
    let _slot = state.password_slot().await?;
    unlocked()?;
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
        state.address_failures.failed(&address);
        state.account_failures.failed(&account);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong name or password",
        ));
    };
    state.account_failures.succeeded(&account);
    state.address_failures.succeeded(&address);
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
        "{}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        crate::auth::SESSION_COOKIE,
        crate::auth::SESSION_MS / 1000,
        secure_attribute(&state),
    );
    let mut response =
        Json(json!({"name": user.name, "role": user.role, "csrf_token": csrf})).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(ApiError::internal)?,
    );
    Ok(response)
}

/// `; Secure` when the server is reached over HTTPS (`--public-url https://…`).
fn secure_attribute(state: &AppState) -> &'static str {
    if state.config.secure_cookies() {
        "; Secure"
    } else {
        ""
    }
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
    let cleared = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        crate::auth::SESSION_COOKIE,
        secure_attribute(&state)
    );
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cleared).map_err(ApiError::internal)?,
    );
    Ok(response)
}
