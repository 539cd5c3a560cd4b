//! Command-line interface: one clap struct (every setting also a `KEFU_*` variable) and the
//! implementation of each subcommand.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use kefu_model::generate::GenerationParams;
use kefu_model::sampling::SamplingConfig;
use kefu_model::{ChatMessage, DecoderOptions, Generation, LoadOptions, LoadedModel, Role};

use kefu_rag::chunk::ChunkConfig;
use kefu_rag::fusion::FusionConfig;

use crate::catalog::{self, DEFAULT_MODEL};
use crate::fetch::{self, Fetcher, Sources};
use crate::knowledge::{Knowledge, KnowledgeOptions, RetrievalConfig, Retriever};

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
        command: crate::train::TrainCommand,
    },
    /// The training worker.
    Trainer {
        #[command(subcommand)]
        command: TrainerCommand,
    },
    /// Merge a LoRA adapter into its base model: a GGUF file or Hugging Face weights.
    Merge(crate::train::MergeArgs),
    /// Measure retrieval against a question file.
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
}

/// Where the knowledge base lives.
#[derive(Debug, Args)]
pub struct KnowledgeArgs {
    /// Knowledge base (created on first use).
    #[arg(long, default_value = "default")]
    pub kb: String,
    /// Database: sqlite://PATH or postgres://... (default: kefu.db in the data directory).
    #[arg(long, env = "KEFU_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Embedding model: a known name (fetched on first use) or a folder with model.onnx.
    #[arg(long, env = "KEFU_EMBEDDER", default_value = catalog::DEFAULT_EMBEDDER)]
    pub embedder: String,
    /// A Qdrant server's gRPC URL (e.g. http://localhost:6334) instead of the in-process store.
    #[arg(long, env = "KEFU_QDRANT_URL")]
    pub qdrant_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Files and folders to ingest.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub knowledge: KnowledgeArgs,
    /// Remove documents ingested from these folders whose files no longer exist.
    #[arg(long)]
    pub prune: bool,
    /// Largest chunk, in the embedder's tokens.
    #[arg(long, default_value_t = 256)]
    pub chunk_tokens: usize,
    /// Tokens of whole sentences repeated between consecutive chunks.
    #[arg(long, default_value_t = 32)]
    pub overlap_tokens: usize,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, env = "KEFU_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed at start).
    #[arg(long, env = "KEFU_PORT", default_value_t = 8080)]
    pub port: u16,
    #[command(flatten)]
    pub knowledge: KnowledgeArgs,
    /// Chat model: a name (installed or known, fetched on first start) or a path.
    #[arg(long, env = "KEFU_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Where the chat model runs: cpu, or cuda / cuda:N in a CUDA build (the embedded training
    /// worker trains there too).
    #[arg(long, env = "KEFU_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Generation worker threads.
    #[arg(long, env = "KEFU_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Conversations each worker decodes together, one forward pass per step for all.
    #[arg(long, env = "KEFU_BATCH", default_value_t = 16)]
    pub batch: usize,
    /// Generations that may wait for a worker; more are answered 503 with Retry-After.
    #[arg(long, env = "KEFU_QUEUE", default_value_t = 16)]
    pub queue: usize,
    /// Longest answer, in tokens.
    #[arg(long, env = "KEFU_MAX_TOKENS", default_value_t = 256)]
    pub max_tokens: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "KEFU_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Requests a minute from one IP address (0: no limit); more get 429 with Retry-After.
    #[arg(long, env = "KEFU_RATE_PER_IP", default_value_t = 600)]
    pub rate_per_ip: u32,
    /// Customer requests a minute through one widget site (0: no limit).
    #[arg(long, env = "KEFU_RATE_PER_SITE", default_value_t = 3000)]
    pub rate_per_site: u32,
    /// How often to check which version is labelled `production` (milliseconds); a label
    /// moved through this server's admin API is followed at once.
    #[arg(long, env = "KEFU_FOLLOW_MS", default_value_t = 2000)]
    pub follow_ms: u64,
    /// Run the training worker as a child process (`embedded`, restarted when it dies), or
    /// leave training to `kefu trainer work` elsewhere (`off`).
    #[arg(long, env = "KEFU_TRAINER", value_enum, default_value_t = TrainerMode::Embedded)]
    pub trainer: TrainerMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrainerMode {
    Embedded,
    Off,
}

#[derive(Debug, Args)]
pub struct AskArgs {
    /// The question.
    pub question: String,
    #[command(flatten)]
    pub knowledge: KnowledgeArgs,
    /// Chat model: a name (installed or known) or a path.
    #[arg(long, env = "KEFU_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Passages given to the model at most.
    #[arg(long, default_value_t = 4)]
    pub passages: usize,
    /// Prompt budget in the chat model's tokens (instructions, passages, question).
    #[arg(long, default_value_t = 1536)]
    pub context_tokens: usize,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.1)]
    pub repetition_penalty: f32,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user, or change an existing user's role and password. The password is read from
    /// `KEFU_PASSWORD`, else from the first line of standard input.
    Add {
        #[arg(long, value_parser = ["admin", "agent"])]
        role: String,
        name: String,
        #[arg(long, env = "KEFU_DATABASE_URL")]
        database_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create an API token for a user and print it (it is shown only once).
    Add {
        /// The user the token acts as.
        user: String,
        #[arg(long, default_value = "automation")]
        label: String,
        #[arg(long, env = "KEFU_DATABASE_URL")]
        database_url: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(value_enum)]
    pub kind: crate::export::Kind,
    #[arg(long, value_enum, default_value = "trl")]
    pub format: crate::export::Format,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    #[arg(long, env = "KEFU_DATABASE_URL")]
    pub database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Recall@k and MRR (document level) of dense, keyword and fused retrieval.
    Retrieval(EvalRetrievalArgs),
}

#[derive(Debug, Args)]
pub struct EvalRetrievalArgs {
    /// Question file: JSON lines with `question` and `source_doc` (a path suffix of the
    /// ingested file that answers it); records without `source_doc` are skipped and counted.
    #[arg(long)]
    pub qa: PathBuf,
    #[command(flatten)]
    pub knowledge: KnowledgeArgs,
    /// Only records whose `split` is this (e.g. test).
    #[arg(long)]
    pub split: Option<String>,
    /// Cut-offs for recall.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    pub k: Vec<usize>,
    /// Candidates each retriever contributes before fusion.
    #[arg(long, default_value_t = 50)]
    pub depth: usize,
    /// Reciprocal-rank fusion constant.
    #[arg(long, default_value_t = 60.0)]
    pub rrf_k: f64,
    /// Weight of the dense ranking in fusion.
    #[arg(long, default_value_t = 1.0)]
    pub dense_weight: f64,
    /// Weight of the keyword ranking in fusion.
    #[arg(long, default_value_t = 1.0)]
    pub keyword_weight: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
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
    /// Add a GGUF model (e.g. from `kefu merge`) to the registry as a version named by its
    /// content hash, labelled `candidate` (or `production` with --promote: every running
    /// `kefu serve` on the same database switches to it).
    Register {
        /// The model file.
        file: PathBuf,
        /// Label it `production` at once (the current one becomes `previous`).
        #[arg(long)]
        promote: bool,
        /// Database: sqlite://PATH or postgres://... (default: kefu.db in the data directory).
        #[arg(long, env = "KEFU_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// The retention policy: remove the registry files of unlabelled versions beyond the
    /// newest --keep (labelled versions — production, candidate, previous — are never removed;
    /// the versions' records and reports stay). The training worker runs it after each job.
    Prune {
        /// Unlabelled versions to keep, newest first.
        #[arg(long, env = "KEFU_KEEP_VERSIONS", default_value_t = 5)]
        keep: usize,
        /// Database: sqlite://PATH or postgres://... (default: kefu.db in the data directory).
        #[arg(long, env = "KEFU_DATABASE_URL")]
        database_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TrainerCommand {
    /// Take queued training jobs from the database and run them: snapshot the feedback, run
    /// the recipe, gate, register and promote (`kefu serve` runs one of these as a child).
    Work(crate::worker::WorkArgs),
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
    /// Where to run: cpu, or cuda / cuda:N in a CUDA build (bf16 weights).
    #[arg(long, env = "KEFU_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Answer the prompt this many times at once, one forward pass per step for the whole
    /// batch (for benchmarks: --verbose reports the batch's tokens per second); the first
    /// answer is printed.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
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
        Command::Tokens {
            command:
                TokensCommand::Add {
                    user,
                    label,
                    database_url,
                },
        } => tokens_add(&cli.home, &user, &label, database_url.as_deref()),
        Command::Export(args) => export(&cli.home, &args),
        Command::Train { command } => crate::train::run(&cli.home, &command),
        Command::Merge(args) => crate::train::merge(&cli.home, &args),
        Command::Trainer {
            command: TrainerCommand::Work(args),
        } => crate::worker::work(&cli.home, &args),
        Command::Ask(args) => ask(&cli.home, cli.threads, &args),
        Command::Eval {
            command: EvalCommand::Retrieval(args),
        } => eval_retrieval(&cli.home, cli.threads, &args),
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
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let device = kefu_model::parse_device(&args.device)?;
    let options = LoadOptions {
        requantize: !args.no_requantize,
        decoder: DecoderOptions {
            fast_kernels: !args.exact_kernels,
            ..DecoderOptions::default()
        },
        ..LoadOptions::default()
    }
    .on(&device);
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
    if args.batch > 1 {
        return generate_batch(&model, &ids, &params, args.batch, args.verbose);
    }
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

/// `kefu generate --batch N`: N answers to one prompt, stepped together; prints the first.
fn generate_batch(
    model: &LoadedModel,
    ids: &[u32],
    params: &GenerationParams,
    batch: usize,
    verbose: bool,
) -> Result<()> {
    let started = std::time::Instant::now();
    let mut sequences = (0..batch)
        .map(|_| model.start_sequence(ids, params))
        .collect::<kefu_model::Result<Vec<_>>>()?;
    let prefill_seconds = started.elapsed().as_secs_f64();
    let decode_start = std::time::Instant::now();
    let mut first = String::new();
    loop {
        let mut active = Vec::with_capacity(batch);
        for (i, sequence) in sequences.iter_mut().enumerate() {
            let going = sequence.advance(&mut |piece: &str| {
                if i == 0 {
                    first.push_str(piece);
                }
                true
            })?;
            if going {
                active.push(sequence);
            }
        }
        if active.is_empty() {
            break;
        }
        model.step_batch(&mut active)?;
    }
    let decode_seconds = decode_start.elapsed().as_secs_f64();
    let generations: Vec<Generation> = sequences
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            s.finish(|piece: &str| {
                if i == 0 {
                    first.push_str(piece);
                }
                true
            })
        })
        .collect();
    println!("{first}");
    if verbose {
        let tokens: usize = generations
            .iter()
            .map(|g| g.completion_tokens().saturating_sub(1))
            .sum();
        eprintln!(
            "[batch {batch}: prompt {} tokens each, prefill {:.2}s; generated {tokens} tokens \
             after the first, decode {:.1} tok/s]",
            ids.len(),
            prefill_seconds,
            tokens as f64 / decode_seconds.max(1e-9)
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

fn models_register(home: &Path, file: &Path, promote: bool, url: Option<&str>) -> Result<()> {
    let url = database_url(home, url)?;
    let version = crate::registry::import(home, file, None, None)?;
    runtime()?.block_on(async {
        let database = kefu_db::Database::connect(&url).await?;
        let version = database.register_version(&version).await?;
        if promote {
            let previous = database.promote(&version.id).await?;
            println!(
                "version {} is production{}",
                version.id,
                previous
                    .filter(|p| *p != version.id)
                    .map(|p| format!(" (previous: {p})"))
                    .unwrap_or_default()
            );
        } else {
            database.set_label(kefu_db::CANDIDATE, &version.id).await?;
            println!("version {} is the candidate", version.id);
        }
        database.close().await;
        anyhow::Ok(())
    })
}

fn models_prune(home: &Path, keep: usize, url: Option<&str>) -> Result<()> {
    let url = database_url(home, url)?;
    runtime()?.block_on(async {
        let database = kefu_db::Database::connect(&url).await?;
        let pruned = crate::registry::prune(home, &database, keep).await;
        database.close().await;
        let pruned = pruned?;
        if pruned.is_empty() {
            println!("nothing to remove: every unlabelled version is among the newest {keep}");
        }
        for version in pruned {
            println!("removed the files of version {version}");
        }
        anyhow::Ok(())
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn open_knowledge(home: &Path, threads: usize, args: &KnowledgeArgs) -> Result<Knowledge> {
    let url = database_url(home, args.database_url.as_deref())?;
    let options = KnowledgeOptions {
        embedder: args.embedder.clone(),
        threads,
        qdrant_url: args.qdrant_url.clone(),
    };
    Knowledge::open(home, &url, &options).await
}

fn ingest(home: &Path, threads: usize, args: &IngestArgs) -> Result<()> {
    if args.chunk_tokens < 16 || args.overlap_tokens >= args.chunk_tokens {
        bail!("--chunk-tokens must be at least 16 and larger than --overlap-tokens");
    }
    let config = ChunkConfig {
        max_tokens: args.chunk_tokens,
        overlap_tokens: args.overlap_tokens,
    };
    let report = runtime()?.block_on(async {
        let knowledge = open_knowledge(home, threads, &args.knowledge).await?;
        let report = crate::ingest::ingest(
            &knowledge,
            &args.knowledge.kb,
            &args.paths,
            &config,
            args.prune,
        )
        .await;
        knowledge.close().await?;
        report
    })?;
    for (path, reason) in &report.failed {
        eprintln!("error: {}: {reason}", path.display());
    }
    println!(
        "knowledge base `{}`: {} added, {} updated, {} unchanged, {} removed, {} failed; \
         {} chunks written{}",
        args.knowledge.kb,
        report.added,
        report.updated,
        report.unchanged,
        report.removed,
        report.failed.len(),
        report.chunks,
        if report.reindexed > 0 {
            format!("; vectors rebuilt for {} documents", report.reindexed)
        } else {
            String::new()
        }
    );
    if !report.failed.is_empty() {
        bail!(
            "{} of the files could not be ingested (the others were)",
            report.failed.len()
        );
    }
    Ok(())
}

/// The knowledge base `args.kb`, ready to search; an empty one is an error.
async fn open_retriever(
    home: &Path,
    threads: usize,
    args: &KnowledgeArgs,
) -> Result<(Knowledge, Retriever)> {
    let knowledge = open_knowledge(home, threads, args).await?;
    let kb = &args.kb;
    let id = knowledge.database.knowledge_base(kb).await?;
    let retriever = Retriever::load(&knowledge.database, id).await?;
    if retriever.chunks.is_empty() {
        bail!(
            "the knowledge base `{kb}` is empty: add documents with `kefu ingest PATH --kb {kb}`"
        );
    }
    Ok((knowledge, retriever))
}

async fn connect(home: &Path, flag: Option<&str>) -> Result<kefu_db::Database> {
    let url = database_url(home, flag)?;
    kefu_db::Database::connect(&url)
        .await
        .with_context(|| format!("cannot open the database {url}"))
}

fn users_add(home: &Path, role: &str, name: &str, database_url: Option<&str>) -> Result<()> {
    crate::auth::check_role(role).map_err(anyhow::Error::msg)?;
    let name = name.trim();
    if name.is_empty() || name.len() > 100 {
        bail!("a user name has 1 to 100 characters");
    }
    let password = match std::env::var("KEFU_PASSWORD") {
        Ok(p) => p,
        Err(_) => {
            eprintln!("password for {name} (one line on standard input):");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
    };
    if password.chars().count() < 8 {
        bail!("the password must have at least 8 characters");
    }
    let hash = crate::auth::hash_password(&password)?;
    runtime()?.block_on(async {
        let database = connect(home, database_url).await?;
        let user = database.upsert_user(name, role, &hash).await?;
        database.close().await;
        println!("user `{}` is an {}", user.name, user.role);
        anyhow::Ok(())
    })
}

fn tokens_add(home: &Path, user: &str, label: &str, database_url: Option<&str>) -> Result<()> {
    runtime()?.block_on(async {
        let database = connect(home, database_url).await?;
        let Some(found) = database.user_by_name(user).await? else {
            bail!("there is no user `{user}`: add one with `kefu users add --role agent {user}`");
        };
        let token = format!(
            "{}{}",
            crate::auth::API_TOKEN_PREFIX,
            crate::auth::random_hex(24)
        );
        database
            .create_api_token(&crate::auth::sha256_hex(&token), found.id, label)
            .await?;
        database.close().await;
        println!("{token}");
        anyhow::Ok(())
    })
}

fn export(home: &Path, args: &ExportArgs) -> Result<()> {
    let examples = runtime()?.block_on(async {
        let database = connect(home, args.database_url.as_deref()).await?;
        let examples = crate::export::compile(&database, args.kind, args.format).await;
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

fn serve(home: &Path, threads: usize, args: &ServeArgs) -> Result<()> {
    if args.workers == 0
        || args.batch == 0
        || args.queue == 0
        || args.max_tokens == 0
        || args.max_body_bytes < 1024
    {
        bail!(
            "--workers, --batch, --queue and --max-tokens must be at least 1 and \
             --max-body-bytes at least 1024"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let knowledge = open_knowledge(home, threads, &args.knowledge).await?;
        // Conversations that name no knowledge base (and new widget sites) use this one.
        knowledge
            .database
            .knowledge_base(&args.knowledge.kb)
            .await?;
        let path = resolve_model(home, &args.model)?;
        let device = kefu_model::parse_device(&args.device)?;
        let options = LoadOptions::default().on(&device);
        let model = tokio::task::spawn_blocking(move || {
            LoadedModel::load(&path, &options)
                .with_context(|| format!("cannot load the model at {}", path.display()))
        })
        .await??;
        let weights = model.weights_path.clone();
        let version = tokio::task::spawn_blocking(move || fetch::sha256_file(&weights)).await??;
        let settings = crate::registry::GeneratorSettings {
            name: args.model.clone(),
            device,
            workers: args.workers,
            max_batch: args.batch,
            capacity: args.queue,
        };
        let generator = crate::generator::Generator::start(
            model,
            settings.name.clone(),
            version,
            settings.workers,
            settings.max_batch,
            settings.capacity,
        )?;
        crate::registry::register_serving(&knowledge.database, &generator).await?;
        let config = crate::http::ApiConfig {
            default_kb: args.knowledge.kb.clone(),
            max_body_bytes: args.max_body_bytes,
            max_tokens: args.max_tokens,
            rate_per_ip: args.rate_per_ip,
            rate_per_site: args.rate_per_site,
            data_dir: home.to_path_buf(),
            ..crate::http::ApiConfig::default()
        };
        let serving = crate::registry::Serving::new(generator, settings);
        let state = crate::http::AppState::new(knowledge, serving, config);
        // Serve what `production` names (another replica or an earlier run may have moved it).
        if let Err(e) = crate::registry::follow_once(&state.serving, &state.database, home).await {
            eprintln!("kefu: keeps serving {}: {e:#}", state.generator().version);
        }
        tokio::spawn(crate::registry::follow(
            state.clone(),
            home.to_path_buf(),
            std::time::Duration::from_millis(args.follow_ms.max(50)),
        ));
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let stop_worker = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        if args.trainer == TrainerMode::Embedded {
            crate::worker::supervise(
                home.to_path_buf(),
                database_url(home, args.knowledge.database_url.as_deref())?,
                stop_worker.clone(),
            );
        }
        println!("kefu: listening on http://{}", listener.local_addr()?);
        let app = crate::http::router(state)
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        stop_worker.store(true, std::sync::atomic::Ordering::SeqCst);
        eprintln!("kefu: stopped");
        anyhow::Ok(())
    })
}

/// Ctrl-C or SIGTERM: stop accepting, finish the requests in flight.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

fn ask(home: &Path, threads: usize, args: &AskArgs) -> Result<()> {
    if args.question.trim().is_empty() {
        bail!("the question is empty");
    }
    let runtime = runtime()?;
    let (knowledge, retriever) =
        runtime.block_on(open_retriever(home, threads, &args.knowledge))?;
    let ranked = retriever.search(&knowledge, &args.question, &RetrievalConfig::default())?;
    let path = resolve_model(home, &args.model)?;
    let model = LoadedModel::load(&path, &LoadOptions::default())
        .with_context(|| format!("cannot load the model at {}", path.display()))?;
    let prompt = crate::answer::grounded_prompt(
        &model,
        &retriever,
        &ranked,
        &args.question,
        args.passages,
        args.context_tokens,
    )?;
    let ids = model.chat_prompt(&prompt.messages)?;
    let params = GenerationParams {
        sampling: SamplingConfig {
            temperature: args.temperature,
            repetition_penalty: args.repetition_penalty,
            ..SamplingConfig::default()
        },
        max_tokens: args.max_tokens,
        stop: Vec::new(),
        ignore_eos: false,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    model.generate(&ids, &params, |piece| {
        out.write_all(piece.as_bytes()).is_ok() && out.flush().is_ok()
    })?;
    let _ = writeln!(out, "\n\nSources:");
    for citation in &prompt.citations {
        let _ = writeln!(out, "{}", citation.line());
    }
    runtime.block_on(knowledge.close())
}

fn eval_retrieval(home: &Path, threads: usize, args: &EvalRetrievalArgs) -> Result<()> {
    if args.k.is_empty() || args.k.contains(&0) {
        bail!("--k takes cut-offs of 1 or more, like 1,5,10");
    }
    if args.depth == 0 || args.rrf_k < 0.0 || args.dense_weight < 0.0 || args.keyword_weight < 0.0 {
        bail!("--depth must be positive and --rrf-k and the weights must not be negative");
    }
    let (questions, skipped) = crate::evaluate::read_questions(&args.qa, args.split.as_deref())?;
    let runtime = runtime()?;
    let (knowledge, retriever) =
        runtime.block_on(open_retriever(home, threads, &args.knowledge))?;
    let config = RetrievalConfig {
        depth: args.depth,
        fusion: FusionConfig { k: args.rrf_k },
        dense_weight: args.dense_weight,
        keyword_weight: args.keyword_weight,
    };
    let report = crate::evaluate::evaluate(&knowledge, &retriever, &questions, skipped, &config)?;
    let mut k = args.k.clone();
    k.sort_unstable();
    k.dedup();
    if args.json {
        println!("{}", report.to_json(&k));
    } else {
        println!(
            "retrieval on `{}` ({}): {} questions; {} records without source_doc skipped; \
             {} whose source is not ingested",
            args.knowledge.kb,
            knowledge.embedder_name,
            report.questions,
            report.skipped,
            report.source_missing
        );
        print!("{}", report.to_table(&k));
    }
    runtime.block_on(knowledge.close())
}
