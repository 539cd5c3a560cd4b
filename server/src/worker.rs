//! `kefu trainer work`: the training worker, a process of its own (`kefu serve` starts one as a
//! child and restarts it when it dies). It claims a queued job with a lease, renews the lease
//! while it works (a killed worker's job goes back to the queue, or fails with a reason), and:
//! 1. snapshots the feedback into a dataset (`jobs/<id>/data/`: SFT examples from corrected and
//!    liked answers, preference pairs; every example keeps its lineage: question, answer,
//!    feedback ids and the model version that answered);
//! 2. runs the recipe (`<home>/recipe.toml`, or the built-in one) from the production model:
//!    CPT on the documents the last succeeded job had not seen (when the recipe has `[cpt]`;
//!    snapshotted to `jobs/<id>/data/docs/`), SFT, then DPO when there are pairs enough, each
//!    stage merged into the next one's start;
//! 3. runs the evaluation gate (`gate.rs`): the regression set (every question an agent
//!    corrected), held-out questions and pairs when the recipe names them, merged-versus-adapter
//!    logit parity, chat-template parity;
//! 4. registers the merged model as a version with its report, labels it `candidate`, and
//!    promotes it to `production` when the gate passes (every server follows the label).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use kefu_db::{CANDIDATE, Database, PRODUCTION, TrainingJob};
use kefu_trainer::recipe::{Recipe, Stage};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::export::{Format, Kind};
use crate::train::StageRun;

#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Database: sqlite://PATH or postgres://... (default: kefu.db in the data directory).
    #[arg(long, env = "KEFU_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Take at most one job, then exit.
    #[arg(long)]
    pub once: bool,
    /// How often to look for a queued job, in milliseconds.
    #[arg(long, env = "KEFU_WORKER_POLL_MS", default_value_t = 2000)]
    pub poll_ms: u64,
    /// How long a claimed job stays this worker's without a heartbeat, in seconds.
    #[arg(long, env = "KEFU_WORKER_LEASE_SECONDS", default_value_t = 60)]
    pub lease_seconds: u64,
    /// Attempts a job gets before a lost lease fails it.
    #[arg(long, default_value_t = 2)]
    pub max_attempts: i64,
    /// Where to train: cpu, or cuda / cuda:N in a CUDA build.
    #[arg(long, env = "KEFU_DEVICE")]
    pub device: Option<String>,
    /// The retention policy after each job: unlabelled versions whose files are kept.
    #[arg(long, env = "KEFU_KEEP_VERSIONS", default_value_t = 5)]
    pub keep_versions: usize,
}

/// The model the worker trains when nothing says otherwise.
const BUILT_IN_RECIPE: &str = r#"
[lora]
rank = 16
alpha = 32.0
targets = ["q", "k", "v", "o", "gate", "up", "down"]

[sft]
epochs = 8
lr = 1e-3
batch = 2
max_len = 2048
eval_fraction = 0.0

[dpo]
epochs = 2
lr = 2e-4
batch = 2
max_len = 2048
eval_fraction = 0.0
beta = 0.1
"#;

/// Set for a worker that `kefu serve` started: it ends when the server does.
const EMBEDDED: &str = "KEFU_WORKER_EMBEDDED";

/// Fewer pairs than this and the DPO stage is left out.
const MIN_PAIRS: usize = 8;

pub fn work(home: &Path, args: &WorkArgs) -> Result<()> {
    let url = crate::cli::database_url(home, args.database_url.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let database = Database::connect(&url).await?;
        let owner = format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into()),
            std::process::id()
        );
        let lease_ms = (args.lease_seconds.max(2) * 1000) as i64;
        eprintln!("kefu trainer: {owner} waiting for jobs");
        // Started by `kefu serve`: end with it (a killed server must not leave a worker behind).
        let parent = std::env::var_os(EMBEDDED).map(|_| std::os::unix::process::parent_id());
        loop {
            if parent.is_some_and(|p| p != std::os::unix::process::parent_id()) {
                eprintln!("kefu trainer: kefu serve is gone; stopping");
                break;
            }
            // A database that is down (a restart) is waited for, not fatal.
            let job = match database
                .claim_job(&owner, lease_ms, args.max_attempts)
                .await
            {
                Ok(job) => job,
                Err(e) => {
                    eprintln!("kefu trainer: cannot reach the database (will retry): {e}");
                    tokio::time::sleep(Duration::from_millis(args.poll_ms.clamp(200, 5000))).await;
                    continue;
                }
            };
            match job {
                Some(job) => {
                    eprintln!("kefu trainer: job {} started", job.id);
                    let device = args.device.clone();
                    let outcome =
                        process(home, &database, &job, &owner, lease_ms, parent, device).await;
                    let finished = match &outcome {
                        Ok(version) => {
                            eprintln!("kefu trainer: job {} made version {version}", job.id);
                            let finished = patiently("recording the finished job", || {
                                database.finish_job(job.id, &owner, Ok(Some(version)))
                            })
                            .await?;
                            match crate::registry::prune(home, &database, args.keep_versions).await
                            {
                                Ok(pruned) if !pruned.is_empty() => eprintln!(
                                    "kefu trainer: retention removed {} old versions",
                                    pruned.len()
                                ),
                                Ok(_) => {}
                                Err(e) => eprintln!("kefu trainer: retention failed: {e:#}"),
                            }
                            finished
                        }
                        Err(e) => {
                            let reason = format!("{e:#}");
                            eprintln!("kefu trainer: job {} failed: {reason}", job.id);
                            patiently("recording the failed job", || {
                                database.finish_job(job.id, &owner, Err(&reason))
                            })
                            .await?
                        }
                    };
                    if !finished {
                        eprintln!(
                            "kefu trainer: job {} was no longer ours (cancelled or taken back)",
                            job.id
                        );
                    }
                    if args.once {
                        break;
                    }
                }
                None if args.once => break,
                None => {
                    // Idle: the schedule and the threshold may start a job (taken next turn).
                    let model = crate::admin::TRAINED_MODEL;
                    match check_triggers(home, &database, model, kefu_db::now_ms()).await {
                        Ok(Some(job)) => {
                            eprintln!("kefu trainer: the {} queued job {}", job.trigger, job.id);
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => eprintln!("kefu trainer: cannot check the triggers: {e:#}"),
                    }
                    tokio::time::sleep(Duration::from_millis(args.poll_ms.max(50))).await
                }
            }
        }
        database.close().await;
        anyhow::Ok(())
    })
}

/// How long a finished job's results wait for a database that went away (a restart).
const DATABASE_PATIENCE: Duration = Duration::from_secs(120);

/// Runs an idempotent database step, retrying while the database cannot be reached, so that a
/// database restart near the end of a job does not throw its work away.
async fn patiently<T, F, Fut>(what: &str, mut step: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = kefu_db::Result<T>>,
{
    let deadline = std::time::Instant::now() + DATABASE_PATIENCE;
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("kefu trainer: {what} failed (will retry): {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("{what} failed"))),
        }
    }
}

/// Writes `examples` as JSON lines; their sha256.
fn write_lines(path: &Path, examples: &[Value]) -> Result<String> {
    let mut text = String::new();
    for example in examples {
        text.push_str(&example.to_string());
        text.push('\n');
    }
    std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(text.as_bytes())))
}

/// The recipe a job runs: `<home>/recipe.toml` or the built-in one, pointed at the snapshot.
fn job_recipe(
    home: &Path,
    data_dir: &Path,
    sft_count: usize,
    pair_count: usize,
    document_count: usize,
) -> Result<Recipe> {
    let sft = &data_dir.join("sft.jsonl");
    let pairs = &data_dir.join("pairs.jsonl");
    let file = home.join("recipe.toml");
    let mut recipe = if file.exists() {
        Recipe::read(&file)?
    } else {
        Recipe::parse(BUILT_IN_RECIPE, "the built-in recipe")?
    };
    // CPT, when the recipe has it, reads the documents this job snapshotted (those the last
    // succeeded job had not seen); without new documents it is left out.
    if document_count == 0 {
        recipe.cpt = None;
    } else if let Some(cpt) = recipe.cpt.as_mut() {
        cpt.data = Some(data_dir.join("docs"));
    }
    let point = |stage: &mut Option<Stage>, data: &Path, keep: bool| {
        if keep {
            let section = stage.get_or_insert_with(Stage::default);
            section.data = Some(data.to_path_buf());
        } else {
            *stage = None;
        }
    };
    point(&mut recipe.sft, sft, sft_count > 0);
    point(&mut recipe.dpo, pairs, pair_count >= MIN_PAIRS);
    if recipe.stages().is_empty() {
        bail!(
            "nothing to learn: {sft_count} SFT examples, {pair_count} pairs and \
             {document_count} new documents"
        );
    }
    Ok(recipe)
}

/// One job, from snapshot to registered version; returns the version's id.
#[allow(clippy::too_many_arguments)]
async fn process(
    home: &Path,
    database: &Database,
    job: &TrainingJob,
    owner: &str,
    lease_ms: i64,
    parent: Option<u32>,
    device: Option<String>,
) -> Result<String> {
    let production = database
        .labelled(PRODUCTION)
        .await?
        .context("no model is labelled production (start kefu serve once)")?;
    let production_path = crate::registry::version_path(home, &production);
    let dir = home.join("jobs").join(job.id.to_string());
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let sft = crate::export::compile(database, Kind::Sft, Format::Trl).await?;
    let pairs = crate::export::compile(database, Kind::Pairs, Format::Trl).await?;
    let sft_path = data_dir.join("sft.jsonl");
    let pairs_path = data_dir.join("pairs.jsonl");
    let sft_hash = write_lines(&sft_path, &sft)?;
    let pairs_hash = write_lines(&pairs_path, &pairs)?;
    let documents = if wants_cpt(home)? {
        snapshot_documents(home, database, &job.model, &data_dir).await?
    } else {
        0
    };
    let recipe = job_recipe(home, &data_dir, sft.len(), pairs.len(), documents)?;
    recipe.write(&dir.join("recipe.toml"))?;
    // The regression set: every question an agent corrected, with the corrected answer.
    let regression = crate::datasets::regression(&sft);
    let regression_path = data_dir.join("regression.jsonl");
    write_lines(&regression_path, &regression)?;
    let held_out = held_out(home, database, &recipe).await?;

    let progress = Arc::new(Mutex::new(json!({"stage": "starting"})));
    let lost = Arc::new(AtomicBool::new(false));
    let heartbeat = {
        let database = database.clone();
        let progress = progress.clone();
        let lost = lost.clone();
        let owner = owner.to_string();
        let id = job.id;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis((lease_ms / 4).max(200) as u64)).await;
                if parent.is_some_and(|p| p != std::os::unix::process::parent_id()) {
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
                let report = progress
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .to_string();
                match database.heartbeat_job(id, &owner, lease_ms, &report).await {
                    Ok(true) => {}
                    Ok(false) => {
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => eprintln!("kefu trainer: heartbeat failed (will retry): {e}"),
                }
            }
        })
    };
    let work = {
        let home = home.to_path_buf();
        let output = dir.join("train");
        let production_path = production_path.clone();
        let progress = progress.clone();
        let lost = lost.clone();
        tokio::task::spawn_blocking(move || -> Result<(Vec<StageRun>, Value)> {
            let mut curves: Vec<Value> = Vec::new();
            let runs = crate::train::run_stages(
                &home,
                &recipe,
                &production_path.to_string_lossy(),
                device.as_deref(),
                &output,
                &mut |kind, step, total, loss| {
                    curves.push(json!({"stage": kind.name(), "step": step, "loss": loss}));
                    *progress.lock().unwrap_or_else(|e| e.into_inner()) = json!({
                        "stage": kind.name(), "step": step, "total": total, "loss": loss,
                        "curve": curves,
                    });
                    !lost.load(Ordering::SeqCst)
                },
            )?;
            *progress.lock().unwrap_or_else(|e| e.into_inner()) =
                json!({"stage": "gate", "curve": curves});
            let report = crate::gate::run(
                &production_path,
                &runs,
                &regression_path,
                &recipe,
                &held_out,
            )?;
            Ok((runs, report))
        })
    };
    let result = work.await;
    heartbeat.abort();
    let (runs, mut report) = result??;
    let stages: Vec<Value> = runs
        .iter()
        .map(|run| {
            let r = &run.report;
            json!({
                "stage": run.kind.name(), "steps": r.steps, "first_loss": r.first_loss,
                "last_loss": r.last_loss, "eval_loss": r.eval_loss,
                "metrics": std::fs::read_to_string(r.adapter_dir.with_file_name("metrics.jsonl"))
                    .unwrap_or_default().lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect::<Vec<_>>(),
            })
        })
        .collect();
    report["stages"] = json!(stages);
    report["dataset"] = json!({
        "sft_examples": sft.len(), "pairs": pairs.len(), "regression_examples": regression.len(),
        "new_documents": documents,
        "sft_sha256": sft_hash, "pairs_sha256": pairs_hash,
        "folder": data_dir.strip_prefix(home).unwrap_or(&data_dir),
    });
    report["production"] = json!(production.id);
    let last = &runs.last().context("the recipe ran no stage")?.merged;
    let home_owned = home.to_path_buf();
    let merged = last.clone();
    let parent = production.id.clone();
    let job_id = job.id;
    let mut version = tokio::task::spawn_blocking(move || {
        crate::registry::import(&home_owned, &merged, Some(parent), Some(job_id))
    })
    .await??;
    let passed = report["passed"].as_bool().unwrap_or(false);
    // The job keeps its own report: a version is immutable, and a job that makes weights an
    // earlier job made (same data, same recipe) leaves that version's report as it was.
    let mut done = progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
    done["stage"] = json!("done");
    done["report"] = report.clone();
    let done = done.to_string();
    patiently("storing the report", || {
        database.heartbeat_job(job.id, owner, lease_ms, &done)
    })
    .await?;
    version.report = report.to_string();
    let version = patiently("registering the version", || {
        database.register_version(&version)
    })
    .await?;
    patiently("labelling the candidate", || {
        database.set_label(CANDIDATE, &version.id)
    })
    .await?;
    if passed && version.id != production.id {
        patiently("promoting the candidate", || database.promote(&version.id)).await?;
        eprintln!(
            "kefu trainer: version {} passed the gate and is production",
            version.id
        );
    } else {
        eprintln!(
            "kefu trainer: version {} stays a candidate (gate: {passed})",
            version.id
        );
    }
    Ok(version.id)
}

/// The held-out questions (with their knowledge base) and pairs the recipe's `[gate]` names,
/// read before training so that a bad file fails the job at once.
async fn held_out(
    home: &Path,
    database: &Database,
    recipe: &Recipe,
) -> Result<crate::gate::HeldOut> {
    let settings = recipe.gate.clone().unwrap_or_default();
    let mut held_out = crate::gate::HeldOut::default();
    if let Some(path) = &settings.questions {
        let path = crate::gate::resolve(home, path);
        held_out.questions =
            crate::gate::read_questions(&path, settings.max_questions.unwrap_or(16))?;
        let name = settings.knowledge_base.as_deref().unwrap_or("default");
        let id = database.find_knowledge_base(name).await?.with_context(|| {
            format!("[gate] knowledge_base: no knowledge base is named `{name}`")
        })?;
        held_out.retriever = Some(crate::knowledge::Retriever::load(database, id).await?);
    }
    if let Some(path) = &settings.pairs {
        let path = crate::gate::resolve(home, path);
        held_out.pairs = crate::gate::read_pairs(&path, settings.max_pairs.unwrap_or(32))?;
    }
    Ok(held_out)
}

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
            "no corrected or rated answers yet (and no new documents for a CPT stage): nothing \
             to learn"
        } else {
            "no feedback since the last training job (and no new documents for a CPT stage): \
             nothing new to learn"
        }
    }
}

/// Whether there is something new to learn since the last job that succeeded.
pub async fn new_material(home: &Path, database: &Database, model: &str) -> Result<Material> {
    let sft = crate::export::compile(database, Kind::Sft, Format::Trl).await?;
    let pairs = crate::export::compile(database, Kind::Pairs, Format::Trl).await?;
    let fresh_feedback = fresh_feedback(database, model).await? > 0;
    let new_documents = if wants_cpt(home)? {
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

/// Whether the worker's recipe (`<home>/recipe.toml`) has a CPT stage.
fn wants_cpt(home: &Path) -> Result<bool> {
    let file = home.join("recipe.toml");
    Ok(file.exists() && Recipe::read(&file)?.cpt.is_some())
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
async fn snapshot_documents(
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

/// Feedback events since the last job that succeeded began (all of them when none did).
async fn fresh_feedback(database: &Database, model: &str) -> Result<i64> {
    let since = database
        .last_succeeded_job(model)
        .await?
        .and_then(|j| j.started_ms)
        .unwrap_or(0);
    Ok(database.feedback_since(since).await?)
}

/// The automatic triggers: queues a job for `model` (trigger `threshold` or `schedule`) when
/// the threshold's count of feedback events since the last job began is reached, or the
/// schedule's minutes have passed since then (at once when no job ever ran) — and only when
/// there is something new to learn (as an admin's click needs) and no job is queued or running.
pub async fn check_triggers(
    home: &Path,
    database: &Database,
    model: &str,
    now_ms: i64,
) -> Result<Option<TrainingJob>> {
    let schedule = database.training_schedule(model).await?;
    if schedule.is_off() || database.active_job(model).await?.is_some() {
        return Ok(None);
    }
    let last_start = database.last_job(model).await?.map(|j| j.created_ms);
    let mut trigger = None;
    if let Some(count) = schedule.after_new_feedback
        && database.feedback_since(last_start.unwrap_or(0)).await? >= count
    {
        trigger = Some("threshold");
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
    // A due schedule with no new feedback is checked at every poll: answer that with one
    // count, before compiling the whole feedback log into examples.
    if fresh_feedback(database, model).await? == 0 && !wants_cpt(home)? {
        return Ok(None);
    }
    if !new_material(home, database, model).await?.anything() {
        return Ok(None);
    }
    Ok(database.enqueue_job(model, trigger, None).await?.ok())
}

/// `kefu serve`'s embedded worker: a child process, restarted when it dies.
pub fn supervise(home: PathBuf, database_url: String, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(exe) = std::env::current_exe() else {
            eprintln!("kefu: cannot find this program to start the training worker");
            return;
        };
        while !stop.load(Ordering::SeqCst) {
            let child = std::process::Command::new(&exe)
                .env("KEFU_HOME", &home)
                .env("KEFU_DATABASE_URL", &database_url)
                .env(EMBEDDED, "1")
                .args(["trainer", "work"])
                .stdin(std::process::Stdio::null())
                // The server's standard output may be a pipe its reader has closed; the worker
                // reports on standard error.
                .stdout(std::process::Stdio::null())
                .spawn();
            let mut child = match child {
                Ok(child) => child,
                Err(e) => {
                    eprintln!("kefu: cannot start the training worker: {e}");
                    std::thread::sleep(Duration::from_secs(10));
                    continue;
                }
            };
            loop {
                if stop.load(Ordering::SeqCst) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                match child.try_wait() {
                    Ok(Some(status)) => {
                        eprintln!("kefu: the training worker stopped ({status}); restarting it");
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(200)),
                    Err(_) => break,
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}
