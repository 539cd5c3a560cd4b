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
//! 3. runs the evaluation gate (`gate`): the regression set (every question an agent
//!    corrected), held-out questions and pairs when the recipe names them, merged-versus-adapter
//!    logit parity, chat-template parity;
//! 4. registers the merged model as a version with its report, labels it `candidate`, and
//!    promotes it to `production` when the gate passes (every server follows the label).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kefu_db::{CANDIDATE, Database, ModelVersion, PRODUCTION, TrainingJob};
use serde_json::{Value, json};

use crate::dataset::{Format, Kind, write_lines};
use crate::gate::{self, HeldOut};
use crate::pipeline::{ModelSource, StageRun};
use crate::recipe::{Recipe, Stage};

/// How a worker runs (`kefu trainer work`'s flags).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The database jobs are taken from.
    pub database_url: String,
    /// Take at most one job, then exit.
    pub once: bool,
    /// How often to look for a queued job, in milliseconds.
    pub poll_ms: u64,
    /// How long a claimed job stays this worker's without a heartbeat, in seconds.
    pub lease_seconds: u64,
    /// Attempts a job gets before a lost lease fails it.
    pub max_attempts: i64,
    /// Where to train: cpu, or cuda / cuda:N in a CUDA build.
    pub device: Option<String>,
    /// The retention policy after each job: unlabelled versions whose files are kept.
    pub keep_versions: usize,
}

/// Set for a worker that `kefu serve` started: it ends when the server does.
pub const EMBEDDED: &str = "KEFU_WORKER_EMBEDDED";

/// Fewer pairs than this and the DPO stage is left out.
const MIN_PAIRS: usize = 8;

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

pub fn work(
    home: &Path,
    args: &WorkerSettings,
    models: Arc<dyn ModelSource + Send + Sync>,
) -> Result<()> {
    let url = args.database_url.clone();
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
        tracing::info!("{owner} waiting for jobs");
        // Started by `kefu serve`: end with it (a killed server must not leave a worker behind).
        let parent = std::env::var_os(EMBEDDED).map(|_| std::os::unix::process::parent_id());
        loop {
            if parent.is_some_and(|p| p != std::os::unix::process::parent_id()) {
                tracing::info!("kefu serve is gone; stopping");
                break;
            }
            // A database that is down (a restart) is waited for, not fatal.
            let job = match database
                .claim_job(&owner, lease_ms, args.max_attempts)
                .await
            {
                Ok(job) => job,
                Err(e) => {
                    tracing::warn!("cannot reach the database (will retry): {e}");
                    tokio::time::sleep(Duration::from_millis(args.poll_ms.clamp(200, 5000))).await;
                    continue;
                }
            };
            match job {
                Some(job) => {
                    tracing::info!("job {} started", job.id);
                    let device = args.device.clone();
                    let outcome = process(
                        home,
                        &database,
                        &job,
                        &models,
                        &Lease {
                            owner: owner.clone(),
                            lease_ms,
                            parent,
                            device,
                        },
                    )
                    .await;
                    let finished = match &outcome {
                        Ok(version) => {
                            tracing::info!("job {} made version {version}", job.id);
                            let finished = patiently("recording the finished job", || {
                                database.finish_job(job.id, &owner, Ok(Some(version)))
                            })
                            .await?;
                            match crate::registry::prune(home, &database, args.keep_versions).await
                            {
                                Ok(pruned) if !pruned.is_empty() => tracing::info!(
                                    "retention removed {} old versions",
                                    pruned.len()
                                ),
                                Ok(_) => {}
                                Err(e) => tracing::warn!("retention failed: {e:#}"),
                            }
                            finished
                        }
                        Err(e) => {
                            let reason = format!("{e:#}");
                            tracing::warn!("job {} failed: {reason}", job.id);
                            patiently("recording the failed job", || {
                                database.finish_job(job.id, &owner, Err(&reason))
                            })
                            .await?
                        }
                    };
                    if !finished {
                        tracing::info!(
                            "job {} was no longer ours (cancelled or taken back)",
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
                    let model = crate::registry::TRAINED_MODEL;
                    match crate::triggers::check_triggers(home, &database, model, kefu_db::now_ms())
                        .await
                    {
                        Ok(Some(job)) => {
                            tracing::info!("the {} queued job {}", job.trigger, job.id);
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!("cannot check the triggers: {e:#}"),
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
                tracing::warn!("{what} failed (will retry): {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("{what} failed"))),
        }
    }
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

/// Who holds a job, for how long, and where it trains.
struct Lease {
    owner: String,
    lease_ms: i64,
    /// The server that started this worker: its end is a lost lease.
    parent: Option<u32>,
    device: Option<String>,
}

/// A job's snapshot: the datasets written under `jobs/<id>/data/`, the recipe pointed at
/// them, and what the gate holds out.
struct Snapshot {
    dir: PathBuf,
    recipe: Recipe,
    regression_path: PathBuf,
    held_out: HeldOut,
    /// `dataset` of the report: counts, hashes, the folder.
    summary: Value,
}

/// Compiles the feedback log (and, for a CPT stage, the new documents) into the job's folder.
async fn snapshot(home: &Path, database: &Database, job: &TrainingJob) -> Result<Snapshot> {
    let dir = home.join("jobs").join(job.id.to_string());
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let sft = crate::dataset::compile(database, Kind::Sft, Format::Trl).await?;
    let pairs = crate::dataset::compile(database, Kind::Pairs, Format::Trl).await?;
    let sft_hash = write_lines(&data_dir.join("sft.jsonl"), &sft)?;
    let pairs_hash = write_lines(&data_dir.join("pairs.jsonl"), &pairs)?;
    let documents = if crate::triggers::wants_cpt(home)? {
        crate::triggers::snapshot_documents(home, database, &job.model, &data_dir).await?
    } else {
        0
    };
    let recipe = job_recipe(home, &data_dir, sft.len(), pairs.len(), documents)?;
    recipe.write(&dir.join("recipe.toml"))?;
    // The regression set: every question an agent corrected, with the corrected answer.
    let regression = crate::dataset::regression(&sft);
    let regression_path = data_dir.join("regression.jsonl");
    write_lines(&regression_path, &regression)?;
    let held_out = held_out(home, database, &recipe).await?;
    let summary = json!({
        "sft_examples": sft.len(), "pairs": pairs.len(), "regression_examples": regression.len(),
        "new_documents": documents,
        "sft_sha256": sft_hash, "pairs_sha256": pairs_hash,
        "folder": data_dir.strip_prefix(home).unwrap_or(&data_dir),
    });
    Ok(Snapshot {
        dir,
        recipe,
        regression_path,
        held_out,
        summary,
    })
}

/// Renews the job's lease (with its progress) until aborted; a refused renewal, or the end of
/// the server that started this worker, sets `lost`.
fn spawn_heartbeat(
    database: &Database,
    job: i64,
    lease: &Lease,
    progress: Arc<Mutex<Value>>,
    lost: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let database = database.clone();
    let owner = lease.owner.clone();
    let (lease_ms, parent) = (lease.lease_ms, lease.parent);
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
            match database.heartbeat_job(job, &owner, lease_ms, &report).await {
                Ok(true) => {}
                Ok(false) => {
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
                Err(e) => tracing::warn!("heartbeat failed (will retry): {e}"),
            }
        }
    })
}

/// The stages' reports as the job's report shows them, each with its metrics.
fn stage_reports(runs: &[StageRun]) -> Value {
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
    json!(stages)
}

/// One job, from snapshot to registered version; returns the version's id.
async fn process(
    home: &Path,
    database: &Database,
    job: &TrainingJob,
    models: &Arc<dyn ModelSource + Send + Sync>,
    lease: &Lease,
) -> Result<String> {
    let production = database
        .labelled(PRODUCTION)
        .await?
        .context("no model is labelled production (start kefu serve once)")?;
    let production_path = crate::registry::version_path(home, &production);
    let snapshot = snapshot(home, database, job).await?;
    let progress = Arc::new(Mutex::new(json!({"stage": "starting"})));
    let lost = Arc::new(AtomicBool::new(false));
    let heartbeat = spawn_heartbeat(database, job.id, lease, progress.clone(), lost.clone());
    let work = {
        let models = models.clone();
        let output = snapshot.dir.join("train");
        let production_path = production_path.clone();
        let progress = progress.clone();
        let device = lease.device.clone();
        let recipe = snapshot.recipe.clone();
        let regression_path = snapshot.regression_path.clone();
        let held_out = snapshot.held_out;
        tokio::task::spawn_blocking(move || -> Result<(Vec<StageRun>, Value)> {
            let mut curves: Vec<Value> = Vec::new();
            let runs = crate::pipeline::run_stages(
                models.as_ref(),
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
            let report = gate::run(
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
    report["stages"] = stage_reports(&runs);
    report["dataset"] = snapshot.summary;
    report["production"] = json!(production.id);
    let last = &runs.last().context("the recipe ran no stage")?.merged;
    let home_owned = home.to_path_buf();
    let merged = last.clone();
    let parent = production.id.clone();
    let job_id = job.id;
    let version = tokio::task::spawn_blocking(move || {
        crate::registry::import(&home_owned, &merged, Some(parent), Some(job_id))
    })
    .await??;
    register(
        database,
        job,
        lease,
        &progress,
        version,
        report,
        &production,
    )
    .await
}

/// Stores the job's report, registers its version, labels it `candidate` and promotes it when
/// the gate passed.
async fn register(
    database: &Database,
    job: &TrainingJob,
    lease: &Lease,
    progress: &Mutex<Value>,
    mut version: ModelVersion,
    report: Value,
    production: &ModelVersion,
) -> Result<String> {
    let passed = report["passed"].as_bool().unwrap_or(false);
    // The job keeps its own report: a version is immutable, and a job that makes weights an
    // earlier job made (same data, same recipe) leaves that version's report as it was.
    let mut done = progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
    done["stage"] = json!("done");
    done["report"] = report.clone();
    let done = done.to_string();
    patiently("storing the report", || {
        database.heartbeat_job(job.id, &lease.owner, lease.lease_ms, &done)
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
        tracing::info!("version {} passed the gate and is production", version.id);
    } else {
        tracing::info!("version {} stays a candidate (gate: {passed})", version.id);
    }
    Ok(version.id)
}

/// The held-out questions (with their knowledge base) and pairs the recipe's `[gate]` names,
/// read before training so that a bad file fails the job at once.
async fn held_out(home: &Path, database: &Database, recipe: &Recipe) -> Result<HeldOut> {
    let settings = recipe.gate.clone().unwrap_or_default();
    let mut held_out = HeldOut::default();
    if let Some(path) = &settings.questions {
        let path = gate::resolve(home, path);
        held_out.questions = gate::read_questions(&path, settings.max_questions.unwrap_or(16))?;
        let name = settings.knowledge_base.as_deref().unwrap_or("default");
        let id = database.find_knowledge_base(name).await?.with_context(|| {
            format!("[gate] knowledge_base: no knowledge base is named `{name}`")
        })?;
        held_out.retriever = Some(crate::knowledge::load_retriever(database, id).await?);
    }
    if let Some(path) = &settings.pairs {
        let path = gate::resolve(home, path);
        held_out.pairs = gate::read_pairs(&path, settings.max_pairs.unwrap_or(32))?;
    }
    Ok(held_out)
}
