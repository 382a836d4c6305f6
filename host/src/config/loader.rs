//! Loading a configuration: the full stack from the command line, the environment and
//! `cjm.yaml` ([`ConfigLoader`]), or from code ([`HostConfigBuilder`]).

use std::path::{Path, PathBuf};

use super::raw::{CONFIG_FILE_VAR, RawConfig, RawQueue, RawRuntime, RawSubstrate};
use super::resolve::{Origin, current_dir, resolve};
use super::{CONFIG_FILE_NAME, EnvManager, HostConfig, LogLevel, QueueConfig, SubstrateConfig};
use crate::error::Result;

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
