//! `kefu models` (fetch, list, register, prune) and `kefu generate`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kefu_model::generate::GenerationParams;
use kefu_model::sampling::SamplingConfig;
use kefu_model::{ChatMessage, DecoderOptions, Generation, LoadOptions, LoadedModel, Role};

use super::common::*;
use crate::models::catalog::{self, DEFAULT_MODEL};
use crate::models::fetch::{self, Fetcher, Sources};
use crate::models::resolve_model;

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
        #[arg(long, env = "KEFU_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// The retention policy: remove the registry files of unlabelled versions beyond the
    /// newest --keep (labelled versions — production, candidate, previous — are never removed;
    /// the versions' records and reports stay), and the training outputs (`jobs/<id>/train/`)
    /// of jobs beyond the newest --keep that no labelled version descends from (their data
    /// snapshots stay). The training worker runs it after each job.
    Prune {
        /// Unlabelled versions to keep, newest first.
        #[arg(long, env = "KEFU_KEEP_VERSIONS", default_value_t = 5)]
        keep: usize,
        /// Database: sqlite://PATH or postgres://... (default: kefu.db in the data directory).
        #[arg(long, env = "KEFU_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
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
    /// Use candle's reference matrix kernels instead of Kefu's packed Q8_0 ones (bit-for-bit
    /// the reference arithmetic; slower).
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

pub(super) fn models_fetch(home: &Path, model: &str) -> Result<()> {
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

pub(super) fn models_list(home: &Path) -> Result<()> {
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

pub(super) fn read_prompt(args: &GenerateArgs) -> Result<String> {
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

pub(super) fn generate(home: &Path, args: &GenerateArgs) -> Result<()> {
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
pub(super) fn generate_batch(
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

pub(super) fn models_register(
    home: &Path,
    file: &Path,
    promote: bool,
    url: Option<&str>,
) -> Result<()> {
    let url = database_url(home, url)?;
    let version = kefu_trainer::registry::import(home, file, None, None)?;
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

pub(super) fn models_prune(home: &Path, keep: usize, url: Option<&str>) -> Result<()> {
    let url = database_url(home, url)?;
    runtime()?.block_on(async {
        let database = kefu_db::Database::connect(&url).await?;
        let pruned = kefu_trainer::registry::prune(home, &database, keep).await;
        let jobs = kefu_trainer::registry::prune_job_folders(home, &database, keep).await;
        database.close().await;
        let pruned = pruned?;
        for job in jobs? {
            println!("removed the training outputs of job {job}");
        }
        if pruned.is_empty() {
            println!("nothing to remove: every unlabelled version is among the newest {keep}");
        }
        for version in pruned {
            println!("removed the files of version {version}");
        }
        anyhow::Ok(())
    })
}
