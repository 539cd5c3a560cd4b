//! `kefu eval retrieval`: recall@k and MRR at the document level for dense, keyword and fused
//! retrieval over a question file (JSON lines with `question` and `source_doc`).

use std::path::Path;

use anyhow::{Context, Result, bail};
use kefu_rag::eval::RetrievalMetrics;
use kefu_rag::{RetrievalConfig, Retriever, Scored};
use serde::Deserialize;

use super::matching_path;
use crate::knowledge::Knowledge;

#[derive(Debug, Deserialize)]
struct QaRecord {
    question: String,
    #[serde(default)]
    source_doc: Option<String>,
    #[serde(default)]
    split: Option<String>,
}

/// A question with the document that answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub question: String,
    pub source_doc: String,
}

/// The questions of a file: those of `split` (all when `None`) that name a source document,
/// and how many were skipped for lacking one.
pub fn read_questions(path: &Path, split: Option<&str>) -> Result<(Vec<Question>, usize)> {
    let text = super::read_text(path)?;
    let mut questions = Vec::new();
    let mut skipped = 0;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: QaRecord = serde_json::from_str(line).with_context(|| {
            format!(
                "{} line {}: not a question record (JSON with a `question` field)",
                path.display(),
                n + 1
            )
        })?;
        if split.is_some_and(|s| record.split.as_deref() != Some(s)) {
            continue;
        }
        match record.source_doc.filter(|s| !s.trim().is_empty()) {
            Some(source_doc) => questions.push(Question {
                question: record.question,
                source_doc,
            }),
            None => skipped += 1,
        }
    }
    if questions.is_empty() {
        bail!(
            "{} has no questions with a `source_doc`{}",
            path.display(),
            split
                .map(|s| format!(" in split `{s}`"))
                .unwrap_or_default()
        );
    }
    Ok((questions, skipped))
}

/// Recall@k and MRR of each retriever.
#[derive(Debug, Clone, Default)]
pub struct RetrievalReport {
    pub questions: usize,
    /// Records without `source_doc`.
    pub skipped: usize,
    /// Questions whose source document is not in the knowledge base (counted as misses).
    pub source_missing: usize,
    pub dense: RetrievalMetrics,
    pub keyword: RetrievalMetrics,
    pub fused: RetrievalMetrics,
}

pub fn evaluate(
    knowledge: &Knowledge,
    retriever: &Retriever,
    questions: &[Question],
    skipped: usize,
    config: &RetrievalConfig,
) -> Result<RetrievalReport> {
    let mut paths: Vec<String> = retriever.chunks.iter().map(|c| c.path.clone()).collect();
    paths.dedup();
    let mut report = RetrievalReport {
        questions: questions.len(),
        skipped,
        ..RetrievalReport::default()
    };
    let bar = super::progress(questions.len(), "evaluating");
    for question in questions {
        bar.inc(1);
        let expected = match matching_path(&paths, &question.source_doc) {
            Some(path) => path.to_string(),
            None => {
                report.source_missing += 1;
                format!("(not ingested) {}", question.source_doc)
            }
        };
        let ranked = knowledge.search(retriever, &question.question, config)?;
        let documents = |list: &[Scored]| -> Vec<String> {
            list.iter()
                .map(|s| retriever.chunks[s.chunk].path.clone())
                .collect()
        };
        report.dense.record(&documents(&ranked.dense), &expected);
        report
            .keyword
            .record(&documents(&ranked.keyword), &expected);
        report.fused.record(&documents(&ranked.fused), &expected);
    }
    bar.finish_and_clear();
    Ok(report)
}

impl RetrievalReport {
    fn metrics(&self) -> [(&'static str, &RetrievalMetrics); 3] {
        [
            ("dense", &self.dense),
            ("keyword", &self.keyword),
            ("fused", &self.fused),
        ]
    }

    pub fn to_json(&self, ks: &[usize]) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        object.insert("questions".into(), self.questions.into());
        object.insert("skipped_without_source_doc".into(), self.skipped.into());
        object.insert("source_not_ingested".into(), self.source_missing.into());
        for (name, metrics) in self.metrics() {
            let mut m = serde_json::Map::new();
            for &k in ks {
                m.insert(format!("recall@{k}"), metrics.recall_at(k).into());
            }
            m.insert("mrr".into(), metrics.mrr().into());
            object.insert(name.into(), m.into());
        }
        object.into()
    }

    pub fn to_table(&self, ks: &[usize]) -> String {
        let mut out = format!("{:<9}", "");
        for k in ks {
            out.push_str(&format!("{:>11}", format!("recall@{k}")));
        }
        out.push_str(&format!("{:>8}\n", "mrr"));
        for (name, metrics) in self.metrics() {
            out.push_str(&format!("{name:<9}"));
            for &k in ks {
                out.push_str(&format!("{:>11.3}", metrics.recall_at(k)));
            }
            out.push_str(&format!("{:>8.3}\n", metrics.mrr()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_files_are_read_with_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qa.jsonl");
        std::fs::write(
            &path,
            "{\"question\": \"a?\", \"source_doc\": \"kb/a.md\", \"split\": \"test\"}\n\
             {\"question\": \"b?\", \"split\": \"train\"}\n\
             {\"question\": \"c?\", \"source_doc\": \"kb/c.md\", \"split\": \"train\"}\n",
        )
        .unwrap();
        let (all, skipped) = read_questions(&path, None).unwrap();
        assert_eq!((all.len(), skipped), (2, 1));
        let (test, skipped) = read_questions(&path, Some("test")).unwrap();
        assert_eq!((test.len(), skipped), (1, 0));
        assert!(read_questions(&path, Some("dev")).is_err());
        std::fs::write(&path, "{\"question\": \"a?\"}\nnot json\n").unwrap();
        let err = format!("{:#}", read_questions(&path, None).unwrap_err());
        assert!(err.contains("line 2"), "{err}");
        std::fs::write(&path, b"\xff\xfe").unwrap();
        assert!(read_questions(&path, None).is_err());
        assert!(read_questions(&dir.path().join("missing.jsonl"), None).is_err());
    }
}
