//! The model registry and hot-swap. A version is a weights file named by its sha256 (files of
//! trained versions live under `<registry>/<id>/`: `$KEFU_REGISTRY`, by default `registry/` in
//! the data directory); labels in the database say which
//! version is `production`, `candidate` and `previous`. Every `kefu serve` follows the
//! `production` label: it loads the labelled version beside the one serving, checks its hash,
//! warms it up, and switches atomically. A request holds the generator it started with, so
//! streams in flight finish on the old version while new ones use the new one; the old workers
//! stop once their last job is done. A version that fails to load (a corrupt or half-written
//! file) is refused and remembered; production keeps serving.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kefu_db::{Database, ModelVersion, PRODUCTION};
use kefu_model::generate::GenerationParams;
use kefu_model::{LoadOptions, LoadedModel};

use crate::generator::{Event, Generator};

/// How new generators are started: the serving settings of `kefu serve`.
#[derive(Debug, Clone)]
pub struct GeneratorSettings {
    pub name: String,
    /// Where every version is loaded.
    pub device: candle_core::Device,
    pub workers: usize,
    pub max_batch: usize,
    pub capacity: usize,
}

/// The generator now serving, and the bookkeeping of swaps.
pub struct Serving {
    current: RwLock<Arc<Generator>>,
    settings: GeneratorSettings,
    /// Wakes the follower at once (after an admin moved a label).
    pub wake: tokio::sync::Notify,
    /// Versions that could not be loaded, with the reason.
    refused: Mutex<HashMap<String, String>>,
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
            .cloned()
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

/// The sha256 of a weights file: a version's name.
pub fn version_of(path: &Path) -> Result<String> {
    crate::fetch::sha256_file(path)
}

/// The registry's folder: `$KEFU_REGISTRY`, or `registry/` in the data directory. Replicas
/// on several machines point it at one shared folder.
pub fn registry_dir(home: &Path) -> PathBuf {
    match std::env::var_os("KEFU_REGISTRY") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => home.join("registry"),
    }
}

/// The retention policy: removes the files of the versions that carry no label, beyond the
/// newest `keep` of them — never a labelled version's (production, candidate, previous), never
/// a file outside the registry (the base model a server registered from `models/`). The rows
/// stay, with their reports and lineage; a pruned version can no longer be served (a server
/// told to refuses it and keeps its current one). Returns the versions pruned.
pub async fn prune(home: &Path, database: &Database, keep: usize) -> Result<Vec<String>> {
    let labelled: std::collections::HashSet<String> = database
        .labels()
        .await?
        .into_iter()
        .map(|(_, version)| version)
        .collect();
    let registry = registry_dir(home);
    let mut kept = 0;
    let mut pruned = Vec::new();
    // Newest first.
    for version in database.model_versions().await? {
        let file = version_path(home, &version);
        if labelled.contains(&version.id)
            || Path::new(&version.path).is_absolute()
            || !file.is_file()
        {
            continue;
        }
        if kept < keep {
            kept += 1;
            continue;
        }
        let folder = file
            .parent()
            .filter(|f| *f != registry && f.starts_with(&registry));
        match folder {
            Some(folder) => std::fs::remove_dir_all(folder),
            None => std::fs::remove_file(&file),
        }
        .with_context(|| format!("cannot remove {}", file.display()))?;
        pruned.push(version.id);
    }
    Ok(pruned)
}

/// Where a version's file is: relative paths are inside the registry's folder.
pub fn version_path(home: &Path, version: &ModelVersion) -> PathBuf {
    let path = Path::new(&version.path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        registry_dir(home).join(path)
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

/// Loads `version` (checking that the file still has the hash it is named by) and starts a
/// generator on it, warmed up by one short generation.
async fn prepare(
    home: &Path,
    version: &ModelVersion,
    settings: &GeneratorSettings,
) -> Result<Generator> {
    let path = version_path(home, version);
    let id = version.id.clone();
    let device = settings.device.clone();
    let started = Instant::now();
    let (model, hashed) =
        tokio::task::spawn_blocking(move || -> Result<(LoadedModel, Duration)> {
            if !path.exists() {
                bail!("{} is missing", path.display());
            }
            let actual = version_of(&path)?;
            let hashed = started.elapsed();
            if actual != id {
                bail!(
                    "{} does not hold version {id} (its hash is {actual}): corrupt or half-written",
                    path.display()
                );
            }
            // Registered files are already in the layout served (Q8_0 or f32): no re-quantization.
            let options = LoadOptions {
                requantize: false,
                ..LoadOptions::default()
            }
            .on(&device);
            let model = LoadedModel::load(&path, &options)
                .with_context(|| format!("cannot load {}", path.display()))?;
            Ok((model, hashed))
        })
        .await??;
    let loaded = started.elapsed();
    let prompt = model.encode("Hello")?;
    let generator = Generator::start(
        model,
        settings.name.clone(),
        version.id.clone(),
        settings.workers,
        settings.max_batch,
        settings.capacity,
    )?;
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
    eprintln!(
        "kefu: version {} ready in {} ms (hash check {} ms, load {} ms, warm-up {} ms)",
        version.id,
        started.elapsed().as_millis(),
        hashed.as_millis(),
        (loaded - hashed).as_millis(),
        (started.elapsed() - loaded).as_millis()
    );
    Ok(generator)
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
    if version.id == serving.current().version || serving.refused(&version.id).is_some() {
        return Ok(None);
    }
    match prepare(home, &version, &serving.settings).await {
        Ok(generator) => {
            serving.switch(generator);
            eprintln!("kefu: now serving version {}", version.id);
            Ok(Some(version.id))
        }
        Err(e) => {
            let reason = format!("{e:#}");
            eprintln!(
                "kefu: version {} refused, {} keeps serving: {reason}",
                version.id,
                serving.current().version
            );
            serving
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(version.id.clone(), reason.clone());
            bail!(reason)
        }
    }
}

/// Follows the `production` label for as long as the server runs: every `interval`, and at
/// once when woken.
pub async fn follow(serving: Arc<crate::http::AppState>, home: PathBuf, interval: Duration) {
    loop {
        let _ = follow_once(&serving.serving, &serving.database, &home).await;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = serving.serving.wake.notified() => {}
        }
    }
}

/// Copies a model file into the registry (`<registry>/<sha256>/model.gguf`), after
/// checking that it loads; block types without fast CPU kernels are re-quantized to Q8_0 on
/// the way, so the registered file is exactly what is served. Returns the version (not yet
/// recorded in the database).
pub fn import(
    home: &Path,
    file: &Path,
    parent: Option<String>,
    job: Option<i64>,
) -> Result<ModelVersion> {
    use kefu_model::gguf::{GgufFile, is_slow_on_cpu, requantize};
    if file.extension().is_none_or(|e| e != "gguf") || !file.is_file() {
        bail!("{} is not a .gguf file", file.display());
    }
    let registry = registry_dir(home);
    let incoming = registry.join("incoming");
    std::fs::create_dir_all(&incoming)
        .with_context(|| format!("cannot create {}", incoming.display()))?;
    let staged = incoming.join(format!("{}.gguf", std::process::id()));
    let mut source =
        GgufFile::open(file).with_context(|| format!("{} is not a model", file.display()))?;
    if source.weight_dtype().is_some_and(is_slow_on_cpu) {
        requantize(&mut source, &staged, kefu_model::gguf::GgmlDType::Q8_0)?;
    } else {
        std::fs::copy(file, &staged).with_context(|| format!("cannot copy {}", file.display()))?;
    }
    let checked = LoadedModel::load(
        &staged,
        &LoadOptions {
            requantize: false,
            ..LoadOptions::default()
        },
    );
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&staged);
        return Err(anyhow::Error::new(e).context(format!("{} does not load", file.display())));
    }
    let id = version_of(&staged)?;
    let dir = registry.join(&id);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let target = dir.join("model.gguf");
    std::fs::rename(&staged, &target)
        .with_context(|| format!("cannot move the model into {}", target.display()))?;
    Ok(ModelVersion {
        id: id.clone(),
        path: format!("{id}/model.gguf"),
        parent_id: parent,
        job_id: job,
        report: "{}".into(),
        created_ms: kefu_db::now_ms(),
    })
}
