//! `kefu train sft`: LoRA supervised fine-tuning of a chat model on a JSON-lines file (the
//! shapes `kefu_trainer::data` reads, including `kefu export sft`), with a progress bar, a
//! metrics file, checkpoints and `--resume`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use kefu_model::{LoadOptions, LoadedModel};
use kefu_trainer::data::{self, OnBadLine};
use kefu_trainer::lora::LoraConfig;
use kefu_trainer::sft::{self, SftConfig};

use crate::catalog::DEFAULT_MODEL;

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Supervised fine-tuning with LoRA on question / answer conversations.
    Sft(SftArgs),
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
    /// Share of the examples held out for the eval loss.
    #[arg(long, default_value_t = 0.05)]
    pub eval_fraction: f64,
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
    }
}

fn train_sft(home: &Path, args: &SftArgs) -> Result<()> {
    if !(0.0..=0.5).contains(&args.eval_fraction) {
        bail!("--eval-fraction is between 0 and 0.5");
    }
    let targets = LoraConfig::parse_targets(&args.targets)?;
    let on_bad_line = match args.on_bad_line {
        BadLines::Skip => OnBadLine::Skip,
        BadLines::Fail => OnBadLine::Fail,
    };
    let loaded = data::read_jsonl(&args.data, on_bad_line)?;
    for (line, reason) in loaded.skipped.iter().take(20) {
        eprintln!("{} line {line}: {reason} (skipped)", args.data.display());
    }
    if loaded.skipped.len() > 20 {
        eprintln!("… and {} more bad lines", loaded.skipped.len() - 20);
    }
    let path = crate::cli::resolve_model(home, &args.model)?;
    let mut model = LoadedModel::load(&path, &LoadOptions::default())
        .with_context(|| format!("cannot load the model at {}", path.display()))?;
    let (train, eval) = data::split(loaded.conversations, args.eval_fraction);
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
    let config = SftConfig {
        lora: LoraConfig {
            rank: args.rank,
            alpha: args.alpha,
            targets,
        },
        epochs: args.epochs,
        max_steps: args.max_steps,
        learning_rate: args.learning_rate,
        batch_size: args.batch,
        grad_accum: args.accum,
        eval_every: args.eval_every,
        patience: args.patience,
        seed: args.seed,
        ..SftConfig::default()
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "training [{bar:30}] {pos}/{len} steps, loss {msg}, {per_sec}, eta {eta}",
        )
        .expect("progress template is valid")
        .progress_chars("=> "),
    );
    let report = sft::train(
        &mut model,
        &args.model,
        &train,
        &eval,
        &config,
        &args.output,
        args.resume,
        |step, total, loss| {
            bar.set_length(total as u64);
            bar.set_position(step as u64);
            bar.set_message(format!("{loss:.4}"));
            true
        },
    )?;
    bar.finish_and_clear();
    println!(
        "{} steps: loss {:.4} → {:.4}{}{}; adapter written to {}",
        report.steps,
        report.first_loss,
        report.last_loss,
        report
            .eval_loss
            .map(|l| format!(", eval loss {l:.4}"))
            .unwrap_or_default(),
        if report.stopped_early {
            " (stopped early)"
        } else {
            ""
        },
        report.adapter_dir.display()
    );
    Ok(())
}
