//! Layered resolution against real files and explicit environments (the process
//! environment is never mutated: tests run in parallel threads).

use std::fs;
use std::time::Duration;

use super::*;
use crate::config::ConfigError;

const NO_ENV: [(&str, &str); 0] = [];

#[test]
fn defaults_put_the_data_dir_under_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigLoader::new()
        .cwd(dir.path())
        .env_vars(NO_ENV)
        .load()
        .unwrap();
    assert_eq!(cfg.data_dir, dir.path().join(".cjm"));
    assert_eq!(cfg.journal_db_path(), dir.path().join(".cjm/journal.db"));
    assert_eq!(
        cfg.diagnostics_db_path(),
        dir.path().join(".cjm/diagnostics.db")
    );
    assert_eq!(
        cfg.secrets_path(),
        dir.path().join(".cjm/secrets/secrets.json")
    );
    assert_eq!(
        cfg.capability_data_dir("whisper"),
        dir.path().join(".cjm/data/whisper")
    );
    assert_eq!(cfg.substrate, SubstrateConfig::default());
    assert_eq!(cfg.queue, QueueConfig::default());
    assert_eq!(cfg.python.env_manager, EnvManager::Conda);
    assert_eq!(cfg.log_level, LogLevel::Info);
    assert_eq!(cfg.config_file, None);
    cfg.ensure_layout().unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(cfg.secrets_dir())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert!(cfg.component_cache_dir().is_dir() && cfg.manifests_dir().is_dir());
}

/// A `cjm.yaml` with cjm-substrate's own keys.
const PYTHON_YAML: &str = "\
# written for cjm-substrate
data_dir: state
models_dir: /models
runtime:
  mode: local
  conda_type: micromamba
  prefix: runtime
  binaries:
    linux-x64: runtime/bin/micromamba
substrate:
  drift_detection: false
  prefetch_stall_threshold_seconds: 120
  diagnostics_retention_days: 0
  diagnostics_retention_max_mb: 512
  diagnostics_sweep_interval_hours: 6
";

#[test]
fn a_python_cjm_yaml_loads_found_upward_with_paths_relative_to_it() {
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join("cjm.yaml"), PYTHON_YAML).unwrap();
    let deep = root.path().join("a/b");
    fs::create_dir_all(&deep).unwrap();
    let cfg = ConfigLoader::new()
        .cwd(&deep)
        .env_vars(NO_ENV)
        .load()
        .unwrap();
    assert_eq!(
        cfg.config_file.as_deref(),
        Some(root.path().join("cjm.yaml").as_path())
    );
    assert_eq!(cfg.data_dir, root.path().join("state"));
    assert_eq!(
        cfg.models_dir.as_deref(),
        Some(std::path::Path::new("/models"))
    );
    assert_eq!(cfg.python.mode, RuntimeMode::Local);
    assert_eq!(cfg.python.env_manager, EnvManager::Micromamba);
    assert_eq!(cfg.python.prefix, Some(root.path().join("runtime")));
    assert_eq!(
        cfg.python.binaries["linux-x64"],
        root.path().join("runtime/bin/micromamba")
    );
    assert!(!cfg.substrate.drift_detection);
    assert!(cfg.substrate.empirical_tracking);
    assert_eq!(
        cfg.substrate.prefetch_stall_threshold,
        Duration::from_secs(120)
    );
    assert_eq!(
        cfg.substrate.diagnostics_retention_days, None,
        "0 days disables age retention"
    );
    assert_eq!(cfg.substrate.diagnostics_retention_max_mb, Some(512.0));
    assert_eq!(
        cfg.substrate.diagnostics_sweep_interval,
        Duration::from_secs(6 * 3600)
    );
}

#[test]
fn cli_beats_env_beats_yaml_beats_defaults() {
    let root = tempfile::tempdir().unwrap();
    let yaml = root.path().join("cjm.yaml");
    fs::write(&yaml, "data_dir: from-yaml\nmodels_dir: yaml-models\nlog_level: ERROR\nsubstrate:\n  empirical_tracking: false\nqueue:\n  max_concurrent_lanes: 2\n").unwrap();
    let env = [
        ("CJM_DATA_DIR", "/from-env"),
        ("CJM_MODELS_DIR", "/env-models"),
        ("CJM_EMPIRICAL_TRACKING", "yes"),
        ("HOME", "/root"),
    ];
    let cli = RawConfig {
        data_dir: Some("/from-cli".into()),
        ..RawConfig::default()
    };
    let cfg = ConfigLoader::new()
        .cwd(root.path())
        .env_vars(env)
        .cli(cli)
        .load()
        .unwrap();
    assert_eq!(cfg.data_dir, std::path::Path::new("/from-cli"));
    assert_eq!(
        cfg.models_dir.as_deref(),
        Some(std::path::Path::new("/env-models"))
    );
    assert!(cfg.substrate.empirical_tracking, "env beats yaml");
    assert_eq!(cfg.log_level, LogLevel::Error, "yaml beats defaults");
    assert_eq!(cfg.queue.max_concurrent_lanes, 2);
    assert_eq!(cfg.queue.gpu_headroom_fraction, 0.9);

    // env_manager (ours) in a higher layer beats conda_type (Python's) in a lower one.
    let cfg = ConfigLoader::new()
        .cwd(root.path())
        .env_vars([("CJM_ENV_MANAGER", "uv"), ("CJM_CONFIG", "cjm.yaml")])
        .load()
        .unwrap();
    assert_eq!(cfg.python.env_manager, EnvManager::Uv);
    assert_eq!(cfg.config_file.as_deref(), Some(yaml.as_path()));
}

#[test]
fn bad_values_name_their_source_and_field() {
    let root = tempfile::tempdir().unwrap();
    let err = ConfigLoader::new()
        .cwd(root.path())
        .env_vars([("CJM_DRIFT_DETECTION", "maybe")])
        .load()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment variable CJM_DRIFT_DETECTION: substrate.drift_detection: expected a boolean (true/false, 1/0, yes/no, on/off), found \"maybe\""
    );
    let err = ConfigLoader::new()
        .cwd(root.path())
        .env_vars([("CJM_MAX_CONCURRENT_LANES", "-2")])
        .load()
        .unwrap_err();
    assert!(
        err.to_string().contains(
            "CJM_MAX_CONCURRENT_LANES: queue.max_concurrent_lanes: expected a whole number"
        ),
        "{err}"
    );
    let err = ConfigLoader::new()
        .cwd(root.path())
        .env_vars([("CJM_ENV_MANAGER", "pipenv")])
        .load()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("runtime.env_manager: expected one of \"uv\", \"venv\""),
        "{err}"
    );

    let yaml = root.path().join("cjm.yaml");
    fs::write(
        &yaml,
        "substrate:\n  prefetch_stall_threshold_seconds: -1\n",
    )
    .unwrap();
    let err = ConfigLoader::new()
        .cwd(root.path())
        .env_vars(NO_ENV)
        .load()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: substrate.prefetch_stall_threshold_seconds: expected a number greater than 0, found -1",
            yaml.display()
        )
    );

    fs::write(&yaml, "substrate:\n  drift_detecton: true\n").unwrap();
    let err = ConfigLoader::new()
        .cwd(root.path())
        .env_vars(NO_ENV)
        .load()
        .unwrap_err();
    assert!(matches!(err, Error::Config(ConfigError::Yaml { .. })));
    let msg = err.to_string();
    assert!(
        msg.contains(&yaml.display().to_string()) && msg.contains("drift_detecton"),
        "{msg}"
    );

    fs::write(&yaml, "queue:\n  max_concurrent_lanes: many\n").unwrap();
    let msg = ConfigLoader::new()
        .cwd(root.path())
        .env_vars(NO_ENV)
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        msg.ends_with("cjm.yaml: invalid u32 at line 2, column 25"),
        "{msg}"
    );

    let missing = ConfigLoader::new()
        .cwd(root.path())
        .env_vars(NO_ENV)
        .config_file(root.path().join("nope.yaml"))
        .load();
    assert!(matches!(missing, Err(Error::Io { .. })));
}

#[test]
fn empty_and_comment_only_yaml_is_an_empty_layer() {
    let root = tempfile::tempdir().unwrap();
    for text in ["", "# nothing\n", "---\n"] {
        fs::write(root.path().join("cjm.yaml"), text).unwrap();
        let cfg = ConfigLoader::new()
            .cwd(root.path())
            .env_vars(NO_ENV)
            .load()
            .unwrap();
        assert_eq!(cfg.data_dir, root.path().join(".cjm"));
    }
}

#[test]
fn the_builder_validates_like_the_files() {
    let cfg = HostConfig::builder()
        .data_dir("/srv/cjm")
        .env_manager(EnvManager::Uv)
        .log_level(LogLevel::Debug)
        .queue(QueueConfig {
            max_concurrent_lanes: 8,
            ..QueueConfig::default()
        })
        .build()
        .unwrap();
    assert_eq!(cfg.data_dir, std::path::Path::new("/srv/cjm"));
    assert_eq!(cfg.queue.max_concurrent_lanes, 8);
    assert_eq!(cfg.python.env_manager, EnvManager::Uv);
    assert_eq!(cfg.substrate, SubstrateConfig::default());
    let err = HostConfig::builder()
        .queue(QueueConfig {
            gpu_headroom_fraction: 1.5,
            ..QueueConfig::default()
        })
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("queue.gpu_headroom_fraction: expected a fraction"),
        "{err}"
    );
    let raw: RawConfig =
        RawConfig::from_yaml_str(std::path::Path::new("x"), "data_dir: /d\n").unwrap();
    assert_eq!(
        HostConfig::try_from(raw).unwrap().data_dir,
        std::path::Path::new("/d")
    );
}

/// `runtime.mode`: the runtime prefix names the conda binary only in local mode; a
/// system-wide runtime finds conda on `PATH`. A configured binary wins in both.
#[test]
fn the_runtime_prefix_is_a_local_mode_setting() {
    let root = tempfile::tempdir().unwrap();
    let yaml = root.path().join("cjm.yaml");
    let load = |mode: &str| {
        fs::write(&yaml, format!("runtime:\n  mode: {mode}\n  prefix: rt\n")).unwrap();
        ConfigLoader::new()
            .cwd(root.path())
            .env_vars(NO_ENV)
            .load()
            .unwrap()
    };
    let local = load("local");
    assert_eq!(
        local.python.conda_binary(),
        Some(root.path().join("rt/bin/micromamba"))
    );
    let system = load("system");
    assert_eq!(system.python.conda_binary(), None);
    let mut pinned = system.python.clone();
    let key = format!(
        "{}-{}",
        std::env::consts::OS,
        if std::env::consts::ARCH == "x86_64" {
            "x64"
        } else {
            "arm64"
        }
    );
    pinned.binaries.insert(key, "/opt/conda/bin/conda".into());
    assert_eq!(pinned.conda_binary(), Some("/opt/conda/bin/conda".into()));
}
