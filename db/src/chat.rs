//! Conversations, messages, the record of what each answer was served with, and feedback
//! events (append-only).

use std::collections::HashMap;

use sqlx::Row;

use crate::{Database, DbError, Result};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub id: i64,
    pub public_id: String,
    pub knowledge_base_id: i64,
    pub customer_secret_hash: String,
    pub status: String,
    pub created_ms: i64,
    /// The widget site it was opened through, if any.
    pub site_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: i64,
    pub conversation_id: i64,
    /// `customer`, `assistant` or `agent`.
    pub role: String,
    pub content: String,
    /// For an answer: the customer message it answers.
    pub reply_to: Option<i64>,
    pub created_ms: i64,
}

/// What an answer was generated from: enough to reproduce it and to train on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedPrompt {
    /// Content hash of the model file (its version).
    pub model_version: String,
    pub template_id: String,
    /// Sampling parameters, JSON.
    pub sampling: String,
    /// Retrieved chunks with their scores and text, JSON.
    pub retrieved: String,
    /// The chat messages given to the model, JSON.
    pub prompt: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub first_token_ms: i64,
    pub latency_ms: i64,
    pub finish_reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFeedback {
    pub message_id: i64,
    /// `customer` or `agent`.
    pub rater_role: String,
    pub rater: Option<String>,
    /// +1 thumbs up, −1 thumbs down, 0 a correction or comment without a rating.
    pub rating: i64,
    pub reasons: Vec<String>,
    pub comment: Option<String>,
    pub corrected_answer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackEvent {
    pub id: i64,
    pub feedback: NewFeedback,
    pub created_ms: i64,
}

/// A review decision that lets a rated answer's feedback into training.
pub const ACCEPTED: &str = "accepted";
/// A review decision that keeps a rated answer's feedback out of training.
pub const REJECTED: &str = "rejected";

/// An admin's latest decision on a rated answer (the feedback inbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    pub message_id: i64,
    /// [`ACCEPTED`] or [`REJECTED`].
    pub decision: String,
    pub reviewer: Option<String>,
    pub created_ms: i64,
}

pub(crate) fn conversation_from(row: &sqlx::any::AnyRow) -> Result<Conversation> {
    Ok(Conversation {
        id: row.try_get("id")?,
        public_id: row.try_get("public_id")?,
        knowledge_base_id: row.try_get("knowledge_base_id")?,
        customer_secret_hash: row.try_get("customer_secret_hash")?,
        status: row.try_get("status")?,
        created_ms: row.try_get("created_ms")?,
        site_id: row.try_get("site_id")?,
    })
}

fn message_from(row: &sqlx::any::AnyRow) -> Result<Message> {
    Ok(Message {
        id: row.try_get("id")?,
        conversation_id: row.try_get("conversation_id")?,
        role: row.try_get("role")?,
        content: row.try_get("content")?,
        reply_to: row.try_get("reply_to")?,
        created_ms: row.try_get("created_ms")?,
    })
}

pub(crate) const CONVERSATION_COLUMNS: &str =
    "id, public_id, knowledge_base_id, customer_secret_hash, status, created_ms, site_id";
const MESSAGE_COLUMNS: &str = "id, conversation_id, role, content, reply_to, created_ms";

impl Database {
    pub async fn create_conversation(
        &self,
        knowledge_base_id: i64,
        public_id: &str,
        customer_secret_hash: &str,
        site_id: Option<i64>,
    ) -> Result<Conversation> {
        let sql = format!(
            "INSERT INTO conversations (public_id, knowledge_base_id, customer_secret_hash, \
             created_ms, site_id) VALUES ($1, $2, $3, $4, $5) RETURNING {CONVERSATION_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(public_id)
            .bind(knowledge_base_id)
            .bind(customer_secret_hash)
            .bind(now_ms())
            .bind(site_id)
            .fetch_one(&self.pool)
            .await?;
        conversation_from(&row)
    }

    pub async fn conversation(&self, public_id: &str) -> Result<Option<Conversation>> {
        let sql = format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE public_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(public_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| conversation_from(&r)).transpose()
    }

    pub async fn add_message(
        &self,
        conversation_id: i64,
        role: &str,
        content: &str,
        reply_to: Option<i64>,
    ) -> Result<Message> {
        let sql = format!(
            "INSERT INTO messages (conversation_id, role, content, reply_to, created_ms) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {MESSAGE_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(conversation_id)
            .bind(role)
            .bind(content)
            .bind(reply_to)
            .bind(now_ms())
            .fetch_one(&self.pool)
            .await?;
        message_from(&row)
    }

    /// Stores an answer and its served-prompt record in one transaction.
    pub async fn add_answer(
        &self,
        conversation_id: i64,
        reply_to: i64,
        content: &str,
        served: &ServedPrompt,
    ) -> Result<Message> {
        let mut transaction = self.pool.begin().await?;
        let sql = format!(
            "INSERT INTO messages (conversation_id, role, content, reply_to, created_ms) \
             VALUES ($1, 'assistant', $2, $3, $4) RETURNING {MESSAGE_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(conversation_id)
            .bind(content)
            .bind(reply_to)
            .bind(now_ms())
            .fetch_one(&mut *transaction)
            .await?;
        let message = message_from(&row)?;
        sqlx::query(
            "INSERT INTO served_prompts (message_id, model_version, template_id, sampling, \
             retrieved, prompt, prompt_tokens, completion_tokens, first_token_ms, latency_ms, \
             finish_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(message.id)
        .bind(&served.model_version)
        .bind(&served.template_id)
        .bind(&served.sampling)
        .bind(&served.retrieved)
        .bind(&served.prompt)
        .bind(served.prompt_tokens)
        .bind(served.completion_tokens)
        .bind(served.first_token_ms)
        .bind(served.latency_ms)
        .bind(&served.finish_reason)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(message)
    }

    /// A conversation's messages in order.
    pub async fn messages(&self, conversation_id: i64) -> Result<Vec<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(conversation_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(message_from).collect()
    }

    pub async fn message(&self, id: i64) -> Result<Option<Message>> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| message_from(&r)).transpose()
    }

    pub async fn served_prompt(&self, message_id: i64) -> Result<Option<ServedPrompt>> {
        let row = sqlx::query(
            "SELECT model_version, template_id, sampling, retrieved, prompt, prompt_tokens, \
             completion_tokens, first_token_ms, latency_ms, finish_reason \
             FROM served_prompts WHERE message_id = $1",
        )
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(ServedPrompt {
                model_version: row.try_get("model_version")?,
                template_id: row.try_get("template_id")?,
                sampling: row.try_get("sampling")?,
                retrieved: row.try_get("retrieved")?,
                prompt: row.try_get("prompt")?,
                prompt_tokens: row.try_get("prompt_tokens")?,
                completion_tokens: row.try_get("completion_tokens")?,
                first_token_ms: row.try_get("first_token_ms")?,
                latency_ms: row.try_get("latency_ms")?,
                finish_reason: row.try_get("finish_reason")?,
            })
        })
        .transpose()
    }

    /// Appends a feedback event (events are never updated or deleted).
    pub async fn add_feedback(&self, feedback: &NewFeedback) -> Result<i64> {
        let reasons = serde_json::to_string(&feedback.reasons)
            .map_err(|e| DbError::Malformed(e.to_string()))?;
        let row = sqlx::query(
            "INSERT INTO feedback_events (message_id, rater_role, rater, rating, reasons, \
             comment, corrected_answer, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             RETURNING id",
        )
        .bind(feedback.message_id)
        .bind(&feedback.rater_role)
        .bind(&feedback.rater)
        .bind(feedback.rating)
        .bind(reasons)
        .bind(&feedback.comment)
        .bind(&feedback.corrected_answer)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("id")?)
    }

    /// Customer feedback events on the answers of one conversation.
    pub async fn customer_feedback_in(&self, conversation_id: i64) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM feedback_events f JOIN messages m ON m.id = f.message_id \
             WHERE m.conversation_id = $1 AND f.rater_role = 'customer'",
        )
        .bind(conversation_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Feedback events from one rater since `since_ms`: how many, and when the oldest came.
    pub async fn feedback_by_rater_since(&self, rater: &str, since_ms: i64) -> Result<(i64, i64)> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(MIN(created_ms), 0) AS oldest FROM feedback_events \
             WHERE rater = $1 AND created_ms >= $2",
        )
        .bind(rater)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("n")?, row.try_get("oldest")?))
    }

    /// The feedback events on a message, oldest first.
    pub async fn feedback(&self, message_id: i64) -> Result<Vec<FeedbackEvent>> {
        let rows = sqlx::query(
            "SELECT id, message_id, rater_role, rater, rating, reasons, comment, \
             corrected_answer, created_ms FROM feedback_events WHERE message_id = $1 ORDER BY id",
        )
        .bind(message_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let reasons: String = row.try_get("reasons")?;
                Ok(FeedbackEvent {
                    id: row.try_get("id")?,
                    feedback: NewFeedback {
                        message_id: row.try_get("message_id")?,
                        rater_role: row.try_get("rater_role")?,
                        rater: row.try_get("rater")?,
                        rating: row.try_get("rating")?,
                        reasons: serde_json::from_str(&reasons)
                            .map_err(|e| DbError::Malformed(format!("reasons: {e}")))?,
                        comment: row.try_get("comment")?,
                        corrected_answer: row.try_get("corrected_answer")?,
                    },
                    created_ms: row.try_get("created_ms")?,
                })
            })
            .collect()
    }

    /// Records one decision (`accepted` or `rejected`) on each of `message_ids`, all in one
    /// transaction (reviews are appended, never updated: the latest one counts).
    pub async fn add_reviews(
        &self,
        message_ids: &[i64],
        decision: &str,
        reviewer: Option<&str>,
    ) -> Result<usize> {
        if decision != ACCEPTED && decision != REJECTED {
            return Err(DbError::Malformed(format!(
                "a review is `{ACCEPTED}` or `{REJECTED}`, not `{decision}`"
            )));
        }
        let mut transaction = self.pool.begin().await?;
        let at = now_ms();
        for id in message_ids {
            sqlx::query(
                "INSERT INTO feedback_reviews (message_id, decision, reviewer, created_ms) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(decision)
            .bind(reviewer)
            .bind(at)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(message_ids.len())
    }

    /// The latest review of every reviewed message.
    pub async fn reviews(&self) -> Result<HashMap<i64, Review>> {
        let rows = sqlx::query(
            "SELECT message_id, decision, reviewer, created_ms FROM feedback_reviews ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = HashMap::new();
        for row in &rows {
            let review = Review {
                message_id: row.try_get("message_id")?,
                decision: row.try_get("decision")?,
                reviewer: row.try_get("reviewer")?,
                created_ms: row.try_get("created_ms")?,
            };
            out.insert(review.message_id, review);
        }
        Ok(out)
    }
}
