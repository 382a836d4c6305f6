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

mod raw;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use raw::{
    CONFIG_FILE_VAR, ENV_VARS, RawConfig, RawQueue, RawRuntime, RawSubstrate, env_var_for,
};

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
    /// Interval between progress polls of a running job.
    pub progress_poll_interval: Duration,
    /// A resource snapshot every this many progress polls.
    pub resource_snapshot_cadence_polls: u32,
    /// Minimum time between idle-eviction requests for the same blocked job.
    pub evict_cooldown: Duration,
    /// Finished jobs kept in memory (the journal keeps all of them).
    pub max_history: u32,
    /// A result larger than this (bytes of JSON) is kept in memory only until it is
    /// delivered: to the waiters present when its job ends, or, with none, not at all (the
    /// job then reports `result_dropped_bytes`). Bounds what a burst of large results holds.
    pub max_history_result_bytes: usize,
    /// Bytes of kwargs that waiting jobs may hold in all; a submission past it is refused
    /// with a typed `resource` error (`QueueError::Full`), never queued into unbounded memory.
    pub max_pending_bytes: usize,
    /// Calls one capability instance takes at once unless its manifest raises it.
    pub default_instance_concurrency: u32,
    /// Retry policies by capability name, for jobs that bring none of their own.
    pub retry_defaults: BTreeMap<String, crate::queue::RetryPolicy>,
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
            progress_poll_interval: Duration::from_secs(1),
            resource_snapshot_cadence_polls: 4,
            evict_cooldown: Duration::from_secs(15),
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
    /// The conda/micromamba binary for this platform: the configured binary, else
    /// `<prefix>/bin/micromamba` (cjm-substrate's `conda_binary_path`).
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

impl TryFrom<RawConfig> for HostConfig {
    type Error = Error;

    /// Validates one layer over the defaults; relative paths are relative to the working
    /// directory.
    fn try_from(raw: RawConfig) -> Result<HostConfig> {
        let cwd = current_dir()?;
        resolve(&[(&raw, Origin::Builder)], &cwd, None)
    }
}

/// Where a value came from, for messages and for resolving relative paths.
#[derive(Debug, Clone)]
enum Origin {
    Cli,
    Env,
    Yaml(PathBuf),
    Builder,
}

impl Origin {
    fn label(&self, field: &str) -> String {
        match self {
            Origin::Cli => "command line".to_owned(),
            Origin::Env => format!(
                "environment variable {}",
                env_var_for(field).unwrap_or("CJM_*")
            ),
            Origin::Yaml(path) => path.display().to_string(),
            Origin::Builder => "configuration".to_owned(),
        }
    }

    fn absolute(&self, path: &Path, cwd: &Path) -> PathBuf {
        if path.is_absolute() {
            return path.to_owned();
        }
        match self {
            Origin::Yaml(file) => file.parent().unwrap_or(cwd).join(path),
            _ => cwd.join(path),
        }
    }
}

fn current_dir() -> Result<PathBuf> {
    std::env::current_dir().map_err(|e| Error::io(".", e))
}

fn invalid(origin: &Origin, field: &str, message: String) -> Error {
    Error::InvalidConfig {
        origin: origin.label(field),
        field: field.to_owned(),
        message,
    }
}

/// The layers, highest precedence first.
struct Layers<'a> {
    layers: &'a [(&'a RawConfig, Origin)],
}

impl<'a> Layers<'a> {
    fn pick<T>(&self, get: impl Fn(&'a RawConfig) -> Option<T>) -> Option<(T, &'a Origin)> {
        self.layers
            .iter()
            .find_map(|(raw, origin)| get(raw).map(|v| (v, origin)))
    }
}

fn positive(value: Option<(f64, &Origin)>, field: &str, default: f64) -> Result<f64> {
    match value {
        None => Ok(default),
        Some((v, _)) if v.is_finite() && v > 0.0 => Ok(v),
        Some((v, origin)) => Err(invalid(
            origin,
            field,
            format!("expected a number greater than 0, found {v}"),
        )),
    }
}

fn at_least_one(value: Option<(u32, &Origin)>, field: &str, default: u32) -> Result<u32> {
    match value {
        None => Ok(default),
        Some((v, _)) if v >= 1 => Ok(v),
        Some((v, origin)) => Err(invalid(
            origin,
            field,
            format!("expected an integer of at least 1, found {v}"),
        )),
    }
}

fn choice<T: Copy>(
    value: Option<(&String, &Origin)>,
    field: &str,
    choices: &[(&str, T)],
    default: T,
) -> Result<T> {
    let Some((v, origin)) = value else {
        return Ok(default);
    };
    choices
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(v.trim()))
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
            invalid(
                origin,
                field,
                format!("expected one of {}, found {v:?}", names.join(", ")),
            )
        })
}

fn resolve(
    layers: &[(&RawConfig, Origin)],
    cwd: &Path,
    config_file: Option<PathBuf>,
) -> Result<HostConfig> {
    let l = Layers { layers };
    let path =
        |get: fn(&RawConfig) -> Option<&PathBuf>| l.pick(get).map(|(p, o)| o.absolute(p, cwd));
    let data_dir = path(|r| r.data_dir.as_ref()).unwrap_or_else(|| cwd.join(".cjm"));
    let capabilities_config =
        path(|r| r.capabilities_config.as_ref()).unwrap_or_else(|| cwd.join("capabilities.yaml"));
    let models_dir = path(|r| r.models_dir.as_ref());
    let log_level = choice(
        l.pick(|r| r.log_level.as_ref()),
        "log_level",
        &[
            ("DEBUG", LogLevel::Debug),
            ("INFO", LogLevel::Info),
            ("WARNING", LogLevel::Warning),
            ("ERROR", LogLevel::Error),
            ("CRITICAL", LogLevel::Critical),
        ],
        LogLevel::Info,
    )?;

    let rt =
        |get: fn(&RawRuntime) -> Option<&String>| l.pick(move |r| r.runtime.as_ref().and_then(get));
    let mode = choice(
        rt(|r| r.mode.as_ref()),
        "runtime.mode",
        &[
            ("local", RuntimeMode::Local),
            ("system", RuntimeMode::System),
        ],
        RuntimeMode::System,
    )?;
    let managers = [
        ("uv", EnvManager::Uv),
        ("venv", EnvManager::Venv),
        ("conda", EnvManager::Conda),
        ("micromamba", EnvManager::Micromamba),
        ("miniforge", EnvManager::Miniforge),
    ];
    // `env_manager` and cjm-substrate's `conda_type` set the same thing; within one layer
    // `env_manager` wins, and a higher layer wins over a lower one whichever key it uses.
    let manager_value = l.pick(|r| {
        let rt = r.runtime.as_ref()?;
        rt.env_manager
            .as_ref()
            .map(|v| (v, "runtime.env_manager"))
            .or_else(|| rt.conda_type.as_ref().map(|v| (v, "runtime.conda_type")))
    });
    let env_manager = match manager_value {
        Some(((v, field), origin)) if field == "runtime.conda_type" => {
            choice(Some((v, origin)), field, &managers[2..], EnvManager::Conda)?
        }
        Some(((v, field), origin)) => {
            choice(Some((v, origin)), field, &managers, EnvManager::Conda)?
        }
        None => EnvManager::Conda,
    };
    let prefix = l
        .pick(|r| r.runtime.as_ref().and_then(|rt| rt.prefix.as_ref()))
        .map(|(p, o)| o.absolute(p, cwd));
    let binaries = l
        .pick(|r| r.runtime.as_ref().and_then(|rt| rt.binaries.as_ref()))
        .map(|(b, o)| {
            b.iter()
                .map(|(k, p)| (k.clone(), o.absolute(p, cwd)))
                .collect()
        })
        .unwrap_or_default();

    let sub =
        |get: fn(&RawSubstrate) -> Option<f64>| l.pick(move |r| r.substrate.as_ref().and_then(get));
    let defaults = SubstrateConfig::default();
    let threshold = positive(
        sub(|s| s.prefetch_stall_threshold_seconds),
        "substrate.prefetch_stall_threshold_seconds",
        defaults.prefetch_stall_threshold.as_secs_f64(),
    )?;
    let retention_days = match sub(|s| s.diagnostics_retention_days) {
        None => defaults.diagnostics_retention_days,
        Some((d, origin)) if !d.is_finite() => {
            return Err(invalid(
                origin,
                "substrate.diagnostics_retention_days",
                format!("expected a number of days, found {d}"),
            ));
        }
        // cjm-substrate: a retention of 0 days or less disables age-based deletion.
        Some((d, _)) => (d > 0.0).then_some(d),
    };
    let max_mb = match sub(|s| s.diagnostics_retention_max_mb) {
        None => None,
        Some((mb, origin)) => Some(positive(
            Some((mb, origin)),
            "substrate.diagnostics_retention_max_mb",
            mb,
        )?),
    };
    let sweep_hours = positive(
        sub(|s| s.diagnostics_sweep_interval_hours),
        "substrate.diagnostics_sweep_interval_hours",
        24.0,
    )?;
    let flag = |get: fn(&RawSubstrate) -> Option<bool>| {
        l.pick(move |r| r.substrate.as_ref().and_then(get))
            .map(|(b, _)| b)
    };
    let substrate = SubstrateConfig {
        drift_detection: flag(|s| s.drift_detection).unwrap_or(true),
        empirical_tracking: flag(|s| s.empirical_tracking).unwrap_or(true),
        prefetch_stall_threshold: secs(threshold),
        diagnostics_retention_days: retention_days,
        diagnostics_retention_max_mb: max_mb,
        diagnostics_sweep_interval: secs(sweep_hours * 3600.0),
    };

    let qf = |get: fn(&RawQueue) -> Option<f64>| l.pick(move |r| r.queue.as_ref().and_then(get));
    let qu = |get: fn(&RawQueue) -> Option<u32>| l.pick(move |r| r.queue.as_ref().and_then(get));
    let qd = QueueConfig::default();
    let headroom = match qf(|q| q.gpu_headroom_fraction) {
        None => qd.gpu_headroom_fraction,
        Some((f, _)) if f > 0.0 && f <= 1.0 => f,
        Some((f, origin)) => {
            return Err(invalid(
                origin,
                "queue.gpu_headroom_fraction",
                format!("expected a fraction greater than 0 and at most 1, found {f}"),
            ));
        }
    };
    let queue = QueueConfig {
        max_concurrent_lanes: at_least_one(
            qu(|q| q.max_concurrent_lanes),
            "queue.max_concurrent_lanes",
            qd.max_concurrent_lanes,
        )?,
        gpu_headroom_fraction: headroom,
        cancel_timeout: secs(positive(
            qf(|q| q.cancel_timeout_seconds),
            "queue.cancel_timeout_seconds",
            3.0,
        )?),
        progress_poll_interval: secs(positive(
            qf(|q| q.progress_poll_interval_seconds),
            "queue.progress_poll_interval_seconds",
            1.0,
        )?),
        resource_snapshot_cadence_polls: at_least_one(
            qu(|q| q.resource_snapshot_cadence_polls),
            "queue.resource_snapshot_cadence_polls",
            qd.resource_snapshot_cadence_polls,
        )?,
        evict_cooldown: secs(positive(
            qf(|q| q.evict_cooldown_seconds),
            "queue.evict_cooldown_seconds",
            15.0,
        )?),
        max_history: qu(|q| q.max_history).map_or(qd.max_history, |(v, _)| v),
        max_history_result_bytes: qu(|q| q.max_history_result_bytes)
            .map_or(qd.max_history_result_bytes, |(v, _)| v as usize),
        max_pending_bytes: qu(|q| q.max_pending_bytes)
            .map_or(qd.max_pending_bytes, |(v, _)| v as usize),
        default_instance_concurrency: at_least_one(
            qu(|q| q.default_instance_concurrency),
            "queue.default_instance_concurrency",
            qd.default_instance_concurrency,
        )?,
        retry_defaults: BTreeMap::new(),
        lease_ttl: qd.lease_ttl,
        recover: qd.recover,
    };

    Ok(HostConfig {
        data_dir,
        capabilities_config,
        models_dir,
        log_level,
        python: PythonRuntime {
            mode,
            env_manager,
            prefix,
            binaries,
        },
        substrate,
        queue,
        extra_manifest_dirs: Vec::new(),
        config_file,
    })
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
}

/// Loads the full stack: command line > environment > `cjm.yaml` > defaults.
#[derive(Debug, Clone, Default)]
pub struct ConfigLoader {
    cli: RawConfig,
    config_file: Option<PathBuf>,
    env: Option<Vec<(String, String)>>,
    cwd: Option<PathBuf>,
    search_upward: bool,
}

impl ConfigLoader {
    /// A loader that reads the process environment and searches for `cjm.yaml` upward from
    /// the working directory.
    pub fn new() -> Self {
        ConfigLoader {
            search_upward: true,
            ..ConfigLoader::default()
        }
    }

    /// The command-line layer (what `cjm-ctl` parsed).
    pub fn cli(mut self, cli: RawConfig) -> Self {
        self.cli = cli;
        self
    }

    /// Reads this `cjm.yaml` (it must exist) instead of searching for one.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// Uses these variables instead of the process environment.
    pub fn env_vars<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env = Some(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    /// Resolves relative paths and starts the `cjm.yaml` search from `dir`.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Does not search for a `cjm.yaml` (an explicit one is still read).
    pub fn no_search(mut self) -> Self {
        self.search_upward = false;
        self
    }

    /// Reads every layer and resolves them.
    pub fn load(self) -> Result<HostConfig> {
        let cwd = match self.cwd {
            Some(dir) => dir,
            None => current_dir()?,
        };
        let env_vars = match self.env {
            Some(vars) => vars,
            None => std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        };
        let explicit_file = self.config_file.clone().or_else(|| {
            env_vars
                .iter()
                .find(|(k, v)| k == CONFIG_FILE_VAR && !v.is_empty())
                .map(|(_, v)| cwd.join(v))
        });
        let env = RawConfig::from_env_vars(env_vars)?;
        let yaml_path = match explicit_file {
            Some(path) => Some(path),
            None if self.search_upward => find_config_file(&cwd),
            None => None,
        };
        let yaml = match &yaml_path {
            Some(path) => Some(RawConfig::from_yaml_file(path)?),
            None => None,
        };
        let mut layers: Vec<(&RawConfig, Origin)> =
            vec![(&self.cli, Origin::Cli), (&env, Origin::Env)];
        if let (Some(raw), Some(path)) = (&yaml, &yaml_path) {
            layers.push((raw, Origin::Yaml(path.clone())));
        }
        resolve(&layers, &cwd, yaml_path)
    }
}

/// The first `cjm.yaml` in `start` or one of its ancestors.
pub fn find_config_file(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|d| d.join(CONFIG_FILE_NAME))
        .find(|p| p.is_file())
}

/// Builds a [`HostConfig`] in code, over the defaults (no environment, no file).
#[derive(Debug, Clone, Default)]
pub struct HostConfigBuilder {
    raw: RawConfig,
    substrate: Option<SubstrateConfig>,
    queue: Option<QueueConfig>,
}

impl HostConfigBuilder {
    /// The data dir.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.raw.data_dir = Some(dir.into());
        self
    }

    /// The models dir.
    pub fn models_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.raw.models_dir = Some(dir.into());
        self
    }

    /// The `capabilities.yaml` path.
    pub fn capabilities_config(mut self, path: impl Into<PathBuf>) -> Self {
        self.raw.capabilities_config = Some(path.into());
        self
    }

    /// The worker log level.
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.raw.log_level = Some(level.as_str().to_owned());
        self
    }

    /// The Python environment manager.
    pub fn env_manager(mut self, manager: EnvManager) -> Self {
        self.raw
            .runtime
            .get_or_insert_with(RawRuntime::default)
            .env_manager = Some(manager.as_str().to_owned());
        self
    }

    /// All substrate toggles at once (validated at build).
    pub fn substrate(mut self, substrate: SubstrateConfig) -> Self {
        self.substrate = Some(substrate);
        self
    }

    /// All queue defaults at once (validated at build).
    pub fn queue(mut self, queue: QueueConfig) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<HostConfig> {
        let mut raw = self.raw;
        if let Some(s) = self.substrate {
            raw.substrate = Some(RawSubstrate {
                drift_detection: Some(s.drift_detection),
                empirical_tracking: Some(s.empirical_tracking),
                prefetch_stall_threshold_seconds: Some(s.prefetch_stall_threshold.as_secs_f64()),
                diagnostics_retention_days: Some(s.diagnostics_retention_days.unwrap_or(0.0)),
                diagnostics_retention_max_mb: s.diagnostics_retention_max_mb,
                diagnostics_sweep_interval_hours: Some(
                    s.diagnostics_sweep_interval.as_secs_f64() / 3600.0,
                ),
            });
        }
        let queue = self.queue.clone();
        if let Some(q) = self.queue {
            raw.queue = Some(RawQueue {
                max_concurrent_lanes: Some(q.max_concurrent_lanes),
                gpu_headroom_fraction: Some(q.gpu_headroom_fraction),
                cancel_timeout_seconds: Some(q.cancel_timeout.as_secs_f64()),
                progress_poll_interval_seconds: Some(q.progress_poll_interval.as_secs_f64()),
                resource_snapshot_cadence_polls: Some(q.resource_snapshot_cadence_polls),
                evict_cooldown_seconds: Some(q.evict_cooldown.as_secs_f64()),
                max_history: Some(q.max_history),
                max_history_result_bytes: Some(
                    u32::try_from(q.max_history_result_bytes).unwrap_or(u32::MAX),
                ),
                max_pending_bytes: Some(u32::try_from(q.max_pending_bytes).unwrap_or(u32::MAX)),
                default_instance_concurrency: Some(q.default_instance_concurrency),
            });
        }
        let mut config = HostConfig::try_from(raw)?;
        // What the YAML layer cannot carry (or carries narrower) is kept as given.
        if let Some(q) = queue {
            config.queue.retry_defaults = q.retry_defaults;
            config.queue.max_pending_bytes = q.max_pending_bytes;
            config.queue.max_history_result_bytes = q.max_history_result_bytes;
            config.queue.lease_ttl = q.lease_ttl;
            config.queue.recover = q.recover;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
