//! `kefu serve`: the HTTP API, the hot-swap follower and the embedded training worker, until
//! SIGTERM or Ctrl-C.

use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::Args;
use kefu_model::{LoadOptions, LoadedModel};

use super::common::*;
use crate::models::catalog::DEFAULT_MODEL;
use crate::models::fetch::{self};
use crate::models::resolve_model;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, env = "KEFU_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed at start).
    #[arg(long, env = "KEFU_PORT", default_value_t = 8080)]
    pub port: u16,
    #[command(flatten)]
    pub knowledge: KnowledgeArgs,
    /// Chat model: a name (installed or known, fetched on first start) or a path. Given, it is
    /// served and becomes the registry's `production` version (unless production was trained
    /// from it); without it, the registry's `production` version is served (the default model
    /// on a fresh data directory).
    #[arg(long, env = "KEFU_MODEL")]
    pub model: Option<String>,
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
    /// Prompt and reply tokens (the longest reply counted) the conversations a worker decodes
    /// together may hold; a question that would pass it waits its turn (bounds memory).
    #[arg(long, env = "KEFU_BATCH_TOKENS", default_value_t = 32_768)]
    pub batch_tokens: usize,
    /// Prompt tokens run through the model per step while other conversations are decoding:
    /// smaller keeps their tokens flowing while a new question starts, larger starts it sooner.
    #[arg(long, env = "KEFU_PREFILL_CHUNK", default_value_t = 256)]
    pub prefill_chunk: usize,
    /// Memory for the prefix cache (MiB; 0: off): the model's state after recent prompts and
    /// replies, so a prompt that starts the same way (the conversation's next turn, the same
    /// question with the same passages) runs only its new tokens.
    #[arg(long, env = "KEFU_PREFIX_CACHE_MB", default_value_t = 512)]
    pub prefix_cache_mb: usize,
    /// Generations that may wait for a worker; more are answered 503 with Retry-After.
    #[arg(long, env = "KEFU_QUEUE", default_value_t = 16)]
    pub queue: usize,
    #[command(flatten)]
    pub answers: AnswerArgs,
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
    /// Which feedback becomes training data: `review` (a customer's thumbs once the inbox
    /// accepts them), `pairs-only` (customers' thumbs also make preference pairs) or `all`.
    /// The embedded worker gets the same; set `KEFU_FEEDBACK_POLICY` for workers elsewhere.
    #[arg(long, env = "KEFU_FEEDBACK_POLICY", value_enum, default_value_t = FeedbackPolicy::Review)]
    pub feedback_policy: FeedbackPolicy,
    /// An agent's corrected answer becomes a document of the knowledge base at once (the
    /// question as its title), so the next customer asking is answered from it before any
    /// training; rejecting the answer in the feedback inbox removes it. `false` leaves
    /// corrections to training alone.
    #[arg(long, env = "KEFU_CORRECTIONS_TO_KNOWLEDGE", default_value_t = true,
          action = clap::ArgAction::Set, value_name = "true|false")]
    pub corrections_to_knowledge: bool,
    /// Ratings one conversation may give (0: no cap); more are answered 429.
    #[arg(long, env = "KEFU_FEEDBACK_PER_CONVERSATION", default_value_t = 30)]
    pub feedback_per_conversation: i64,
    /// Customer ratings from one client address in an hour (0: no cap); more are answered 429.
    #[arg(long, env = "KEFU_FEEDBACK_PER_ADDRESS_HOUR", default_value_t = 100)]
    pub feedback_per_address_hour: i64,
    /// The address people reach this server at, such as `https://help.example.com` behind a
    /// TLS-terminating proxy; an `https://` address makes the session cookie `Secure`.
    #[arg(long, env = "KEFU_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,
    /// Reverse proxies whose `X-Forwarded-For` names the client (addresses or networks, comma
    /// separated, such as `127.0.0.1,10.0.0.0/8`); rate limits and feedback caps then count the
    /// client's address. Empty: the connection's address is the client's.
    #[arg(long, env = "KEFU_TRUSTED_PROXIES", default_value = "",
          value_parser = crate::http::proxy::TrustedProxies::parse)]
    pub trusted_proxies: crate::http::proxy::TrustedProxies,
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

pub(super) fn serve(home: &Path, threads: usize, args: &ServeArgs) -> Result<()> {
    if args.workers == 0
        || args.batch == 0
        || args.queue == 0
        || args.prefill_chunk == 0
        || args.batch_tokens == 0
        || args.max_body_bytes < 1024
    {
        bail!(
            "--workers, --batch, --queue, --batch-tokens and --prefill-chunk must be at least 1 \
             and --max-body-bytes at least 1024"
        );
    }
    let answers = args.answers.settings()?;
    let model_name = args.model.as_deref().unwrap_or(DEFAULT_MODEL);
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
        let path = resolve_model(home, model_name)?;
        let device = kefu_model::parse_device(&args.device)?;
        let options = LoadOptions::default().on(&device);
        let model = tokio::task::spawn_blocking(move || {
            LoadedModel::load(&path, &options)
                .with_context(|| format!("cannot load the model at {}", path.display()))
        })
        .await??;
        let context = model.config().max_position_embeddings;
        if args.prefill_chunk > context {
            bail!(
                "--prefill-chunk {} is larger than the model's context of {context} tokens",
                args.prefill_chunk
            );
        }
        let weights = model.weights_path.clone();
        let version = tokio::task::spawn_blocking(move || fetch::sha256_file(&weights)).await??;
        let settings = crate::generator::GeneratorSettings {
            name: model_name.to_string(),
            device,
            workers: args.workers,
            max_batch: args.batch,
            capacity: args.queue,
            batch_tokens: args.batch_tokens,
            prefill_chunk: args.prefill_chunk,
            prefix_cache_bytes: args.prefix_cache_mb.saturating_mul(1 << 20),
            metrics: Default::default(),
        };
        let generator = crate::generator::Generator::start(model, version, &settings)?;
        crate::serving::register_serving(&knowledge.database, &generator).await?;
        if args.model.is_some() {
            crate::serving::pin_production(&knowledge.database, &generator).await?;
        }
        let config = crate::http::ApiConfig {
            default_kb: args.knowledge.kb.clone(),
            max_body_bytes: args.max_body_bytes,
            answers,
            rate_per_ip: args.rate_per_ip,
            rate_per_site: args.rate_per_site,
            data_dir: home.to_path_buf(),
            feedback_limits: crate::http::state::FeedbackLimits {
                per_conversation: args.feedback_per_conversation.max(0),
                per_source_hour: args.feedback_per_address_hour.max(0),
            },
            feedback_policy: args.feedback_policy.into(),
            corrections_to_knowledge: args.corrections_to_knowledge,
            public_url: args.public_url.clone(),
            trusted_proxies: args.trusted_proxies.clone(),
            ..crate::http::ApiConfig::default()
        };
        let serving = crate::serving::Serving::new(generator, settings);
        let state = crate::http::state::AppState::new(knowledge, serving, config);
        // Serve what `production` names (another replica or an earlier run may have moved it).
        if let Err(e) = crate::serving::follow_once(&state.serving, &state.database, home).await {
            tracing::warn!("keeps serving {}: {e:#}", state.generator().version);
        }
        tokio::spawn(crate::serving::follow(
            state.serving.clone(),
            state.database.clone(),
            home.to_path_buf(),
            std::time::Duration::from_millis(args.follow_ms.max(50)),
        ));
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let stop_worker = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let supervisor = if args.trainer == TrainerMode::Embedded {
            Some(crate::supervise::supervise(
                home.to_path_buf(),
                database_url(home, args.knowledge.database_url.as_deref())?,
                args.feedback_policy.into(),
                stop_worker.clone(),
            ))
        } else {
            None
        };
        println!("kefu: listening on http://{}", listener.local_addr()?);
        // Live event streams never end by themselves: shutting down ends them, so the
        // requests in flight can finish.
        let shutdown = {
            let state = state.clone();
            async move {
                shutdown_signal().await;
                state.changes.close();
            }
        };
        crate::http::listen::serve(listener, crate::http::router(state), shutdown).await?;
        stop_worker.store(true, std::sync::atomic::Ordering::SeqCst);
        // The worker ends before the server does.
        if let Some(supervisor) = supervisor {
            let _ = tokio::task::spawn_blocking(move || supervisor.join()).await;
        }
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// `--public-url`: an absolute http(s) address without a query, kept without a trailing `/`.
fn parse_public_url(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or("the public URL starts with https:// or http://")?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || rest.contains(['?', '#', ' ', '\\']) || text.chars().any(char::is_control)
    {
        return Err(format!(
            "`{text}` is not an address like https://help.example.com"
        ));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// Ctrl-C or SIGTERM: stop accepting, finish the requests in flight.
pub(super) async fn shutdown_signal() {
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
