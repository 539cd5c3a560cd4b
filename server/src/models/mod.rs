//! Models by name: the catalog, fetching, and resolution of a name or path to files (known
//! models are fetched on first use).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

pub mod catalog;
pub mod fetch;

use catalog::DEFAULT_MODEL;
use fetch::{Fetcher, Sources};

/// Resolves `--model`: a path, an installed model, or a known model fetched on first use.
pub fn resolve_model(home: &Path, model: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let models_dir = home.join("models");
    if let Some(installed) = fetch::installed_path(&models_dir, model) {
        return Ok(installed);
    }
    if let Some(entry) = catalog::find(model) {
        if let Some(installed) = fetch::installed_path(&models_dir, entry.name) {
            return Ok(installed);
        }
        eprintln!("{} is not installed yet; fetching it first.", entry.name);
        return Ok(Fetcher::new(home, Sources::from_env())
            .fetch(entry.name)?
            .path);
    }
    bail!(
        "model `{model}` is neither a path nor an installed model; run `kefu models fetch {model}`"
    )
}

/// The catalog as the trainer sees it: the default chat model, names resolved (and fetched on
/// first use) in the data directory.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub home: PathBuf,
}

impl kefu_trainer::pipeline::ModelSource for Catalog {
    fn default_model(&self) -> &str {
        DEFAULT_MODEL
    }

    fn resolve(&self, model: &str) -> Result<PathBuf> {
        resolve_model(&self.home, model)
    }
}
