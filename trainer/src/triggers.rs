//! What there is to learn and when to learn it: the material a job would get (feedback since
//! the last succeeded job, documents it had not seen), the document snapshot for a CPT stage,
//! and the automatic triggers (a schedule, a feedback threshold) an idle worker checks.

use std::path::Path;

use anyhow::{Context, Result};
use kefu_db::{Database, TrainingJob};
use serde_json::{Value, json};

use crate::dataset::{Format, Kind, Policy, write_lines};
use crate::recipe::Recipe;

/// What a job would learn from now, compared with the last job that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Material {
    /// SFT examples and pairs the feedback log gives now.
    pub examples: usize,
    pub pairs: usize,
    /// Whether any feedback came after the last succeeded job started.
    pub fresh_feedback: bool,
    /// Documents that job had not seen, when the recipe has a CPT stage (else 0).
    pub new_documents: usize,
}

impl Material {
    /// Whether a job has anything new to learn.
    pub fn anything(&self) -> bool {
        (self.examples + self.pairs > 0 && self.fresh_feedback) || self.new_documents > 0
    }

    /// Why there is nothing to learn, for people.
    pub fn why_nothing(&self) -> &'static str {
        if self.examples + self.pairs == 0 {
            "no corrected or rated answers yet (and no new documents for a CPT stage or \
             `[knowledge]` examples): nothing to learn"
        } else {
            "no feedback since the last training job (and no new documents for a CPT stage or \
             `[knowledge]` examples): nothing new to learn"
        }
    }
}

/// Whether there is something new to learn since the last job that succeeded: feedback the
/// policy admits (decided or accepted since that job began), or documents.
pub async fn new_material(
    home: &Path,
    database: &Database,
    model: &str,
    policy: Policy,
) -> Result<Material> {
    let sft = crate::dataset::compile(database, Kind::Sft, Format::Trl, policy).await?;
    let pairs = crate::dataset::compile(database, Kind::Pairs, Format::Trl, policy).await?;
    let since = last_success_start(database, model).await?;
    let fresh_feedback = admitted_since(database, policy, since).await? > 0;
    let new_documents = if learns_documents(home)? {
        new_documents(home, database, model).await?.0.len()
    } else {
        0
    };
    Ok(Material {
        examples: sft.len(),
        pairs: pairs.len(),
        fresh_feedback,
        new_documents,
    })
}

/// Whether the worker's recipe (`<home>/recipe.toml`) learns from the documents: a CPT
/// stage, or `[knowledge]` examples. Then new documents are something to learn.
pub fn learns_documents(home: &Path) -> Result<bool> {
    let file = home.join("recipe.toml");
    Ok(file.exists() && {
        let recipe = Recipe::read(&file)?;
        recipe.cpt.is_some() || recipe.knowledge.is_some()
    })
}

/// A document's line in a job's `docs.jsonl`: the documents it had seen.
fn document_line(document: &kefu_db::Document) -> Value {
    json!({
        "document_id": document.id, "knowledge_base_id": document.knowledge_base_id,
        "path": document.path, "title": document.title, "content_hash": document.content_hash,
    })
}

/// The documents of every knowledge base whose content the last succeeded job had not seen
/// (its `data/docs.jsonl`; every document when no job has one), and every document now.
async fn new_documents(
    home: &Path,
    database: &Database,
    model: &str,
) -> Result<(Vec<kefu_db::Document>, Vec<kefu_db::Document>)> {
    let mut seen = std::collections::HashSet::new();
    if let Some(job) = database.last_succeeded_job(model).await? {
        let manifest = home
            .join("jobs")
            .join(job.id.to_string())
            .join("data")
            .join("docs.jsonl");
        for line in std::fs::read_to_string(manifest)
            .unwrap_or_default()
            .lines()
        {
            if let Some(hash) = serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| v["content_hash"].as_str().map(str::to_string))
            {
                seen.insert(hash);
            }
        }
    }
    let mut all = Vec::new();
    for (id, _, _) in database.knowledge_bases().await? {
        all.extend(database.documents(id).await?);
    }
    let fresh = all
        .iter()
        .filter(|d| !seen.contains(&d.content_hash))
        .cloned()
        .collect();
    Ok((fresh, all))
}

/// Writes the new documents as Markdown under `data/docs/` (title, then the stored chunks'
/// text in order; the chunker's sentence overlap repeats a little) and `data/docs.jsonl`, the
/// documents seen up to this job (the next job's CPT starts after them). Returns how many
/// documents the CPT stage gets.
pub async fn snapshot_documents(
    home: &Path,
    database: &Database,
    model: &str,
    data_dir: &Path,
) -> Result<usize> {
    let (fresh, all) = new_documents(home, database, model).await?;
    let docs = data_dir.join("docs");
    std::fs::create_dir_all(&docs).with_context(|| format!("cannot create {}", docs.display()))?;
    for document in &fresh {
        let mut text = format!("# {}\n\n", document.title);
        for chunk in database.document_chunks(document.id).await? {
            text.push_str(chunk.text.trim());
            text.push_str("\n\n");
        }
        let file = docs.join(format!("{}.md", document.id));
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    }
    write_lines(
        &data_dir.join("docs.jsonl"),
        &all.iter().map(document_line).collect::<Vec<_>>(),
    )?;
    Ok(fresh.len())
}

/// When the last job that succeeded began (0 when none did).
async fn last_success_start(database: &Database, model: &str) -> Result<i64> {
    Ok(database
        .last_succeeded_job(model)
        .await?
        .and_then(|j| j.started_ms)
        .unwrap_or(0))
}

/// Rated answers the policy admits whose label was decided (or accepted) at `since_ms` or
/// later: one per answer, however often it was rated.
async fn admitted_since(database: &Database, policy: Policy, since_ms: i64) -> Result<usize> {
    Ok(crate::dataset::admitted(database, policy)
        .await?
        .iter()
        .filter(|(_, at)| *at >= since_ms)
        .count())
}

/// Whether anything happened to the feedback since `since_ms`: an event or an inbox review
/// (one count each, before compiling the whole log).
async fn feedback_activity_since(database: &Database, since_ms: i64) -> Result<bool> {
    Ok(database.feedback_since(since_ms).await? > 0 || database.reviews_since(since_ms).await? > 0)
}

/// The automatic triggers: queues a job for `model` (trigger `threshold` or `schedule`) when
/// the threshold's count is reached — rated answers the policy admits, decided since the last
/// job began (a customer rating one answer twenty times is one; thumbs the policy keeps out are
/// none) — or the schedule's minutes have passed since then (at once when no job ever ran);
/// and only when there is something new to learn (as an admin's click needs) and no job is
/// queued or running.
pub async fn check_triggers(
    home: &Path,
    database: &Database,
    model: &str,
    policy: Policy,
    now_ms: i64,
) -> Result<Option<TrainingJob>> {
    let schedule = database.training_schedule(model).await?;
    if schedule.is_off() || database.active_job(model).await?.is_some() {
        return Ok(None);
    }
    let last_start = database.last_job(model).await?.map(|j| j.created_ms);
    let since = last_start.unwrap_or(0);
    // The feedback log is compiled at most once per check, and only after a count says
    // something happened to it.
    let mut admitted = None;
    let mut trigger = None;
    if let Some(count) = schedule.after_new_feedback
        && feedback_activity_since(database, since).await?
    {
        let all = crate::dataset::admitted(database, policy).await?;
        if all.iter().filter(|(_, at)| *at >= since).count() as i64 >= count {
            trigger = Some("threshold");
        }
        admitted = Some(all);
    }
    if trigger.is_none()
        && let Some(minutes) = schedule.every_minutes
        && last_start.is_none_or(|start| now_ms - start >= minutes.saturating_mul(60_000))
    {
        trigger = Some("schedule");
    }
    let Some(trigger) = trigger else {
        return Ok(None);
    };
    // Something new to learn, as an admin's click needs: feedback the policy admits decided
    // since the last job that succeeded began, or documents it had not seen.
    let since_success = last_success_start(database, model).await?;
    let fresh_feedback = match admitted {
        Some(all) => all.iter().any(|(_, at)| *at >= since_success),
        None if feedback_activity_since(database, since_success).await? => {
            admitted_since(database, policy, since_success).await? > 0
        }
        None => false,
    };
    let unseen_documents =
        learns_documents(home)? && !new_documents(home, database, model).await?.0.is_empty();
    if !fresh_feedback && !unseen_documents {
        return Ok(None);
    }
    Ok(database.enqueue_job(model, trigger, None).await?.ok())
}
