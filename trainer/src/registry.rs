//! The model registry's store side: each version's file under `registry/<sha256>/` (or
//! `$KEFU_REGISTRY`, shared by replicas), named by the sha256 of its bytes; importing a model
//! (checked to load, re-quantized where the CPU has no fast kernel for its blocks); the
//! retention policy. Labels live in the database; serving follows them (the server's hot-swap).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kefu_db::{Database, ModelVersion};
use kefu_model::{LoadOptions, LoadedModel};
use sha2::{Digest, Sha256};

/// The one chat model jobs train (one job at a time for it); jobs and schedules name it.
pub const TRAINED_MODEL: &str = "production";

/// The sha256 of a weights file: a version's name.
pub fn version_of(path: &Path) -> Result<String> {
    sha256_file(path)
}

/// The sha256 of a file's bytes, in hex, read a megabyte at a time.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
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

/// Job folders' retention: the training outputs (`jobs/<id>/train/`: checkpoints, adapters,
/// merged models — gigabytes each) of every job but the newest `keep`, the queued and running
/// ones and those in the lineage of a labelled version (the version, its parent, theirs…) are
/// removed. The data snapshots (`jobs/<id>/data/`, small) stay for the datasets page. Returns
/// the jobs whose outputs were removed.
pub async fn prune_job_folders(home: &Path, database: &Database, keep: usize) -> Result<Vec<i64>> {
    let jobs_dir = home.join("jobs");
    let Ok(entries) = std::fs::read_dir(&jobs_dir) else {
        return Ok(Vec::new());
    };
    let mut with_outputs: Vec<i64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .filter(|id| jobs_dir.join(id.to_string()).join("train").is_dir())
        .collect();
    with_outputs.sort_unstable_by(|a, b| b.cmp(a));
    let mut protected: std::collections::HashSet<i64> =
        with_outputs.iter().take(keep).copied().collect();
    for job in database.jobs(i64::MAX).await? {
        if matches!(
            job.status,
            kefu_db::JobStatus::Queued | kefu_db::JobStatus::Running
        ) {
            protected.insert(job.id);
        }
    }
    let versions: std::collections::HashMap<String, ModelVersion> = database
        .model_versions()
        .await?
        .into_iter()
        .map(|v| (v.id.clone(), v))
        .collect();
    for (_, labelled) in database.labels().await? {
        let mut next = Some(labelled);
        let mut seen = std::collections::HashSet::new();
        while let Some(id) = next.take() {
            if !seen.insert(id.clone()) {
                break;
            }
            if let Some(version) = versions.get(&id) {
                protected.extend(version.job_id);
                next = version.parent_id.clone();
            }
        }
    }
    let mut removed = Vec::new();
    for id in with_outputs {
        if protected.contains(&id) {
            continue;
        }
        let train = jobs_dir.join(id.to_string()).join("train");
        std::fs::remove_dir_all(&train)
            .with_context(|| format!("cannot remove {}", train.display()))?;
        removed.push(id);
    }
    Ok(removed)
}

/// Removes what failed or killed imports left in `incoming/`: files of processes that are
/// no longer running (the staged name starts with the importer's process id).
fn sweep_incoming(incoming: &Path) {
    let Ok(entries) = std::fs::read_dir(incoming) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split(['.', '-']).next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A staged import in `incoming/`, removed (with any partial copy beside it) unless it was
/// moved into the registry.
struct Staged(PathBuf);

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        // A re-quantization's partial copy is `<stem>.partial.…`.
        if let (Some(folder), Some(stem)) = (self.0.parent(), self.0.file_stem()) {
            let prefix = format!("{}.", stem.to_string_lossy());
            if let Ok(entries) = std::fs::read_dir(folder) {
                for entry in entries.filter_map(|e| e.ok()) {
                    if entry.file_name().to_string_lossy().starts_with(&prefix) {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
    }
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
    use kefu_model::gguf::{GgufFile, requantize};
    if file.extension().is_none_or(|e| e != "gguf") || !file.is_file() {
        bail!("{} is not a .gguf file", file.display());
    }
    let registry = registry_dir(home);
    let incoming = registry.join("incoming");
    std::fs::create_dir_all(&incoming)
        .with_context(|| format!("cannot create {}", incoming.display()))?;
    sweep_incoming(&incoming);
    let staged = Staged(incoming.join(format!("{}.gguf", std::process::id())));
    let mut source =
        GgufFile::open(file).with_context(|| format!("{} is not a model", file.display()))?;
    if source.has_slow_weights() {
        requantize(&mut source, &staged.0, kefu_model::gguf::GgmlDType::Q8_0)?;
    } else {
        std::fs::copy(file, &staged.0)
            .with_context(|| format!("cannot copy {}", file.display()))?;
    }
    LoadedModel::load(
        &staged.0,
        &LoadOptions {
            requantize: false,
            ..LoadOptions::default()
        },
    )
    .with_context(|| format!("{} does not load", file.display()))?;
    let id = version_of(&staged.0)?;
    let dir = registry.join(&id);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let target = dir.join("model.gguf");
    std::fs::rename(&staged.0, &target)
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
