//! `kefu eval score`: the answer scorer on its own, for scripts that judge answers they got
//! elsewhere (the learning-curve benchmark's simulated agent): JSON lines in, JSON lines out.

use std::io::{BufRead, Write};

use anyhow::{Context, Result, bail};
use kefu_rag::score;
use serde::Deserialize;
use serde_json::json;

/// One line of input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Judged {
    answer: String,
    /// The reference answer (F1 and fact recall need one).
    #[serde(default)]
    reference: Option<String>,
    /// The passages the answer was written from (support needs them).
    #[serde(default)]
    passages: Option<String>,
}

/// Scores every line of `input` into `output`, in order; a line that is not such an object is
/// an error naming its number, before anything is written.
pub fn score_lines(input: impl BufRead, mut output: impl Write) -> Result<usize> {
    let mut scored = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("line {}: cannot be read as UTF-8", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let judged: Judged = serde_json::from_str(&line).map_err(|e| {
            anyhow::anyhow!(
                "line {}: not an object with `answer` and optionally `reference` and \
                 `passages`: {e}",
                n + 1
            )
        })?;
        let s = score::score(
            &judged.answer,
            judged.reference.as_deref(),
            judged.passages.as_deref().unwrap_or_default(),
        );
        let support = judged.passages.as_ref().and(s.support);
        scored.push(json!({
            "f1": s.f1, "fact_recall": s.fact_recall, "support": support,
            "abstained": s.abstained,
        }));
    }
    if scored.is_empty() {
        bail!("no answers to score (JSON lines with `answer` and `reference`)");
    }
    for line in &scored {
        writeln!(output, "{line}")?;
    }
    Ok(scored.len())
}
