//! The host's configuration: where its data lives and how it behaves.
//!
//! Two layers, as ripgrep and wasmtime do it: a raw serde struct ([`RawConfig`], every field
//! optional, unknown keys refused) per source, resolved field by field with the precedence
//! **command line > environment (`CJM_*`) > `cjm.yaml` > defaults** into a validated
//! [`HostConfig`] (`TryFrom<RawConfig>` for one layer, [`ConfigLoader`] for the stack, and
//! [`HostConfigBuilder`] for code). A bad value is reported with where it came from (the
//! yaml file, the variable name, the command line) and the field.
//!
//! `cjm.yaml` has cjm-substrate's keys, so a Python project's file loads unchanged; it is
//! found as cjm-substrate finds it (`CJM_CONFIG`, else the first `cjm.yaml` walking up from
//! the working directory), and relative paths in it are relative to the file.
//!
//! # The data dir
//!
//! Default `./.cjm` (made absolute at load, so spawned workers agree on it):
//!
//! ```text
//! manifests/                capability and adapter manifests (*.json)
//! data/<capability>/        each capability's own data (CAPABILITY_DATA_DIR)
//! cache/components/         precompiled wasm components, by sha256
//! journal.db                the durable journal
//! diagnostics.db            worker log records and stream chunks (Python workers write here)
//! capability_configs.db     config store
//! empirical_resources.db    empirical store
//! input_hash_cache.db       stat cache of input-content hashes
//! secrets/secrets.json      secrets (0600, directory 0700)
//! ```
//!
//! One SQLite file per store, with cjm-substrate's file names and schemas: SQLite locks a
//! whole file for writing, so the journal's appends never wait behind a Python worker's log
//! commit or a diagnostics retention batch; the precious journal and the disposable
//! diagnostics keep separate fates (a damaged diagnostics file can be deleted without
//! touching the journal); and a Python host pointed at the same data dir finds the same files.

mod error;
mod loader;
mod raw;
mod resolve;
pub mod retry;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use raw::{
    CONFIG_FILE_VAR, ENV_VARS, RawConfig, RawQueue, RawRuntime, RawSubstrate, env_var_for,
};

pub use error::ConfigError;
pub use loader::{ConfigLoader, HostConfigBuilder, find_config_file};
pub use retry::RetryPolicy;

use crate::error::{Error, Result};

/// The name of the project configuration file.
pub const CONFIG_FILE_NAME: &str = "cjm.yaml";

/// The validated configuration of a host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    /// Root of everything the host keeps (absolute).
    pub data_dir: PathBuf,
    /// The declarative install file (`capabilities.yaml`).
    pub capabilities_config: PathBuf,
    /// Where model weights go (`CJM_MODELS_DIR` for workers), when set.
    pub models_dir: Option<PathBuf>,
    /// Worker log level (`CJM_LOG_LEVEL`).
    pub log_level: LogLevel,
    /// Python environment runtime.
    pub python: PythonRuntime,
    /// Substrate behaviour toggles.
    pub substrate: SubstrateConfig,
    /// Job queue defaults.
    pub queue: QueueConfig,
    /// The `cjm.yaml` that was read, if any.
    pub config_file: Option<PathBuf>,
    /// Directories searched for manifests before the data dir's `manifests/` (the first
    /// manifest of a name wins: a local dir shadows the data dir, as cjm-substrate's search
    /// path does). Set by embedders ([`HostBuilder::manifest_dirs`](crate::HostBuilder::manifest_dirs)).
    pub extra_manifest_dirs: Vec<PathBuf>,
    /// Component instances the wasm engine's pool holds at once (`None`: sized for the
    /// machine; `Some(0)`: no pool, memory mapped per instance). Set by embedders
    /// ([`HostBuilder::wasm_instance_slots`](crate::HostBuilder::wasm_instance_slots)).
    pub wasm_instance_slots: Option<u32>,
}

/// Substrate behaviour toggles (cjm-substrate's `SubstrateConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct SubstrateConfig {
    /// Compare live config schema and surface with the manifest's witnesses at load (warn,
    /// never fail).
    pub drift_detection: bool,
    /// Record a resource sample into the empirical store after every call.
    pub empirical_tracking: bool,
    /// How long a prefetch may go without progress before it counts as stalled.
    pub prefetch_stall_threshold: Duration,
    /// Age of diagnostics rows kept (`None`: no age-based deletion).
    pub diagnostics_retention_days: Option<f64>,
    /// Size budget of the diagnostics database in MB (`None`: no size-based deletion).
    pub diagnostics_retention_max_mb: Option<f64>,
    /// At most one diagnostics maintenance sweep per this interval.
    pub diagnostics_sweep_interval: Duration,
}

impl Default for SubstrateConfig {
    fn default() -> Self {
        SubstrateConfig {
            drift_detection: true,
            empirical_tracking: true,
            prefetch_stall_threshold: Duration::from_secs(60),
            diagnostics_retention_days: Some(30.0),
            diagnostics_retention_max_mb: None,
            diagnostics_sweep_interval: Duration::from_secs(24 * 3600),
        }
    }
}

/// Job queue defaults (cjm-substrate's `JobQueue` constructor defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// Jobs in flight at most (admission still gates each).
    pub max_concurrent_lanes: u32,
    /// GPU admission budget as a share of total GPU memory.
    pub gpu_headroom_fraction: f64,
    /// Time a cooperative cancel is given before the call is forced.
    pub cancel_timeout: Duration,
    /// Interval between progress polls of a running native job (0.2 s).
    pub progress_poll_interval: Duration,
    /// A resource snapshot every this many progress polls.
    pub resource_snapshot_cadence_polls: u32,
    /// Finished jobs kept in memory (the journal keeps all of them).
    pub max_history: u32,
    /// A result larger than this (bytes of JSON) is kept in memory only until it is
    /// delivered: to the waiters present when its job ends, or, with none, not at all (the
    /// job then reports `result_dropped_bytes`). Bounds what a burst of large results holds.
    pub max_history_result_bytes: usize,
    /// Bytes of kwargs that waiting jobs may hold in all; a submission past it is refused
    /// with a typed `resource` error (`QueueError::Full`), never queued into unbounded memory.
    pub max_pending_bytes: usize,
    /// Calls one native worker takes at once (1: same-worker concurrency is opt-in; a wasm
    /// capability's sandbox `max_concurrency` sets its own).
    pub default_instance_concurrency: u32,
    /// Retry policies by capability name, for jobs that bring none of their own.
    pub retry_defaults: BTreeMap<String, RetryPolicy>,
    /// How long this host's lease on the data dir holds without a heartbeat (renewed every
    /// third of it). Past it, another host takes this host for gone and reconciles its jobs.
    pub lease_ttl: Duration,
    /// Whether this queue reconciles the jobs of gone hosts on the data dir (adopts their
    /// waiting jobs, ends their running ones). A long-lived host does; a one-shot command
    /// (`cjm-ctl submit`) leaves them to one.
    pub recover: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_concurrent_lanes: 4,
            gpu_headroom_fraction: 0.9,
            cancel_timeout: Duration::from_secs(3),
            progress_poll_interval: Duration::from_millis(200),
            resource_snapshot_cadence_polls: 10,
            max_history: 1000,
            max_history_result_bytes: 1024 * 1024,
            max_pending_bytes: 256 * 1024 * 1024,
            default_instance_concurrency: 1,
            retry_defaults: BTreeMap::new(),
            lease_ttl: Duration::from_secs(15),
            recover: true,
        }
    }
}

/// How Python capability environments are made and found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PythonRuntime {
    /// Project-local or system-wide.
    pub mode: RuntimeMode,
    /// The environment manager.
    pub env_manager: EnvManager,
    /// The runtime prefix (local mode).
    pub prefix: Option<PathBuf>,
    /// Per-platform binaries (`linux-x64` -> path), absolute.
    pub binaries: BTreeMap<String, PathBuf>,
}

impl PythonRuntime {
    /// The conda/micromamba binary for this platform: the configured binary, else, in local
    /// mode, `<prefix>/bin/micromamba` (cjm-substrate's `conda_binary_path`; the prefix is a
    /// local-mode setting: a system-wide runtime finds conda on `PATH`).
    pub fn conda_binary(&self) -> Option<PathBuf> {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "x64",
            "aarch64" => "arm64",
            other => other,
        };
        let os = match std::env::consts::OS {
            "macos" => "darwin",
            "windows" => "win",
            other => other,
        };
        self.binaries
            .get(&format!("{os}-{arch}"))
            .cloned()
            .or_else(|| {
                self.prefix
                    .as_ref()
                    .filter(|_| self.mode == RuntimeMode::Local)
                    .map(|p| p.join("bin").join("micromamba"))
            })
    }
}

/// Project-local or system-wide runtime (cjm-substrate's `RuntimeMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RuntimeMode {
    /// Project-local runtime and data.
    Local,
    /// System-wide conda (the default).
    #[default]
    System,
}

/// The tool that makes Python environments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EnvManager {
    /// `uv venv` + `uv pip`.
    Uv,
    /// `python -m venv` + pip.
    Venv,
    /// conda (cjm-substrate's default).
    #[default]
    Conda,
    /// micromamba.
    Micromamba,
    /// miniforge's conda/mamba.
    Miniforge,
}

impl EnvManager {
    /// The configuration name (`uv`, `venv`, `conda`, `micromamba`, `miniforge`).
    pub fn as_str(self) -> &'static str {
        match self {
            EnvManager::Uv => "uv",
            EnvManager::Venv => "venv",
            EnvManager::Conda => "conda",
            EnvManager::Micromamba => "micromamba",
            EnvManager::Miniforge => "miniforge",
        }
    }

    /// Whether environments are conda-style (named, made by a conda binary).
    pub fn is_conda_like(self) -> bool {
        matches!(
            self,
            EnvManager::Conda | EnvManager::Micromamba | EnvManager::Miniforge
        )
    }
}

/// Worker log level, as Python's logging names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// `DEBUG`.
    Debug,
    /// `INFO` (the default).
    #[default]
    Info,
    /// `WARNING`.
    Warning,
    /// `ERROR`.
    Error,
    /// `CRITICAL`.
    Critical,
}

impl LogLevel {
    /// The Python logging name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warning => "WARNING",
            LogLevel::Error => "ERROR",
            LogLevel::Critical => "CRITICAL",
        }
    }
}

impl HostConfig {
    /// Defaults only (no environment, no file), the data dir under the working directory.
    pub fn defaults() -> Result<HostConfig> {
        HostConfig::try_from(RawConfig::default())
    }

    /// A builder for code that configures the host directly.
    pub fn builder() -> HostConfigBuilder {
        HostConfigBuilder::default()
    }

    /// `manifests/`.
    pub fn manifests_dir(&self) -> PathBuf {
        self.data_dir.join("manifests")
    }

    /// `data/`: the parent of every capability's own data dir.
    pub fn capability_data_root(&self) -> PathBuf {
        self.data_dir.join("data")
    }

    /// `data/<capability>`: a capability's `CAPABILITY_DATA_DIR`.
    pub fn capability_data_dir(&self, capability: &str) -> PathBuf {
        self.capability_data_root().join(capability)
    }

    /// The value of a `${NAME}` placeholder (see
    /// [`PLACEHOLDERS`](crate::manifest::runtime::PLACEHOLDERS)) for capability `capability`,
    /// the same values its worker gets in its environment (cjm-substrate's):
    /// `CJM_CAPABILITY_DATA_DIR` is the parent of every capability's data (`data/`),
    /// `CAPABILITY_DATA_DIR` the capability's own (`data/<capability>`).
    pub fn placeholder(&self, capability: &str, name: &str) -> Option<String> {
        let path = match name {
            "CJM_CAPABILITY_DATA_DIR" => self.capability_data_root(),
            "CAPABILITY_DATA_DIR" => self.capability_data_dir(capability),
            "CJM_MODELS_DIR" => self.models_dir.clone()?,
            "CAPABILITY_NAME" => return Some(capability.to_owned()),
            _ => return None,
        };
        Some(path.display().to_string())
    }

    /// `cache/`.
    pub fn cache_dir(&self) -> PathBuf {
        self.data_dir.join("cache")
    }

    /// `cache/components/`: precompiled wasm components, one per sha256.
    pub fn component_cache_dir(&self) -> PathBuf {
        self.cache_dir().join("components")
    }

    /// `journal.db`.
    pub fn journal_db_path(&self) -> PathBuf {
        self.data_dir.join("journal.db")
    }

    /// `diagnostics.db` (given to workers as `CJM_DIAGNOSTICS_DB`).
    pub fn diagnostics_db_path(&self) -> PathBuf {
        self.data_dir.join("diagnostics.db")
    }

    /// `capability_configs.db`.
    pub fn config_store_path(&self) -> PathBuf {
        self.data_dir.join("capability_configs.db")
    }

    /// `empirical_resources.db`.
    pub fn empirical_db_path(&self) -> PathBuf {
        self.data_dir.join("empirical_resources.db")
    }

    /// `input_hash_cache.db`.
    pub fn input_hash_cache_path(&self) -> PathBuf {
        self.data_dir.join("input_hash_cache.db")
    }

    /// `secrets/`.
    pub fn secrets_dir(&self) -> PathBuf {
        self.data_dir.join("secrets")
    }

    /// `secrets/secrets.json`.
    pub fn secrets_path(&self) -> PathBuf {
        self.secrets_dir().join("secrets.json")
    }

    /// Creates the data dir layout (`manifests/`, `data/`, `cache/components/`, `secrets/`
    /// with mode 0700). The databases create themselves when opened.
    pub fn ensure_layout(&self) -> Result<()> {
        let created = !self.data_dir.exists();
        for dir in [
            self.manifests_dir(),
            self.capability_data_root(),
            self.component_cache_dir(),
            self.secrets_dir(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        // The data dir (when the host made it: an existing dir may be shared on purpose) and
        // the secrets dir are the user's alone; the stores are 0600 whatever the dir.
        use std::os::unix::fs::PermissionsExt;
        let private = if created {
            vec![self.data_dir.clone(), self.secrets_dir()]
        } else {
            vec![self.secrets_dir()]
        };
        for dir in private {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(&dir, e))?;
        }
        Ok(())
    }

    /// Where manifests are discovered, first wins: the extra dirs, then the data dir's
    /// `manifests/`.
    pub fn manifest_search_paths(&self) -> Vec<PathBuf> {
        let mut dirs = self.extra_manifest_dirs.clone();
        dirs.push(self.manifests_dir());
        dirs
    }
}

#[cfg(test)]
mod tests;
