//! Installing a Python capability: an environment per entry under `envs/`, cjm-substrate,
//! the interface and adapter libraries and the package installed into it, then
//! cjm-substrate's own manifest writers run inside it (`introspect.py`), so the manifest
//! and the adapter manifests are exactly what the Python tool writes.
//!
//! The environment manager: the entry's `env_manager`, else the one configured (`cjm.yaml`
//! `runtime.env_manager` / `conda_type`, `CJM_ENV_MANAGER`, `CJM_CONDA_TYPE`) when it is
//! conda-like and its binary is present, else `uv` when it is on `PATH`, else
//! `python -m venv` + pip. An entry with an `env_file` needs a conda-like manager.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::spec::{Entry, PythonSource};
use super::{InstallError, Installed, Log, Result, envs_dir};
use crate::config::{EnvManager, HostConfig, RawConfig};
use crate::manifest::{self, CapabilityManifest};

/// The cjm-substrate installed into every env unless the entry or the command line names
/// another: the release whose worker contract this host is tested against (`CONTRACT.md`).
pub const SUBSTRATE_SPEC: &str = "cjm-substrate==0.0.74";

mod env;

pub(crate) use env::install_uv;
use env::*;
pub use env::{EnvTool, choose_tool, tool_uv_path, uv_binary};

const INTROSPECT: &str = include_str!("introspect.py");

/// The interpreter a venv of `src` is made with: the one it names, else a local one that
/// cjm-substrate supports, else `python3`.
pub(crate) fn interpreter_for(src: &PythonSource) -> Result<PathBuf> {
    match &src.python {
        Some(v) => find_python(Some(v)),
        None => supported_python().map_or_else(|| find_python(None), Ok),
    }
}

/// The script that resolves an entry's packages and measures them (`estimate-size`).
const ESTIMATE: &str = include_str!("estimate.py");

/// What pip would install for `specs` with `python`, each distribution measured (see
/// `estimate.py`): `{"python", "packages": [{name, version, kind, download, installed}]}`.
pub(crate) async fn estimate(python: &Path, specs: &[String], log: &Log) -> Result<Value> {
    let version = python_version(python, log).await?;
    let request = json!({"specs": specs, "ignore_requires_python": version < (3, 12)});
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg("-c").arg(ESTIMATE).arg(request.to_string());
    let out = super::output(
        log,
        "resolving the packages with pip (nothing is installed)",
        &mut cmd,
    )
    .await?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("{}");
    serde_json::from_str(line).map_err(|e| {
        InstallError::InstallFailed(format!("the size estimate printed no report ({e})"))
    })
}

/// The env dir under `envs/` holding the manifest's python, if it is one of ours.
pub(crate) fn env_dir_of(config: &HostConfig, m: &CapabilityManifest) -> Option<PathBuf> {
    let envs = envs_dir(config);
    let rel = Path::new(&m.install.python_path).strip_prefix(&envs).ok()?;
    let first = rel.components().next()?;
    Some(envs.join(first))
}

pub(crate) async fn install(
    config: &HostConfig,
    entry: &Entry,
    src: &PythonSource,
    substrate: &str,
    force: bool,
    log: &Log,
    step: &(dyn Fn(&str) + Sync),
) -> Result<Installed> {
    let local = Path::new(&src.package);
    if local.is_absolute() && !local.exists() {
        return Err(InstallError::InstallFailed(format!(
            "package path {} does not exist",
            local.display()
        )));
    }
    let tool = choose_tool(config, src)?;
    log.line(&format!("environment manager: {tool:?}"));
    let env_dir = envs_dir(config).join(&src.env_name);
    let python = env_python(&env_dir);
    if force && env_dir.exists() {
        step("remove the old environment (--force)");
        std::fs::remove_dir_all(&env_dir).map_err(|e| crate::Error::io(&env_dir, e))?;
    }
    // An environment this attempt creates is removed again when the attempt fails: nothing
    // half-built stays behind (one that existed before is left as it was).
    let created = !python.is_file();
    if created {
        step(&format!("create the environment ({})", tool_name(&tool)));
        if let Err(e) = create_env(&tool, src, &env_dir, log).await {
            discard_env(&env_dir, log);
            return Err(e);
        }
    }
    let staging = config
        .data_dir
        .join("tmp")
        .join(format!("install-{}", uuid::Uuid::new_v4().simple()));
    let result = async {
        // A local source dir is installed from a snapshot: building it in place would
        // leave `build/` and `*.egg-info` in the user's tree.
        let package = if local.is_dir() {
            let name = local.file_name().unwrap_or_default();
            let copy = staging.join("src").join(name);
            copy_source(local, &copy)?;
            copy.display().to_string()
        } else {
            src.package.clone()
        };
        let mut specs = vec![substrate.to_owned()];
        specs.extend(src.interface_libs.iter().cloned());
        specs.extend(src.adapters.iter().filter_map(|a| a.lib.clone()));
        specs.push(package);
        step(&format!("install {}", src.package));
        pip_install(&tool, &python, &specs, log).await?;

        let (m, manifest_path, adapters) =
            introspect_and_publish(config, entry, src, &python, &staging, log, step).await?;
        Ok(Installed {
            manifest: m,
            manifest_path,
            env_dir: Some(env_dir.clone()),
            component: None,
            adapters,
        })
    }
    .await;
    let _ = std::fs::remove_dir_all(&staging);
    if result.is_err() && created {
        discard_env(&env_dir, log);
    }
    result
}

/// Introspects the installed capability (and its adapters) in the environment of `python`,
/// checks its name against the entry's, and publishes the manifests; returns the manifest,
/// its path and the adapter manifests' paths.
async fn introspect_and_publish(
    config: &HostConfig,
    entry: &Entry,
    src: &PythonSource,
    python: &Path,
    staging: &Path,
    log: &Log,
    step: &(dyn Fn(&str) + Sync),
) -> Result<(CapabilityManifest, PathBuf, Vec<PathBuf>)> {
    step("introspect in the environment (cjm-substrate)");
    let staged = introspect(
        config,
        python,
        &json!({
            "mode": "capability",
            "env_name": src.env_name,
            "package": src.package,
            "env_vars": entry.env_vars,
        }),
        staging,
        &entry.env_vars,
        log,
    )
    .await?;
    let m = manifest::load_capability(&staged)?;
    if m.name() != entry.name {
        return Err(InstallError::InstallFailed(format!(
            "the package's capability is named '{}', not '{}': name the entry '{}'",
            m.name(),
            entry.name,
            m.name()
        )));
    }
    let mut staged_adapters = Vec::new();
    for a in &src.adapters {
        step(&format!("adapter manifest for {}", a.impl_spec));
        staged_adapters.push(
            introspect(
                config,
                python,
                &json!({"mode": "adapter", "env_name": src.env_name, "impl": a.impl_spec}),
                staging,
                &entry.env_vars,
                log,
            )
            .await?,
        );
    }
    step("write the manifests");
    let manifest_path = super::manifest_path(config, &entry.name);
    publish(&staged, &manifest_path)?;
    let mut adapters = Vec::new();
    for a in staged_adapters {
        let to = config
            .manifests_dir()
            .join(a.file_name().unwrap_or_default());
        publish(&a, &to)?;
        adapters.push(to);
    }
    Ok((m, manifest_path, adapters))
}

/// Removes an environment a failed attempt created, saying so in the install log.
fn discard_env(env_dir: &Path, log: &Log) {
    match std::fs::remove_dir_all(env_dir) {
        Ok(()) => log.line(&format!(
            "removed the environment this attempt created: {}",
            env_dir.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log.line(&format!(
            "could not remove the environment this attempt created ({}): {e}",
            env_dir.display()
        )),
    }
}

/// What a source snapshot leaves out: VCS data, build outputs, environments, caches.
const SKIP: &[&str] = &[
    ".git",
    ".hg",
    "build",
    "dist",
    "__pycache__",
    ".venv",
    "venv",
    "node_modules",
    "target",
    ".mypy_cache",
    ".pytest_cache",
    ".tox",
];

/// What a package source's copy and stamp leave out: build outputs, caches, and hidden
/// entries (`.git`, `.venv`, and a data dir such as `.cjm` inside the project, with its
/// environments and journal).
pub(crate) fn skipped(name: &str) -> bool {
    SKIP.contains(&name) || name.ends_with(".egg-info") || name.starts_with('.')
}

/// A stamp of a local package source dir (file count, total size, newest mtime), so an
/// edited source is a changed input; `None` for a spec that is not a local dir.
pub(crate) fn source_stamp(package: &str) -> Option<String> {
    let dir = Path::new(package);
    if !dir.is_absolute() {
        return None;
    }
    tree_stamp(dir, &skipped)
}

/// A stamp of a source tree (file count, total size, newest mtime) leaving out the entries
/// `skip` names, or of one file; `None` when it does not exist.
pub(crate) fn tree_stamp(dir: &Path, skip: &dyn Fn(&str) -> bool) -> Option<String> {
    fn walk(dir: &Path, skip: &dyn Fn(&str) -> bool, acc: &mut (u64, u64, u128)) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if skip(&entry.file_name().to_string_lossy()) {
                continue;
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                walk(&entry.path(), skip, acc);
            } else {
                add(&meta, acc);
            }
        }
    }
    fn add(meta: &std::fs::Metadata, acc: &mut (u64, u64, u128)) {
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        acc.0 += 1;
        acc.1 += meta.len();
        acc.2 = acc.2.max(mtime);
    }
    let meta = std::fs::metadata(dir).ok()?;
    let mut acc = (0, 0, 0);
    if meta.is_dir() {
        walk(dir, skip, &mut acc);
    } else {
        add(&meta, &mut acc);
    }
    Some(format!("{} {} {}", acc.0, acc.1, acc.2))
}

/// Copies a package source tree, leaving out what [`SKIP`] names.
fn copy_source(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| crate::Error::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| crate::Error::io(from, e))? {
        let entry = entry.map_err(|e| crate::Error::io(from, e))?;
        let name = entry.file_name();
        if skipped(&name.to_string_lossy()) {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let ty = entry.file_type().map_err(|e| crate::Error::io(&src, e))?;
        if ty.is_dir() {
            copy_source(&src, &dst)?;
        } else if ty.is_file() {
            std::fs::copy(&src, &dst).map_err(|e| crate::Error::io(&src, e))?;
        } else if ty.is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| crate::Error::io(&src, e))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(|e| crate::Error::io(&dst, e))?;
        }
    }
    Ok(())
}

fn publish(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    }
    std::fs::rename(from, to).map_err(|e| crate::Error::io(to, e).into())
}

/// Runs `introspect.py` with `python` for `request` (completed with the data dir and the
/// staging dir); returns the manifest it wrote.
async fn introspect(
    config: &HostConfig,
    python: &Path,
    request: &Value,
    staging: &Path,
    env: &indexmap::IndexMap<String, String>,
    log: &Log,
) -> Result<PathBuf> {
    let mut req = request.clone();
    req["data_dir"] = json!(config.data_dir);
    req["manifests_dir"] = json!(staging);
    if let Some(models) = &config.models_dir {
        req["models_dir"] = json!(models);
    }
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg("-c").arg(INTROSPECT).arg(req.to_string());
    cmd.env("CJM_DATA_DIR", &config.data_dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = super::output(log, "introspection in the environment", &mut cmd).await?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("{}");
    let path = serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v["path"].as_str().map(PathBuf::from))
        .ok_or_else(|| {
            InstallError::InstallFailed(format!(
                "the introspection wrote no manifest (its output: {})",
                out.trim()
            ))
        })?;
    Ok(path)
}

/// Generates the adapter manifest of `impl_spec` with `python` and publishes it.
pub(crate) async fn adapter_manifest(
    config: &HostConfig,
    python: &Path,
    env_name: &str,
    impl_spec: &str,
    log: &Log,
) -> Result<PathBuf> {
    let staging = config
        .data_dir
        .join("tmp")
        .join(format!("adapter-{}", uuid::Uuid::new_v4().simple()));
    let result = async {
        let staged = introspect(
            config,
            python,
            &json!({"mode": "adapter", "env_name": env_name, "impl": impl_spec}),
            &staging,
            &indexmap::IndexMap::new(),
            log,
        )
        .await?;
        let to = config
            .manifests_dir()
            .join(staged.file_name().unwrap_or_default());
        publish(&staged, &to)?;
        Ok(to)
    }
    .await;
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Re-runs cjm-substrate's introspection in the env the manifest names, keeping
/// `installed_at` and `refreshed_at` (as the Python tool's `regenerate-manifest` does).
pub(crate) async fn regenerate(
    config: &HostConfig,
    path: &Path,
    m: CapabilityManifest,
    log: &Log,
    step: &(dyn Fn(&str) + Sync),
) -> Result<PathBuf> {
    let python = PathBuf::from(&m.install.python_path);
    if !python.is_file() {
        return Err(InstallError::InstallFailed(format!(
            "the environment of '{}' is gone ({} does not exist): install it again",
            m.name(),
            python.display()
        )));
    }
    if m.install.package_source.is_empty() {
        return Err(InstallError::InstallFailed(format!(
            "the manifest of '{}' records no package_source: install it again",
            m.name()
        )));
    }
    let env_name = if m.install.conda_env.is_empty() {
        m.name().to_owned()
    } else {
        m.install.conda_env.clone()
    };
    let staging = config
        .data_dir
        .join("tmp")
        .join(format!("regenerate-{}", uuid::Uuid::new_v4().simple()));
    step("introspect in the environment (cjm-substrate)");
    let result = introspect(
        config,
        &python,
        &json!({
            "mode": "capability",
            "env_name": env_name,
            "package": m.install.package_source,
            "env_vars": m.install.env_vars,
            "installed_at": m.install.installed_at,
            "refreshed_at": m.install.refreshed_at,
        }),
        &staging,
        &m.install.env_vars,
        log,
    )
    .await
    .and_then(|staged| {
        let fresh = manifest::load_capability(&staged)?;
        if fresh.name() != m.name() {
            return Err(InstallError::InstallFailed(format!(
                "the environment now holds capability '{}', not '{}'",
                fresh.name(),
                m.name()
            )));
        }
        publish(&staged, path)?;
        Ok(path.to_owned())
    });
    let _ = std::fs::remove_dir_all(&staging);
    result
}
