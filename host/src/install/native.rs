//! Installing a native worker: start it once per the worker contract, read its info, stop
//! it, write a `runtime: native` manifest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::spec::{Entry, NativeSource};
use super::{InstallError, Installed, Log, LogSink, Result};
use crate::backend::NoEvents;
use crate::backend::launch::Launch;
use crate::backend::native::WorkerSpec;
use crate::config::HostConfig;
use crate::contract::CapabilityInfo;
use crate::manifest::{CapabilityManifest, NativeInstall, RuntimeKind};

/// The program of a command: a path as given (the capabilities file's paths are already
/// absolute), or a bare name looked up on `PATH`.
pub(crate) fn program_path(program: &str) -> Option<PathBuf> {
    crate::manifest::runtime::resolve_program(program, Path::new("."))
}

/// The entry with its program located: a `cargo:` entry's binary is built first.
pub(crate) async fn prepare(
    n: &NativeSource,
    log: &Log,
    step: &(dyn Fn(&str) + Sync),
) -> Result<NativeSource> {
    let Some(c) = &n.cargo else {
        return Ok(n.clone());
    };
    step(&format!("cargo build -p {} (its worker binary)", c.package));
    let program = super::cargo::build(
        &c.package,
        &c.workspace,
        super::cargo::Artifact::Worker,
        log,
    )
    .await?;
    log.line(&format!("worker {} ({})", program.display(), c.package));
    Ok(NativeSource {
        command: vec![program.display().to_string()],
        cargo: n.cargo.clone(),
    })
}

pub(crate) async fn install(
    config: &HostConfig,
    entry: &Entry,
    n: &NativeSource,
    log: &Log,
    step: &(dyn Fn(&str) + Sync),
) -> Result<Installed> {
    let program = n.command.first().map_or("", String::as_str);
    if program_path(program).is_none() {
        return Err(InstallError::InstallFailed(format!(
            "program {program} does not exist{}",
            if program.contains('/') {
                ""
            } else {
                " on PATH"
            }
        )));
    }
    // A worker cargo built is copied into the data dir (`bin/<name>-worker`) once it proved
    // to be one: a later build, a `cargo clean` or a broken edit never changes what the
    // host runs behind its back.
    let (command, copy) = match &n.cargo {
        Some(_) => {
            let bin = config.data_dir.join("bin");
            std::fs::create_dir_all(&bin).map_err(|e| crate::Error::io(&bin, e))?;
            let staged = bin.join(format!(".{}-worker.new", entry.name));
            std::fs::copy(program, &staged).map_err(|e| crate::Error::io(&staged, e))?;
            let mut command = n.command.clone();
            command[0] = staged.display().to_string();
            (
                command,
                Some((staged, bin.join(format!("{}-worker", entry.name)))),
            )
        }
        None => (n.command.clone(), None),
    };
    step("start the worker and introspect it");
    let info = match introspect(config, &entry.name, &command, &entry.env_vars, log).await {
        Ok(info) => info,
        Err(e) => {
            if let Some((staged, _)) = &copy {
                let _ = std::fs::remove_file(staged);
            }
            return Err(e);
        }
    };
    let mut command = command;
    let mut component = None;
    if let Some((staged, live)) = copy {
        std::fs::rename(&staged, &live).map_err(|e| crate::Error::io(&live, e))?;
        command[0] = live.display().to_string();
        component = Some(live);
    }
    let mut m = CapabilityManifest::new(&entry.name, &info.version, RuntimeKind::Native);
    super::code_from_info(&mut m, &info);
    m.install.native = Some(NativeInstall { command });
    step("write the manifest");
    let source = match &n.cargo {
        Some(c) => format!("cargo:{}", c.package),
        None => n.command.join(" "),
    };
    let path = super::finish_manifest(config, &mut m, &entry.env_vars, source, None)?;
    log.line(&format!(
        "{} v{}: {}",
        info.name, info.version, info.description
    ));
    Ok(Installed {
        manifest: m,
        manifest_path: path,
        env_dir: None,
        component,
        adapters: Vec::new(),
    })
}

/// Starts the worker of `command` with the host's environment contract, reads its info and
/// stops it.
pub(crate) async fn introspect(
    config: &HostConfig,
    name: &str,
    command: &[String],
    env: &indexmap::IndexMap<String, String>,
    log: &Log,
) -> Result<CapabilityInfo> {
    let launch = Launch::worker(
        config,
        WorkerSpec::native(name, command)?,
        RuntimeKind::Native,
        env,
    )?;
    log.line(&format!("$ {} --fd N --ppid PID", command.join(" ")));
    let backend = launch
        .start(Arc::new(LogSink(log.clone())), Arc::new(NoEvents))
        .await?;
    Ok(super::info_then_stop(backend.as_ref(), log).await)
}

pub(crate) async fn regenerate(
    config: &HostConfig,
    path: &Path,
    mut m: CapabilityManifest,
    log: &Log,
    step: &(dyn Fn(&str) + Sync),
) -> Result<PathBuf> {
    let native = m.install.native.clone().ok_or_else(|| {
        InstallError::InstallFailed(format!(
            "{}: a native manifest without an install.native block",
            path.display()
        ))
    })?;
    step("start the worker and introspect it");
    let env = m.install.env_vars.clone();
    let info = introspect(config, m.name(), &native.command, &env, log).await?;
    super::rewrite_from_info(path, &mut m, &info)
}
