//! What every handler shares: the API's limits ([`ApiConfig`]) and [`AppState`] — the
//! database, the knowledge base's embedder and vector store, the serving generator (hot-swapped),
//! cached retrievers, rate limiters and request metrics.

use std::collections::HashMap;
use std::sync::Arc;

use kefu_db::Database;
use kefu_rag::Retriever;
use tokio::sync::RwLock;

use crate::generator::Generator;
use crate::http::error::ApiError;
use crate::http::limits::{LoginThrottle, RateLimiter};
use crate::knowledge::Knowledge;

/// Limits and defaults of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Knowledge base of conversations that name none.
    pub default_kb: String,
    pub max_body_bytes: usize,
    /// Longest customer message, in characters.
    pub max_message_chars: usize,
    /// Passages, prompt budgets, answer length and abstention.
    pub answers: crate::answering::AnswerSettings,
    /// Earlier messages of the conversation given to the model.
    pub history_messages: usize,
    /// Requests a minute from one IP address (0: no limit).
    pub rate_per_ip: u32,
    /// Customer requests a minute through one widget site (0: no limit).
    pub rate_per_site: u32,
    /// The data directory: uploaded documents are kept under `uploads/` for re-ingesting.
    pub data_dir: std::path::PathBuf,
    /// Caps on customers' ratings.
    pub feedback_limits: FeedbackLimits,
    /// Which feedback becomes training data (the inbox and the admin datasets show it).
    pub feedback_policy: kefu_trainer::dataset::Policy,
    /// Staff's corrections become knowledge-base documents at once (`--corrections-to-knowledge`).
    pub corrections_to_knowledge: bool,
    /// The address people reach this server at (`--public-url`); `https://…` makes the
    /// session cookie `Secure`.
    pub public_url: Option<String>,
    /// Proxies whose `X-Forwarded-For` names the client (`--trusted-proxies`).
    pub trusted_proxies: crate::http::proxy::TrustedProxies,
}

impl ApiConfig {
    /// Whether cookies must be `Secure` (the server is reached over HTTPS).
    pub fn secure_cookies(&self) -> bool {
        self.public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }
}

/// Caps on customers' ratings (0: no cap); more are answered 429 `feedback_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackLimits {
    /// Ratings one conversation may give in all.
    pub per_conversation: i64,
    /// Ratings from one client address in an hour.
    pub per_source_hour: i64,
}

impl Default for FeedbackLimits {
    fn default() -> Self {
        Self {
            per_conversation: 30,
            per_source_hour: 100,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            default_kb: "default".into(),
            max_body_bytes: 64 * 1024,
            max_message_chars: 4000,
            answers: crate::answering::AnswerSettings::default(),
            history_messages: 6,
            rate_per_ip: 600,
            rate_per_site: 3000,
            data_dir: std::path::PathBuf::from("."),
            feedback_limits: FeedbackLimits::default(),
            feedback_policy: kefu_trainer::dataset::Policy::default(),
            corrections_to_knowledge: true,
            public_url: None,
            trusted_proxies: Default::default(),
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub requests: RequestMetrics,
    pub database: Database,
    pub knowledge: Arc<Knowledge>,
    /// The generator serving now; hot-swapped when `production` moves.
    pub serving: Arc<crate::serving::Serving>,
    pub config: ApiConfig,
    pub(crate) retrievers: RwLock<HashMap<i64, Arc<Retriever>>>,
    pub(crate) ip_limits: RateLimiter<std::net::IpAddr>,
    pub(crate) site_limits: RateLimiter<i64>,
    /// The widget's polls of a conversation's messages, per conversation.
    pub(crate) poll_limits: RateLimiter<i64>,
    /// Password hashing (Argon2, ~19 MiB and tens of milliseconds each) runs at most
    /// [`PASSWORD_CHECKS`] at a time, so a burst of sign-ins neither eats memory nor takes the
    /// blocking pool that retrieval runs on.
    pub(crate) password_checks: tokio::sync::Semaphore,
    /// Failed sign-ins per account name and per client address.
    pub(crate) account_failures: LoginThrottle<String>,
    pub(crate) address_failures: LoginThrottle<std::net::IpAddr>,
    /// Conversations that changed, for the live event streams (`http::events`).
    pub(crate) changes: Changes,
    /// Answers being generated, by conversation, for the customer's stop button.
    pub(crate) answering: Arc<Answering>,
}

/// A conversation that changed: a message, a hand-off, a rating.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) conversation_id: i64,
    pub(crate) public_id: String,
}

/// Tells the open event streams which conversations changed; closing ends them all (the
/// server is shutting down and waits for every response to end).
pub(crate) struct Changes {
    sender: tokio::sync::broadcast::Sender<Change>,
    closing: tokio::sync::watch::Sender<bool>,
}

impl Changes {
    fn new() -> Self {
        Self {
            sender: tokio::sync::broadcast::channel(1024).0,
            closing: tokio::sync::watch::channel(false).0,
        }
    }

    /// Wakes the streams watching `conversation` (nobody listening is fine).
    pub(crate) fn changed(&self, conversation: &kefu_db::Conversation) {
        let _ = self.sender.send(Change {
            conversation_id: conversation.id,
            public_id: conversation.public_id.clone(),
        });
    }

    pub(crate) fn subscribe(
        &self,
    ) -> (
        tokio::sync::broadcast::Receiver<Change>,
        tokio::sync::watch::Receiver<bool>,
    ) {
        (self.sender.subscribe(), self.closing.subscribe())
    }

    /// Ends every event stream, now and from now on.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

/// A stop signal per answer being generated, by conversation.
#[derive(Default)]
pub(crate) struct Answering {
    running: std::sync::Mutex<HashMap<i64, Vec<Arc<tokio::sync::Notify>>>>,
}

impl Answering {
    /// Registers an answer for `conversation`; it is forgotten when the guard drops.
    pub(crate) fn start(self: &Arc<Self>, conversation: i64) -> AnswerGuard {
        let stop = Arc::new(tokio::sync::Notify::new());
        self.lock()
            .entry(conversation)
            .or_default()
            .push(stop.clone());
        AnswerGuard {
            answering: self.clone(),
            conversation,
            stop,
        }
    }

    /// Asks every answer of `conversation` to stop; false when none is being generated.
    pub(crate) fn stop(&self, conversation: i64) -> bool {
        let running = self.lock();
        let Some(stops) = running.get(&conversation) else {
            return false;
        };
        for stop in stops {
            // A permit is kept when the answer is not waiting right now.
            stop.notify_one();
        }
        !stops.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Vec<Arc<tokio::sync::Notify>>>> {
        // The map stays consistent even if a holder panicked (each change is one call).
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One answer's registration in [`Answering`].
pub(crate) struct AnswerGuard {
    answering: Arc<Answering>,
    conversation: i64,
    pub(crate) stop: Arc<tokio::sync::Notify>,
}

impl Drop for AnswerGuard {
    fn drop(&mut self) {
        let mut running = self.answering.lock();
        if let Some(stops) = running.get_mut(&self.conversation) {
            stops.retain(|s| !Arc::ptr_eq(s, &self.stop));
            if stops.is_empty() {
                running.remove(&self.conversation);
            }
        }
    }
}

/// Polls of one conversation's messages a minute (the widget polls every 2 s while open).
pub const POLLS_PER_MINUTE: u32 = 60;
/// Password hashes computed at once, at most.
pub const PASSWORD_CHECKS: usize = 2;
/// How long a sign-in waits for a password check before it is answered 503 `busy`.
pub const PASSWORD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Failed sign-ins in a row before an account is locked for a while (1 s, doubling).
pub const FREE_ACCOUNT_FAILURES: u32 = 5;
/// The same for one client address (it may try several names).
pub const FREE_ADDRESS_FAILURES: u32 = 20;

impl AppState {
    pub fn new(
        knowledge: Knowledge,
        serving: crate::serving::Serving,
        config: ApiConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            requests: RequestMetrics::default(),
            database: knowledge.database.clone(),
            knowledge: Arc::new(knowledge),
            serving: Arc::new(serving),
            ip_limits: RateLimiter::new(config.rate_per_ip),
            site_limits: RateLimiter::new(config.rate_per_site),
            poll_limits: RateLimiter::new(POLLS_PER_MINUTE),
            password_checks: tokio::sync::Semaphore::new(PASSWORD_CHECKS),
            account_failures: LoginThrottle::new(FREE_ACCOUNT_FAILURES),
            address_failures: LoginThrottle::new(FREE_ADDRESS_FAILURES),
            changes: Changes::new(),
            answering: Arc::default(),
            config,
            retrievers: RwLock::new(HashMap::new()),
        })
    }

    /// The generator a new request uses (and keeps until it ends, across a hot-swap).
    pub fn generator(&self) -> Arc<Generator> {
        self.serving.current()
    }

    /// One of the [`PASSWORD_CHECKS`] password-hashing slots; 503 `busy` when none frees
    /// up within [`PASSWORD_WAIT`].
    pub(crate) async fn password_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        tokio::time::timeout(PASSWORD_WAIT, self.password_checks.acquire())
            .await
            .map_err(|_| ApiError {
                retry_after: Some(5),
                ..ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "too many sign-ins at once; try again in a few seconds",
                )
            })?
            .map_err(ApiError::internal)
    }

    /// Runs `work` (password hashing) on the blocking pool in a password slot.
    pub(crate) async fn password_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let _slot = self.password_slot().await?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(ApiError::internal)
    }

    /// The knowledge base's retriever, loaded on first use.
    pub(crate) async fn retriever(
        &self,
        knowledge_base_id: i64,
    ) -> Result<Arc<Retriever>, ApiError> {
        if let Some(r) = self.retrievers.read().await.get(&knowledge_base_id) {
            return Ok(r.clone());
        }
        let retriever = Arc::new(
            kefu_trainer::knowledge::load_retriever(&self.database, knowledge_base_id)
                .await
                .map_err(ApiError::internal)?,
        );
        self.retrievers
            .write()
            .await
            .insert(knowledge_base_id, retriever.clone());
        Ok(retriever)
    }
}

/// Request counts by status class and total handling time, for `/metrics`.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    pub(crate) by_class: [std::sync::atomic::AtomicU64; 5],
    pub(crate) micros: std::sync::atomic::AtomicU64,
}
