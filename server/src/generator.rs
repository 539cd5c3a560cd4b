//! Model work off the async runtime: generation jobs go through a bounded queue to dedicated
//! worker threads (first come, first served); a full queue is refused at once (HTTP 503 with
//! Retry-After), and a job whose listener has gone away is cancelled at its next token.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::Instant;

use kefu_model::LoadedModel;
use kefu_model::generate::{FinishReason, GenerationParams};
use tokio::sync::mpsc::UnboundedSender;

/// What a running job reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A piece of the reply, as soon as it is complete.
    Token(String),
    Done(Summary),
    Failed(String),
}

/// The end of a generation.
#[derive(Debug, Clone)]
pub struct Summary {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    /// From the job's start (queue wait excluded) to its first piece of text.
    pub first_token_ms: u64,
    /// From the job's start to its end.
    pub total_ms: u64,
    /// Time spent waiting in the queue.
    pub queued_ms: u64,
}

struct Job {
    prompt: Vec<u32>,
    params: GenerationParams,
    events: UnboundedSender<Event>,
    queued_at: Instant,
}

/// Running totals for `/metrics`.
#[derive(Debug, Default)]
pub struct GeneratorMetrics {
    pub generations: AtomicU64,
    pub rejected: AtomicU64,
    pub failed: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub generation_ms: AtomicU64,
    pub first_token_ms: AtomicU64,
}

/// The queue is full: try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// The chat model, its version, and the workers that run it.
pub struct Generator {
    pub model: Arc<LoadedModel>,
    /// Content hash of the weights file.
    pub version: String,
    /// The name the model is served under.
    pub name: String,
    sender: SyncSender<Job>,
    waiting: Arc<AtomicUsize>,
    pub capacity: usize,
    pub metrics: Arc<GeneratorMetrics>,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish()
    }
}

impl Generator {
    /// Starts `workers` threads sharing `model`, behind a queue of `capacity` jobs.
    pub fn start(
        model: LoadedModel,
        name: String,
        version: String,
        workers: usize,
        capacity: usize,
    ) -> std::io::Result<Self> {
        let model = Arc::new(model);
        let (sender, receiver) = mpsc::sync_channel::<Job>(capacity.max(1));
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        let waiting = Arc::new(AtomicUsize::new(0));
        let metrics = Arc::new(GeneratorMetrics::default());
        for i in 0..workers.max(1) {
            let model = model.clone();
            let metrics = metrics.clone();
            let receiver = receiver.clone();
            let waiting = waiting.clone();
            std::thread::Builder::new()
                .name(format!("kefu-generate-{i}"))
                .spawn(move || {
                    loop {
                        let job = match receiver.lock() {
                            Ok(receiver) => match receiver.recv() {
                                Ok(job) => job,
                                Err(_) => return,
                            },
                            Err(_) => return,
                        };
                        waiting.fetch_sub(1, Ordering::SeqCst);
                        run(&model, job, &metrics);
                    }
                })?;
        }
        Ok(Self {
            model,
            version,
            name,
            sender,
            waiting,
            capacity: capacity.max(1),
            metrics,
        })
    }

    /// Jobs waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Queues a generation; its events arrive on `events`.
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        params: GenerationParams,
        events: UnboundedSender<Event>,
    ) -> Result<(), QueueFull> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let job = Job {
            prompt,
            params,
            events,
            queued_at: Instant::now(),
        };
        match self.sender.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                Err(QueueFull)
            }
        }
    }
}

fn run(model: &LoadedModel, job: Job, metrics: &GeneratorMetrics) {
    let started = Instant::now();
    let queued_ms = (started - job.queued_at).as_millis() as u64;
    if job.events.is_closed() {
        return; // the client left while the job waited
    }
    let mut first_token_ms = None;
    let result = model.generate(&job.prompt, &job.params, |piece| {
        first_token_ms.get_or_insert_with(|| started.elapsed().as_millis() as u64);
        job.events.send(Event::Token(piece.to_string())).is_ok()
    });
    let event = match result {
        Ok(generation) => {
            let total_ms = started.elapsed().as_millis() as u64;
            metrics.generations.fetch_add(1, Ordering::Relaxed);
            metrics
                .generated_tokens
                .fetch_add(generation.completion_tokens() as u64, Ordering::Relaxed);
            metrics.generation_ms.fetch_add(total_ms, Ordering::Relaxed);
            metrics
                .first_token_ms
                .fetch_add(first_token_ms.unwrap_or(total_ms), Ordering::Relaxed);
            Event::Done(Summary {
                prompt_tokens: generation.prompt_tokens,
                completion_tokens: generation.completion_tokens(),
                finish_reason: generation.finish_reason,
                text: generation.text,
                first_token_ms: first_token_ms
                    .unwrap_or_else(|| started.elapsed().as_millis() as u64),
                total_ms,
                queued_ms,
            })
        }
        Err(e) => {
            metrics.failed.fetch_add(1, Ordering::Relaxed);
            Event::Failed(e.to_string())
        }
    };
    let _ = job.events.send(event);
}
