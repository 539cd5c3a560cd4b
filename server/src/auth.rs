//! Accounts: argon2 password hashes, session cookies (HttpOnly, SameSite=Strict) with a CSRF
//! token for cookie-authenticated writes, and API tokens for automation.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::http::{HeaderMap, Method, StatusCode, header};
use sha2::{Digest, Sha256};

use crate::http::ApiError;

pub const SESSION_COOKIE: &str = "kefu_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// API tokens start with this, so they are told apart from customer tokens.
pub const API_TOKEN_PREFIX: &str = "kefu_pat_";
pub const SESSION_MS: i64 = 12 * 3600 * 1000;

pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use rand::RngCore;
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password failed: {e}"))?
        .to_string())
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// `admin` or `agent`.
pub fn check_role(role: &str) -> Result<(), String> {
    match role {
        "admin" | "agent" => Ok(()),
        other => Err(format!("role is `admin` or `agent`, not `{other}`")),
    }
}

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
pub async fn staff(
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
        if sent != Some(session.csrf_token.as_str()) {
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
pub async fn admin(
    database: &kefu_db::Database,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Staff, ApiError> {
    let staff = staff(database, method, headers).await?;
    if !staff.is_admin() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route is for admins",
        ));
    }
    Ok(staff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_against_their_hash() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("Correct horse", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
    }

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
