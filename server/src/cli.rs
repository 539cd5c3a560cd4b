//! Command-line interface: one clap struct (every setting also a `KEFU_*` variable) and the
//! implementation of each subcommand.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use kefu_model::generate::GenerationParams;
use kefu_model::sampling::SamplingConfig;
use kefu_model::{ChatMessage, DecoderOptions, LoadOptions, LoadedModel, Role};

use crate::catalog::{self, DEFAULT_MODEL};
use crate::fetch::{self, Fetcher, Sources};

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
    #[command(subcommand)]
    pub command: Command,
}

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
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Files and folders to ingest.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Knowledge base to add them to (created on first use).
    #[arg(long, default_value = "default")]
    pub kb: String,
    /// Database: sqlite://PATH or postgres://... (default: kefu.db in the data directory).
    #[arg(long, env = "KEFU_DATABASE_URL")]
    pub database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Download a model (a known name, a Hugging Face id) or import a local GGUF file or
    /// Hugging Face folder into the data directory.
    Fetch {
        /// Model name, Hugging Face id or path.
        #[arg(default_value = DEFAULT_MODEL)]
        model: String,
    },
    /// List known and installed models.
    List,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The user's message.
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the user's message from a UTF-8 file.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// An optional system message.
    #[arg(long)]
    pub system: Option<String>,
    /// Send the prompt as it is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Model name (installed or known) or a path to a GGUF file / Hugging Face folder.
    #[arg(long, env = "KEFU_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 1.1)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 299_792_458)]
    pub seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Use the weights as shipped, without the cached Q8_0 re-quantization.
    #[arg(long)]
    pub no_requantize: bool,
    /// Use candle's reference matrix kernels instead of padding rows for its faster repacked
    /// ones (bit-for-bit the reference arithmetic; slower).
    #[arg(long, env = "KEFU_EXACT_KERNELS")]
    pub exact_kernels: bool,
    /// Generate exactly --max-tokens tokens, past the end of the turn (for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print timing figures to stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

pub fn run(cli: Cli) -> Result<()> {
    set_threads(cli.threads);
    match cli.command {
        Command::Models { command } => match command {
            ModelsCommand::Fetch { model } => models_fetch(&cli.home, &model),
            ModelsCommand::List => models_list(&cli.home),
        },
        Command::Generate(args) => generate(&cli.home, &args),
        Command::Ingest(args) => ingest(&cli.home, &args),
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

fn models_fetch(home: &Path, model: &str) -> Result<()> {
    let fetcher = Fetcher::new(home, Sources::from_env());
    let fetched = fetcher.fetch(model)?;
    if fetched.already_present {
        println!(
            "{} is already present: {}",
            fetched.name,
            fetched.path.display()
        );
    } else {
        println!("fetched {}: {}", fetched.name, fetched.path.display());
    }
    Ok(())
}

fn models_list(home: &Path) -> Result<()> {
    let models_dir = home.join("models");
    println!("{:<30} {:<10} description", "name", "installed");
    for entry in catalog::CATALOG {
        let installed = fetch::installed_path(&models_dir, entry.name).is_some();
        let marker = if entry.name == DEFAULT_MODEL {
            " (default)"
        } else {
            ""
        };
        println!(
            "{:<30} {:<10} {}{marker}",
            entry.name,
            if installed { "yes" } else { "no" },
            entry.description
        );
    }
    if let Ok(dir) = std::fs::read_dir(&models_dir) {
        let mut others: Vec<String> = dir
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| catalog::find(n).is_none())
            .filter(|n| fetch::installed_path(&models_dir, n).is_some())
            .collect();
        others.sort();
        for name in others {
            println!("{name:<30} {:<10} imported", "yes");
        }
    }
    Ok(())
}

/// Resolves `--model`: a path, an installed model, or a known model fetched on first use.
pub fn resolve_model(home: &Path, model: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let models_dir = home.join("models");
    if let Some(installed) = fetch::installed_path(&models_dir, model) {
        return Ok(installed);
    }
    if let Some(entry) = catalog::find(model) {
        if let Some(installed) = fetch::installed_path(&models_dir, entry.name) {
            return Ok(installed);
        }
        eprintln!("{} is not installed yet; fetching it first.", entry.name);
        return Ok(Fetcher::new(home, Sources::from_env())
            .fetch(entry.name)?
            .path);
    }
    bail!(
        "model `{model}` is neither a path nor an installed model; run `kefu models fetch {model}`"
    )
}

fn read_prompt(args: &GenerateArgs) -> Result<String> {
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(prompt), _) => prompt.clone(),
        (None, Some(file)) => {
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not valid UTF-8 (invalid byte at offset {})",
                    file.display(),
                    e.utf8_error().valid_up_to()
                )
            })?
        }
        (None, None) => bail!("give a prompt with --prompt TEXT or --prompt-file FILE"),
    };
    if prompt.trim().is_empty() {
        bail!("the prompt is empty");
    }
    Ok(prompt)
}

fn generate(home: &Path, args: &GenerateArgs) -> Result<()> {
    let prompt = read_prompt(args)?;
    let path = resolve_model(home, &args.model)?;
    let options = LoadOptions {
        requantize: !args.no_requantize,
        decoder: DecoderOptions {
            fast_kernels: !args.exact_kernels,
        },
        ..LoadOptions::default()
    };
    let load_start = std::time::Instant::now();
    let model = LoadedModel::load(&path, &options)
        .with_context(|| format!("cannot load the model at {}", path.display()))?;
    let load_seconds = load_start.elapsed().as_secs_f64();
    let ids = if args.raw {
        model.encode(&prompt)?
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new(Role::System, system.clone()));
        }
        messages.push(ChatMessage::new(Role::User, prompt));
        model.chat_prompt(&messages)?
    };
    let params = GenerationParams {
        sampling: SamplingConfig {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
            ..SamplingConfig::default()
        },
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let generation = model.generate(&ids, &params, |piece| {
        // A closed stdout (e.g. `| head`) ends the generation quietly.
        out.write_all(piece.as_bytes()).is_ok() && out.flush().is_ok()
    })?;
    let _ = writeln!(out);
    if args.verbose {
        let prefill = generation.prompt_tokens as f64 / generation.prefill_seconds.max(1e-9);
        let decode = generation.completion_tokens().saturating_sub(1) as f64
            / generation.decode_seconds.max(1e-9);
        eprintln!(
            "[load {load_seconds:.2}s; prompt {} tokens, prefill {prefill:.1} tok/s; \
             generated {} tokens, decode {decode:.1} tok/s; finish {:?}]",
            generation.prompt_tokens,
            generation.completion_tokens(),
            generation.finish_reason
        );
    }
    Ok(())
}

/// The database URL: the flag or variable, else the SQLite file in the data directory.
pub fn database_url(home: &Path, flag: Option<&str>) -> Result<String> {
    if let Some(url) = flag {
        return Ok(url.to_string());
    }
    std::fs::create_dir_all(home)
        .with_context(|| format!("cannot create the data directory {}", home.display()))?;
    Ok(format!("sqlite://{}", home.join("kefu.db").display()))
}

fn ingest(home: &Path, args: &IngestArgs) -> Result<()> {
    let url = database_url(home, args.database_url.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let database = kefu_db::Database::connect(&url)
            .await
            .with_context(|| format!("cannot open the database {url}"))?;
        let report = crate::ingest::ingest(
            &database,
            &args.kb,
            &args.paths,
            &kefu_rag::chunk::WordCounter,
            &kefu_rag::chunk::ChunkConfig::default(),
        )
        .await;
        database.close().await;
        report
    })?;
    for (path, reason) in &report.failed {
        eprintln!("error: {}: {reason}", path.display());
    }
    println!(
        "knowledge base `{}`: {} added, {} updated, {} unchanged, {} failed; {} chunks written",
        args.kb,
        report.added,
        report.updated,
        report.unchanged,
        report.failed.len(),
        report.chunks
    );
    if !report.failed.is_empty() {
        bail!(
            "{} of the files could not be ingested (the others were)",
            report.failed.len()
        );
    }
    Ok(())
}
