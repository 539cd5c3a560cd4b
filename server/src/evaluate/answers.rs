//! `kefu eval answers`: every question of a file asked through the server's answer pipeline
//! (`crate::answering`: retrieval, grounded prompt, generation on a `Generator`, the
//! abstention checks) and scored by `kefu_rag::score` against its reference answer.
//!
//! A question is *answerable* when the document its `source_doc` names is in the knowledge
//! base; otherwise (no `source_doc`, or another collection's document) it is *unanswerable*
//! and the right reply is an abstention.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use kefu_rag::Retriever;
use kefu_rag::score::{self, AnswerScore, mean};
use kefu_trainer::data::OnBadLine;
use serde::Deserialize;
use serde_json::{Value, json};

use super::matching_path;
use crate::answering::{self, Abstention, AnswerSettings};
use crate::generator::{Event, Generator};
use crate::knowledge::Knowledge;

#[derive(Debug, Deserialize)]
struct Record {
    #[serde(default)]
    id: Option<String>,
    question: String,
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    source_doc: Option<String>,
    #[serde(default)]
    split: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

/// A question with its reference answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalQuestion {
    pub id: String,
    pub question: String,
    pub reference: String,
    pub source_doc: Option<String>,
}

/// Which records of a file are asked.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only records of this `split`.
    pub split: Option<String>,
    /// Only records of this `source` (a collection, e.g. `debian-faq` or `bitext`).
    pub source: Option<String>,
    /// At most this many, drawn with `seed` (file order kept).
    pub limit: Option<usize>,
    pub seed: u64,
}

/// The questions of a file and what was left out.
#[derive(Debug, Clone, Default)]
pub struct QuestionFile {
    pub questions: Vec<EvalQuestion>,
    /// Records without a (non-empty) `answer`.
    pub without_answer: usize,
    /// Lines that are not question records (line number, reason), when skipped.
    pub bad_lines: Vec<(usize, String)>,
}

fn parse_line(line: &str) -> Result<Record, String> {
    let record: Record = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if record.question.trim().is_empty() {
        return Err("the question is empty".into());
    }
    Ok(record)
}

/// Reads the selected questions of `path`; a bad line is an error naming it, or skipped and
/// reported with `OnBadLine::Skip`.
pub fn read_questions(
    path: &Path,
    selection: &Selection,
    on_bad_line: OnBadLine,
) -> Result<QuestionFile> {
    let text = super::read_text(path)?;
    let mut file = QuestionFile::default();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = match parse_line(line) {
            Ok(record) => record,
            Err(reason) if on_bad_line == OnBadLine::Skip => {
                file.bad_lines.push((n + 1, reason));
                continue;
            }
            Err(reason) => bail!(
                "{} line {}: not a question record (JSON with `question` and `answer`): \
                 {reason} (--on-bad-line skip leaves such lines out)",
                path.display(),
                n + 1
            ),
        };
        let selected = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        if !selected(&selection.split, &record.split)
            || !selected(&selection.source, &record.source)
        {
            continue;
        }
        match record.answer.filter(|a| !a.trim().is_empty()) {
            Some(reference) => file.questions.push(EvalQuestion {
                id: record.id.unwrap_or_else(|| format!("line-{}", n + 1)),
                question: record.question,
                reference,
                source_doc: record.source_doc.filter(|s| !s.trim().is_empty()),
            }),
            None => file.without_answer += 1,
        }
    }
    if file.questions.is_empty() {
        let mut what = String::new();
        if let Some(split) = &selection.split {
            what.push_str(&format!(" in split `{split}`"));
        }
        if let Some(source) = &selection.source {
            what.push_str(&format!(" from source `{source}`"));
        }
        bail!(
            "{} has no questions with an `answer`{what} ({} records without one)",
            path.display(),
            file.without_answer
        );
    }
    if let Some(limit) = selection.limit.filter(|&l| l < file.questions.len()) {
        file.questions = sample(std::mem::take(&mut file.questions), limit, selection.seed);
    }
    Ok(file)
}

/// `n` of `items` drawn with `seed`, in their original order.
fn sample<T>(items: Vec<T>, n: usize, seed: u64) -> Vec<T> {
    use rand::SeedableRng;
    use rand::seq::index;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut chosen = index::sample(&mut rng, items.len(), n).into_vec();
    chosen.sort_unstable();
    let mut items: Vec<Option<T>> = items.into_iter().map(Some).collect();
    chosen.into_iter().filter_map(|i| items[i].take()).collect()
}

/// One question as the pipeline answered it.
#[derive(Debug, Clone)]
pub struct Answered {
    pub question: EvalQuestion,
    /// Whether the knowledge base holds the document that answers it.
    pub answerable: bool,
    /// What the customer is shown (the abstention reply when the checks rejected the draft).
    pub answer: String,
    /// The model's own text (empty when no generation ran).
    pub draft: String,
    pub abstention: Option<Abstention>,
    pub score: AnswerScore,
    /// The source document among the cited passages (answerable questions only).
    pub source_cited: Option<bool>,
    pub best_similarity: Option<f32>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub seconds: f64,
}

impl Answered {
    fn to_json(&self) -> Value {
        json!({
            "id": self.question.id, "question": self.question.question,
            "reference": self.question.reference, "source_doc": self.question.source_doc,
            "answerable": self.answerable, "answer": self.answer, "draft": self.draft,
            "abstained": self.abstention.is_some(),
            "abstention_reason": self.abstention.map(Abstention::name),
            "f1": self.score.f1, "fact_recall": self.score.fact_recall,
            "support": self.score.support, "source_cited": self.source_cited,
            "best_similarity": self.best_similarity, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "seconds": self.seconds,
        })
    }
}

/// Generates on `generator` and waits for the end (the server's path: same queue, same
/// stop rules).
fn generate(
    generator: &Generator,
    prompt: Vec<u32>,
    settings: &AnswerSettings,
) -> Result<(String, usize, usize)> {
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    generator
        .submit(prompt, answering::generation_params(settings), events)
        .map_err(|_| anyhow::anyhow!("the generation queue is full"))?;
    while let Some(event) = received.blocking_recv() {
        match event {
            Event::Token(_) => {}
            Event::Done(summary) => {
                return Ok((
                    summary.text,
                    summary.prompt_tokens,
                    summary.completion_tokens,
                ));
            }
            Event::Failed(message) => bail!("generation failed: {message}"),
        }
    }
    bail!("the generator stopped before the answer ended")
}

/// Asks one question through the answer pipeline and scores the reply.
fn ask(
    knowledge: &Knowledge,
    retriever: &Retriever,
    generator: &Generator,
    paths: &[String],
    question: &EvalQuestion,
    settings: &AnswerSettings,
    generate_answers: bool,
) -> Result<Answered> {
    let started = Instant::now();
    let source = question
        .source_doc
        .as_deref()
        .and_then(|doc| matching_path(paths, doc));
    let prepared = answering::prepare(
        knowledge,
        retriever,
        &generator.model,
        &question.question,
        Default::default(),
        settings,
    )?;
    let (draft, prompt_tokens, completion_tokens) = match prepared.abstention {
        None if generate_answers => generate(generator, prepared.prompt.clone(), settings)?,
        _ => (String::new(), 0, 0),
    };
    let abstention = match generate_answers {
        true => answering::review(&prepared, &draft, settings),
        false => prepared.abstention,
    };
    let answer = match abstention {
        Some(_) => prepared.abstention_reply().to_string(),
        None => draft.clone(),
    };
    let mut score = score::score(&answer, Some(&question.reference), &prepared.passages);
    score.abstained = abstention.is_some();
    if !generate_answers {
        // Only the decision before generation is measured.
        score.f1 = None;
        score.fact_recall = None;
        score.support = None;
    }
    Ok(Answered {
        answerable: source.is_some(),
        source_cited: source.map(|path| prepared.citations.iter().any(|c| c.path == path)),
        question: question.clone(),
        answer,
        draft,
        abstention,
        score,
        best_similarity: prepared.best_similarity,
        prompt_tokens,
        completion_tokens,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Asks every question, writing each answer to `output` as it comes (JSON lines). Without
/// `generate_answers` only retrieval and the abstention decided before generation run (the
/// relevance floor's calibration).
pub fn evaluate(
    knowledge: &Knowledge,
    retriever: &Retriever,
    generator: &Generator,
    questions: &[EvalQuestion],
    settings: &AnswerSettings,
    generate_answers: bool,
    mut output: Option<&mut dyn Write>,
) -> Result<Vec<Answered>> {
    let mut paths: Vec<String> = retriever.chunks.iter().map(|c| c.path.clone()).collect();
    paths.dedup();
    let bar = super::progress(questions.len(), "answering");
    let mut answered = Vec::with_capacity(questions.len());
    for question in questions {
        let one = ask(
            knowledge,
            retriever,
            generator,
            &paths,
            question,
            settings,
            generate_answers,
        )?;
        if let Some(out) = output.as_mut() {
            writeln!(out, "{}", one.to_json()).context("cannot write the answers file")?;
        }
        answered.push(one);
        let f1 = mean(answered.iter().filter(|a| a.answerable).map(|a| a.score.f1));
        if let Some(f1) = f1 {
            bar.set_prefix(format!("F1 so far {f1:.3}"));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(answered)
}

/// The figures of one group of answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub questions: usize,
    pub f1: Option<f64>,
    pub fact_recall: Option<f64>,
    /// Over the answers that did not abstain.
    pub support: Option<f64>,
    pub abstained: Option<f64>,
    pub source_cited: Option<f64>,
    pub median_seconds: Option<f64>,
    pub mean_prompt_tokens: Option<f64>,
    /// The median of the best passage's dense similarity.
    pub median_similarity: Option<f64>,
}

fn share(values: impl Iterator<Item = bool>) -> Option<f64> {
    mean(values.map(|v| Some(f64::from(u8::from(v)))))
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

impl Figures {
    pub fn of<'a>(answers: impl Iterator<Item = &'a Answered> + Clone) -> Self {
        let generated = answers.clone().filter(|a| a.prompt_tokens > 0);
        Self {
            questions: answers.clone().count(),
            f1: mean(answers.clone().map(|a| a.score.f1)),
            fact_recall: mean(answers.clone().map(|a| a.score.fact_recall)),
            support: mean(
                answers
                    .clone()
                    .filter(|a| a.abstention.is_none())
                    .map(|a| a.score.support),
            ),
            abstained: share(answers.clone().map(|a| a.abstention.is_some())),
            source_cited: mean(
                answers
                    .clone()
                    .map(|a| a.source_cited.map(|c| f64::from(u8::from(c)))),
            ),
            median_seconds: median(answers.clone().map(|a| a.seconds).collect()),
            mean_prompt_tokens: mean(generated.map(|a| Some(a.prompt_tokens as f64))),
            median_similarity: median(
                answers
                    .clone()
                    .filter_map(|a| a.best_similarity.map(f64::from))
                    .collect(),
            ),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "questions": self.questions, "f1": self.f1, "fact_recall": self.fact_recall,
            "support": self.support, "abstained": self.abstained,
            "source_cited": self.source_cited, "median_seconds": self.median_seconds,
            "mean_prompt_tokens": self.mean_prompt_tokens,
            "median_similarity": self.median_similarity,
        })
    }
}

/// Answerable and unanswerable figures of a run.
pub fn summarize(answers: &[Answered]) -> [(&'static str, Figures); 2] {
    [
        (
            "answerable",
            Figures::of(answers.iter().filter(|a| a.answerable)),
        ),
        (
            "unanswerable",
            Figures::of(answers.iter().filter(|a| !a.answerable)),
        ),
    ]
}

/// The summary as a table.
pub fn table(summary: &[(&'static str, Figures); 2]) -> String {
    let cell = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "—".to_string(), |v| format!("{v:.digits$}"))
    };
    let mut out = format!(
        "{:<13}{:>10}{:>8}{:>8}{:>9}{:>11}{:>8}{:>11}{:>15}{:>12}\n",
        "",
        "questions",
        "F1",
        "facts",
        "support",
        "abstained",
        "cited",
        "s/answer",
        "prompt tokens",
        "similarity"
    );
    for (name, f) in summary {
        out.push_str(&format!(
            "{name:<13}{:>10}{:>8}{:>8}{:>9}{:>11}{:>8}{:>11}{:>15}{:>12}\n",
            f.questions,
            cell(f.f1, 3),
            cell(f.fact_recall, 3),
            cell(f.support, 3),
            f.abstained
                .map_or_else(|| "—".to_string(), |a| format!("{:.0}%", a * 100.0)),
            cell(f.source_cited, 2),
            cell(f.median_seconds, 2),
            cell(f.mean_prompt_tokens, 0),
            cell(f.median_similarity, 3),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> std::path::PathBuf {
        let path = dir.join("qa.jsonl");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn question_files_are_selected_and_bad_lines_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "{\"id\": \"a\", \"question\": \"a?\", \"answer\": \"A.\", \"source_doc\": \"kb/a.md\", \"split\": \"test\", \"source\": \"faq\"}\n\
             {\"question\": \"b?\", \"split\": \"test\", \"source\": \"faq\"}\n\
             {\"question\": \"c?\", \"answer\": \"C.\", \"split\": \"train\", \"source\": \"faq\"}\n\
             {\"question\": \"d?\", \"answer\": \"D.\", \"split\": \"test\", \"source\": \"chat\"}\n",
        );
        let all = read_questions(&path, &Selection::default(), OnBadLine::Fail).unwrap();
        assert_eq!((all.questions.len(), all.without_answer), (3, 1));
        assert_eq!(all.questions[0].id, "a");
        assert_eq!(all.questions[1].id, "line-3");
        let test = Selection {
            split: Some("test".into()),
            source: Some("faq".into()),
            ..Selection::default()
        };
        let picked = read_questions(&path, &test, OnBadLine::Fail).unwrap();
        assert_eq!(picked.questions.len(), 1);
        assert_eq!(picked.questions[0].source_doc.as_deref(), Some("kb/a.md"));
        let dev = Selection {
            split: Some("dev".into()),
            ..Selection::default()
        };
        let err = read_questions(&path, &dev, OnBadLine::Fail).unwrap_err();
        assert!(err.to_string().contains("split `dev`"), "{err}");

        let bad = write(
            dir.path(),
            "{\"question\": \"a?\", \"answer\": \"A\"}\nnot json\n{\"question\": \" \", \"answer\": \"x\"}\n",
        );
        let err = format!(
            "{:#}",
            read_questions(&bad, &Selection::default(), OnBadLine::Fail).unwrap_err()
        );
        assert!(
            err.contains("line 2") && err.contains("--on-bad-line skip"),
            "{err}"
        );
        let skipped = read_questions(&bad, &Selection::default(), OnBadLine::Skip).unwrap();
        assert_eq!(skipped.questions.len(), 1);
        assert_eq!(
            skipped
                .bad_lines
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>(),
            vec![2, 3]
        );

        let none = write(
            dir.path(),
            "{\"question\": \"a?\"}\n{\"question\": \"b?\", \"answer\": \"\"}\n",
        );
        let err = read_questions(&none, &Selection::default(), OnBadLine::Fail).unwrap_err();
        assert!(
            err.to_string().contains("no questions with an `answer`"),
            "{err}"
        );
        assert!(err.to_string().contains("2 records without one"), "{err}");
    }

    #[test]
    fn a_limit_draws_the_same_questions_for_the_same_seed() {
        let items: Vec<usize> = (0..100).collect();
        let a = sample(items.clone(), 10, 7);
        assert_eq!(a, sample(items.clone(), 10, 7));
        assert_ne!(a, sample(items.clone(), 10, 8));
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]), "file order is kept");
    }

    #[test]
    fn figures_separate_answerable_from_unanswerable() {
        let answered = |answerable, abstained: bool, f1, seconds| Answered {
            question: EvalQuestion {
                id: "q".into(),
                question: "q?".into(),
                reference: "r".into(),
                source_doc: None,
            },
            answerable,
            answer: String::new(),
            draft: String::new(),
            abstention: abstained.then_some(Abstention::Unsupported),
            score: AnswerScore {
                f1: Some(f1),
                fact_recall: Some(f1),
                support: Some(1.0),
                abstained,
            },
            source_cited: answerable.then_some(true),
            best_similarity: None,
            prompt_tokens: 100,
            completion_tokens: 10,
            seconds,
        };
        let answers = vec![
            answered(true, false, 0.5, 1.0),
            answered(true, true, 0.0, 3.0),
            answered(true, false, 1.0, 2.0),
            answered(false, true, 0.0, 0.5),
        ];
        let [(_, yes), (_, no)] = summarize(&answers);
        assert_eq!(yes.questions, 3);
        assert_eq!(yes.f1, Some(0.5));
        assert_eq!(yes.abstained, Some(1.0 / 3.0));
        assert_eq!(yes.median_seconds, Some(2.0));
        assert_eq!(no.questions, 1);
        assert_eq!(no.abstained, Some(1.0));
        let text = table(&summarize(&answers));
        assert!(
            text.contains("answerable") && text.contains("33%"),
            "{text}"
        );
    }
}
