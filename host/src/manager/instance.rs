//! A loaded capability instance: its backend (replaced on reload), configuration, enabled
//! flag, concurrency permits, measured profile and drift against its manifest.

use super::*;

/// A loaded capability instance.
pub struct Instance {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) backend: RwLock<Arc<dyn Backend>>,
    pub(super) config: Mutex<Value>,
    pub(super) enabled: AtomicBool,
    pub(super) permits: tokio::sync::Semaphore,
    pub(super) max_concurrency: usize,
    pub(super) last_used: Mutex<Instant>,
    pub(super) drift: Drift,
    pub(super) adapters: Vec<String>,
    pub(super) adapter_specs: Vec<String>,
    /// The hash of `config` (the empirical key), kept with it.
    pub(super) config_hash: Mutex<String>,
    /// The empirical aggregate of (id, config hash): what admission reads, in memory.
    pub(super) profile: Mutex<Option<EmpiricalRecord>>,
    /// The last process-subtree measurement of its worker (reused for a moment: a
    /// process-table scan costs milliseconds, a call tens of microseconds).
    pub(super) measured: Mutex<Option<(Instant, Usage)>>,
    /// Its backend was shut down to free resources; the next call brings it back.
    pub(super) evicted: AtomicBool,
    /// Serializes bringing an evicted instance back.
    pub(super) revive: tokio::sync::Mutex<()>,
    /// Served by a backend the caller built ([`CapabilityManager::attach`]): no manifest,
    /// never evicted or reloaded.
    pub(super) attached: bool,
    /// The compiled argument schemas of its typed methods (by method; emptied when the
    /// backend is replaced, whose surface may differ).
    pub(super) validators:
        Mutex<std::collections::HashMap<String, Option<Arc<jsonschema::Validator>>>>,
}

/// What the live capability reports that differs from its manifest: flagged, never fatal
/// (the manifest is then due for regeneration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Drift {
    /// The live config schema hashes differently from `drift_tracking.config_schema_hash`.
    pub config_schema: bool,
    /// The live structural surface hashes differently from the recorded one.
    pub structural_surface: bool,
}

impl Drift {
    pub(super) fn of(manifest: &CapabilityManifest, info: &CapabilityInfo) -> Self {
        use crate::manifest::hash::{config_schema_hash, structural_surface_hash};
        let tracked = &manifest.drift_tracking;
        let surface = serde_json::to_value(&info.structural_surface).ok();
        Drift {
            config_schema: tracked
                .config_schema_hash
                .as_ref()
                .is_some_and(|h| *h != config_schema_hash(Some(&info.config_schema))),
            structural_surface: tracked
                .structural_surface_hash
                .as_ref()
                .is_some_and(|h| *h != structural_surface_hash(surface.as_ref())),
        }
    }
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Instance {
    /// Whether it is served by a backend the caller built
    /// ([`CapabilityManager::attach`]): it has no manifest, and is never evicted or
    /// reloaded.
    pub fn attached(&self) -> bool {
        self.attached
    }

    /// An enabled instance without adapters, drift or profile.
    pub(super) fn new(
        id: String,
        name: String,
        backend: Arc<dyn Backend>,
        config: Value,
        max_concurrency: usize,
    ) -> Self {
        Instance {
            adapters: Vec::new(),
            adapter_specs: Vec::new(),
            drift: Drift::default(),
            config_hash: Mutex::new(manifest::hash::config_hash(Some(&config))),
            id,
            name,
            backend: RwLock::new(backend),
            config: Mutex::new(config),
            enabled: AtomicBool::new(true),
            permits: tokio::sync::Semaphore::new(max_concurrency),
            max_concurrency,
            last_used: Mutex::new(Instant::now()),
            profile: Mutex::new(None),
            measured: Mutex::new(None),
            evicted: AtomicBool::new(false),
            revive: tokio::sync::Mutex::new(()),
            validators: Mutex::default(),
            attached: false,
        }
    }

    /// The compiled schema of `method`'s arguments when its author typed them (compiled on
    /// the first call, then kept); an invalid schema is a `fatal` error.
    pub(crate) fn params_validator(
        &self,
        method: &str,
    ) -> Result<Option<Arc<jsonschema::Validator>>> {
        let mut cache = self.validators.lock();
        if let Some(v) = cache.get(method) {
            return Ok(v.clone());
        }
        let backend = self.backend();
        // Bounded by the surface: only methods it declares are kept.
        let Some(declared) = backend.info().structural_surface.method(method) else {
            return Ok(None);
        };
        let compiled = match &declared.params_schema {
            Some(schema) => Some(Arc::new(
                config::params_validator(&self.name, method, schema).map_err(Error::job)?,
            )),
            None => None,
        };
        cache.insert(method.to_owned(), compiled.clone());
        Ok(compiled)
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The capability name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend serving it now (replaced on reload).
    pub fn backend(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.backend.read())
    }

    /// The configuration in force.
    pub fn config(&self) -> Value {
        self.config.lock().clone()
    }

    /// Whether calls are accepted.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    /// The adapters bound to it at load (unit names), one per task.
    pub fn adapters(&self) -> &[String] {
        &self.adapters
    }

    /// The `module:Class` specs of those adapters, as a Python worker is given them
    /// (`--adapters`).
    pub fn adapter_specs(&self) -> &[String] {
        &self.adapter_specs
    }

    /// Drift of the live capability against its manifest.
    pub fn drift(&self) -> Drift {
        self.drift
    }

    /// How many calls it serves at once (its pool size; 1 for a native worker).
    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }

    /// The hash of the configuration in force (the empirical key).
    pub fn config_hash(&self) -> String {
        self.config_hash.lock().clone()
    }

    /// The measured peaks of the configuration in force (`None`: not measured yet).
    pub fn peaks(&self) -> Option<crate::store::Peaks> {
        // Only a successful call measures: a failed or killed first run is no profile.
        self.profile
            .lock()
            .as_ref()
            .filter(|r| r.success_count > 0)
            .map(|r| crate::store::Peaks {
                gpu_mb: r.gpu_memory_mb_peak_max,
                ram_mb: r.memory_mb_peak_max,
            })
    }

    /// What running it with the configuration in force has cost so far: `None` until its
    /// first call with this configuration was measured (the queue then runs it alone).
    pub fn profile(&self) -> Option<EmpiricalRecord> {
        self.profile.lock().clone()
    }
}
