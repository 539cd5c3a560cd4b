//! `kefu train sft|dpo`: LoRA supervised fine-tuning on question / answer conversations and
//! direct preference optimization on chosen / rejected pairs (the shapes `kefu_trainer` reads,
//! the `kefu export` formats included), with a progress bar, a metrics file, checkpoints and
//! `--resume`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use kefu_model::{LoadOptions, LoadedModel};
use kefu_trainer::data::{self, OnBadLine};
use kefu_trainer::lora::LoraConfig;
use kefu_trainer::run::TrainConfig;
use kefu_trainer::sft;

use crate::catalog::DEFAULT_MODEL;

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Supervised fine-tuning with LoRA on question / answer conversations.
    Sft(SftArgs),
    /// Direct preference optimization with LoRA on chosen / rejected pairs (`kefu export
    /// pairs`, or `prompt` / `history` / `chosen` / `rejected` JSON lines).
    Dpo(DpoArgs),
}

#[derive(Debug, Args)]
pub struct DpoArgs {
    #[command(flatten)]
    pub stage: SftArgs,
    /// How far the policy may move from the reference model.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BadLines {
    /// Report bad lines and go on.
    Skip,
    /// Stop at the first bad line.
    Fail,
}

#[derive(Debug, Args)]
pub struct SftArgs {
    /// JSON lines: alpaca, `messages`, ShareGPT `conversations` or `question` / `answer`.
    #[arg(long)]
    pub data: PathBuf,
    /// Base chat model: a name (installed or known) or a path.
    #[arg(long, env = "KEFU_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Output folder: `adapter/` (PEFT layout), `checkpoint/`, `metrics.jsonl`.
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Stop after this many optimizer steps (0: run every epoch).
    #[arg(long, default_value_t = 0)]
    pub max_steps: usize,
    #[arg(long = "lr", default_value_t = 2e-4)]
    pub learning_rate: f64,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Forward passes per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Projections that get adapters: q,k,v,o,gate,up,down.
    #[arg(long, default_value = "q,k,v,o,gate,up,down")]
    pub targets: String,
    /// Longest example in tokens (longer answers are cut; prompts that leave no room skipped).
    #[arg(long, default_value_t = 1024)]
    pub max_len: usize,
    /// Share of the examples held out for the eval loss (ignored with --eval-split).
    #[arg(long, default_value_t = 0.05)]
    pub eval_fraction: f64,
    /// Train only on the lines whose `split` field is this (e.g. `train`).
    #[arg(long)]
    pub split: Option<String>,
    /// Evaluate on the lines whose `split` field is this (e.g. `test`) instead of a share of
    /// the training lines.
    #[arg(long)]
    pub eval_split: Option<String>,
    /// Evaluate and checkpoint every this many steps (0: once per epoch).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Stop when the eval loss has not improved this many evaluations in a row (0: never).
    #[arg(long, default_value_t = 0)]
    pub patience: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = BadLines::Skip)]
    pub on_bad_line: BadLines,
    /// Carry on from `OUTPUT/checkpoint` (same data and settings).
    #[arg(long)]
    pub resume: bool,
}

pub fn run(home: &Path, command: &TrainCommand) -> Result<()> {
    match command {
        TrainCommand::Sft(args) => train_sft(home, args),
        TrainCommand::Dpo(args) => train_dpo(home, args),
    }
}

fn on_bad_line(args: &SftArgs) -> OnBadLine {
    match args.on_bad_line {
        BadLines::Skip => OnBadLine::Skip,
        BadLines::Fail => OnBadLine::Fail,
    }
}

fn report_skipped(path: &Path, skipped: &[(usize, String)]) {
    for (line, reason) in skipped.iter().take(20) {
        eprintln!("{} line {line}: {reason} (skipped)", path.display());
    }
    if skipped.len() > 20 {
        eprintln!("… and {} more bad lines", skipped.len() - 20);
    }
}

fn load_model(home: &Path, model: &str) -> Result<LoadedModel> {
    let path = crate::cli::resolve_model(home, model)?;
    LoadedModel::load(&path, &LoadOptions::default())
        .with_context(|| format!("cannot load the model at {}", path.display()))
}

/// The loop's settings from the command line.
fn config(args: &SftArgs) -> Result<TrainConfig> {
    if !(0.0..=0.5).contains(&args.eval_fraction) {
        bail!("--eval-fraction is between 0 and 0.5");
    }
    Ok(TrainConfig {
        lora: LoraConfig {
            rank: args.rank,
            alpha: args.alpha,
            targets: LoraConfig::parse_targets(&args.targets)?,
        },
        epochs: args.epochs,
        max_steps: args.max_steps,
        learning_rate: args.learning_rate,
        batch_size: args.batch,
        grad_accum: args.accum,
        eval_every: args.eval_every,
        patience: args.patience,
        seed: args.seed,
        ..TrainConfig::default()
    })
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "training [{bar:30}] {pos}/{len} steps, loss {msg}, eta {eta}",
        )
        .expect("progress template is valid")
        .progress_chars("=> "),
    );
    bar
}

fn on_step(bar: &ProgressBar) -> impl FnMut(usize, usize, f64) -> bool + '_ {
    |step, total, loss| {
        bar.set_length(total as u64);
        bar.set_position(step as u64);
        bar.set_message(format!("{loss:.4}"));
        true
    }
}

fn print_report(report: &kefu_trainer::run::Report) {
    let figures: String = report
        .eval_metrics
        .iter()
        .map(|(name, value)| format!(", eval {name} {value:.4}"))
        .collect();
    println!(
        "{} steps: loss {:.4} → {:.4}{}{}{}; adapter written to {}",
        report.steps,
        report.first_loss,
        report.last_loss,
        report
            .eval_loss
            .map(|l| format!(", eval loss {l:.4}"))
            .unwrap_or_default(),
        figures,
        if report.stopped_early {
            " (stopped early)"
        } else {
            ""
        },
        report.adapter_dir.display()
    );
}

fn train_dpo(home: &Path, args: &DpoArgs) -> Result<()> {
    let stage = &args.stage;
    let config = TrainConfig {
        beta: args.beta,
        ..config(stage)?
    };
    let read = |split: Option<&str>| {
        kefu_trainer::dpo::read_pairs_split(&stage.data, on_bad_line(stage), split)
    };
    let loaded = read(stage.split.as_deref())?;
    report_skipped(&stage.data, &loaded.skipped);
    let (train, eval) = match &stage.eval_split {
        Some(split) => (loaded.pairs, read(Some(split))?.pairs),
        None => kefu_trainer::dpo::split(loaded.pairs, stage.eval_fraction),
    };
    let mut model = load_model(home, &stage.model)?;
    let mut too_long = 0;
    let mut tokenize = |pairs: &[kefu_trainer::dpo::Preference]| -> Result<Vec<_>> {
        let mut out = Vec::new();
        for p in pairs {
            match kefu_trainer::dpo::tokenize_pair(&model, p, stage.max_len)? {
                Some(t) => out.push(t),
                None => too_long += 1,
            }
        }
        Ok(out)
    };
    let train = tokenize(&train)?;
    let eval = tokenize(&eval)?;
    eprintln!(
        "{} training and {} eval pairs ({} duplicates dropped, {} bad lines skipped, {} prompts \
         longer than --max-len {} skipped); computing the reference model's log-probabilities",
        train.len(),
        eval.len(),
        loaded.duplicates,
        loaded.skipped.len(),
        too_long,
        stage.max_len
    );
    let bar = progress_bar();
    let report = kefu_trainer::dpo::train(
        &mut model,
        &stage.model,
        &train,
        &eval,
        &config,
        &stage.output,
        stage.resume,
        on_step(&bar),
    )?;
    bar.finish_and_clear();
    print_report(&report);
    Ok(())
}

fn train_sft(home: &Path, args: &SftArgs) -> Result<()> {
    let config = config(args)?;
    let loaded = data::read_jsonl_split(&args.data, on_bad_line(args), args.split.as_deref())?;
    report_skipped(&args.data, &loaded.skipped);
    let (train, eval) = match &args.eval_split {
        Some(split) => (
            loaded.conversations,
            data::read_jsonl_split(&args.data, on_bad_line(args), Some(split))?.conversations,
        ),
        None => data::split(loaded.conversations, args.eval_fraction),
    };
    let mut model = load_model(home, &args.model)?;
    let mut too_long = 0;
    let mut tokenize = |conversations: &[data::Conversation]| -> Result<Vec<data::Tokenized>> {
        let mut out = Vec::new();
        for c in conversations {
            match data::tokenize(&model, c, args.max_len)? {
                Some(t) => out.push(t),
                None => too_long += 1,
            }
        }
        Ok(out)
    };
    let train = tokenize(&train)?;
    let eval = tokenize(&eval)?;
    eprintln!(
        "{} training and {} eval examples ({} duplicates dropped, {} bad lines skipped, {} \
         prompts longer than --max-len {} skipped)",
        train.len(),
        eval.len(),
        loaded.duplicates,
        loaded.skipped.len(),
        too_long,
        args.max_len
    );
    let bar = progress_bar();
    let report = sft::train(
        &mut model,
        &args.model,
        &train,
        &eval,
        &config,
        &args.output,
        args.resume,
        on_step(&bar),
    )?;
    bar.finish_and_clear();
    print_report(&report);
    Ok(())
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The adapter folder (PEFT layout: adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
    /// The base model the adapter was trained on: a name (installed or known) or a GGUF path.
    #[arg(long, env = "KEFU_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// The merged model, a GGUF file (`kefu generate --model FILE` loads it).
    #[arg(long)]
    pub output: PathBuf,
}

/// `kefu merge`: writes base + adapter as one GGUF model.
pub fn merge(home: &Path, args: &MergeArgs) -> Result<()> {
    let path = crate::cli::resolve_model(home, &args.model)?;
    let gguf = if path.is_dir() {
        std::fs::read_dir(&path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.extension().is_some_and(|e| e == "gguf")
                    && !p.to_string_lossy().contains(".kefu-")
            })
            .with_context(|| format!("{} holds no GGUF file to merge into", path.display()))?
    } else {
        path
    };
    if args.output.extension().is_none_or(|e| e != "gguf") {
        bail!("--output names a .gguf file");
    }
    let report = kefu_trainer::merge::merge_gguf(&gguf, &args.adapter, &args.output)?;
    println!(
        "merged {} projections ({}) into {}",
        report.merged,
        report.dtype,
        args.output.display()
    );
    Ok(())
}
