//! Installing a wasm component: build (cargo) or take the file, copy it into the data dir,
//! load it in the sandbox (which validates it against the `cjm:capability` world and
//! precompiles it into the component cache) and write its manifest from its `info`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::spec::{Component, Entry, WasmSource};
use super::{InstallError, Installed, Log, LogSink, Result, components_dir};
use crate::backend::NoEvents;
use crate::backend::launch::Launch;
use crate::backend::wasm::WasmRuntime;
use crate::config::HostConfig;
use crate::contract::CapabilityInfo;
use crate::manifest::{self, CapabilityManifest, RuntimeKind, Sandbox, WasmInstall};

/// The component to install, located (and built) and hashed.
pub(crate) struct Prepared {
    pub path: PathBuf,
    pub sha256: String,
    pub source: String,
}

/// Locates the component, building it first for a `cargo:` entry.
pub(crate) async fn prepare(
    entry: &Entry,
    w: &WasmSource,
    log: &Log,
    step: &(dyn Fn(&str) + Sync),
) -> Result<Prepared> {
    let (path, source) = match &w.component {
        Component::File(p) => {
            if !p.is_file() {
                return Err(InstallError::InstallFailed(format!(
                    "component {} does not exist",
                    p.display()
                )));
            }
            (p.clone(), p.display().to_string())
        }
        Component::Cargo(super::spec::CargoPackage { package, workspace }) => {
            step(&format!("cargo build -p {package} (wasm32-wasip2)"));
            let path =
                super::cargo::build(package, workspace, super::cargo::Artifact::Component, log)
                    .await?;
            (path, format!("cargo:{package}"))
        }
    };
    let sha256 = manifest::hash::hash_file(&path)?;
    log.line(&format!(
        "component {} {sha256} ({})",
        path.display(),
        entry.name
    ));
    Ok(Prepared {
        path,
        sha256,
        source,
    })
}

/// Copies the component into `components/<name>.wasm` (atomically), loads and introspects
/// it, and writes the manifest.
pub(crate) async fn install(
    config: &HostConfig,
    entry: &Entry,
    w: &WasmSource,
    prepared: Prepared,
    log: &Log,
    step: &(dyn Fn(&str) + Sync),
) -> Result<Installed> {
    // Validated where the user put it (errors name that path), and copied only once it
    // proved to be a capability: a malformed file never lands in, or replaces what is in,
    // `components/`.
    step("validate, precompile and introspect in the sandbox");
    let info = introspect(config, &entry.name, &prepared.path, &w.sandbox, log).await?;

    step("copy the component into the data dir");
    let dir = components_dir(config);
    std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
    let installed = dir.join(format!("{}.wasm", entry.name));
    let bytes = std::fs::read(&prepared.path).map_err(|e| crate::Error::io(&prepared.path, e))?;
    manifest::write_atomic(&installed, &bytes)?;

    let mut m = CapabilityManifest::new(&entry.name, &info.version, RuntimeKind::Wasm);
    super::code_from_info(&mut m, &info);
    m.install.wasm = Some(WasmInstall {
        component: Path::new("..")
            .join("components")
            .join(format!("{}.wasm", entry.name)),
        sha256: prepared.sha256,
        sandbox: w.sandbox.clone(),
    });
    step("write the manifest");
    let path = super::finish_manifest(config, &mut m, &entry.env_vars, prepared.source, None)?;
    log.line(&format!(
        "{} v{} ({}): {} methods in its surface",
        info.name,
        info.version,
        info.description,
        info.structural_surface.methods.len()
    ));
    Ok(Installed {
        manifest: m,
        manifest_path: path,
        env_dir: None,
        component: Some(installed),
        adapters: Vec::new(),
    })
}

/// Loads `component` under `sandbox` (precompiling it into the data dir's component cache)
/// and reads its info; the instances are cleaned up after.
pub(crate) async fn introspect(
    config: &HostConfig,
    name: &str,
    component: &Path,
    sandbox: &Sandbox,
    log: &Log,
) -> Result<CapabilityInfo> {
    let cache = config.component_cache_dir();
    let path = component.to_owned();
    // Compiling a component takes a CPU for a while: on a blocking thread. Reading its info
    // in the sandbox is an async guest call.
    let runtime = tokio::task::spawn_blocking(move || -> crate::Result<WasmRuntime> {
        let runtime = WasmRuntime::new(Some(cache))?;
        runtime.load(&path)?;
        Ok(runtime)
    })
    .await
    .map_err(|e| {
        InstallError::InstallFailed(format!("the component load was interrupted: {e}"))
    })??;
    let backend = Launch::component(config, &runtime, name, component.to_owned(), sandbox)?
        .start(Arc::new(LogSink(log.clone())), Arc::new(NoEvents))
        .await?;
    Ok(super::info_then_stop(backend.as_ref(), log).await)
}

/// Re-introspects the component the manifest at `path` records.
pub(crate) async fn regenerate(
    config: &HostConfig,
    path: &Path,
    mut m: CapabilityManifest,
    log: &Log,
    step: &(dyn Fn(&str) + Sync),
) -> Result<PathBuf> {
    let w = m.install.wasm.clone().ok_or_else(|| {
        InstallError::InstallFailed(format!(
            "{}: a wasm manifest without an install.wasm block",
            path.display()
        ))
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let component = w.component_path(dir);
    let sha = manifest::hash::hash_file(&component)?;
    if sha != w.sha256 {
        log.line(&format!(
            "the component changed since install: {} was {}, now {sha}",
            component.display(),
            w.sha256
        ));
    }
    step("introspect in the sandbox");
    let info = introspect(config, m.name(), &component, &w.sandbox, log).await?;
    if let Some(wi) = m.install.wasm.as_mut() {
        wi.sha256 = sha;
    }
    super::rewrite_from_info(path, &mut m, &info)
}
