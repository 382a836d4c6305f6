//! Resolving the layers into a validated [`HostConfig`], field by field, highest precedence
//! first; a bad value is reported with its origin (the yaml file, the variable, the command
//! line) and its field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawConfig, RawQueue, RawRuntime, RawSubstrate, env_var_for};
use super::{
    EnvManager, HostConfig, LogLevel, PythonRuntime, QueueConfig, RuntimeMode, SubstrateConfig,
};
use crate::config::ConfigError;
use crate::error::{Error, Result};

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
pub(super) enum Origin {
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

pub(super) fn current_dir() -> Result<PathBuf> {
    std::env::current_dir().map_err(|e| Error::io(".", e))
}

fn invalid(origin: &Origin, field: &str, message: String) -> Error {
    Error::Config(ConfigError::InvalidConfig {
        origin: origin.label(field),
        field: field.to_owned(),
        message,
    })
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

pub(super) fn resolve(
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

    let substrate = substrate(&l)?;
    let queue = queue(&l)?;

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
        wasm_instance_slots: None,
        config_file,
    })
}

/// The `substrate` section.
fn substrate(l: &Layers<'_>) -> Result<SubstrateConfig> {
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
    Ok(SubstrateConfig {
        drift_detection: flag(|s| s.drift_detection).unwrap_or(true),
        empirical_tracking: flag(|s| s.empirical_tracking).unwrap_or(true),
        prefetch_stall_threshold: secs(threshold),
        diagnostics_retention_days: retention_days,
        diagnostics_retention_max_mb: max_mb,
        diagnostics_sweep_interval: secs(sweep_hours * 3600.0),
    })
}

/// The `queue` section.
fn queue(l: &Layers<'_>) -> Result<QueueConfig> {
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
    Ok(QueueConfig {
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
            qd.progress_poll_interval.as_secs_f64(),
        )?),
        resource_snapshot_cadence_polls: at_least_one(
            qu(|q| q.resource_snapshot_cadence_polls),
            "queue.resource_snapshot_cadence_polls",
            qd.resource_snapshot_cadence_polls,
        )?,
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
    })
}

pub(super) fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
}
