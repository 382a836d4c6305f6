//! Building an instance's backend from its manifest: a sandboxed wasm pool under the
//! manifest's grants (with the secrets it is granted), or a native worker (Rust or Python)
//! with the host's environment, the manifest's `env_vars` and its resolved `worker_env`.

use super::*;

/// Journals worker lifecycle events of one instance.
struct JournalEvents {
    inner: std::sync::Weak<Inner>,
    name: String,
    instance_id: String,
}

impl WorkerEvents for JournalEvents {
    fn event(&self, event_type: &str, worker_session_id: &str, payload: Value) {
        if let Some(inner) = self.inner.upgrade() {
            let mut e = JournalEvent::new(event_type)
                .instance(&self.instance_id)
                .payload(payload);
            e.capability_name = Some(self.name.clone());
            e.worker_session_id = Some(worker_session_id.to_owned());
            if let Err(err) = inner.stores.journal.append(&e) {
                tracing::error!(error = %err, event_type, "cannot journal a worker event");
            }
        }
    }
}

impl CapabilityManager {
    /// The backend of instance `id` of the capability `loaded`; `overrides` are the
    /// instance's persisted `worker_env` overrides (its config record's).
    pub(super) async fn build_backend(
        &self,
        loaded: &Loaded<CapabilityManifest>,
        id: &str,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn Backend>> {
        let m = &loaded.manifest;
        let name = m.code.name.clone();
        let config = &self.inner.config;
        let data_dir = config.capability_data_dir(&name);
        let lookup = |placeholder: &str| config.placeholder(&name, placeholder);
        let events: Arc<dyn WorkerEvents> = Arc::new(JournalEvents {
            inner: Arc::downgrade(&self.inner),
            name: name.clone(),
            instance_id: id.to_owned(),
        });
        let sink = Arc::clone(&self.inner.stores.diagnostics);
        let kind = m.install.runtime.unwrap_or_default();
        let spec = match kind {
            RuntimeKind::Wasm => {
                let wasm = m.install.wasm.as_ref().ok_or_else(|| {
                    user(format!(
                        "capability '{name}' is a wasm capability without an install.wasm block"
                    ))
                })?;
                std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
                let mut grants = SandboxGrants::from_manifest(&wasm.sandbox, lookup)?;
                for key in &wasm.sandbox.secrets {
                    match self.inner.stores.secrets.get(&name, key, None)? {
                        Some(value) => grants.secrets.push((key.clone(), value)),
                        None => tracing::warn!(
                            capability = %name,
                            secret = %key,
                            "a granted secret is not set (cjm-ctl set-secret); the guest does not see it"
                        ),
                    }
                }
                let path = loaded.dir().join(&wasm.component);
                let backend = WasmBackend::load(&self.inner.wasm, &path, grants, sink).await?;
                return Ok(Arc::new(backend));
            }
            RuntimeKind::Python => {
                let python = std::path::PathBuf::from(&m.install.python_path);
                if !python.is_file() {
                    return Err(user(format!(
                        "capability '{name}': python path {} does not exist",
                        python.display()
                    )));
                }
                // The worker binds the task adapters itself (`--adapters module:Class,...`).
                let specs: Vec<String> = self
                    .bound_adapters(m, None)?
                    .iter()
                    .map(crate::adapter::worker_spec)
                    .collect();
                WorkerSpec::python(&name, python, &m.code.module, &m.code.class_name, &specs)
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
                WorkerSpec::native(&name, &command)?
            }
        };
        let mut spec = spec.with_host_env(config)?;
        for (k, v) in &m.install.env_vars {
            spec = spec.env(k, v);
        }
        let mut secrets = Vec::new();
        for (k, v, secret) in self.worker_env(m, overrides, &lookup)? {
            if secret {
                secrets.push(v.clone());
            }
            spec = spec.env(k, v);
        }
        spec.masker = crate::backend::native::Masker::new(secrets);
        Ok(Arc::new(
            NativeBackend::start(spec, kind, sink, events).await?,
        ))
    }
}
