//! Admin routes for widget sites: a public key, the origins allowed to use it, the knowledge
//! base its conversations read.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::random_hex;
use crate::http::access::SITE_KEY_PREFIX;
use crate::http::admin::documents::existing_kb;
use crate::http::error::{ApiError, ApiJson};
use crate::http::guard::Admin;
use crate::http::state::AppState;

pub(crate) fn site_json(site: &kefu_db::WidgetSite, knowledge_base: &str) -> Value {
    json!({
        "id": site.id, "name": site.name, "site_key": site.site_key,
        "allowed_origins": site.allowed_origins, "knowledge_base": knowledge_base,
        "created_ms": site.created_ms,
    })
}

pub async fn list_sites(
    State(state): State<Arc<AppState>>,
    _: Admin,
) -> Result<Json<Value>, ApiError> {
    let sites = state.database.sites().await.map_err(ApiError::internal)?;
    let bases = state
        .database
        .knowledge_bases()
        .await
        .map_err(ApiError::internal)?;
    let name_of = |id: i64| {
        bases
            .iter()
            .find(|(kb, _, _)| *kb == id)
            .map_or("", |(_, name, _)| name.as_str())
    };
    Ok(Json(json!({
        "sites": sites.iter().map(|s| site_json(s, name_of(s.knowledge_base_id)))
            .collect::<Vec<_>>(),
    })))
}

/// `scheme://host[:port]`, as browsers send it in `Origin`.
pub(crate) fn check_origins(origins: &[String]) -> Result<(), ApiError> {
    if origins.len() > 50 {
        return Err(ApiError::bad_request(
            "invalid_origin",
            "a site has at most 50 allowed origins",
        ));
    }
    for origin in origins {
        let rest = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        let valid = rest.is_some_and(|host| {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        });
        if !valid {
            return Err(ApiError::bad_request(
                "invalid_origin",
                format!(
                    "`{origin}` is not an origin: write scheme, host and port only, like \
                     https://shop.example or http://localhost:3000"
                ),
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSite {
    name: String,
    allowed_origins: Vec<String>,
    #[serde(default)]
    knowledge_base: Option<String>,
}

/// Adds a widget site with a fresh key; its knowledge base must exist.
pub async fn add_site(
    State(state): State<Arc<AppState>>,
    _: Admin,
    ApiJson(body): ApiJson<NewSite>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::bad_request(
            "invalid_name",
            "a site name has 1 to 100 characters",
        ));
    }
    check_origins(&body.allowed_origins)?;
    let kb_name = body
        .knowledge_base
        .unwrap_or_else(|| state.config.default_kb.clone());
    let kb = existing_kb(&state, &kb_name).await?;
    let key = format!("{SITE_KEY_PREFIX}{}", random_hex(16));
    let site = state
        .database
        .create_site(name, &key, &body.allowed_origins, kb)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "site_exists",
                format!("there is already a site named `{name}`"),
            )
        })?;
    Ok((StatusCode::CREATED, Json(site_json(&site, &kb_name))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteOrigins {
    allowed_origins: Vec<String>,
}

pub async fn set_site_origins(
    State(state): State<Arc<AppState>>,
    _: Admin,
    Path(site): Path<i64>,
    ApiJson(body): ApiJson<SiteOrigins>,
) -> Result<StatusCode, ApiError> {
    check_origins(&body.allowed_origins)?;
    let found = state
        .database
        .set_site_origins(site, &body.allowed_origins)
        .await
        .map_err(ApiError::internal)?;
    if !found {
        return Err(site_not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) fn site_not_found() -> ApiError {
    ApiError::not_found("site_not_found", "no such widget site")
}

/// Removes a site: its key stops working at once; its conversations are kept.
pub async fn delete_site(
    State(state): State<Arc<AppState>>,
    _: Admin,
    Path(site): Path<i64>,
) -> Result<StatusCode, ApiError> {
    if !state
        .database
        .delete_site(site)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(site_not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        let ok = |o: &str| check_origins(&[o.to_string()]).is_ok();
        assert!(ok("https://shop.example"));
        assert!(ok("http://localhost:3000"));
        assert!(ok("http://[::1]:8080"));
        assert!(!ok("shop.example"));
        assert!(!ok("https://shop.example/"));
        assert!(!ok("https://shop.example/path"));
        assert!(!ok("ftp://shop.example"));
        assert!(!ok("https://"));
        assert!(!ok("https://shop example"));
    }
}
