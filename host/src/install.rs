//! The install pipeline: from a `capabilities.yaml` entry to a manifest in the data dir.
//!
//! - [`spec`]: the file's schema and its validation (every problem listed);
//! - `wasm`: a component file or a cargo package built for wasm32-wasip2, copied into the
//!   data dir, loaded in the sandbox (validated, precompiled into the component cache) and
//!   introspected (`info`);
//! - `native`: a worker binary started once to read its info, then stopped;
//! - `python`: an environment per entry (uv, `python -m venv` + pip, or conda/micromamba
//!   when configured and present) with cjm-substrate and the package, introspected by
//!   cjm-substrate's own manifest writer run inside that env;
//! - [`record`]: what each install left behind and the fingerprint of its inputs, so
//!   re-running is idempotent.
//!
//! Entries install one after another; a failing entry never stops the others. Each entry
//! logs every step and the output of every program it ran into
//! `logs/install/<name>.log`; a failure report carries the tail of that log.
//!
//! What install adds to the data dir layout:
//!
//! ```text
//! envs/<env_name>/          python environments
//! components/<name>.wasm    installed wasm components (copies)
//! installs/<name>.json      install records (fingerprint, env, adapters)
//! logs/install/<name>.log   install logs
//! ```
//!
//! Installed components are copies: the manifest names `../components/<name>.wasm`
//! (relative to the manifests dir, so the data dir can move) and its sha256. A rebuild of the
//! source then never changes an installed capability behind the host's back; installing
//! again does.

mod cargo;
mod error;
pub mod estimate;
mod log;
mod native;
mod python;
pub mod record;
pub mod spec;
mod wasm;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use error::{InstallError, Result};
pub(crate) use log::{Log, LogSink, keep_attempt, output, run};
pub use log::{attempt_log, last_line, logs_dir, tail_of};
pub use python::{EnvTool, SUBSTRATE_SPEC, tool_uv_path, uv_binary};
pub use record::InstallRecord;
pub use spec::{CapabilitiesFile, Entry, Source, SpecProblem};

use crate::config::HostConfig;
use crate::manifest::{self, CapabilityManifest, RuntimeKind};

/// `install.installer_version` of the manifests this pipeline writes.
pub const INSTALLER_VERSION: &str = concat!("cjm-ctl ", env!("CARGO_PKG_VERSION"));

/// Lines of the log a failure report carries.
pub const LOG_TAIL_LINES: usize = 20;

/// `envs/`: python environments.
pub fn envs_dir(config: &HostConfig) -> PathBuf {
    config.data_dir.join("envs")
}

/// `components/`: installed wasm components.
pub fn components_dir(config: &HostConfig) -> PathBuf {
    config.data_dir.join("components")
}

/// `manifests/<name>.json`.
pub fn manifest_path(config: &HostConfig, name: &str) -> PathBuf {
    config
        .manifests_dir()
        .join(manifest::capability_file_name(name))
}

/// The local source an entry is built or installed from, whose edits call for a reinstall
/// (`cjm-ctl dev` watches it): a cargo workspace, a component or program file, a Python
/// package dir. `None` for what comes from elsewhere (a PyPI spec, a program on `PATH`).
pub fn watched_source(entry: &Entry) -> Option<PathBuf> {
    match &entry.source {
        Source::Wasm(w) => Some(match &w.component {
            spec::Component::File(p) => p.clone(),
            spec::Component::Cargo(c) => c.workspace.clone(),
        }),
        Source::Native(n) => match (&n.cargo, n.command.first()) {
            (Some(c), _) => Some(c.workspace.clone()),
            (None, Some(program)) if program.contains('/') => Some(PathBuf::from(program)),
            _ => None,
        },
        Source::Python(p) => {
            let dir = Path::new(&p.package);
            (dir.is_absolute() && dir.exists()).then(|| dir.to_path_buf())
        }
    }
}

/// A stamp of a source tree or file (file count, total size, newest mtime) that changes when
/// it is edited; build outputs (`target`, `build`, `dist`), caches and hidden entries are
/// left out. `None` when it does not exist.
pub fn source_stamp(path: &Path) -> Option<String> {
    python::tree_stamp(path, &|name| name == "target" || python::skipped(name))
}

/// What the caller wants from a run.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// Reinstall even when nothing changed (python envs are recreated).
    pub force: bool,
    /// Only these entries (all when empty).
    pub only: Vec<String>,
    /// The cjm-substrate spec for python entries that do not name one.
    pub substrate: Option<String>,
}

/// Where the pipeline reports what it is doing (a progress bar, or nothing).
pub trait Progress: Send + Sync {
    /// Entry `name` started the step `step`.
    fn step(&self, name: &str, step: &str);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn step(&self, _: &str, _: &str) {}
}

/// How an entry ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryStatus {
    /// Installed (or reinstalled).
    Installed,
    /// Already installed with the same inputs.
    Unchanged,
    /// Failed; see the message and log.
    Failed,
}

impl EntryStatus {
    /// `installed`, `unchanged`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryStatus::Installed => "installed",
            EntryStatus::Unchanged => "unchanged",
            EntryStatus::Failed => "failed",
        }
    }
}

/// The outcome of one entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EntryReport {
    /// The entry name.
    pub name: String,
    /// `wasm`, `python` or `native`.
    pub kind: String,
    /// How it ended.
    pub status: EntryStatus,
    /// The installed capability's version.
    pub version: Option<String>,
    /// Time it took.
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
    /// A one-line summary (what was written, or why it failed).
    pub message: String,
    /// The manifest written.
    pub manifest: Option<PathBuf>,
    /// Adapter manifests written.
    pub adapters: Vec<PathBuf>,
    /// The install log.
    pub log: PathBuf,
    /// The last lines of the log, for a failure.
    pub log_tail: Option<String>,
    /// What the install did that the user should know (an interpreter older than the
    /// packages declare, say); also in the log.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// What one install produced, before it is recorded.
pub(crate) struct Installed {
    pub manifest: CapabilityManifest,
    pub manifest_path: PathBuf,
    pub env_dir: Option<PathBuf>,
    pub component: Option<PathBuf>,
    pub adapters: Vec<PathBuf>,
}

/// The install pipeline over one data dir.
#[derive(Debug, Clone)]
pub struct Installer {
    config: HostConfig,
}

impl Installer {
    /// A pipeline writing into `config`'s data dir.
    pub fn new(config: HostConfig) -> Self {
        Installer { config }
    }

    /// The configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// Installs the entries of `file` (those of `options.only`, when given), one after
    /// another; every entry gets a report, failed or not.
    pub async fn install_all(
        &self,
        file: &CapabilitiesFile,
        options: &InstallOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<EntryReport>> {
        for only in &options.only {
            if file.entry(only).is_none() {
                return Err(InstallError::InstallFailed(format!(
                    "no entry named '{only}' in {}",
                    file.path.display()
                )));
            }
        }
        self.config.ensure_layout()?;
        let mut reports = Vec::new();
        for entry in &file.entries {
            if !options.only.is_empty() && !options.only.contains(&entry.name) {
                continue;
            }
            reports.push(self.install_entry(entry, options, progress).await);
        }
        Ok(reports)
    }

    /// Installs uv into the data dir (`tools/uv`) unless one is already at hand; returns
    /// the `uv` Python installs use. Its log is `logs/install/.uv.log`.
    pub async fn install_uv(&self) -> Result<PathBuf> {
        if let Some(uv) = uv_binary(&self.config) {
            return Ok(uv);
        }
        let log = Log::open(logs_dir(&self.config).join(".uv.log"), true)?;
        python::install_uv(&self.config, &log).await
    }

    /// Installs one entry; never fails, the report says how it went.
    pub async fn install_entry(
        &self,
        entry: &Entry,
        options: &InstallOptions,
        progress: &dyn Progress,
    ) -> EntryReport {
        let started = Instant::now();
        // The attempt writes `<name>.log.part`; a real attempt (installed or failed) then
        // becomes `<name>.log`, the earlier ones shifted to `<name>.1.log` ..; an attempt
        // that found nothing changed is dropped, so `<name>.log` keeps the last real one.
        let log_path = logs_dir(&self.config).join(format!("{}.log", entry.name));
        let part = attempt_log(&self.config, &entry.name);
        let mut report = EntryReport {
            name: entry.name.clone(),
            kind: entry.kind().to_owned(),
            status: EntryStatus::Failed,
            version: None,
            elapsed: Duration::ZERO,
            message: String::new(),
            manifest: None,
            adapters: Vec::new(),
            log: log_path.clone(),
            log_tail: None,
            warnings: Vec::new(),
        };
        let log = match Log::open(part.clone(), true) {
            Ok(log) => log,
            Err(e) => {
                report.message = e.to_string();
                return report;
            }
        };
        log.line(&format!(
            "# install {} ({}) at {}",
            entry.name,
            entry.kind(),
            crate::store::now_iso()
        ));
        let step = |s: &str| {
            log.line(&format!("## {s}"));
            progress.step(&entry.name, s);
        };
        match self.install_inner(entry, options, &log, &step).await {
            Ok((status, installed)) => {
                report.status = status;
                report.version = Some(installed.manifest.code.version.clone());
                report.message = match status {
                    EntryStatus::Unchanged => "already installed, inputs unchanged".to_owned(),
                    _ => format!("wrote {}", installed.manifest_path.display()),
                };
                if !installed.adapters.is_empty() && status == EntryStatus::Installed {
                    report.message.push_str(&format!(
                        " and {} adapter manifest(s)",
                        installed.adapters.len()
                    ));
                }
                report.manifest = Some(installed.manifest_path);
                report.adapters = installed.adapters;
                log.line(&format!("# {}", status.as_str()));
            }
            Err(e) => {
                log.line(&format!("# failed: {e}"));
                report.message = e.to_string();
                report.log_tail = Some(log.tail(LOG_TAIL_LINES));
            }
        }
        report.warnings = log.warnings();
        drop(log);
        if report.status == EntryStatus::Unchanged && log_path.is_file() {
            let _ = std::fs::remove_file(&part);
        } else {
            keep_attempt(&part, &log_path);
        }
        report.elapsed = started.elapsed();
        report
    }

    async fn install_inner(
        &self,
        entry: &Entry,
        options: &InstallOptions,
        log: &Log,
        step: &(dyn Fn(&str) + Sync),
    ) -> Result<(EntryStatus, Installed)> {
        // A wasm entry built by cargo knows its inputs only after the build (cheap when
        // nothing changed): the fingerprint covers the component's sha256.
        let prepared = match &entry.source {
            Source::Wasm(w) => Some(wasm::prepare(entry, w, log, step).await?),
            _ => None,
        };
        let native = match &entry.source {
            Source::Native(n) => Some(native::prepare(n, log, step).await?),
            _ => None,
        };
        let mut extra = serde_json::Map::new();
        if let Some(p) = &prepared {
            extra.insert("component_sha256".into(), json!(p.sha256));
        }
        if let Some(n) = &native
            && let Some(program) = n.command.first().and_then(|p| native::program_path(p))
            && let Ok(sha) = manifest::hash::hash_file(&program)
        {
            extra.insert("program_sha256".into(), json!(sha));
        }
        if let Source::Python(p) = &entry.source {
            extra.insert(
                "substrate".into(),
                json!(self.substrate_for(p, options.substrate.as_deref())),
            );
            if let Some(stamp) = python::source_stamp(&p.package) {
                extra.insert("source_stamp".into(), json!(stamp));
            }
        }
        let fingerprint = record::fingerprint(&entry.raw, &Value::Object(extra));
        if !options.force
            && let Some(installed) = self.unchanged(entry, &fingerprint)
        {
            return Ok((EntryStatus::Unchanged, installed));
        }
        let installed = match (&entry.source, prepared) {
            (Source::Wasm(w), Some(p)) => {
                wasm::install(&self.config, entry, w, p, log, step).await?
            }
            (Source::Native(n), _) => {
                let n = native.as_ref().unwrap_or(n);
                native::install(&self.config, entry, n, log, step).await?
            }
            (Source::Python(p), _) => {
                let substrate = self.substrate_for(p, options.substrate.as_deref());
                python::install(&self.config, entry, p, &substrate, options.force, log, step)
                    .await?
            }
            (Source::Wasm(_), None) => {
                return Err(InstallError::InstallFailed(
                    "wasm component was not prepared".into(),
                ));
            }
        };
        // Adapter manifests of an earlier install that this one did not write again.
        if let Some(old) = record::load(&self.config, &entry.name) {
            for stale in old
                .adapters
                .iter()
                .filter(|a| !installed.adapters.contains(a))
            {
                let _ = std::fs::remove_file(stale);
            }
        }
        let rec = InstallRecord {
            name: entry.name.clone(),
            kind: entry.kind().to_owned(),
            fingerprint,
            manifest: installed.manifest_path.clone(),
            env_dir: installed.env_dir.clone(),
            component: installed.component.clone(),
            adapters: installed.adapters.clone(),
            installed_at: crate::store::now_iso(),
        };
        record::save(&self.config, &rec)?;
        Ok((EntryStatus::Installed, installed))
    }

    fn substrate_for(&self, p: &spec::PythonSource, default: Option<&str>) -> String {
        p.substrate
            .clone()
            .or_else(|| default.map(str::to_owned))
            .unwrap_or_else(|| SUBSTRATE_SPEC.to_owned())
    }

    /// The installed state when the recorded fingerprint matches and everything it left is
    /// still there.
    fn unchanged(&self, entry: &Entry, fingerprint: &str) -> Option<Installed> {
        let rec = record::load(&self.config, &entry.name)?;
        if rec.fingerprint != fingerprint || rec.kind != entry.kind() {
            return None;
        }
        let manifest = manifest::load_capability(&rec.manifest).ok()?;
        let present = match manifest.runtime() {
            RuntimeKind::Python => Path::new(&manifest.install.python_path).is_file(),
            RuntimeKind::Wasm => manifest.install.wasm.as_ref().is_some_and(|w| {
                let path = w.component_path(rec.manifest.parent().unwrap_or(Path::new(".")));
                manifest::hash::hash_file(&path).is_ok_and(|h| h == w.sha256)
            }),
            // A worker copied into the data dir must still be there.
            RuntimeKind::Native => rec.component.as_ref().is_none_or(|c| c.is_file()),
        };
        (present && rec.adapters.iter().all(|a| a.is_file())).then(|| Installed {
            manifest,
            manifest_path: rec.manifest.clone(),
            env_dir: rec.env_dir.clone(),
            component: rec.component.clone(),
            adapters: rec.adapters.clone(),
        })
    }

    /// Re-runs the introspection of the installed capability `name` from what its manifest
    /// records (the component, the command, or the python env and package), keeping
    /// `installed_at`; returns the manifest path.
    pub async fn regenerate(&self, name: &str, progress: &dyn Progress) -> Result<PathBuf> {
        let path = manifest_path(&self.config, name);
        let (path, current) = match manifest::load_capability(&path) {
            Ok(m) => (path, m),
            Err(_) => {
                // A manifest named otherwise (the Python tool names files by code name, so
                // they agree; a hand-made one may not).
                let found = manifest::discover(&self.config.manifest_search_paths());
                let loaded = found.capability(name).ok_or_else(|| {
                    InstallError::InstallFailed(format!(
                        "no installed capability '{name}' (no manifest in {})",
                        self.config.manifests_dir().display()
                    ))
                })?;
                (loaded.path.clone(), loaded.manifest.clone())
            }
        };
        let log = Log::open(logs_dir(&self.config).join(format!("{name}.log")), false)?;
        log.line(&format!(
            "# regenerate {name} at {}",
            crate::store::now_iso()
        ));
        let step = |s: &str| {
            log.line(&format!("## {s}"));
            progress.step(name, s);
        };
        let result = match current.runtime() {
            RuntimeKind::Wasm => wasm::regenerate(&self.config, &path, current, &log, &step).await,
            RuntimeKind::Native => {
                native::regenerate(&self.config, &path, current, &log, &step).await
            }
            RuntimeKind::Python => {
                python::regenerate(&self.config, &path, current, &log, &step).await
            }
        };
        result.map_err(|e| {
            log.line(&format!("# failed: {e}"));
            match e {
                InstallError::InstallCommand { .. } | InstallError::InstallFailed(_) => {
                    InstallError::InstallFailed(format!(
                        "{e}\n{}",
                        indent(&log.tail(LOG_TAIL_LINES))
                    ))
                }
                other => other,
            }
        })
    }

    /// Generates the adapter manifest of `impl_spec` (`module:Class`) with the python of
    /// `python` (an env's interpreter), named after `env_name`; returns its path.
    pub async fn generate_adapter_manifest(
        &self,
        python: &Path,
        env_name: &str,
        impl_spec: &str,
    ) -> Result<PathBuf> {
        self.config.ensure_layout()?;
        let log = Log::open(
            logs_dir(&self.config).join(format!("adapter-{env_name}.log")),
            true,
        )?;
        python::adapter_manifest(&self.config, python, env_name, impl_spec, &log)
            .await
            .map_err(|e| match e {
                InstallError::InstallCommand { .. } => InstallError::InstallFailed(format!(
                    "{e}\n{}",
                    indent(&log.tail(LOG_TAIL_LINES))
                )),
                other => other,
            })
    }

    /// What removing `name` deletes: its manifest, its install record, its installed
    /// component, its adapter manifests and its environment (unless another installed
    /// capability shares that environment).
    pub fn removal_plan(&self, name: &str) -> Result<Vec<PathBuf>> {
        let rec = record::load(&self.config, name);
        let found = manifest::discover(&self.config.manifest_search_paths());
        let loaded = found.capability(name);
        if rec.is_none() && loaded.is_none() {
            return Err(InstallError::InstallFailed(format!(
                "no installed capability '{name}' (no manifest in {})",
                self.config.manifests_dir().display()
            )));
        }
        let mut paths = Vec::new();
        if let Some(l) = loaded {
            paths.push(l.path.clone());
            if let Some(w) = &l.manifest.install.wasm {
                let c = w.component_path(l.dir());
                if c.starts_with(components_dir(&self.config))
                    || c.starts_with(self.config.manifests_dir().join("..").join("components"))
                {
                    paths.push(c);
                }
            }
            if l.manifest.runtime() == RuntimeKind::Python
                && let Some(env) = python::env_dir_of(&self.config, &l.manifest)
            {
                paths.push(env);
            }
        }
        if let Some(rec) = &rec {
            paths.push(record::path(&self.config, name));
            paths.push(rec.manifest.clone());
            paths.extend(rec.adapters.iter().cloned());
            paths.extend(rec.component.iter().cloned());
            paths.extend(rec.env_dir.iter().cloned());
        }
        // An env another capability still uses stays.
        let shared: Vec<PathBuf> = found
            .capabilities
            .iter()
            .filter(|c| c.manifest.name() != name)
            .filter_map(|c| python::env_dir_of(&self.config, &c.manifest))
            .collect();
        paths.retain(|p| !shared.contains(p));
        let mut out: Vec<PathBuf> = Vec::new();
        for p in paths {
            if p.exists() && !out.contains(&p) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Deletes what [`Installer::removal_plan`] lists.
    pub fn remove(&self, name: &str) -> Result<Vec<PathBuf>> {
        let plan = self.removal_plan(name)?;
        for p in &plan {
            let r = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(crate::Error::io(p, e).into()),
            }
        }
        Ok(plan)
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What an introspected backend reports, then the backend stopped (a failure to stop is
/// logged: the info is what the install needed).
pub(crate) async fn info_then_stop(
    backend: &dyn crate::backend::Backend,
    log: &Log,
) -> crate::contract::CapabilityInfo {
    let info = backend.info().clone();
    if let Err(e) = backend.shutdown().await {
        log.line(&format!("stopping it after introspection failed: {e}"));
    }
    info
}

/// Writes `m` as `<manifests>/<name>.json` with the install facts every kind shares.
pub(crate) fn finish_manifest(
    config: &HostConfig,
    m: &mut CapabilityManifest,
    entry_env: &indexmap::IndexMap<String, String>,
    package_source: String,
    installed_at: Option<String>,
) -> Result<PathBuf> {
    let now = crate::store::now_iso();
    m.install.env_vars = entry_env.clone();
    m.install.installed_at = installed_at.unwrap_or_else(|| now.clone());
    m.install.installer_version = INSTALLER_VERSION.to_owned();
    m.install.package_source = package_source;
    m.code.regenerated_at = Some(now);
    m.refresh_drift_hashes();
    let path = manifest_path(config, m.name());
    manifest::write_capability(&path, m)?;
    Ok(path)
}

/// Rewrites the manifest at `path` with what the capability reported when introspected
/// again (its code section, the regeneration time and the drift hashes).
pub(crate) fn rewrite_from_info(
    path: &Path,
    m: &mut CapabilityManifest,
    info: &crate::contract::CapabilityInfo,
) -> Result<PathBuf> {
    code_from_info(m, info);
    m.code.regenerated_at = Some(crate::store::now_iso());
    m.refresh_drift_hashes();
    manifest::write_capability(path, m)?;
    Ok(path.to_owned())
}

/// Fills the code section from what a capability reports about itself.
pub(crate) fn code_from_info(m: &mut CapabilityManifest, info: &crate::contract::CapabilityInfo) {
    m.code.version = info.version.clone();
    m.code.description = info.description.clone();
    m.code.config_schema = match &info.config_schema {
        Value::Null => None,
        schema => Some(schema.clone()),
    };
    m.code.set_surface(&info.structural_surface);
}
