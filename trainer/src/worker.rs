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

use crate::dataset::{Format, Kind, Policy, write_lines};
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
    /// Which feedback becomes training data.
    pub policy: Policy,
}

/// Set for a worker that `kefu serve` started, to the server's process id: the worker ends
/// when its parent is no longer that process (the server ended, or was killed before the
/// worker had even started).
pub const EMBEDDED: &str = "KEFU_WORKER_EMBEDDED";

/// The server this worker belongs to, when `kefu serve` started it.
fn embedded_in() -> Result<Option<u32>> {
    match std::env::var(EMBEDDED) {
        Err(_) => Ok(None),
        Ok(pid) => pid.trim().parse().map(Some).with_context(|| {
            format!("{EMBEDDED} must be the process id of the server that started this worker, not {pid:?}")
        }),
    }
}

/// The server that started this worker is gone (its parent process changed).
fn orphaned(parent: Option<u32>) -> bool {
    parent.is_some_and(|p| p != std::os::unix::process::parent_id())
}

/// Fewer pairs than this and the DPO stage is left out.
const MIN_PAIRS: usize = 8;
/// Fewer labelled answers than this and the KTO stage is left out.
const MIN_LABELLED: usize = 8;

/// The model the worker trains when nothing says otherwise: SFT, one example a step (two
/// accumulated), each layer recomputed in the backward pass. A served prompt with its passages
/// is about 1,100 tokens; one step on one such example keeping every layer's activations peaked
/// at 13 GB with SmolLM2-135M on the CPU (attention's scores, `heads × seq²` per layer),
/// which with DPO (chosen and rejected together) or batch 2 does not fit a 24 GB machine;
/// checkpointed, 4.2 GB (SmolLM2) and 6.2 GB (Qwen2.5-0.5B, the default)
/// (`benches/train_memory.sh`). A recipe's `[dpo]` adds DPO when there are pairs enough.
const BUILT_IN_RECIPE: &str = r#"
checkpoint_layers = true

[lora]
rank = 16
alpha = 32.0
targets = ["q", "k", "v", "o", "gate", "up", "down"]

[sft]
epochs = 8
lr = 1e-3
batch = 1
accum = 2
max_len = 2048
eval_fraction = 0.0
"#;

pub fn work(
    home: &Path,
    args: &WorkerSettings,
    models: Arc<dyn ModelSource + Send + Sync>,
) -> Result<()> {
    // Started by `kefu serve`: end with it (a killed server must not leave a worker behind,
    // even one killed while this worker was starting).
    let parent = embedded_in()?;
    if orphaned(parent) {
        tracing::info!("kefu serve is gone before this worker started; stopping");
        return Ok(());
    }
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
        loop {
            if orphaned(parent) {
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
                            policy: args.policy,
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
                    match crate::registry::prune_job_folders(home, &database, args.keep_versions)
                        .await
                    {
                        Ok(removed) if !removed.is_empty() => tracing::info!(
                            "retention removed the training outputs of jobs {removed:?}"
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!("job folder retention failed: {e:#}"),
                    }
                    if args.once {
                        break;
                    }
                }
                None if args.once => break,
                None => {
                    // Idle: the schedule and the threshold may start a job (taken next turn).
                    let model = crate::registry::TRAINED_MODEL;
                    let checked = crate::triggers::check_triggers(
                        home,
                        &database,
                        model,
                        args.policy,
                        kefu_db::now_ms(),
                    );
                    match checked.await {
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

/// The worker's recipe: `<home>/recipe.toml`, or the built-in one.
fn base_recipe(home: &Path) -> Result<Recipe> {
    let file = home.join("recipe.toml");
    Ok(if file.exists() {
        Recipe::read(&file)?
    } else {
        Recipe::parse(BUILT_IN_RECIPE, "the built-in recipe")?
    })
}

/// The share of the admitted questions held out for the gate when the recipe names no
/// held-out file.
pub const HOLD_OUT: f64 = 0.2;

/// Whether the gate holds `question` out of training at `share`: decided by a hash of the
/// question (case and spacing ignored), so the same questions stay out job after job.
pub fn is_held_out(question: &str, share: f64) -> bool {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(crate::dataset::normalized(question).as_bytes());
    let threshold = (share.clamp(0.0, 0.5) * 10_000.0) as u32;
    u32::from_le_bytes([hash[0], hash[1], hash[2], hash[3]]) % 10_000 < threshold
}

/// The customer question of an example (its last user message).
fn question_of(example: &Value) -> &str {
    let messages = if example["messages"].is_array() {
        &example["messages"]
    } else {
        &example["prompt"]
    };
    messages
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
}

/// Splits the examples by their question: those to train on, and the held-out share.
fn hold_out(examples: Vec<Value>, share: f64) -> (Vec<Value>, Vec<Value>) {
    examples
        .into_iter()
        .partition(|e| !is_held_out(question_of(e), share))
}

/// A held-out SFT example as the gate's question: the messages it was served with (without the
/// answer) and the agent's or accepted answer as the reference.
fn held_out_question(example: &Value) -> Option<gate::HeldOutQuestion> {
    let mut messages: Vec<kefu_model::ChatMessage> =
        serde_json::from_value(example["messages"].clone()).ok()?;
    let reference = messages
        .pop()
        .filter(|m| m.role == kefu_model::Role::Assistant)?;
    Some(gate::HeldOutQuestion {
        question: question_of(example).to_string(),
        answer: reference.content,
        source_doc: None,
        served: Some(messages),
    })
}

/// The recipe a job runs: the worker's (`base_recipe`), pointed at the snapshot.
fn job_recipe(
    mut recipe: Recipe,
    data_dir: &Path,
    sft_count: usize,
    pair_count: usize,
    kto_count: usize,
    document_count: usize,
) -> Result<Recipe> {
    let sft = &data_dir.join("sft.jsonl");
    let pairs = &data_dir.join("pairs.jsonl");
    let kto = &data_dir.join("kto.jsonl");
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
    // DPO only where the recipe asks for it (see BUILT_IN_RECIPE).
    let wants_dpo = recipe.dpo.is_some();
    point(&mut recipe.dpo, pairs, wants_dpo && pair_count >= MIN_PAIRS);
    // KTO, likewise only where asked, on every admitted rating (one answer, one label).
    let wants_kto = recipe.kto.is_some();
    point(&mut recipe.kto, kto, wants_kto && kto_count >= MIN_LABELLED);
    if recipe.stages().is_empty() {
        bail!(
            "nothing to learn: {sft_count} SFT examples, {pair_count} pairs, {kto_count} \
             labelled answers and {document_count} new documents"
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
    /// Which feedback the job learns from.
    policy: Policy,
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
async fn snapshot(
    home: &Path,
    database: &Database,
    job: &TrainingJob,
    policy: Policy,
) -> Result<Snapshot> {
    let dir = home.join("jobs").join(job.id.to_string());
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let sft = crate::dataset::compile(database, Kind::Sft, Format::Trl, policy).await?;
    let pairs = crate::dataset::compile(database, Kind::Pairs, Format::Trl, policy).await?;
    let base = base_recipe(home)?;
    let kto = match base.kto {
        Some(_) => crate::dataset::compile(database, Kind::Kto, Format::Trl, policy).await?,
        None => Vec::new(),
    };
    // Without a held-out file the gate checks answers on a share of the feedback's own
    // questions, kept out of every kind of training example.
    let gate_settings = base.gate.clone().unwrap_or_default();
    let holding = gate_settings.questions.is_none();
    let share = gate_settings.hold_out.unwrap_or(HOLD_OUT);
    let admitted = sft.len();
    // The knowledge base's own examples join the feedback's (and its held-out share: an
    // abstention example is never a gate question).
    let mut sft = sft;
    if let Some(knowledge) = &base.knowledge {
        sft.extend(knowledge_examples(home, database, knowledge).await?);
    }
    let (sft, kept_out, pairs, kto) = if holding {
        let (sft, mut kept_out) = hold_out(sft, share);
        kept_out.retain(|e| e["kefu"]["source"] != "abstention");
        let (pairs, _) = hold_out(pairs, share);
        let (kto, _) = hold_out(kto, share);
        (sft, kept_out, pairs, kto)
    } else {
        (sft, Vec::new(), pairs, kto)
    };
    write_lines(&data_dir.join("held-out.jsonl"), &kept_out)?;
    let sft_hash = write_lines(&data_dir.join("sft.jsonl"), &sft)?;
    let pairs_hash = write_lines(&data_dir.join("pairs.jsonl"), &pairs)?;
    let kto_hash = write_lines(&data_dir.join("kto.jsonl"), &kto)?;
    let documents = if crate::triggers::learns_documents(home)? {
        crate::triggers::snapshot_documents(home, database, &job.model, &data_dir).await?
    } else {
        0
    };
    let recipe = job_recipe(
        base,
        &data_dir,
        sft.len(),
        pairs.len(),
        kto.len(),
        documents,
    )?;
    recipe.write(&dir.join("recipe.toml"))?;
    // The regression set: every question an agent corrected, with the corrected answer.
    let regression = crate::dataset::regression(&sft);
    let regression_path = data_dir.join("regression.jsonl");
    write_lines(&regression_path, &regression)?;
    let mut held_out = held_out(home, database, &recipe).await?;
    if holding {
        let max = gate_settings.max_questions.unwrap_or(16);
        held_out.questions = kept_out
            .iter()
            .filter_map(held_out_question)
            .take(max)
            .collect();
        if held_out.questions.is_empty() {
            held_out.none_because = Some(format!(
                "none of the {admitted} admitted answers' questions fell in the held-out share \
                 ({share}): too little feedback to compare answers, so the candidate is not \
                 promoted (promote it by hand after reading its report, or name held-out \
                 questions in the recipe's [gate])"
            ));
        }
    }
    // What the job learns from, by where each example's label came from.
    let mut learned_from = serde_json::Map::new();
    for (kind, examples) in [("sft", &sft), ("pairs", &pairs), ("kto", &kto)] {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for e in examples {
            let source = e["kefu"]["source"].as_str().unwrap_or("unknown");
            *counts.entry(source.to_string()).or_default() += 1;
        }
        learned_from.insert(kind.into(), json!(counts));
    }
    let summary = json!({
        "sft_examples": sft.len(), "pairs": pairs.len(), "kto_examples": kto.len(),
        "regression_examples": regression.len(),
        "held_out_examples": kept_out.len(), "policy": policy.name(),
        "learned_from": learned_from,
        "new_documents": documents,
        "sft_sha256": sft_hash, "pairs_sha256": pairs_hash, "kto_sha256": kto_hash,
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
            if orphaned(parent) {
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
    let snapshot = snapshot(home, database, job, lease.policy).await?;
    let progress = Arc::new(Mutex::new(json!({"stage": "starting"})));
    let lost = Arc::new(AtomicBool::new(false));
    let heartbeat = spawn_heartbeat(database, job.id, lease, progress.clone(), lost.clone());
    let lost_during_work = lost.clone();
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
    // Cancelled, failed by an admin or taken back while it trained or was gated: its model is
    // neither registered nor promoted.
    if lost_during_work.load(Ordering::SeqCst) {
        bail!("{}", not_ours(job));
    }
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

/// Why a job's model is thrown away.
fn not_ours(job: &TrainingJob) -> String {
    format!(
        "job {} is no longer this worker's (cancelled or taken back): its model is neither \
         registered nor promoted",
        job.id
    )
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
    let ours = patiently("storing the report", || {
        database.heartbeat_job(job.id, &lease.owner, lease.lease_ms, &done)
    })
    .await?;
    if !ours {
        bail!("{}", not_ours(job));
    }
    version.report = report.to_string();
    let version = patiently("registering the version", || {
        database.register_version(&version)
    })
    .await?;
    // Cancelled in the moment it took to register: the version stays unlabelled.
    let still_ours = patiently("checking the job", || {
        database.heartbeat_job(job.id, &lease.owner, lease.lease_ms, &done)
    })
    .await?;
    if !still_ours {
        bail!("{}", not_ours(job));
    }
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

/// The examples a recipe's `[knowledge]` asks for, from the knowledge base it names (relative
/// paths from `home`).
async fn knowledge_examples(
    home: &Path,
    database: &Database,
    settings: &crate::recipe::KnowledgeSection,
) -> Result<Vec<Value>> {
    let name = settings.knowledge_base.as_deref().unwrap_or("default");
    let id = database.find_knowledge_base(name).await?.with_context(|| {
        format!("[knowledge] knowledge_base: no knowledge base is named `{name}`")
    })?;
    let retriever = crate::knowledge::load_retriever(database, id).await?;
    let mut sections = crate::knowledge::faq_sections(&retriever);
    if let Some(path) = &settings.exclude {
        let path = gate::resolve(home, path);
        let excluded: std::collections::HashSet<String> = gate::read_questions(&path, usize::MAX)
            .context("[knowledge] exclude")?
            .into_iter()
            .map(|q| crate::dataset::normalized(&q.question))
            .collect();
        sections.retain(|s| !excluded.contains(&crate::dataset::normalized(&s.question)));
    }
    let settings = crate::knowledge::KnowledgeExamples {
        passages: gate::PASSAGES,
        context_tokens: gate::CONTEXT_TOKENS,
        abstention: settings.abstention.unwrap_or(0.25),
        max_examples: settings.max_examples.unwrap_or(200),
    };
    Ok(crate::knowledge::knowledge_examples(
        &retriever, &sections, &settings,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::StageKind;

    #[test]
    fn a_job_trains_the_stages_its_recipe_asks_for_when_there_is_enough_data() {
        let dir = Path::new("/jobs/7/data");
        let asks = Recipe {
            sft: Some(Stage::default()),
            dpo: Some(Stage::default()),
            kto: Some(Stage::default()),
            ..Recipe::default()
        };
        let recipe = job_recipe(asks.clone(), dir, 3, 8, 8, 0).unwrap();
        assert_eq!(
            recipe.stages(),
            [StageKind::Sft, StageKind::Dpo, StageKind::Kto]
        );
        let kto = recipe.kto.unwrap().data.unwrap();
        assert_eq!(kto, dir.join("kto.jsonl"));
        // Too few labelled answers (or pairs): that stage is left out.
        let recipe = job_recipe(asks.clone(), dir, 3, 7, 7, 0).unwrap();
        assert_eq!(recipe.stages(), [StageKind::Sft]);
        // A recipe without [kto] never gets one, however many labels there are.
        let plain = Recipe {
            sft: Some(Stage::default()),
            ..Recipe::default()
        };
        assert_eq!(
            job_recipe(plain, dir, 3, 100, 100, 0).unwrap().stages(),
            [StageKind::Sft]
        );
        let err = job_recipe(asks, dir, 0, 7, 7, 0).unwrap_err();
        assert!(err.to_string().contains("7 labelled answers"), "{err}");
    }
}
