//! Users (admins and agents), their sessions and API tokens, handoffs, and the agents' view of
//! conversations. Passwords arrive here already hashed; tokens only as hashes.

use sqlx::Row;

use crate::chat::{CONVERSATION_COLUMNS, conversation_from, now_ms};
use crate::{Conversation, Database, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub name: String,
    /// `admin` or `agent`.
    pub role: String,
    pub password_hash: String,
}

/// A signed-in user's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: User,
    pub csrf_token: String,
    pub expires_ms: i64,
}

/// An API token as listed (never the token or its whole hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: String,
    pub user: String,
    pub label: String,
    pub created_ms: i64,
}

/// How many hex digits of a token's hash name it when listed and revoked.
pub const TOKEN_ID_CHARS: usize = 16;

fn user_from(row: &sqlx::any::AnyRow) -> Result<User> {
    Ok(User {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: row.try_get("role")?,
        password_hash: row.try_get("password_hash")?,
    })
}

impl Database {
    /// Adds a user, or replaces the role and password of the user with that name. A changed
    /// password or role ends the user's sessions and API tokens (in the same transaction), so a
    /// reset locks out whoever had the old credentials.
    pub async fn upsert_user(&self, name: &str, role: &str, password_hash: &str) -> Result<User> {
        let mut transaction = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO users (name, role, password_hash, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET role = excluded.role, \
             password_hash = excluded.password_hash \
             RETURNING id, name, role, password_hash",
        )
        .bind(name)
        .bind(role)
        .bind(password_hash)
        .bind(now_ms())
        .fetch_one(&mut *transaction)
        .await?;
        let user = user_from(&row)?;
        for sql in [
            "DELETE FROM sessions WHERE user_id = $1",
            "DELETE FROM api_tokens WHERE user_id = $1",
        ] {
            sqlx::query(sql)
                .bind(user.id)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(user)
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let row = sqlx::query("SELECT id, name, role, password_hash FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| user_from(&r)).transpose()
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query("SELECT id, name, role, password_hash FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_from).collect()
    }

    /// Removes a user with their sessions and API tokens; false when there was none. Their
    /// feedback and handoffs stay (handoffs lose the link to the user).
    pub async fn delete_user(&self, id: i64) -> Result<bool> {
        let mut transaction = self.pool.begin().await?;
        for sql in [
            "DELETE FROM sessions WHERE user_id = $1",
            "DELETE FROM api_tokens WHERE user_id = $1",
            "UPDATE handoffs SET user_id = NULL WHERE user_id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *transaction).await?;
        }
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Starts a session; expired sessions of every user are purged on the way.
    pub async fn create_session(
        &self,
        token_hash: &str,
        user_id: i64,
        csrf_token: &str,
        expires_ms: i64,
    ) -> Result<()> {
        self.purge_expired_sessions().await?;
        sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, csrf_token, expires_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(csrf_token)
        .bind(expires_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The session with this token hash, if it has not expired.
    pub async fn session(&self, token_hash: &str) -> Result<Option<Session>> {
        let row = sqlx::query(
            "SELECT u.id, u.name, u.role, u.password_hash, s.csrf_token, s.expires_ms \
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let session = Session {
            user: user_from(&row)?,
            csrf_token: row.try_get("csrf_token")?,
            expires_ms: row.try_get("expires_ms")?,
        };
        Ok((session.expires_ms > now_ms()).then_some(session))
    }

    pub async fn delete_session(&self, token_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn create_api_token(
        &self,
        token_hash: &str,
        user_id: i64,
        label: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens (token_hash, user_id, label, created_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(label)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes every session that has expired; returns how many.
    pub async fn purge_expired_sessions(&self) -> Result<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE expires_ms <= $1")
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// How many sessions are stored (expired or not).
    pub async fn session_count(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM sessions")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Every API token (never the token itself): its id is the first 16 hex digits of its
    /// hash, oldest first.
    pub async fn api_tokens(&self) -> Result<Vec<ApiToken>> {
        let rows = sqlx::query(
            "SELECT t.token_hash, u.name, t.label, t.created_ms FROM api_tokens t \
             JOIN users u ON u.id = t.user_id ORDER BY t.created_ms, t.token_hash",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let hash: String = row.try_get("token_hash")?;
                Ok(ApiToken {
                    id: hash.chars().take(TOKEN_ID_CHARS).collect(),
                    user: row.try_get("name")?,
                    label: row.try_get("label")?,
                    created_ms: row.try_get("created_ms")?,
                })
            })
            .collect()
    }

    /// Revokes the API tokens whose id (a prefix of the hash, [`TOKEN_ID_CHARS`] hex digits)
    /// or whole hash is `id`; returns how many.
    pub async fn revoke_api_token(&self, id: &str) -> Result<u64> {
        let id = id.trim().to_ascii_lowercase();
        if id.len() < TOKEN_ID_CHARS || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(0);
        }
        let pattern = format!("{id}%");
        let done = sqlx::query("DELETE FROM api_tokens WHERE token_hash LIKE $1")
            .bind(pattern)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Revokes a user's API tokens (those with `label` only, when given); returns how many.
    pub async fn revoke_user_tokens(&self, user_id: i64, label: Option<&str>) -> Result<u64> {
        let done = match label {
            Some(label) => {
                sqlx::query("DELETE FROM api_tokens WHERE user_id = $1 AND label = $2")
                    .bind(user_id)
                    .bind(label)
                    .execute(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM api_tokens WHERE user_id = $1")
                    .bind(user_id)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(done.rows_affected())
    }

    /// The user an API token (by hash) belongs to.
    pub async fn api_token_user(&self, token_hash: &str) -> Result<Option<User>> {
        let row = sqlx::query(
            "SELECT u.id, u.name, u.role, u.password_hash FROM api_tokens t \
             JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| user_from(&r)).transpose()
    }

    /// Records a handoff event (`requested`, `taken`, `released`) and sets the conversation's
    /// status to match, in one transaction.
    pub async fn handoff(
        &self,
        conversation_id: i64,
        event: &str,
        user_id: Option<i64>,
        status: &str,
    ) -> Result<()> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO handoffs (conversation_id, event, user_id, created_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(conversation_id)
        .bind(event)
        .bind(user_id)
        .bind(now_ms())
        .execute(&mut *transaction)
        .await?;
        sqlx::query("UPDATE conversations SET status = $1 WHERE id = $2")
            .bind(status)
            .bind(conversation_id)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// The newest conversations first, at most `limit`.
    pub async fn recent_conversations(&self, limit: i64) -> Result<Vec<Conversation>> {
        let sql =
            format!("SELECT {CONVERSATION_COLUMNS} FROM conversations ORDER BY id DESC LIMIT $1");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(conversation_from).collect()
    }

    /// Conversations (newest first, at most `limit`) holding a message that contains `text`
    /// (ASCII letters in any case); `%`, `_` in `text` match only themselves.
    pub async fn search_conversations(&self, text: &str, limit: i64) -> Result<Vec<Conversation>> {
        let pattern = format!(
            "%{}%",
            text.to_lowercase()
                .replace('!', "!!")
                .replace('%', "!%")
                .replace('_', "!_")
        );
        let sql = format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id IN \
             (SELECT conversation_id FROM messages WHERE LOWER(content) LIKE $1 ESCAPE '!') \
             ORDER BY id DESC LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(pattern)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(conversation_from).collect()
    }

    /// Every assistant answer with at least one feedback event, oldest first: what the
    /// dataset compiler reads.
    pub async fn rated_answers(&self) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT DISTINCT m.id FROM messages m JOIN feedback_events f ON f.message_id = m.id \
             WHERE m.role = 'assistant' ORDER BY m.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }
}
