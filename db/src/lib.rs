//! Kefu's database, the only crate with SQL: knowledge bases, documents and chunks;
//! conversations, messages, served-prompt records and feedback events (`chat`); accounts;
//! widget sites; model versions, labels and training jobs (`training`); on SQLite (the
//! embedded default) or PostgreSQL, chosen by the URL. The queries are plain SQL
//! both engines read the same way (`$n` parameters, `RETURNING`, `ON CONFLICT`), run through
//! sqlx's `Any` driver; the schemas differ per engine and live in `migrations/<engine>/`.

mod accounts;
mod chat;
mod sites;
mod training;

pub use accounts::{ApiToken, Session, TOKEN_ID_CHARS, User};
pub use chat::{
    ACCEPTED, Conversation, FeedbackEvent, Message, NewFeedback, REJECTED, Review, ServedPrompt,
    now_ms,
};
pub use sites::WidgetSite;
pub use training::{
    CANDIDATE, JobStatus, ModelVersion, PREVIOUS, PRODUCTION, TrainingJob, TrainingSchedule,
};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL `{0}` (use sqlite://PATH or postgres://...)")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is malformed: {0}")]
    Malformed(String),
}

pub type Result<T> = std::result::Result<T, DbError>;

/// `url` fit to print: a password (`scheme://user:PASSWORD@host`, or a `password=` query
/// parameter) is replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut shown = url.to_string();
    if let Some(scheme_end) = shown.find("://") {
        let rest = &shown[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            let start = scheme_end + 3 + colon + 1;
            shown.replace_range(start..scheme_end + 3 + at, "***");
        }
    }
    if let Some(query) = shown.find('?') {
        let (head, tail) = shown.split_at(query + 1);
        let parameters: Vec<String> = tail
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_string(),
            })
            .collect();
        shown = format!("{head}{}", parameters.join("&"));
    }
    shown
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn of(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Engine::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Engine::Postgres)
        } else {
            Err(DbError::UnsupportedUrl(redact_url(url)))
        }
    }
}

/// A stored document (without its chunks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub id: i64,
    pub knowledge_base_id: i64,
    pub path: String,
    pub title: String,
    pub language: String,
    pub content_hash: String,
    pub byte_count: i64,
}

/// A document to store with its chunks, replacing any earlier version at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDocument {
    pub path: String,
    pub title: String,
    pub language: String,
    pub content_hash: String,
    pub byte_count: i64,
    pub chunks: Vec<NewChunk>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChunk {
    pub heading_path: Vec<String>,
    pub text: String,
    pub token_count: i64,
}

/// A stored chunk with what a citation needs from its document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    pub id: i64,
    pub document_id: i64,
    pub ordinal: i64,
    pub path: String,
    pub title: String,
    pub language: String,
    pub heading_path: Vec<String>,
    pub text: String,
}

/// A connection pool to one database.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    engine: Engine,
}

impl Database {
    /// Connects (creating an SQLite file when missing) and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let engine = Engine::of(url)?;
        install_default_drivers();
        let url = match engine {
            Engine::Sqlite if !url.contains("mode=") => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}mode=rwc")
            }
            _ => url.to_string(),
        };
        let mut options = AnyPoolOptions::new();
        if engine == Engine::Sqlite {
            options = options.max_connections(4).after_connect(|connection, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *connection)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 5000")
                        .execute(&mut *connection)
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(&url).await?;
        let database = Self { pool, engine };
        database.migrate().await?;
        Ok(database)
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    async fn migrate(&self) -> Result<()> {
        match self.engine {
            Engine::Sqlite => {
                sqlx::query("PRAGMA journal_mode = WAL")
                    .execute(&self.pool)
                    .await?;
                sqlx::migrate!("../migrations/sqlite")
                    .run(&self.pool)
                    .await?
            }
            Engine::Postgres => {
                sqlx::migrate!("../migrations/postgres")
                    .run(&self.pool)
                    .await?
            }
        }
        Ok(())
    }

    /// The id of the knowledge base `name`, created on first use.
    pub async fn knowledge_base(&self, name: &str) -> Result<i64> {
        sqlx::query("INSERT INTO knowledge_bases (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT id FROM knowledge_bases WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("id")?)
    }

    /// A read-only round trip to the database (readiness checks).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }

    /// The id of the knowledge base `name`, if it exists.
    pub async fn find_knowledge_base(&self, name: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT id FROM knowledge_bases WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(r.try_get("id")?)).transpose()
    }

    /// Every knowledge base as (id, name, document count), by name.
    pub async fn knowledge_bases(&self) -> Result<Vec<(i64, String, i64)>> {
        let rows = sqlx::query(
            "SELECT k.id, k.name, (SELECT COUNT(*) FROM documents d \
             WHERE d.knowledge_base_id = k.id) AS documents FROM knowledge_bases k ORDER BY k.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("name")?,
                    r.try_get("documents")?,
                ))
            })
            .collect()
    }

    /// The stored document at `path` in a knowledge base, if any.
    pub async fn document(&self, knowledge_base_id: i64, path: &str) -> Result<Option<Document>> {
        let row = sqlx::query(
            "SELECT id, knowledge_base_id, path, title, language, content_hash, byte_count \
             FROM documents WHERE knowledge_base_id = $1 AND path = $2",
        )
        .bind(knowledge_base_id)
        .bind(path)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| document_from_row(&row)).transpose()
    }

    /// All documents of a knowledge base, by path.
    pub async fn documents(&self, knowledge_base_id: i64) -> Result<Vec<Document>> {
        let rows = sqlx::query(
            "SELECT id, knowledge_base_id, path, title, language, content_hash, byte_count \
             FROM documents WHERE knowledge_base_id = $1 ORDER BY path",
        )
        .bind(knowledge_base_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(document_from_row).collect()
    }

    /// Stores a document and its chunks in one transaction, replacing the chunks of an earlier
    /// version at the same path; returns the document's id. On any error nothing changes.
    pub async fn replace_document(
        &self,
        knowledge_base_id: i64,
        document: &NewDocument,
    ) -> Result<i64> {
        let mut transaction = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO documents \
             (knowledge_base_id, path, title, language, content_hash, byte_count) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (knowledge_base_id, path) DO UPDATE SET \
             title = excluded.title, language = excluded.language, \
             content_hash = excluded.content_hash, byte_count = excluded.byte_count, \
             updated_at = CURRENT_TIMESTAMP \
             RETURNING id",
        )
        .bind(knowledge_base_id)
        .bind(&document.path)
        .bind(&document.title)
        .bind(&document.language)
        .bind(&document.content_hash)
        .bind(document.byte_count)
        .fetch_one(&mut *transaction)
        .await?;
        let document_id: i64 = row.try_get("id")?;
        sqlx::query("DELETE FROM chunks WHERE document_id = $1")
            .bind(document_id)
            .execute(&mut *transaction)
            .await?;
        for (ordinal, chunk) in document.chunks.iter().enumerate() {
            let heading_path = serde_json::to_string(&chunk.heading_path)
                .map_err(|e| DbError::Malformed(e.to_string()))?;
            sqlx::query(
                "INSERT INTO chunks (document_id, ordinal, heading_path, text, token_count) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(document_id)
            .bind(ordinal as i64)
            .bind(heading_path)
            .bind(&chunk.text)
            .bind(chunk.token_count)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(document_id)
    }

    /// Removes a document and its chunks; false when there was none.
    pub async fn delete_document(&self, knowledge_base_id: i64, path: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM documents WHERE knowledge_base_id = $1 AND path = $2")
            .bind(knowledge_base_id)
            .bind(path)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every chunk of a knowledge base, in document and chunk order.
    pub async fn chunks(&self, knowledge_base_id: i64) -> Result<Vec<StoredChunk>> {
        self.select_chunks("d.knowledge_base_id = $1", knowledge_base_id)
            .await
    }

    /// The chunks of one document, in order.
    pub async fn document_chunks(&self, document_id: i64) -> Result<Vec<StoredChunk>> {
        self.select_chunks("c.document_id = $1", document_id).await
    }

    async fn select_chunks(&self, condition: &'static str, id: i64) -> Result<Vec<StoredChunk>> {
        let sql = format!(
            "SELECT c.id, c.document_id, c.ordinal, d.path, d.title, d.language, \
             c.heading_path, c.text \
             FROM chunks c JOIN documents d ON d.id = c.document_id \
             WHERE {condition} ORDER BY d.path, c.ordinal"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let heading: String = row.try_get("heading_path")?;
                Ok(StoredChunk {
                    id: row.try_get("id")?,
                    document_id: row.try_get("document_id")?,
                    ordinal: row.try_get("ordinal")?,
                    path: row.try_get("path")?,
                    title: row.try_get("title")?,
                    language: row.try_get("language")?,
                    heading_path: serde_json::from_str(&heading)
                        .map_err(|e| DbError::Malformed(format!("heading path: {e}")))?,
                    text: row.try_get("text")?,
                })
            })
            .collect()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn document_from_row(row: &sqlx::any::AnyRow) -> Result<Document> {
    Ok(Document {
        id: row.try_get("id")?,
        knowledge_base_id: row.try_get("knowledge_base_id")?,
        path: row.try_get("path")?,
        title: row.try_get("title")?,
        language: row.try_get("language")?,
        content_hash: row.try_get("content_hash")?,
        byte_count: row.try_get("byte_count")?,
    })
}
