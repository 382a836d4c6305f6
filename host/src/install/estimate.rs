//! What installing an entry would take, before installing it (`cjm-ctl estimate-size`, the
//! predecessor's command): bytes downloaded and bytes on disk.
//!
//! A Python entry is resolved by pip for the interpreter its environment would get (`pip
//! install --dry-run --report`: nothing is installed); each distribution's download size
//! comes from its file (a local path, or an HTTP HEAD) and a wheel's unpacked size from its
//! zip directory, read with HTTP range requests. A component or program file counts as it
//! is; what cargo builds, an sdist and a conda environment are not known before they exist,
//! and the estimate says so.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::spec::{Component, Entry, Source};
use super::{Installer, Log, Result, python};

/// One entry's estimate.
#[derive(Debug, Clone, Serialize)]
pub struct SizeEstimate {
    /// The entry.
    pub name: String,
    /// `wasm`, `python` or `native`.
    pub kind: String,
    /// Bytes to download (the known part).
    pub download: u64,
    /// Bytes on disk once installed (the known part).
    pub installed: u64,
    /// Whether every part is known (else `notes` says what is not).
    pub complete: bool,
    /// The Python the environment would have.
    pub python: Option<String>,
    /// A Python entry's distributions.
    pub packages: Vec<PackageSize>,
    /// What is not counted, in words.
    pub notes: Vec<String>,
}

/// One distribution pip would install.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackageSize {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// `wheel`, `sdist` or `dir` (a local source tree).
    pub kind: String,
    /// Bytes to download (`None`: unknown).
    pub download: Option<u64>,
    /// Bytes unpacked (`None`: unknown until built).
    pub installed: Option<u64>,
    /// Why it could not be measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Installer {
    /// Estimates `entry` (`substrate`: the cjm-substrate spec for a Python entry that names
    /// none); the resolution is logged to `logs/install/<name>.estimate.log`.
    pub async fn estimate(&self, entry: &Entry, substrate: Option<&str>) -> Result<SizeEstimate> {
        let mut est = SizeEstimate {
            name: entry.name.clone(),
            kind: entry.kind().to_owned(),
            download: 0,
            installed: 0,
            complete: true,
            python: None,
            packages: Vec::new(),
            notes: Vec::new(),
        };
        let file_size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        match &entry.source {
            Source::Wasm(w) => match &w.component {
                Component::File(p) => {
                    est.installed = file_size(p);
                    est.notes.push(
                        "plus its precompiled native code in cache/components (a few times the component)"
                            .into(),
                    );
                    est.complete = false;
                }
                Component::Cargo(c) => {
                    est.complete = false;
                    est.notes.push(format!(
                        "built by cargo from {} (its size is known once built)",
                        c.workspace.display()
                    ));
                }
            },
            Source::Native(n) => {
                est.notes.push(match &n.cargo {
                    Some(c) => format!(
                        "built by cargo from {}; runs from its target dir",
                        c.workspace.display()
                    ),
                    None => "runs in place: nothing is copied".into(),
                });
                est.complete = n.cargo.is_none();
            }
            Source::Python(p) => {
                if p.env_file.is_some() {
                    est.complete = false;
                    est.notes.push(
                        "a conda environment file: not estimated (conda resolves it at install)"
                            .into(),
                    );
                    return Ok(est);
                }
                let python = python::interpreter_for(p)?;
                let log = Log::open(
                    super::logs_dir(&self.config).join(format!("{}.estimate.log", entry.name)),
                    true,
                )?;
                let mut specs = vec![self.substrate_for(p, substrate)];
                specs.extend(p.interface_libs.iter().cloned());
                specs.extend(p.adapters.iter().filter_map(|a| a.lib.clone()));
                specs.push(p.package.clone());
                let report = python::estimate(&python, &specs, &log).await?;
                est.python = report["python"].as_str().map(str::to_owned);
                est.packages =
                    serde_json::from_value(report["packages"].clone()).unwrap_or_default();
                let mut unknown = Vec::new();
                for pkg in &est.packages {
                    est.download += pkg.download.unwrap_or(0);
                    est.installed += pkg.installed.unwrap_or(0);
                    if pkg.download.is_none() || pkg.installed.is_none() {
                        unknown.push(format!("{} {} ({})", pkg.name, pkg.version, pkg.kind));
                    }
                }
                est.notes
                    .push("plus the environment itself (a venv with pip: about 15 MB)".into());
                if !unknown.is_empty() {
                    est.complete = false;
                    est.notes.push(format!(
                        "not measured (sdists are built at install): {}",
                        unknown.join(", ")
                    ));
                }
            }
        }
        Ok(est)
    }
}
