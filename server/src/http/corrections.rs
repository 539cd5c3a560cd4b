//! Agents' corrections as knowledge (`kefu serve --corrections-to-knowledge`, on by default).
//! A corrected answer becomes a document of its conversation's knowledge base — the customer's
//! question as its title, the agent's answer as its text — so the next customer who asks is
//! answered from it at once, long before a training job has learned it (and a question the
//! relevance floor declined is no longer declined). The latest correction of an answer replaces
//! the earlier one; rejecting the rated answer in the feedback inbox (`admin::feedback`), or deleting the
//! document from the knowledge base, takes it out. Customers' ratings never become knowledge.

use kefu_db::Message;

use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Documents made from corrections are stored under `correction:<answer's message id>`.
pub(crate) const PREFIX: &str = "correction:";

/// The file name a correction is parsed as (Markdown: a heading and a paragraph).
pub(crate) const NAME: &str = "correction.md";

pub(crate) fn key(answer_id: i64) -> String {
    format!("{PREFIX}{answer_id}")
}

/// The answer a correction document was made from.
pub(crate) fn answer_of(path: &str) -> Option<i64> {
    path.strip_prefix(PREFIX)?.parse().ok()
}

/// The document's Markdown: the question on one line as its heading, then the answer.
pub(crate) fn document(question: &str, answer: &str) -> String {
    let title = question.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("# {title}\n\n{}\n", answer.trim())
}

/// The question `answer` replies to and the answer's latest correction by staff, if any.
async fn latest_correction(
    state: &AppState,
    answer: &Message,
) -> Result<Option<(String, String)>, ApiError> {
    let Some(question_id) = answer.reply_to else {
        return Ok(None);
    };
    let question = state
        .database
        .message(question_id)
        .await
        .map_err(ApiError::internal)?;
    let events = state
        .database
        .feedback(answer.id)
        .await
        .map_err(ApiError::internal)?;
    let corrected = events
        .into_iter()
        .rev()
        .filter(|e| e.feedback.rater_role != "customer")
        .find_map(|e| e.feedback.corrected_answer);
    Ok(question.zip(corrected).map(|(q, a)| (q.content, a)))
}

/// The document of `answer`'s latest correction — its key and Markdown — or `None` when the
/// answer has no question or no correction. The caller stores it in the conversation's
/// knowledge base (`admin::documents::ingest_in_request`), replacing an earlier one.
pub(crate) async fn document_of(
    state: &AppState,
    answer: &Message,
) -> Result<Option<(String, String)>, ApiError> {
    Ok(latest_correction(state, answer)
        .await?
        .map(|(question, corrected)| (key(answer.id), document(&question, &corrected))))
}

/// The bytes a correction document is rebuilt from (re-ingesting it), or a 409 when the
/// answer or its correction is gone.
pub(crate) async fn source(state: &AppState, path: &str) -> Result<Vec<u8>, ApiError> {
    let gone = || {
        ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "source_missing",
            format!("{path}: the corrected answer is no longer stored; delete the document"),
        )
    };
    let id = answer_of(path).ok_or_else(gone)?;
    let answer = state
        .database
        .message(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(gone)?;
    let (question, corrected) = latest_correction(state, &answer).await?.ok_or_else(gone)?;
    Ok(document(&question, &corrected).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_correction_reads_as_a_question_heading_and_its_answer() {
        let text = document(
            "  How do I\nupgrade   Debian? ",
            " Run apt full-upgrade.\n\n",
        );
        assert_eq!(
            text,
            "# How do I upgrade Debian?\n\nRun apt full-upgrade.\n"
        );
        assert_eq!(answer_of(&key(42)), Some(42));
        assert_eq!(answer_of("upload:faq.md"), None);
        assert_eq!(answer_of("correction:x"), None);
    }
}
