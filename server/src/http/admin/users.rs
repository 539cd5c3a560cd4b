//! Admin routes for the people who work in Kefu: list, add, remove.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::error::{ApiError, ApiJson};
use crate::http::guard::Admin;
use crate::http::state::AppState;

pub async fn list_users(
    State(state): State<Arc<AppState>>,
    _: Admin,
) -> Result<Json<Value>, ApiError> {
    let users = state.database.users().await.map_err(ApiError::internal)?;
    Ok(Json(json!({
        "users": users.iter().map(|u| json!({"name": u.name, "role": u.role}))
            .collect::<Vec<_>>(),
    })))
}

/// Removes a user (their sessions and tokens stop working at once). Admins cannot remove
/// themselves, so there is always one left.
pub async fn delete_user(
    State(state): State<Arc<AppState>>,
    Admin(me): Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if me.user.name == name {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "cannot_delete_self",
            "an admin cannot remove their own account; ask another admin",
        ));
    }
    let user = state
        .database
        .user_by_name(&name)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("user_not_found", format!("no user `{name}`")))?;
    state
        .database
        .delete_user(user.id)
        .await
        .map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUser {
    pub(crate) name: String,
    pub(crate) role: String,
    pub(crate) password: String,
}

pub(crate) async fn add_user(
    State(state): State<Arc<AppState>>,
    _: Admin,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    crate::auth::check_role(&body.role).map_err(|m| ApiError::bad_request("invalid_role", m))?;
    if body.name.trim().is_empty() || body.name.len() > 100 {
        return Err(ApiError::bad_request(
            "invalid_name",
            "a name has 1 to 100 characters",
        ));
    }
    if body.password.chars().count() < 8 {
        return Err(ApiError::bad_request(
            "weak_password",
            "a password has at least 8 characters",
        ));
    }
    let password = body.password.clone();
    let hash = state
        .password_work(move || crate::auth::hash_password(&password))
        .await?
        .map_err(ApiError::internal)?;
    let user = state
        .database
        .upsert_user(body.name.trim(), &body.role, &hash)
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": user.name, "role": user.role})),
    ))
}

/// Every API token by id, user, label and creation time (never the tokens).
pub async fn list_tokens(
    State(state): State<Arc<AppState>>,
    _: Admin,
) -> Result<Json<Value>, ApiError> {
    let tokens = state
        .database
        .api_tokens()
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "tokens": tokens.iter().map(|t| json!({
            "id": t.id, "user": t.user, "label": t.label, "created_ms": t.created_ms,
        })).collect::<Vec<_>>(),
    })))
}

/// Revokes an API token by its id: it stops working at once.
pub async fn revoke_token(
    State(state): State<Arc<AppState>>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let revoked = state
        .database
        .revoke_api_token(&id)
        .await
        .map_err(ApiError::internal)?;
    if revoked == 0 {
        return Err(ApiError::not_found(
            "token_not_found",
            format!("no API token with the id `{id}` (GET /api/admin/tokens lists them)"),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}
