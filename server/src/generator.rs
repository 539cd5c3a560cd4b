//! Model work off the async runtime: generation jobs go through a bounded queue to dedicated
//! worker threads (first come, first served); a full queue is refused at once (HTTP 503 with
//! Retry-After), and a job whose listener has gone away is cancelled at its next token.
//!
//! Each worker decodes up to `max_batch` conversations together. A new job is admitted between
//! steps; its prompt runs through the model a chunk (`prefill_chunk` tokens) per step, after
//! whatever prefix the version's prefix cache already holds, so a long prompt delays the other
//! conversations' next token by one chunk at most. Every sequence past its prompt gets its next
//! token from one forward pass of the whole batch, so the weights are read once per step for all
//! of them and every conversation advances at the same pace. A finished generation leaves its
//! prompt and reply in the prefix cache for the conversation's next turn.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Instant;

use kefu_model::generate::{FinishReason, GenerationParams, Sequence};
use kefu_model::{LoadedModel, PrefixCache};
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
    /// Prompt tokens taken from the prefix cache (the model ran only the rest).
    pub cached_tokens: usize,
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

impl Job {
    /// Positions the job may hold in its cache: the prompt and the longest reply.
    fn tokens(&self) -> usize {
        self.prompt.len() + self.params.max_tokens
    }
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
    /// Prompt and reply tokens a worker's sequences may hold together (a job that would pass
    /// it waits, unless the worker is idle).
    pub batch_tokens: usize,
    /// Prompt tokens run through the model per step while other conversations are decoding.
    pub prefill_chunk: usize,
    /// Bytes of key/value state each version's prefix cache keeps (0: none).
    pub prefix_cache_bytes: usize,
    pub metrics: Arc<GeneratorMetrics>,
}

impl GeneratorSettings {
    /// One worker, one sequence at a time, whole prompts, no prefix cache: for commands that
    /// answer questions one by one.
    pub fn single(name: &str, device: candle_core::Device) -> Self {
        Self {
            name: name.to_string(),
            device,
            workers: 1,
            max_batch: 1,
            capacity: 1,
            batch_tokens: usize::MAX,
            prefill_chunk: usize::MAX,
            prefix_cache_bytes: 0,
            metrics: Default::default(),
        }
    }
}

/// Running totals for `/metrics`.
#[derive(Debug, Default)]
pub struct GeneratorMetrics {
    pub generations: AtomicU64,
    pub rejected: AtomicU64,
    pub failed: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Prompt tokens run through the model, and those the prefix cache supplied instead.
    pub prefilled_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
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
    /// This version's prefix cache: a hot-swap starts the next version with an empty one.
    pub prefix: Arc<PrefixCache>,
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
            prefill_chunk,
            prefix_cache_bytes,
            batch_tokens,
            ..
        } = *settings;
        let prefix = Arc::new(PrefixCache::new(prefix_cache_bytes));
        let schedule = Schedule {
            max_batch: max_batch.max(1),
            batch_tokens,
            prefill_chunk: prefill_chunk.max(1),
            prefix: (prefix_cache_bytes > 0).then(|| prefix.clone()),
        };
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
            let schedule = schedule.clone();
            std::thread::Builder::new()
                .name(format!("kefu-generate-{i}"))
                .spawn(move || work(&model, &receiver, &waiting, &metrics, &schedule))?;
        }
        Ok(Self {
            model,
            version,
            name,
            sender,
            waiting,
            capacity: capacity.max(1),
            metrics,
            prefix,
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

/// How a worker schedules its sequences.
#[derive(Clone)]
struct Schedule {
    max_batch: usize,
    batch_tokens: usize,
    prefill_chunk: usize,
    prefix: Option<Arc<PrefixCache>>,
}

/// A job being prefilled or decoded.
struct Active<'m> {
    sequence: Sequence<'m>,
    job: Job,
    started: Instant,
    queued_ms: u64,
    first_token_ms: Option<u64>,
    /// [`Job::tokens`], counted against the worker's `batch_tokens`.
    reserved: usize,
}

/// One worker: admits jobs between steps, runs one prompt chunk per step, and decodes every
/// sequence past its prompt together.
fn work(
    model: &LoadedModel,
    receiver: &Mutex<Receiver<Job>>,
    waiting: &AtomicUsize,
    metrics: &GeneratorMetrics,
    schedule: &Schedule,
) {
    let mut active: Vec<Active<'_>> = Vec::new();
    let mut held: Option<Job> = None;
    loop {
        // Wait for a job when idle; otherwise take what is queued while there is room (setting
        // a job up runs no model: its prompt is prefilled a chunk per step below).
        while active.len() < schedule.max_batch {
            let job = if let Some(job) = held.take() {
                job
            } else {
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
            // Admission by tokens: the job waits (first in line) while its prompt and reply
            // would take the worker's sequences past `batch_tokens`; alone, it always runs.
            let reserved: usize = active.iter().map(|a| a.reserved).sum();
            if !active.is_empty() && reserved + job.tokens() > schedule.batch_tokens {
                held = Some(job);
                break;
            }
            waiting.fetch_sub(1, Ordering::SeqCst);
            if let Some(admitted) = admit(model, job, metrics, schedule) {
                active.push(admitted);
            }
        }
        // A client that left is cancelled, whether its prompt has run or not.
        active.retain(|a| !a.job.events.is_closed());
        // One chunk of the oldest prompt still being prefilled.
        if let Some(i) = active.iter().position(|a| !a.sequence.is_prefilled()) {
            let left = active[i].sequence.prompt_tokens_left();
            match active[i].sequence.prefill(schedule.prefill_chunk) {
                Ok(_) => {
                    let ran = left - active[i].sequence.prompt_tokens_left();
                    metrics
                        .prefilled_tokens
                        .fetch_add(ran as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    let job = active.remove(i);
                    fail(&job.job, &e.to_string(), metrics);
                }
            }
        }
        // Every prefilled sequence samples its next token; those still running share one
        // forward pass.
        let mut running = Vec::with_capacity(active.len());
        let mut waiting_prompts = Vec::new();
        for mut job in active.drain(..) {
            if !job.sequence.is_prefilled() {
                waiting_prompts.push(job);
                continue;
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
                Ok(false) => finish(job, metrics, schedule.prefix.as_deref()),
                Err(e) => fail(&job.job, &e.to_string(), metrics),
            }
        }
        if !running.is_empty() {
            let mut sequences: Vec<&mut Sequence<'_>> =
                running.iter_mut().map(|a| &mut a.sequence).collect();
            if let Err(e) = model.step_batch(&mut sequences) {
                for job in running.drain(..) {
                    fail(&job.job, &e.to_string(), metrics);
                }
            }
        }
        // The running ones first: their order is the batch's, and the prompts keep theirs.
        active = running;
        active.append(&mut waiting_prompts);
    }
}

/// Sets a new job up (its prompt is checked and the prefix cache consulted; nothing runs
/// yet); `None` when the client already left or the prompt is refused (the client is told).
fn admit<'m>(
    model: &'m LoadedModel,
    job: Job,
    metrics: &GeneratorMetrics,
    schedule: &Schedule,
) -> Option<Active<'m>> {
    let started = Instant::now();
    let queued_ms = (started - job.queued_at).as_millis() as u64;
    if job.events.is_closed() {
        return None; // the client left while the job waited
    }
    match model.begin_sequence(&job.prompt, &job.params, schedule.prefix.as_deref()) {
        Ok(sequence) => {
            metrics
                .cached_tokens
                .fetch_add(sequence.reused_tokens() as u64, Ordering::Relaxed);
            Some(Active {
                sequence,
                reserved: job.tokens(),
                job,
                started,
                queued_ms,
                first_token_ms: None,
            })
        }
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

fn finish(active: Active<'_>, metrics: &GeneratorMetrics, prefix: Option<&PrefixCache>) {
    if let Some(prefix) = prefix
        && let Err(e) = active.sequence.remember(prefix)
    {
        tracing::warn!("the prefix cache could not keep a conversation: {e}");
    }
    let Active {
        sequence,
        job,
        started,
        queued_ms,
        mut first_token_ms,
        ..
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
        cached_tokens: generation.cached_tokens,
        completion_tokens: generation.completion_tokens(),
        finish_reason: generation.finish_reason,
        text: generation.text,
        first_token_ms,
        total_ms,
        queued_ms,
    }));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kefu_model::testing::{TinySpec, write_tiny_gguf};
    use kefu_model::{Architecture, ChatMessage, LoadOptions, Role};
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    use super::*;

    fn tiny() -> (tempfile::TempDir, LoadedModel) {
        let dir = tempfile::tempdir().unwrap();
        let path = write_tiny_gguf(dir.path(), &TinySpec::new(Architecture::Qwen2));
        let model = LoadedModel::load(&path, &LoadOptions::default()).unwrap();
        (dir, model)
    }

    fn settings(max_batch: usize, batch_tokens: usize, prefill_chunk: usize) -> GeneratorSettings {
        GeneratorSettings {
            max_batch,
            batch_tokens,
            prefill_chunk,
            prefix_cache_bytes: 64 << 20,
            capacity: 8,
            ..GeneratorSettings::single("tiny", candle_core::Device::Cpu)
        }
    }

    fn params(max_tokens: usize) -> GenerationParams {
        GenerationParams {
            max_tokens,
            ignore_eos: true,
            ..GenerationParams::default()
        }
    }

    /// Waits for a job's end: its summary, or the failure's message.
    fn outcome(events: &mut UnboundedReceiver<Event>) -> Result<Summary, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match events.try_recv() {
                Ok(Event::Done(summary)) => return Ok(summary),
                Ok(Event::Failed(message)) => return Err(message),
                Ok(Event::Token(_)) => {}
                Err(_) => {
                    assert!(Instant::now() < deadline, "no end");
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    fn prompt(model: &LoadedModel, text: &str) -> Vec<u32> {
        model
            .chat_prompt(&[ChatMessage::new(Role::User, text)])
            .unwrap()
    }

    /// Chunked prefill, batching and the prefix cache give the text one sequence alone gives.
    #[test]
    fn scheduled_answers_equal_answers_alone() {
        let (_dir, model) = tiny();
        let prompts: Vec<Vec<u32>> = ["hello", "where is my parcel please", "a refund?"]
            .iter()
            .map(|t| prompt(&model, t))
            .collect();
        let alone: Vec<String> = prompts
            .iter()
            .map(|p| model.generate(p, &params(10), |_| true).unwrap().text)
            .collect();
        let generator = Generator::start(model, "v1".into(), &settings(4, usize::MAX, 3)).unwrap();
        for round in 0..2 {
            let mut receivers: Vec<_> = prompts
                .iter()
                .map(|p| {
                    let (events, receiver) = unbounded_channel();
                    generator.submit(p.clone(), params(10), events).unwrap();
                    receiver
                })
                .collect();
            for (receiver, want) in receivers.iter_mut().zip(&alone) {
                let summary = outcome(receiver).unwrap();
                assert_eq!(&summary.text, want, "round {round}");
                if round == 1 {
                    // The same prompts again: all but the last token from the cache.
                    assert_eq!(summary.cached_tokens, summary.prompt_tokens - 1);
                }
            }
        }
        let metrics = &generator.metrics;
        assert!(metrics.cached_tokens.load(Ordering::Relaxed) > 0);
        let prefilled = metrics.prefilled_tokens.load(Ordering::Relaxed) as usize;
        let all: usize = prompts.iter().map(Vec::len).sum();
        // Round one runs every prompt token; round two one token per prompt.
        assert_eq!(prefilled, all + prompts.len());
    }

    /// A client that leaves while its prompt is being prefilled is dropped; the rest go on.
    #[test]
    fn a_job_cancelled_mid_prefill_leaves_the_others_running() {
        let (_dir, model) = tiny();
        let long = prompt(&model, &"parcel refund address delivery ".repeat(6));
        let short = prompt(&model, "hello");
        let generator = Generator::start(model, "v1".into(), &settings(4, usize::MAX, 1)).unwrap();
        let (events, leaving) = unbounded_channel();
        generator.submit(long, params(8), events).unwrap();
        let (events, mut staying) = unbounded_channel();
        generator.submit(short, params(8), events).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        drop(leaving);
        let summary = outcome(&mut staying).unwrap();
        assert_eq!(summary.completion_tokens, 8);
        assert_eq!(generator.metrics.failed.load(Ordering::Relaxed), 0);
    }

    /// A job that would take the worker past its token budget waits for room, then runs; a job
    /// larger than the budget runs alone.
    #[test]
    fn the_token_budget_makes_a_job_wait_never_fail() {
        let (_dir, model) = tiny();
        let first = prompt(&model, "hello");
        let second = prompt(&model, "hello again");
        let budget = first.len() + 40 + second.len() + 40 - 1;
        let generator = Generator::start(model, "v1".into(), &settings(4, budget, 64)).unwrap();
        let (events, mut one) = unbounded_channel();
        generator.submit(first, params(40), events).unwrap();
        let (events, mut two) = unbounded_channel();
        generator.submit(second, params(40), events).unwrap();
        // The worker sends the first job's end before it admits the second, so by the time the
        // second's first piece is here, the first's end is in its channel.
        let ended = |one: &mut UnboundedReceiver<Event>| {
            while let Ok(event) = one.try_recv() {
                match event {
                    Event::Done(s) => return Some(s),
                    Event::Failed(e) => panic!("{e}"),
                    Event::Token(_) => {}
                }
            }
            None
        };
        let mut one_done = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        let second_done = loop {
            assert!(Instant::now() < deadline, "no end");
            if one_done.is_none() {
                one_done = ended(&mut one);
            }
            match two.try_recv() {
                Ok(Event::Token(_)) => {
                    if one_done.is_none() {
                        one_done = ended(&mut one);
                    }
                    assert!(
                        one_done.is_some(),
                        "the second streamed before the first ended"
                    );
                }
                Ok(Event::Done(s)) => break s,
                Ok(Event::Failed(e)) => panic!("{e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        assert_eq!(one_done.unwrap().completion_tokens, 40);
        assert_eq!(second_done.completion_tokens, 40);
        let (events, mut big) = unbounded_channel();
        let huge = prompt(&generator.model, &"word ".repeat(40));
        generator.submit(huge, params(budget), events).unwrap();
        assert!(outcome(&mut big).is_ok());
    }
}
