//! Building an entry's code with cargo (`cargo: <package>` in a `capabilities.yaml`): a wasm
//! component (`kind: wasm`) or a native worker binary (`kind: native`). The artifact is
//! found from cargo's JSON messages, never guessed from names, so `CARGO_TARGET_DIR` and
//! renamed targets are honoured.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{InstallError, Log, Result};

/// What to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Artifact {
    /// The package's `cdylib` for wasm32-wasip2: a component.
    Component,
    /// The package's binary: a native worker.
    Worker,
}

/// `cargo build --release` of `package` in `workspace` for `artifact`; returns the file.
pub(crate) async fn build(
    package: &str,
    workspace: &Path,
    artifact: Artifact,
    log: &Log,
) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = tokio::process::Command::new(&cargo);
    cmd.current_dir(workspace).args(["build", "--release"]);
    match artifact {
        Artifact::Component => cmd.args(["--lib", "--target", "wasm32-wasip2"]),
        Artifact::Worker => cmd.arg("--bins"),
    };
    cmd.args(["--message-format", "json-render-diagnostics", "-p", package]);
    let out = super::output(log, &format!("building {package} with cargo"), &mut cmd)
        .await
        .map_err(|e| match e {
            // Said only when cargo's own words (now in the log) point there.
            InstallError::InstallCommand {
                step,
                program,
                status,
            } if log.tail(40).contains("target may not be installed") => {
                InstallError::InstallCommand {
                    step: format!(
                        "{step} (the wasm32-wasip2 target is not installed: `rustup target add wasm32-wasip2`)"
                    ),
                    program,
                    status,
                }
            }
            other => other,
        })?;
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let ours = msg["package_id"]
            .as_str()
            .is_some_and(|id| package_name(id) == package);
        if msg["reason"] != "compiler-artifact" || !ours {
            continue;
        }
        let target = msg["target"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match artifact {
            Artifact::Component => {
                let is_lib = msg["target"]["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "cdylib"));
                let wasm = msg["filenames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .find(|f| f.ends_with(".wasm"));
                if let (true, Some(f)) = (is_lib, wasm) {
                    found.push((target, PathBuf::from(f)));
                }
            }
            Artifact::Worker => {
                if let Some(exe) = msg["executable"].as_str() {
                    found.push((target, PathBuf::from(exe)));
                }
            }
        }
    }
    pick(package, artifact, found)
}

/// The one artifact built: for a worker with several binaries, the one named
/// `<package>-worker` or `<package>`.
fn pick(package: &str, artifact: Artifact, mut found: Vec<(String, PathBuf)>) -> Result<PathBuf> {
    if found.len() > 1 && artifact == Artifact::Worker {
        let named = [format!("{package}-worker"), package.to_owned()];
        if let Some(i) = found.iter().position(|(t, _)| named.contains(t)) {
            return Ok(found.swap_remove(i).1);
        }
        let names: Vec<&str> = found.iter().map(|(t, _)| t.as_str()).collect();
        return Err(InstallError::InstallFailed(format!(
            "package '{package}' builds several binaries ({}): name the worker `{package}-worker`",
            names.join(", ")
        )));
    }
    found.pop().map(|(_, p)| p).ok_or_else(|| {
        InstallError::InstallFailed(match artifact {
            Artifact::Component => format!(
                "cargo built no wasm component for package '{package}' (is it a cdylib? `[lib] crate-type = [\"cdylib\"]`)"
            ),
            Artifact::Worker => format!(
                "cargo built no binary for package '{package}' (a worker needs a `main`: src/main.rs or a [[bin]])"
            ),
        })
    })
}

/// The package name of a cargo package id: `path+file:///x/name#0.1.0`,
/// `path+file:///x/dir#name@0.1.0`, or the older `name 0.1.0 (source)`.
fn package_name(id: &str) -> &str {
    match id.split_once('#') {
        Some((_, frag)) if frag.contains('@') => frag.split('@').next().unwrap_or(frag),
        Some((url, _)) => url.rsplit('/').next().unwrap_or(url),
        None => id.split(' ').next().unwrap_or(id),
    }
}
