//! The registry's serving side: the generator new requests take, and hot-swap. `follow`
//! polls the `production` label (and wakes at once after a label moved through this server),
//! loads the labelled file beside the serving model, checks its sha256 against the version id
//! (a corrupt or half-written file is refused and remembered; production keeps serving), warms
//! it up with one generation and switches under a write lock held for one pointer swap.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kefu_db::{Database, ModelVersion, PRODUCTION};
use kefu_model::generate::GenerationParams;
use kefu_model::{LoadOptions, LoadedModel};

use crate::generator::{Event, Generator, GeneratorSettings};

/// The generator now serving, and the bookkeeping of swaps.
pub struct Serving {
    current: RwLock<Arc<Generator>>,
    settings: GeneratorSettings,
    /// Wakes the follower at once (after an admin moved a label).
    pub wake: tokio::sync::Notify,
    /// Versions that could not be loaded: the reason, and the file as it was then (its size
    /// and modification time), so a file that changes since is tried again.
    refused: Mutex<HashMap<String, (String, Option<FileStamp>)>>,
    pub swaps: AtomicU64,
    /// How long the last switch held the lock, in microseconds.
    pub last_switch_micros: AtomicU64,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("version", &self.current().version)
            .finish()
    }
}

impl Serving {
    pub fn new(generator: Generator, settings: GeneratorSettings) -> Self {
        Self {
            current: RwLock::new(Arc::new(generator)),
            settings,
            wake: tokio::sync::Notify::new(),
            refused: Mutex::new(HashMap::new()),
            swaps: AtomicU64::new(0),
            last_switch_micros: AtomicU64::new(0),
        }
    }

    /// The generator new requests use.
    pub fn current(&self) -> Arc<Generator> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Why `version` was refused, if it was.
    pub fn refused(&self, version: &str) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(version)
            .map(|(reason, _)| reason.clone())
    }

    /// Whether `version` was refused and its file has not changed since.
    fn still_refused(&self, version: &str, file: &Path) -> bool {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(version)
            .is_some_and(|(_, stamp)| *stamp == FileStamp::of(file))
    }

    fn switch(&self, generator: Generator) {
        let started = Instant::now();
        let old = {
            let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *current, Arc::new(generator))
        };
        self.last_switch_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.swaps.fetch_add(1, Ordering::Relaxed);
        // The old generator's workers end when the last request holding it lets go.
        drop(old);
    }
}

/// Records the model `kefu serve` started with as a version and, when nothing is labelled
/// `production` yet, labels it so.
pub async fn register_serving(database: &Database, generator: &Generator) -> Result<()> {
    let path = generator.model.weights_path.to_string_lossy().into_owned();
    database
        .register_version(&ModelVersion {
            id: generator.version.clone(),
            path,
            parent_id: None,
            job_id: None,
            report: "{}".into(),
            created_ms: kefu_db::now_ms(),
        })
        .await?;
    if database.labelled(PRODUCTION).await?.is_none() {
        database.promote(&generator.version).await?;
    }
    Ok(())
}

/// Whether `version` is `ancestor` or was trained from it (through any number of jobs).
async fn descends_from(
    database: &Database,
    version: &ModelVersion,
    ancestor: &str,
) -> Result<bool> {
    let mut current = Some(version.clone());
    let mut seen = std::collections::HashSet::new();
    while let Some(v) = current {
        if v.id == ancestor {
            return Ok(true);
        }
        if !seen.insert(v.id.clone()) {
            break;
        }
        current = match v.parent_id {
            Some(parent) => database.model_version(&parent).await?,
            None => None,
        };
    }
    Ok(false)
}

/// `kefu serve --model X`: X becomes `production` unless production already is X or was
/// trained from it (a restart with the same flag keeps what training promoted). The label's
/// history keeps the version it replaced, so a rollback returns to it.
pub async fn pin_production(database: &Database, generator: &Generator) -> Result<()> {
    let Some(production) = database.labelled(PRODUCTION).await? else {
        return Ok(());
    };
    if descends_from(database, &production, &generator.version).await? {
        if production.id != generator.version {
            tracing::info!(
                "production is version {}, trained from the --model version {}: serving it",
                production.id,
                generator.version
            );
        }
        return Ok(());
    }
    database.promote(&generator.version).await?;
    tracing::warn!(
        "--model: `production` moved from version {} to {} (the model asked for); a rollback \
         on the admin models page returns to {}",
        production.id,
        generator.version,
        production.id
    );
    Ok(())
}

/// Loads `version` (checking that the file still has the hash it is named by) and starts a
/// generator on it, warmed up by one short generation.
async fn prepare(
    home: &Path,
    version: &ModelVersion,
    settings: &GeneratorSettings,
) -> Result<Generator> {
    let path = kefu_trainer::registry::version_path(home, version);
    let id = version.id.clone();
    let device = settings.device.clone();
    let started = Instant::now();
    let (model, hashed) =
        tokio::task::spawn_blocking(move || -> Result<(LoadedModel, Duration)> {
            if !path.exists() {
                bail!("{} is missing", path.display());
            }
            let actual = kefu_trainer::registry::version_of(&path)?;
            let hashed = started.elapsed();
            if actual != id {
                bail!(
                    "{} does not hold version {id} (its hash is {actual}): corrupt or half-written",
                    path.display()
                );
            }
            // Files registered by this version of Kefu hold no slow block types; one registered
            // earlier may (a mixed file judged by its first `ffn_down`): it gets the fetched
            // models' treatment, a cached Q8_0 copy beside it, after its hash was checked.
            let options = LoadOptions::default().on(&device);
            let model = LoadedModel::load(&path, &options)
                .with_context(|| format!("cannot load {}", path.display()))?;
            Ok((model, hashed))
        })
        .await??;
    let loaded = started.elapsed();
    let prompt = model.encode("Hello")?;
    let generator = Generator::start(model, version.id.clone(), settings)?;
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    let params = GenerationParams {
        max_tokens: 1,
        ..GenerationParams::default()
    };
    generator
        .submit(prompt, params, events)
        .map_err(|_| anyhow::anyhow!("the new generator's queue is full"))?;
    while let Some(event) = received.recv().await {
        match event {
            Event::Done(_) => break,
            Event::Failed(message) => bail!("warm-up failed: {message}"),
            Event::Token(_) => {}
        }
    }
    tracing::info!(
        "version {} ready in {} ms (hash check {} ms, load {} ms, warm-up {} ms)",
        version.id,
        started.elapsed().as_millis(),
        hashed.as_millis(),
        (loaded - hashed).as_millis(),
        (started.elapsed() - loaded).as_millis()
    );
    Ok(generator)
}

/// A file's size and modification time: whether it changed since it was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    bytes: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileStamp {
    fn of(file: &Path) -> Option<Self> {
        let metadata = std::fs::metadata(file).ok()?;
        Some(Self {
            bytes: metadata.len(),
            modified: metadata.modified().ok(),
        })
    }
}

/// Brings the serving generator in line with the `production` label once. Returns the version
/// switched to, if any.
pub async fn follow_once(
    serving: &Serving,
    database: &Database,
    home: &Path,
) -> Result<Option<String>> {
    let Some(version) = database.labelled(PRODUCTION).await? else {
        return Ok(None);
    };
    let file = kefu_trainer::registry::version_path(home, &version);
    if version.id == serving.current().version || serving.still_refused(&version.id, &file) {
        return Ok(None);
    }
    match prepare(home, &version, &serving.settings).await {
        Ok(generator) => {
            serving
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&version.id);
            serving.switch(generator);
            tracing::info!("now serving version {}", version.id);
            Ok(Some(version.id))
        }
        Err(e) => {
            let reason = format!("{e:#}");
            tracing::warn!(
                "version {} refused, {} keeps serving: {reason}",
                version.id,
                serving.current().version
            );
            serving
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(version.id.clone(), (reason.clone(), FileStamp::of(&file)));
            bail!(reason)
        }
    }
}

/// Follows the `production` label for as long as the server runs: every `interval`, and at
/// once when woken.
pub async fn follow(serving: Arc<Serving>, database: Database, home: PathBuf, interval: Duration) {
    loop {
        let _ = follow_once(&serving, &database, &home).await;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = serving.wake.notified() => {}
        }
    }
}
