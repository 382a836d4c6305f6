//! Install records: what an install left behind and the fingerprint of its inputs
//! (`installs/<name>.json`). A record whose fingerprint matches a new run's inputs, with
//! everything it names still present, makes that run skip the entry.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{InstallError, Result};
use crate::config::HostConfig;
use crate::manifest::hash;

/// One install.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallRecord {
    /// The entry (and capability) name.
    pub name: String,
    /// `wasm`, `python` or `native`.
    pub kind: String,
    /// `sha256:<hex>` of the entry's inputs.
    pub fingerprint: String,
    /// The capability manifest written.
    pub manifest: PathBuf,
    /// The python environment, when one was made.
    #[serde(default)]
    pub env_dir: Option<PathBuf>,
    /// The installed component copy.
    #[serde(default)]
    pub component: Option<PathBuf>,
    /// Adapter manifests written.
    #[serde(default)]
    pub adapters: Vec<PathBuf>,
    /// When (ISO-8601 UTC).
    pub installed_at: String,
}

/// `installs/`.
pub fn dir(config: &HostConfig) -> PathBuf {
    config.data_dir.join("installs")
}

/// `installs/<name>.json`.
pub fn path(config: &HostConfig, name: &str) -> PathBuf {
    dir(config).join(format!("{name}.json"))
}

/// The record of `name`, if one is readable.
pub fn load(config: &HostConfig, name: &str) -> Option<InstallRecord> {
    let text = std::fs::read_to_string(path(config, name)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Every readable record, by name.
pub fn load_all(config: &HostConfig) -> Vec<InstallRecord> {
    let mut out: Vec<InstallRecord> = std::fs::read_dir(dir(config))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Writes `record` (atomically).
pub fn save(config: &HostConfig, record: &InstallRecord) -> Result<()> {
    let p = path(config, &record.name);
    let text = serde_json::to_string_pretty(record).map_err(|e| {
        InstallError::InstallFailed(format!("cannot serialise the install record: {e}"))
    })?;
    crate::manifest::write_atomic(&p, text.as_bytes())?;
    Ok(())
}

/// The fingerprint of an entry's inputs: the entry as written (paths resolved), facts only
/// known at install time (a component's sha256, a native program's sha256, the substrate
/// spec) and the installer version.
pub fn fingerprint(entry: &Value, extra: &Value) -> String {
    hash::canonical_hash(&json!({
        "entry": entry,
        "extra": extra,
        "installer": super::INSTALLER_VERSION,
    }))
}
