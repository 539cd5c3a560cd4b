//! `kefu train`, `kefu merge`, `kefu trainer work` and `kefu export`: the flags of the
//! trainer crate's pipeline, worker and dataset compiler.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use clap::{Args, Subcommand};
use kefu_trainer::dataset::{Format, Kind};
use kefu_trainer::pipeline::{self, StageOptions, run_recipe, stage};
use kefu_trainer::recipe::StageKind;
use kefu_trainer::worker::WorkerSettings;

use super::common::*;
use crate::models::Catalog;
use crate::models::catalog::DEFAULT_MODEL;

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Continued pre-training with LoRA on documents (.md, .html, .txt, .pdf; a folder is read
    /// recursively): the language-model loss over every token; reports held-out perplexity.
    Cpt(StageArgs),
    /// Supervised fine-tuning with LoRA on question / answer conversations.
    Sft(StageArgs),
    /// Direct preference optimization with LoRA on chosen / rejected pairs (`kefu export
    /// pairs`, or `prompt` / `history` / `chosen` / `rejected` JSON lines).
    Dpo(StageArgs),
    /// KTO with LoRA on single answers labelled good or bad (`kefu export kto`, or `prompt` /
    /// `completion` / `label` JSON lines): learns from thumbs that come without a pair.
    Kto(StageArgs),
    /// Every stage a recipe holds, in the order cpt → sft → dpo → kto; each stage starts from
    /// the model the previous one merged (so DPO's and KTO's reference is the SFT model).
    Run(RunArgs),
}

/// How the frozen base is held while adapters train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BaseWeights {
    /// Q8_0 blocks (what the server runs; the default).
    #[value(name = "q8_0")]
    Q8_0,
    /// 4-bit blocks (QLoRA): the model file's own 4-bit weights, or a Q4_0 copy of them.
    Q4,
    /// Dense f32 (about 4× the memory of Q8_0).
    F32,
}

impl From<BaseWeights> for pipeline::BaseWeights {
    fn from(weights: BaseWeights) -> Self {
        match weights {
            BaseWeights::Q8_0 => Self::Q8_0,
            BaseWeights::Q4 => Self::Q4,
            BaseWeights::F32 => Self::F32,
        }
    }
}

impl StageArgs {
    /// The flags as the pipeline's options.
    fn options(&self) -> StageOptions {
        StageOptions {
            recipe: self.recipe.clone(),
            data: self.data.clone(),
            model: self.model.clone(),
            start_adapter: self.start_adapter.clone(),
            output: self.output.clone(),
            base_weights: self.base_weights.map(Into::into),
            device: self.device.clone(),
            checkpoint_layers: self.checkpoint_layers.then_some(true),
            epochs: self.epochs,
            max_steps: self.max_steps,
            learning_rate: self.learning_rate,
            batch: self.batch,
            accum: self.accum,
            warmup_ratio: self.warmup_ratio,
            rank: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
            targets: self.targets.clone(),
            max_len: self.max_len,
            eval_fraction: self.eval_fraction,
            eval_limit: self.eval_limit,
            split: self.split.clone(),
            eval_split: self.eval_split.clone(),
            eval_every: self.eval_every,
            patience: self.patience,
            seed: self.seed,
            on_bad_line: self.on_bad_line.map(BadLines::rule),
            beta: self.beta,
            resume: self.resume,
        }
    }
}

/// One stage's settings. Each flag overrides the recipe's value; without either, the default
/// shown applies.
#[derive(Debug, Args, Default)]
pub struct StageArgs {
    /// TOML recipe whose `[cpt]`, `[sft]` or `[dpo]` section (and shared settings) to use.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// CPT: documents (a folder or a file); SFT: JSON lines (alpaca, `messages`, ShareGPT
    /// `conversations` or `question` / `answer`); DPO: preference pairs; KTO: answers labelled good or bad.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Base chat model: a name (installed or known) or a path [default: qwen2.5-coder-0.5b-instruct].
    #[arg(long, env = "KEFU_MODEL")]
    pub model: Option<String>,
    /// Start from the base with this adapter merged in (e.g. DPO after SFT: the SFT adapter,
    /// which then is also DPO's reference).
    #[arg(long)]
    pub start_adapter: Option<PathBuf>,
    /// Output folder: `adapter/` (PEFT layout), `checkpoint/`, `metrics.jsonl`, `recipe.toml`.
    #[arg(long)]
    pub output: PathBuf,
    /// How the frozen base is held [default: q8_0 with AVX-512 VNNI, else f32].
    #[arg(long, value_enum)]
    pub base_weights: Option<BaseWeights>,
    /// Where to train: cpu, or cuda / cuda:N in a CUDA build (bf16 base, f32 adapters;
    /// --base-weights does not apply there) [default: cpu].
    #[arg(long, env = "KEFU_DEVICE")]
    pub device: Option<String>,
    /// Recompute each layer in the backward pass instead of keeping its activations: far less
    /// memory on long examples for about a third more time (the recipe's `checkpoint_layers`).
    #[arg(long)]
    pub checkpoint_layers: bool,
    /// [default: 1]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Stop after this many optimizer steps; 0 runs every epoch [default: 0].
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Peak learning rate [default: 2e-4].
    #[arg(long = "lr")]
    pub learning_rate: Option<f64>,
    /// Sequences per forward pass [default: 4].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Forward passes per optimizer step [default: 1].
    #[arg(long)]
    pub accum: Option<usize>,
    /// Share of the steps spent warming up [default: 0.05].
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    /// LoRA rank [default: 8].
    #[arg(long)]
    pub rank: Option<usize>,
    /// LoRA alpha (the adapter path is scaled by alpha / rank) [default: 16].
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Share of each adapter's input dropped in training [default: 0].
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Projections that get adapters [default: q,k,v,o,gate,up,down].
    #[arg(long)]
    pub targets: Option<String>,
    /// SFT / DPO / KTO: longest example in tokens (longer answers are cut; prompts that leave no
    /// room skipped) [default: 1024]. CPT: the block length [default: 512].
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Share held out for evaluation (ignored with --eval-split) [default: 0.05].
    #[arg(long)]
    pub eval_fraction: Option<f64>,
    /// Evaluate on at most this many held-out items, spread evenly over them; 0: all
    /// [default: 0].
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// SFT / DPO / KTO: train only on the lines whose `split` field is this (e.g. `train`).
    #[arg(long)]
    pub split: Option<String>,
    /// SFT / DPO / KTO: evaluate on the lines whose `split` field is this (e.g. `test`) instead of a
    /// share of the training lines.
    #[arg(long)]
    pub eval_split: Option<String>,
    /// Evaluate and checkpoint every this many steps; 0: once per epoch [default: 0].
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Stop when the eval loss has not improved this many evaluations in a row; 0: never
    /// [default: 0].
    #[arg(long)]
    pub patience: Option<usize>,
    /// [default: 42]
    #[arg(long)]
    pub seed: Option<u64>,
    /// [default: skip]
    #[arg(long, value_enum)]
    pub on_bad_line: Option<BadLines>,
    /// DPO / KTO: how far the policy may move from the reference model [default: 0.1].
    #[arg(long)]
    pub beta: Option<f64>,
    /// Carry on from `OUTPUT/checkpoint` (same data and settings).
    #[arg(long)]
    pub resume: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The TOML recipe: its stages run in the order cpt → sft → dpo.
    #[arg(long)]
    pub recipe: PathBuf,
    /// Output folder: one sub-folder per stage, each with its adapter and merged `model.gguf`.
    #[arg(long)]
    pub output: PathBuf,
    /// Base chat model, overriding the recipe's.
    #[arg(long, env = "KEFU_MODEL")]
    pub model: Option<String>,
    /// Where to train: cpu, or cuda / cuda:N in a CUDA build [default: cpu].
    #[arg(long, env = "KEFU_DEVICE")]
    pub device: Option<String>,
}

pub fn run(home: &Path, command: &TrainCommand) -> Result<()> {
    let models = Catalog {
        home: home.to_path_buf(),
    };
    match command {
        TrainCommand::Cpt(args) => stage(&models, StageKind::Cpt, &args.options()).map(|_| ()),
        TrainCommand::Sft(args) => stage(&models, StageKind::Sft, &args.options()).map(|_| ()),
        TrainCommand::Dpo(args) => stage(&models, StageKind::Dpo, &args.options()).map(|_| ()),
        TrainCommand::Kto(args) => stage(&models, StageKind::Kto, &args.options()).map(|_| ()),
        TrainCommand::Run(args) => run_recipe(
            &models,
            &args.recipe,
            args.model.as_deref(),
            args.device.as_deref(),
            &args.output,
        )
        .map(|_| ()),
    }
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The adapter folder (PEFT layout: adapter_config.json + adapter_model.safetensors).
    /// Without one, the base is converted as it is.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The base model the adapter was trained on: a name (installed or known) or a GGUF path
    /// [default: the adapter's own `base_model_name_or_path`, else the default model].
    #[arg(long, env = "KEFU_MODEL")]
    pub model: Option<String>,
    /// Where to write: a `.gguf` file (for `kefu serve` / `kefu generate`), or a folder for
    /// Hugging Face weights (f32 safetensors, config.json, tokenizer.json).
    #[arg(long)]
    pub output: PathBuf,
}

/// The base an adapter names in its `adapter_config.json` (`kefu train` writes the model it
/// trained on there), if it names one.
fn adapter_base(adapter: &Path) -> Option<String> {
    let text = std::fs::read_to_string(adapter.join("adapter_config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let base = config["base_model_name_or_path"].as_str()?.trim();
    (!base.is_empty()).then(|| base.to_string())
}

/// `kefu merge`: writes base + adapter as one GGUF model or one Hugging Face folder.
pub fn merge(home: &Path, args: &MergeArgs) -> Result<()> {
    let model = match (&args.model, &args.adapter) {
        (Some(model), _) => model.clone(),
        (None, Some(adapter)) => adapter_base(adapter).unwrap_or_else(|| DEFAULT_MODEL.into()),
        (None, None) => DEFAULT_MODEL.into(),
    };
    let gguf = pipeline::gguf_of(&crate::models::resolve_model(home, &model)?)?;
    let to_gguf = args.output.extension().is_some_and(|e| e == "gguf");
    if !to_gguf && args.output.is_file() {
        bail!(
            "--output names a .gguf file or a folder for Hugging Face weights, not the file {}",
            args.output.display()
        );
    }
    let report = match (&args.adapter, to_gguf) {
        (Some(adapter), true) => kefu_trainer::merge::merge_gguf(&gguf, adapter, &args.output)?,
        (None, true) => bail!("name the --adapter to merge (a GGUF base needs no conversion)"),
        (adapter, false) => kefu_trainer::merge::merge_hf(&gguf, adapter.as_deref(), &args.output)?,
    };
    println!(
        "merged {} projections ({}) into {}",
        report.merged,
        report.dtype,
        args.output.display()
    );
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum TrainerCommand {
    /// Take queued training jobs from the database and run them: snapshot the feedback, run
    /// the recipe, gate, register and promote (`kefu serve` runs one of these as a child).
    Work(WorkArgs),
}

#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Database: sqlite://PATH or postgres://... (default: kefu.db in the data directory).
    #[arg(long, env = "KEFU_DATABASE_URL", hide_env_values = true)]
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
    /// The retention policy after each job: unlabelled versions whose files are kept, and jobs
    /// whose training outputs are kept besides those of labelled versions' lineage.
    #[arg(long, env = "KEFU_KEEP_VERSIONS", default_value_t = 5)]
    pub keep_versions: usize,
    /// Which feedback becomes training data (as `kefu serve --feedback-policy`).
    #[arg(long, env = "KEFU_FEEDBACK_POLICY", value_enum, default_value_t = FeedbackPolicy::Review)]
    pub feedback_policy: FeedbackPolicy,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(value_enum)]
    pub kind: ExportKind,
    #[arg(long, value_enum, default_value = "trl")]
    pub format: ExportFormat,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    #[arg(long, env = "KEFU_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Which feedback becomes examples (as `kefu serve --feedback-policy`).
    #[arg(long, env = "KEFU_FEEDBACK_POLICY", value_enum, default_value_t = FeedbackPolicy::Review)]
    pub feedback_policy: FeedbackPolicy,
}

/// Which examples to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportKind {
    /// Supervised examples: corrected and liked answers.
    Sft,
    /// Preference pairs: chosen against rejected answers.
    Pairs,
    /// Every labelled answer with its label (desirable or not).
    Kto,
}

impl From<ExportKind> for Kind {
    fn from(kind: ExportKind) -> Self {
        match kind {
            ExportKind::Sft => Kind::Sft,
            ExportKind::Pairs => Kind::Pairs,
            ExportKind::Kto => Kind::Kto,
        }
    }
}

/// How to write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// Hugging Face TRL conversational format (`prompt` / `chosen` / `rejected` message lists).
    Trl,
    /// LLaMA-Factory ShareGPT format (`conversations` with `from` / `value`).
    LlamaFactory,
}

impl From<ExportFormat> for Format {
    fn from(format: ExportFormat) -> Self {
        match format {
            ExportFormat::Trl => Format::Trl,
            ExportFormat::LlamaFactory => Format::LlamaFactory,
        }
    }
}

pub(super) fn export(home: &Path, args: &ExportArgs) -> Result<()> {
    let examples = runtime()?.block_on(async {
        let database = connect(home, args.database_url.as_deref()).await?;
        let examples = kefu_trainer::dataset::compile(
            &database,
            args.kind.into(),
            args.format.into(),
            args.feedback_policy.into(),
        )
        .await;
        database.close().await;
        examples
    })?;
    let mut text = String::new();
    for example in &examples {
        text.push_str(&example.to_string());
        text.push('\n');
    }
    match &args.output {
        Some(path) => {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("{} examples written to {}", examples.len(), path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

impl WorkArgs {
    /// `kefu trainer work`: takes jobs until stopped (or one, with --once).
    pub fn work(&self, home: &Path) -> Result<()> {
        let settings = WorkerSettings {
            database_url: database_url(home, self.database_url.as_deref())?,
            once: self.once,
            poll_ms: self.poll_ms,
            lease_seconds: self.lease_seconds,
            max_attempts: self.max_attempts,
            device: self.device.clone(),
            keep_versions: self.keep_versions,
            policy: self.feedback_policy.into(),
        };
        let models = Arc::new(Catalog {
            home: home.to_path_buf(),
        });
        kefu_trainer::worker::work(home, &settings, models)
    }
}
