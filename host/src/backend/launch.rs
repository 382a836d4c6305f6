//! The one backend factory. What a capability's manifest says (at load), or what an install
//! is about to write into one (at introspection), becomes a [`Launch`]: a component under
//! its sandbox grants, or a worker command under the host's environment contract.
//! [`Launch::start`] starts either. The manager, the installer and `cjm-ctl` all go
//! through it, so a capability runs the same way wherever it is started.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::native::{Masker, NativeBackend, WorkerSpec};
use super::wasm::{SandboxGrants, WasmBackend, WasmRuntime};
use super::{Backend, DiagnosticsSink, RuntimeKind, WorkerEvents};
use crate::config::HostConfig;
use crate::error::{Error, Result};
use crate::manifest::{CapabilityManifest, Loaded, Sandbox};
use crate::store::SecretValue;

/// A backend about to start.
pub enum Launch<'a> {
    /// A wasm component on `runtime`, under `grants`.
    Wasm {
        /// The engine it is compiled and instantiated on.
        runtime: &'a WasmRuntime,
        /// The component file.
        component: PathBuf,
        /// What its sandbox grants.
        grants: SandboxGrants,
    },
    /// A worker subprocess.
    Worker {
        /// The command and its environment.
        spec: WorkerSpec,
        /// Native or Python.
        kind: RuntimeKind,
    },
}

impl std::fmt::Debug for Launch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Launch::Wasm { component, .. } => f
                .debug_struct("Launch::Wasm")
                .field("component", component)
                .finish_non_exhaustive(),
            Launch::Worker { spec, kind } => f
                .debug_struct("Launch::Worker")
                .field("spec", spec)
                .field("kind", kind)
                .finish(),
        }
    }
}

/// What the host adds to a manifest to start an instance of it.
pub struct HostSide<'a> {
    /// The host's configuration (data dirs, log level, the worker timings).
    pub config: &'a HostConfig,
    /// The engine a wasm capability runs on.
    pub wasm: &'a WasmRuntime,
    /// A secret of the capability by key (a wasm sandbox's granted `secrets`).
    pub secret: &'a dyn Fn(&str) -> Result<Option<SecretValue>>,
    /// The instance's resolved `worker_env` (a worker's): name, value, whether it is a
    /// secret (masked in what the host records). Asked for once the worker's program is
    /// found.
    pub worker_env: &'a dyn Fn() -> Result<Vec<(String, String, bool)>>,
    /// The task adapters a Python worker binds (`module:Class`), asked for once its
    /// interpreter is found.
    pub adapters: &'a dyn Fn() -> Result<Vec<String>>,
}

fn user(message: String) -> Error {
    Error::job(cjm_guest::JobError::user_input(message))
}

impl<'a> Launch<'a> {
    /// The launch of an instance of the capability `loaded`.
    pub fn from_manifest(loaded: &Loaded<CapabilityManifest>, host: HostSide<'a>) -> Result<Self> {
        let m = &loaded.manifest;
        let name = m.code.name.as_str();
        let kind = m.install.runtime.unwrap_or_default();
        let spec = match kind {
            RuntimeKind::Wasm => {
                let wasm = m.install.wasm.as_ref().ok_or_else(|| {
                    user(format!(
                        "capability '{name}' is a wasm capability without an install.wasm block"
                    ))
                })?;
                let mut launch = Launch::component(
                    host.config,
                    host.wasm,
                    name,
                    loaded.dir().join(&wasm.component),
                    &wasm.sandbox,
                )?;
                if let Launch::Wasm { grants, .. } = &mut launch {
                    for key in &wasm.sandbox.secrets {
                        match (host.secret)(key)? {
                            Some(value) => grants.secrets.push((key.clone(), value)),
                            None => tracing::warn!(
                                capability = %name,
                                secret = %key,
                                "a granted secret is not set (cjm-ctl set-secret); the guest does not see it"
                            ),
                        }
                    }
                }
                return Ok(launch);
            }
            RuntimeKind::Python => {
                let python = PathBuf::from(&m.install.python_path);
                if !python.is_file() {
                    return Err(user(format!(
                        "capability '{name}': python path {} does not exist",
                        python.display()
                    )));
                }
                // The worker binds the task adapters itself (`--adapters module:Class,...`).
                WorkerSpec::python(
                    name,
                    python,
                    &m.code.module,
                    &m.code.class_name,
                    &(host.adapters)()?,
                )
            }
            RuntimeKind::Native => {
                let native = m.install.native.as_ref().ok_or_else(|| {
                    user(format!(
                        "capability '{name}' is a native capability without an install.native block"
                    ))
                })?;
                // The one rule for a native program (relative to the manifest's dir, or on
                // PATH), whatever the host's working directory.
                let program = native.program(loaded.dir()).ok_or_else(|| {
                    user(format!(
                        "capability '{name}': its program '{}' is not found (a path is relative to {}, a bare name is looked up on PATH)",
                        native.command.first().map_or("", String::as_str),
                        loaded.dir().display()
                    ))
                })?;
                let mut command = native.command.clone();
                command[0] = program.display().to_string();
                WorkerSpec::native(name, &command)?
            }
        };
        let mut launch = Launch::worker(host.config, spec, kind, &m.install.env_vars)?;
        if let Launch::Worker { spec, .. } = &mut launch {
            let mut secrets = Vec::new();
            for (k, v, secret) in (host.worker_env)()? {
                if secret {
                    secrets.push(v.clone());
                }
                spec.env.push((k, v));
            }
            spec.masker = Masker::new(secrets);
        }
        Ok(launch)
    }

    /// A component under a manifest's `sandbox` block, its `${...}` placeholders resolved
    /// for capability `name` (whose data dir is created).
    pub fn component(
        config: &HostConfig,
        runtime: &'a WasmRuntime,
        name: &str,
        component: PathBuf,
        sandbox: &Sandbox,
    ) -> Result<Self> {
        let data_dir = config.capability_data_dir(name);
        std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
        let grants = SandboxGrants::from_manifest(sandbox, |p| config.placeholder(name, p))?;
        Ok(Launch::Wasm {
            runtime,
            component,
            grants,
        })
    }

    /// A worker under the host's environment contract
    /// ([`WorkerSpec::with_host_env`]), with `env_vars` (a manifest's, or an install
    /// entry's) over it.
    pub fn worker<'e>(
        config: &HostConfig,
        spec: WorkerSpec,
        kind: RuntimeKind,
        env_vars: impl IntoIterator<Item = (&'e String, &'e String)>,
    ) -> Result<Self> {
        let mut spec = spec.with_host_env(config)?;
        for (k, v) in env_vars {
            spec = spec.env(k, v);
        }
        Ok(Launch::Worker { spec, kind })
    }

    /// Starts it: a wasm backend reads its info in the sandbox, a worker is spawned and
    /// introspected. What the capability logs goes to `sink`; a worker's lifecycle to
    /// `events`.
    pub async fn start(
        self,
        sink: Arc<dyn DiagnosticsSink>,
        events: Arc<dyn WorkerEvents>,
    ) -> Result<Arc<dyn Backend>> {
        Ok(match self {
            Launch::Wasm {
                runtime,
                component,
                grants,
            } => Arc::new(WasmBackend::load(runtime, &component, grants, sink).await?),
            Launch::Worker { spec, kind } => {
                Arc::new(NativeBackend::start(spec, kind, sink, events).await?)
            }
        })
    }

    /// The component file or the worker's program.
    pub fn program(&self) -> &Path {
        match self {
            Launch::Wasm { component, .. } => component,
            Launch::Worker { spec, .. } => &spec.program,
        }
    }
}
