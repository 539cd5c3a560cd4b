//! Accounts' secrets: argon2 password hashes, random tokens (sessions, CSRF, API tokens) and
//! the sha256 under which tokens are stored; roles. The HTTP side is `http::guard`.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha256};

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

/// Whether two secrets are equal, in time that depends on their lengths only (never on where
/// they first differ), so a caller cannot guess a token byte by byte from response times.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// `admin` or `agent`.
pub fn check_role(role: &str) -> Result<(), String> {
    match role {
        "admin" | "agent" => Ok(()),
        other => Err(format!("role is `admin` or `agent`, not `{other}`")),
    }
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
    fn secrets_compare_whole() {
        assert!(secrets_equal("abc123", "abc123"));
        assert!(!secrets_equal("abc123", "abc124"));
        assert!(!secrets_equal("abc123", "xbc123"));
        assert!(!secrets_equal("abc", "abc1"));
        assert!(secrets_equal("", ""));
    }
}
