//! Model work off the async runtime: generation jobs go through a bounded queue to dedicated
//! worker threads (first come, first served); a full queue is refused at once (HTTP 503 with
//! Retry-After), and a job whose listener has gone away is cancelled at its next token.
//!
//! Each worker decodes up to `max_batch` conversations together: a new job is admitted
//! between steps (its prompt runs through the model alone), then every running sequence gets
//! its next token from one forward pass of the whole batch, so the weights are read once per
//! step for all of them and every conversation advances at the same pace.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Instant;

use kefu_model::LoadedModel;
use kefu_model::generate::{FinishReason, GenerationParams, Sequence};
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

/// How every generator of a server starts: the model's name, where versions load, worker
/// threads, sequences per batch, queue length, and the counters all of them add to (so
/// `/metrics` runs on across hot-swaps).
#[derive(Debug, Clone)]
pub struct GeneratorSettings {
    pub name: String,
    /// Where every version is loaded.
    pub device: candle_core::Device,
    pub workers: usize,
    pub max_batch: usize,
    pub capacity: usize,
    pub metrics: Arc<GeneratorMetrics>,
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
    /// Starts `workers` threads sharing `model`, each decoding up to `max_batch` sequences
    /// together, behind a queue of `capacity` jobs.
    pub fn start(
        model: LoadedModel,
        version: String,
        settings: &GeneratorSettings,
    ) -> std::io::Result<Self> {
        let GeneratorSettings {
            workers,
            max_batch,
            capacity,
            ..
        } = *settings;
        let name = settings.name.clone();
        let model = Arc::new(model);
        let (sender, receiver) = mpsc::sync_channel::<Job>(capacity.max(1));
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        let waiting = Arc::new(AtomicUsize::new(0));
        let metrics = settings.metrics.clone();
        for i in 0..workers.max(1) {
            let model = model.clone();
            let metrics = metrics.clone();
            let receiver = receiver.clone();
            let waiting = waiting.clone();
            std::thread::Builder::new()
                .name(format!("kefu-generate-{i}"))
                .spawn(move || work(&model, &receiver, &waiting, &metrics, max_batch.max(1)))?;
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

/// A job being decoded.
struct Active<'m> {
    sequence: Sequence<'m>,
    job: Job,
    started: Instant,
    queued_ms: u64,
    first_token_ms: Option<u64>,
}

/// One worker: admits jobs between steps and decodes all of its sequences together.
fn work(
    model: &LoadedModel,
    receiver: &Mutex<Receiver<Job>>,
    waiting: &AtomicUsize,
    metrics: &GeneratorMetrics,
    max_batch: usize,
) {
    let mut active: Vec<Active<'_>> = Vec::new();
    loop {
        // Wait for a job when idle; otherwise take one queued job per step (its prompt runs
        // alone), so the running conversations keep streaming while newcomers are admitted.
        let admit_now = if active.is_empty() {
            1
        } else {
            usize::from(active.len() < max_batch)
        };
        for _ in 0..admit_now {
            let job = {
                let Ok(receiver) = receiver.lock() else {
                    return;
                };
                if active.is_empty() {
                    match receiver.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                } else {
                    match receiver.try_recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                }
            };
            waiting.fetch_sub(1, Ordering::SeqCst);
            if let Some(admitted) = admit(model, job, metrics) {
                active.push(admitted);
            }
        }
        // Every sequence samples its next token; those still running share one forward pass.
        let mut running = Vec::with_capacity(active.len());
        for mut job in active.drain(..) {
            if job.job.events.is_closed() {
                continue; // the client left: cancelled
            }
            let Active {
                sequence,
                job: Job { events, .. },
                started,
                first_token_ms,
                ..
            } = &mut job;
            let advanced = sequence.advance(|piece| {
                first_token_ms.get_or_insert_with(|| started.elapsed().as_millis() as u64);
                events.send(Event::Token(piece.to_string())).is_ok()
            });
            match advanced {
                Ok(true) => running.push(job),
                Ok(false) => finish(job, metrics),
                Err(e) => fail(&job.job, &e.to_string(), metrics),
            }
        }
        active = running;
        if active.is_empty() {
            continue;
        }
        let mut sequences: Vec<&mut Sequence<'_>> =
            active.iter_mut().map(|a| &mut a.sequence).collect();
        if let Err(e) = model.step_batch(&mut sequences) {
            for job in active.drain(..) {
                fail(&job.job, &e.to_string(), metrics);
            }
        }
    }
}

/// Runs a new job's prompt through the model; `None` when the client already left or the
/// prompt is refused (the client is told).
fn admit<'m>(model: &'m LoadedModel, job: Job, metrics: &GeneratorMetrics) -> Option<Active<'m>> {
    let started = Instant::now();
    let queued_ms = (started - job.queued_at).as_millis() as u64;
    if job.events.is_closed() {
        return None; // the client left while the job waited
    }
    match model.start_sequence(&job.prompt, &job.params) {
        Ok(sequence) => Some(Active {
            sequence,
            job,
            started,
            queued_ms,
            first_token_ms: None,
        }),
        Err(e) => {
            fail(&job, &e.to_string(), metrics);
            None
        }
    }
}

fn fail(job: &Job, error: &str, metrics: &GeneratorMetrics) {
    metrics.failed.fetch_add(1, Ordering::Relaxed);
    let _ = job.events.send(Event::Failed(error.to_string()));
}

fn finish(active: Active<'_>, metrics: &GeneratorMetrics) {
    let Active {
        sequence,
        job,
        started,
        queued_ms,
        mut first_token_ms,
    } = active;
    let generation = sequence.finish(|piece| {
        first_token_ms.get_or_insert_with(|| started.elapsed().as_millis() as u64);
        job.events.send(Event::Token(piece.to_string())).is_ok()
    });
    let total_ms = started.elapsed().as_millis() as u64;
    let first_token_ms = first_token_ms.unwrap_or(total_ms);
    metrics.generations.fetch_add(1, Ordering::Relaxed);
    metrics
        .generated_tokens
        .fetch_add(generation.completion_tokens() as u64, Ordering::Relaxed);
    metrics.generation_ms.fetch_add(total_ms, Ordering::Relaxed);
    metrics
        .first_token_ms
        .fetch_add(first_token_ms, Ordering::Relaxed);
    let _ = job.events.send(Event::Done(Summary {
        prompt_tokens: generation.prompt_tokens,
        completion_tokens: generation.completion_tokens(),
        finish_reason: generation.finish_reason,
        text: generation.text,
        first_token_ms,
        total_ms,
        queued_ms,
    }));
}
