//! Command-line interface: one clap struct (every setting also a `KEFU_*` variable), one
//! module per command group, and the helpers they share.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod accounts;
mod common;
mod knowledge;
mod models;
mod serve;
mod train;

use accounts::*;
use knowledge::*;
use models::*;
use serve::*;
use train::*;

/// Kefu: a customer-service assistant that learns from its own feedback.
#[derive(Debug, Parser)]
#[command(name = "kefu", version, about)]
pub struct Cli {
    /// Data directory: models, databases, indexes.
    #[arg(long, global = true, env = "KEFU_HOME", default_value = "kefu-data")]
    pub home: PathBuf,
    /// Threads for model compute (0 = one per available CPU).
    #[arg(long, global = true, env = "KEFU_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// How log lines are written (filter them with RUST_LOG, e.g. `info` or `kefu=debug`).
    #[arg(
        long,
        global = true,
        env = "KEFU_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: crate::logging::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant (the training flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Obtain and list models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Generate a reply to one prompt and stream it to stdout (a quick check of a model).
    Generate(GenerateArgs),
    /// Add or update documents (Markdown, HTML, text, PDF; files or folders) in a knowledge base.
    Ingest(IngestArgs),
    /// Run the platform: the HTTP API on embedded defaults (SQLite, in-process vector store,
    /// default models fetched on first start).
    Serve(ServeArgs),
    /// Answer a question from a knowledge base, with numbered citations.
    Ask(AskArgs),
    /// Manage the people who work in Kefu (admins and agents).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// API tokens for automation (they act as their user).
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Write training data derived from feedback, one JSON object per line.
    Export(ExportArgs),
    /// Train LoRA adapters: continued pre-training, SFT, DPO, or a recipe's stages in order.
    Train {
        #[command(subcommand)]
        command: TrainCommand,
    },
    /// The training worker.
    Trainer {
        #[command(subcommand)]
        command: TrainerCommand,
    },
    /// Merge a LoRA adapter into its base model: a GGUF file or Hugging Face weights.
    Merge(MergeArgs),
    /// Measure retrieval or answers against a question file.
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    set_threads(cli.threads);
    if matches!(cli.command, Command::Train { .. } | Command::Trainer { .. }) {
        keep_freed_memory();
    }
    crate::logging::init(cli.log_format);
    match cli.command {
        Command::Models { command } => match command {
            ModelsCommand::Fetch { model } => models_fetch(&cli.home, &model),
            ModelsCommand::List => models_list(&cli.home),
            ModelsCommand::Register {
                file,
                promote,
                database_url,
            } => models_register(&cli.home, &file, promote, database_url.as_deref()),
            ModelsCommand::Prune { keep, database_url } => {
                models_prune(&cli.home, keep, database_url.as_deref())
            }
        },
        Command::Generate(args) => generate(&cli.home, &args),
        Command::Ingest(args) => ingest(&cli.home, cli.threads, &args),
        Command::Serve(args) => serve(&cli.home, cli.threads, &args),
        Command::Users {
            command:
                UsersCommand::Add {
                    role,
                    name,
                    database_url,
                },
        } => users_add(&cli.home, &role, &name, database_url.as_deref()),
        Command::Tokens { command } => tokens(&cli.home, command),
        Command::Export(args) => export(&cli.home, &args),
        Command::Train { command } => train::run(&cli.home, &command),
        Command::Merge(args) => merge(&cli.home, &args),
        Command::Trainer {
            command: TrainerCommand::Work(args),
        } => args.work(&cli.home),
        Command::Ask(args) => ask(&cli.home, cli.threads, &args),
        Command::Eval {
            command: EvalCommand::Retrieval(args),
        } => eval_retrieval(&cli.home, cli.threads, &args),
        Command::Eval {
            command: EvalCommand::Answers(args),
        } => eval_answers(&cli.home, cli.threads, &args),
        Command::Eval {
            command: EvalCommand::Score { input },
        } => eval_score(&input),
    }
}

/// A training step allocates and frees the same activation buffers (megabytes each) every
/// step. glibc's defaults give much of that memory back to the kernel between steps (blocks
/// from `mmap`, a trimmed heap), and every step faulted it back in: a fifth of an SFT step's
/// time on two cores went to page faults. For training processes, blocks up to 32 MiB come
/// from the heap and the heap is not trimmed (the peak is the same; memory is kept after it).
#[allow(unsafe_code)]
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets the allocator's parameters; it is called at start-up, while
    // the process is still single-threaded.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Candle sizes its thread pools from these variables when they are first used, so they are
/// set here, at start-up, while the process is still single-threaded.
#[allow(unsafe_code)]
fn set_threads(threads: usize) {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let value = threads.to_string();
    // SAFETY: called first thing in `run`, before any other thread exists.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", &value);
        std::env::set_var("CANDLE_NUM_THREADS", &value);
    }
}
