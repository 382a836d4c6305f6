//! The raw layer: one serde struct for every source (`cjm.yaml`, `CJM_*` environment
//! variables, the command line, the builder), every field optional, unknown keys refused.
//!
//! Its YAML shape is cjm-substrate's `cjm.yaml` (`data_dir`, `capabilities_config`,
//! `models_dir`, `runtime:`, `substrate:`), so a Python project's file loads unchanged, plus
//! this host's `queue:` and `log_level`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::ConfigError;
use crate::error::{Error, Result};

/// One layer of configuration. `None` means "not set here": the next layer down decides.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Root of everything the host keeps (`./.cjm` by default).
    pub data_dir: Option<PathBuf>,
    /// The declarative install file (`capabilities.yaml`).
    pub capabilities_config: Option<PathBuf>,
    /// Where model weights are downloaded (`CJM_MODELS_DIR` for workers).
    pub models_dir: Option<PathBuf>,
    /// Level of worker logging (`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`).
    pub log_level: Option<String>,
    /// Python environment runtime.
    pub runtime: Option<RawRuntime>,
    /// Substrate behaviour toggles.
    pub substrate: Option<RawSubstrate>,
    /// Job queue defaults.
    pub queue: Option<RawQueue>,
}

/// `runtime:`: how Python capability environments are made and found.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    /// `local` (project-local prefix) or `system`.
    pub mode: Option<String>,
    /// `uv`, `venv`, `conda`, `micromamba` or `miniforge`.
    pub env_manager: Option<String>,
    /// cjm-substrate's name for the conda flavour (`conda`, `micromamba`, `miniforge`); read
    /// when `env_manager` is not set.
    pub conda_type: Option<String>,
    /// The runtime prefix (local mode).
    pub prefix: Option<PathBuf>,
    /// Per-platform binaries (`linux-x64: path/to/micromamba`).
    pub binaries: Option<BTreeMap<String, PathBuf>>,
}

/// `substrate:`: behaviour toggles, with cjm-substrate's keys.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSubstrate {
    /// Compare the live config schema and surface with the manifest's witnesses at load.
    pub drift_detection: Option<bool>,
    /// Record a resource sample after every call.
    pub empirical_tracking: Option<bool>,
    /// Seconds without progress before a prefetch counts as stalled.
    pub prefetch_stall_threshold_seconds: Option<f64>,
    /// Age of diagnostics rows to keep, in days (<= 0 keeps everything).
    pub diagnostics_retention_days: Option<f64>,
    /// Size budget of the diagnostics database in MB (none: no size-based deletion).
    pub diagnostics_retention_max_mb: Option<f64>,
    /// Hours between diagnostics maintenance sweeps.
    pub diagnostics_sweep_interval_hours: Option<f64>,
}

/// `queue:`: job queue defaults (cjm-substrate's `JobQueue` constructor defaults).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    /// Jobs in flight at most.
    pub max_concurrent_lanes: Option<u32>,
    /// Share of total GPU memory admission may plan for.
    pub gpu_headroom_fraction: Option<f64>,
    /// Seconds a cooperative cancel is given before force.
    pub cancel_timeout_seconds: Option<f64>,
    /// Seconds between progress polls of a running native job (0.2).
    pub progress_poll_interval_seconds: Option<f64>,
    /// Every how many progress polls a resource snapshot is taken.
    pub resource_snapshot_cadence_polls: Option<u32>,
    /// Finished jobs kept in memory.
    pub max_history: Option<u32>,
    /// Results larger than this (bytes of JSON) leave the in-memory history once delivered.
    pub max_history_result_bytes: Option<u32>,
    /// Bytes of kwargs waiting jobs may hold in all.
    pub max_pending_bytes: Option<u32>,
    /// Calls one native worker takes at once (a wasm capability's sandbox sets its own).
    pub default_instance_concurrency: Option<u32>,
}

impl RawConfig {
    /// Parses `cjm.yaml` text; `path` names it in errors. An empty document is an empty layer.
    pub fn from_yaml_str(path: &Path, text: &str) -> Result<RawConfig> {
        let meaningful = text
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#') && l.trim() != "---");
        if !meaningful {
            return Ok(RawConfig::default());
        }
        // One-line messages (line, column, field): the rustc-like snippet form spans lines,
        // which logs and JSON error bodies do not want.
        let mut options = serde_saphyr::Options::default();
        options.with_snippet = false;
        serde_saphyr::from_str_with_options(text, options).map_err(|source| {
            Error::Config(ConfigError::Yaml {
                path: path.to_owned(),
                source: Box::new(source),
            })
        })
    }

    /// Reads and parses a `cjm.yaml` file.
    pub fn from_yaml_file(path: &Path) -> Result<RawConfig> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::not_a_file(path, &meta));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_yaml_str(path, &text)
    }

    /// The layer the `CJM_*` variables of this process make ([`ENV_VARS`] lists them).
    pub fn from_env() -> Result<RawConfig> {
        Self::from_env_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// The layer `vars` make; variables outside [`ENV_VARS`] are ignored (workers see other
    /// `CJM_*` variables, such as `CJM_DIAGNOSTICS_DB`, that are not configuration).
    pub fn from_env_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<RawConfig> {
        let mut raw = RawConfig::default();
        for (key, value) in vars {
            if value.is_empty() {
                continue;
            }
            let Some((_, field)) = ENV_VARS.iter().find(|(var, _)| *var == key) else {
                continue;
            };
            raw.set_from_env(&key, field, value)?;
        }
        Ok(raw)
    }

    fn set_from_env(&mut self, var: &str, field: &str, value: String) -> Result<()> {
        let runtime = || RawRuntime::default();
        match field {
            "data_dir" => self.data_dir = Some(value.into()),
            "capabilities_config" => self.capabilities_config = Some(value.into()),
            "models_dir" => self.models_dir = Some(value.into()),
            "log_level" => self.log_level = Some(value),
            "runtime.mode" => self.runtime.get_or_insert_with(runtime).mode = Some(value),
            "runtime.env_manager" => {
                self.runtime.get_or_insert_with(runtime).env_manager = Some(value)
            }
            "runtime.conda_type" => {
                self.runtime.get_or_insert_with(runtime).conda_type = Some(value)
            }
            "runtime.prefix" => {
                self.runtime.get_or_insert_with(runtime).prefix = Some(value.into())
            }
            f if f.starts_with("substrate.") => {
                let s = self.substrate.get_or_insert_with(RawSubstrate::default);
                match f {
                    "substrate.drift_detection" => {
                        s.drift_detection = Some(parse_bool(var, f, &value)?)
                    }
                    "substrate.empirical_tracking" => {
                        s.empirical_tracking = Some(parse_bool(var, f, &value)?)
                    }
                    "substrate.prefetch_stall_threshold_seconds" => {
                        s.prefetch_stall_threshold_seconds = Some(parse_num(var, f, &value)?)
                    }
                    "substrate.diagnostics_retention_days" => {
                        s.diagnostics_retention_days = Some(parse_num(var, f, &value)?)
                    }
                    "substrate.diagnostics_retention_max_mb" => {
                        s.diagnostics_retention_max_mb = Some(parse_num(var, f, &value)?)
                    }
                    _ => s.diagnostics_sweep_interval_hours = Some(parse_num(var, f, &value)?),
                }
            }
            f => {
                let q = self.queue.get_or_insert_with(RawQueue::default);
                match f {
                    "queue.max_concurrent_lanes" => {
                        q.max_concurrent_lanes = Some(parse_num(var, f, &value)?)
                    }
                    "queue.gpu_headroom_fraction" => {
                        q.gpu_headroom_fraction = Some(parse_num(var, f, &value)?)
                    }
                    _ => q.default_instance_concurrency = Some(parse_num(var, f, &value)?),
                }
            }
        }
        Ok(())
    }
}

/// The environment variables read as configuration, with the field each sets.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("CJM_DATA_DIR", "data_dir"),
    ("CJM_CAPABILITIES_CONFIG", "capabilities_config"),
    ("CJM_MODELS_DIR", "models_dir"),
    ("CJM_LOG_LEVEL", "log_level"),
    ("CJM_RUNTIME_MODE", "runtime.mode"),
    ("CJM_ENV_MANAGER", "runtime.env_manager"),
    ("CJM_CONDA_TYPE", "runtime.conda_type"),
    ("CJM_CONDA_PREFIX", "runtime.prefix"),
    ("CJM_DRIFT_DETECTION", "substrate.drift_detection"),
    ("CJM_EMPIRICAL_TRACKING", "substrate.empirical_tracking"),
    (
        "CJM_PREFETCH_STALL_THRESHOLD_SECONDS",
        "substrate.prefetch_stall_threshold_seconds",
    ),
    (
        "CJM_DIAGNOSTICS_RETENTION_DAYS",
        "substrate.diagnostics_retention_days",
    ),
    (
        "CJM_DIAGNOSTICS_RETENTION_MAX_MB",
        "substrate.diagnostics_retention_max_mb",
    ),
    (
        "CJM_DIAGNOSTICS_SWEEP_INTERVAL_HOURS",
        "substrate.diagnostics_sweep_interval_hours",
    ),
    ("CJM_MAX_CONCURRENT_LANES", "queue.max_concurrent_lanes"),
    ("CJM_GPU_HEADROOM_FRACTION", "queue.gpu_headroom_fraction"),
    (
        "CJM_DEFAULT_INSTANCE_CONCURRENCY",
        "queue.default_instance_concurrency",
    ),
];

/// The variable naming the `cjm.yaml` to read (instead of searching upward from the working
/// directory).
pub const CONFIG_FILE_VAR: &str = "CJM_CONFIG";

/// The environment variable that sets `field`, if any.
pub fn env_var_for(field: &str) -> Option<&'static str> {
    ENV_VARS.iter().find(|(_, f)| *f == field).map(|(v, _)| *v)
}

fn env_error(var: &str, field: &str, message: String) -> Error {
    Error::Config(ConfigError::InvalidConfig {
        origin: format!("environment variable {var}"),
        field: field.to_owned(),
        message,
    })
}

fn parse_bool(var: &str, field: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(env_error(
            var,
            field,
            format!("expected a boolean (true/false, 1/0, yes/no, on/off), found {value:?}"),
        )),
    }
}

fn parse_num<T: std::str::FromStr>(var: &str, field: &str, value: &str) -> Result<T> {
    value.trim().parse().map_err(|_| {
        let what = if std::any::type_name::<T>().starts_with('u') {
            "a whole number"
        } else {
            "a number"
        };
        env_error(var, field, format!("expected {what}, found {value:?}"))
    })
}
