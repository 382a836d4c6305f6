//! Building an instance's backend from its manifest: a sandboxed wasm pool under the
//! manifest's grants (with the secrets it is granted), or a native worker (Rust or Python)
//! with the host's environment, the manifest's `env_vars` and its resolved `worker_env`.

use super::*;
use crate::backend::launch::{HostSide, Launch};

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
        let lookup = |placeholder: &str| config.placeholder(&name, placeholder);
        let secrets = &self.inner.stores.secrets;
        let secret = |key: &str| secrets.get(&name, key, None);
        let worker_env = || self.worker_env(m, overrides, &lookup);
        let adapters = || -> Result<Vec<String>> {
            Ok(self
                .bound_adapters(m, None)?
                .iter()
                .map(crate::adapter::worker_spec)
                .collect())
        };
        let host = HostSide {
            config,
            wasm: &self.inner.wasm,
            secret: &secret,
            worker_env: &worker_env,
            adapters: &adapters,
        };
        let events: Arc<dyn WorkerEvents> = Arc::new(JournalEvents {
            inner: Arc::downgrade(&self.inner),
            name: name.clone(),
            instance_id: id.to_owned(),
        });
        let sink = Arc::clone(&self.inner.stores.diagnostics);
        Launch::from_manifest(loaded, host)?
            .start(sink, events)
            .await
    }
}
