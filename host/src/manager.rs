//! `CapabilityManager`: one manager over wasm and native capabilities. A caller never branches
//! on the kind: it discovers manifests, loads a capability by name into an instance, configures,
//! enables/disables and calls it, and the manager keeps configs, enabled flags, empirical
//! samples and the journal.
//!
//! - [`config`]: schema defaults and strict validation of capability configs;
//! - `call`: calls with empirical samples, journaled accounts, and on resource errors
//!   eviction of idle instances plus reload-and-retry;
//! - this module: lifecycle (discover, load, unload, reload, enable/disable), config updates,
//!   worker env and secrets.

mod build;
mod call;
pub mod config;
mod describe;
mod env;
mod instance;

use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use cjm_guest::contract::{CapabilityInfo, ErrorCategory, JobError};
use serde_json::{Value, json};

use crate::backend::wasm::{Allocation, WasmRuntime};
use crate::backend::{Backend, CallControl, CallRequest, WorkerEvents};
use crate::config::HostConfig;
use crate::error::{Error, Result};
use crate::manifest::{self, AdapterManifest, CapabilityManifest, Loaded};
use crate::store::{
    BufferedSample, CapabilityConfigRecord, ConfigStore, DiagnosticsStore, DiagnosticsWriter,
    EmpiricalRecord, EmpiricalStore, JournalEvent, JournalStore, ResourceSample, SecretStore,
    event_types,
};
use crate::telemetry::Telemetry;

pub use instance::{Drift, Instance};

/// How long after-call samples may wait before they are written to the empirical store.
const SAMPLE_FLUSH: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a worker's process-subtree measurement is reused.
const MEASURE_REUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// How often a call failing with a resource error is retried after a reload.
const MAX_RETRIES: u32 = 1;

/// CPU percent, resident memory (MB) and GPU memory (MB) of a worker's process subtree.
type Usage = (f64, f64, f64);

/// The capability (among `names`) an instance id belongs to: ids are the name itself or
/// `name-<suffix>`, and the longest matching name owns an id (`a-b-1234` is `a-b`'s, not
/// `a`'s).
pub fn instance_owner<'a>(id: &str, names: &[&'a str]) -> Option<&'a str> {
    names
        .iter()
        .filter(|n| id == **n || id.strip_prefix(**n).is_some_and(|r| r.starts_with('-')))
        .max_by_key(|n| n.len())
        .copied()
}

/// A handle pre-bound to one instance: calls without repeating the instance id.
#[derive(Clone, Debug)]
pub struct Binding {
    manager: CapabilityManager,
    id: String,
}

impl Binding {
    /// The instance id it is bound to.
    pub fn instance_id(&self) -> &str {
        &self.id
    }

    /// `execute(**kwargs)`.
    pub async fn execute(&self, kwargs: serde_json::Map<String, Value>) -> Result<Value> {
        self.manager
            .call(&self.id, CallRequest::execute(kwargs))
            .await
    }

    /// `task(task, method, **kwargs)`.
    pub async fn task(
        &self,
        task: &str,
        method: &str,
        kwargs: serde_json::Map<String, Value>,
    ) -> Result<Value> {
        self.manager
            .call(&self.id, CallRequest::task(task, method, kwargs))
            .await
    }

    /// Any call.
    pub async fn call(&self, request: CallRequest) -> Result<Value> {
        self.manager.call(&self.id, request).await
    }
}

impl std::fmt::Debug for CapabilityManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapabilityManager")
            .field("data_dir", &self.inner.config.data_dir)
            .finish_non_exhaustive()
    }
}

struct Stores {
    journal: JournalStore,
    configs: ConfigStore,
    empirical: EmpiricalStore,
    secrets: SecretStore,
    diagnostics: Arc<DiagnosticsWriter>,
    diagnostics_store: Arc<DiagnosticsStore>,
}

/// One manager over every capability of a host.
#[derive(Clone)]
pub struct CapabilityManager {
    inner: Arc<Inner>,
}

struct Inner {
    config: HostConfig,
    wasm: WasmRuntime,
    stores: Stores,
    manifests: RwLock<BTreeMap<String, Loaded<CapabilityManifest>>>,
    adapters: RwLock<Vec<Loaded<AdapterManifest>>>,
    telemetry: Telemetry,
    instances: RwLock<BTreeMap<String, Arc<Instance>>>,
    /// One lock per instance id being loaded: loads of different ids run concurrently, two
    /// loads of one id do not race.
    loading: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// After-call samples not yet folded into the empirical store (written in one
    /// transaction at most [`SAMPLE_FLUSH`] later; the in-memory profiles are already
    /// up to date).
    samples: Mutex<Vec<BufferedSample>>,
    /// The manifest dirs' newest mtime at the last scan: a lookup of an unknown name scans
    /// again only when a dir changed since (an install renames a file into it).
    scanned: Mutex<Option<std::time::SystemTime>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let samples = std::mem::take(&mut *self.samples.lock());
        if let Err(e) = self.stores.empirical.record_samples(&samples) {
            tracing::error!(error = %e, "cannot write the last empirical samples");
        }
    }
}

/// Instance ids are `[A-Za-z0-9_-]{1,64}`.
fn valid_instance_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn user(message: String) -> Error {
    Error::job(JobError::user_input(message))
}

impl CapabilityManager {
    /// A manager over the data dir of `config`: opens the stores (a corrupt database is an
    /// error, never replaced) and discovers the manifests.
    pub fn open(config: HostConfig) -> Result<Self> {
        config.ensure_layout()?;
        let diagnostics = Arc::new(DiagnosticsStore::open(&config.diagnostics_db_path())?);
        let stores = Stores {
            journal: JournalStore::open(&config.journal_db_path())?,
            configs: ConfigStore::open(&config.config_store_path())?,
            empirical: EmpiricalStore::open(&config.empirical_db_path())?,
            secrets: SecretStore::new(config.secrets_dir().join("secrets.json")),
            diagnostics: Arc::new(diagnostics.writer()?),
            diagnostics_store: diagnostics,
        };
        let allocation = match config.wasm_instance_slots {
            None => Allocation::for_machine(),
            Some(0) => Allocation::OnDemand,
            Some(instances) => Allocation::Pooled { instances },
        };
        let wasm = WasmRuntime::with_allocation(Some(config.component_cache_dir()), allocation)?;
        let me = CapabilityManager {
            inner: Arc::new(Inner {
                config,
                wasm,
                stores,
                manifests: RwLock::new(BTreeMap::new()),
                adapters: RwLock::new(Vec::new()),
                telemetry: Telemetry::new(),
                instances: RwLock::new(BTreeMap::new()),
                loading: Mutex::new(BTreeMap::new()),
                samples: Mutex::new(Vec::new()),
                scanned: Mutex::new(None),
            }),
        };
        me.discover();
        // Diagnostics retention on a timer while the manager lives (outside a runtime, as in
        // a synchronous embedder, `cjm-ctl retention` is the way).
        if tokio::runtime::Handle::try_current().is_ok() {
            let s = &me.inner.config.substrate;
            DiagnosticsStore::maintain(
                &me.inner.stores.diagnostics_store,
                s.diagnostics_sweep_interval,
                s.diagnostics_retention_days,
                s.diagnostics_retention_max_mb,
            );
        }
        Ok(me)
    }

    /// Rescans the manifests dir; returns the per-file problems (one bad file never stops the
    /// others from loading).
    pub fn discover(&self) -> Vec<Error> {
        *self.inner.scanned.lock() = self.manifest_dirs_mtime();
        let found = manifest::discover(&self.inner.config.manifest_search_paths());
        let mut map = self.inner.manifests.write();
        map.clear();
        for m in found.capabilities {
            map.insert(m.manifest.code.name.clone(), m);
        }
        *self.inner.adapters.write() = found.adapters;
        found.errors
    }

    /// The newest mtime of the manifest dirs (`None` when none can be read).
    fn manifest_dirs_mtime(&self) -> Option<std::time::SystemTime> {
        self.inner
            .config
            .manifest_search_paths()
            .iter()
            .filter_map(|d| std::fs::metadata(d).and_then(|m| m.modified()).ok())
            .max()
    }

    /// The names of the discovered capabilities.
    pub fn capabilities(&self) -> Vec<String> {
        self.inner.manifests.read().keys().cloned().collect()
    }

    /// The loaded instances.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.inner.instances.read().values().cloned().collect()
    }

    /// The instance `id`; unknown ids are a typed error.
    pub fn instance(&self, id: &str) -> Result<Arc<Instance>> {
        self.inner
            .instances
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| user(format!("no loaded capability instance '{id}'")))
    }

    /// The journal.
    pub fn journal(&self) -> &JournalStore {
        &self.inner.stores.journal
    }

    /// The host configuration it was opened with.
    pub fn host_config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// The resource telemetry (sysinfo + NVML).
    pub fn telemetry(&self) -> &Telemetry {
        &self.inner.telemetry
    }

    /// The empirical store.
    pub fn empirical(&self) -> &EmpiricalStore {
        // Readers see every sample taken so far.
        if let Err(e) = self.flush_samples() {
            tracing::error!(error = %e, "cannot write empirical samples");
        }
        &self.inner.stores.empirical
    }

    /// The diagnostics store (log records and output lines of capabilities), with every
    /// record handed to the writer so far committed.
    pub fn diagnostics(&self) -> &DiagnosticsStore {
        if let Err(e) = self.inner.stores.diagnostics.flush() {
            tracing::error!(error = %e, "cannot flush the diagnostics writer");
        }
        &self.inner.stores.diagnostics_store
    }

    /// The secret store.
    pub fn secrets(&self) -> &SecretStore {
        &self.inner.stores.secrets
    }

    /// The discovered capability manifests, by name.
    pub fn manifests(&self) -> Vec<Loaded<CapabilityManifest>> {
        self.inner.manifests.read().values().cloned().collect()
    }

    /// The discovered adapter manifests, in discovery order.
    pub fn adapter_manifests(&self) -> Vec<Loaded<AdapterManifest>> {
        self.inner.adapters.read().clone()
    }

    /// The manifest of capability `name`; an unknown name is a typed `user_input` error.
    pub fn manifest(&self, name: &str) -> Result<Loaded<CapabilityManifest>> {
        let known = |me: &Self| me.inner.manifests.read().get(name).cloned();
        // One installed since the last scan (a running service, `cjm-ctl dev`) is found;
        // the dirs are scanned again only when they changed.
        known(self)
            .or_else(|| {
                let scanned = *self.inner.scanned.lock();
                if scanned.is_some() && scanned == self.manifest_dirs_mtime() {
                    return None;
                }
                self.discover();
                known(self)
            })
            .ok_or_else(|| {
                user(format!(
                    "unknown capability '{name}' (no manifest in {})",
                    self.inner.config.manifests_dir().display()
                ))
            })
    }

    /// Loads capability `name` as instance `instance_id` (default: `name-6hex`), with `config`
    /// (default: the persisted config, else the schema's defaults). Loading an id that is
    /// already loaded returns it unchanged. Nothing half-loaded is left behind on failure.
    pub async fn load(
        &self,
        name: &str,
        config: Option<Value>,
        instance_id: Option<&str>,
    ) -> Result<Arc<Instance>> {
        self.load_with_adapters(name, config, instance_id, None)
            .await
    }

    /// [`load`](Self::load) binding exactly the adapters named in `adapters` (unit names of
    /// adapter manifests) instead of every compatible one: an incompatible one is refused
    /// with its missing members named, and nothing is loaded.
    pub async fn load_with_adapters(
        &self,
        name: &str,
        config: Option<Value>,
        instance_id: Option<&str>,
        adapters: Option<&[String]>,
    ) -> Result<Arc<Instance>> {
        self.load_as(name, config, instance_id, adapters, true)
            .await
    }

    /// [`load`](Self::load) with `config` for this load only: the instance's stored record
    /// (its config and enabled flag) stays as it was, and none is created. How `cjm-ctl run
    /// --config` tries a configuration without keeping it.
    pub async fn load_unsaved(
        &self,
        name: &str,
        config: Option<Value>,
        instance_id: Option<&str>,
    ) -> Result<Arc<Instance>> {
        self.load_as(name, config, instance_id, None, false).await
    }

    /// Loads every enabled instance the config store records, and each installed
    /// capability without a recorded instance as its own name: what a host serving a data
    /// dir starts with. Each load's outcome is returned (one that fails does not stop the
    /// others), by capability name and instance id. When the config store cannot be read,
    /// every capability is loaded as its own name.
    pub async fn load_enabled(&self) -> Vec<(String, String, Result<Arc<Instance>>)> {
        let records = self
            .inner
            .stores
            .configs
            .list_all()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the instances' configs: each capability loads as its own name");
                BTreeMap::new()
            });
        let manifests = self.manifests();
        let names: Vec<&str> = manifests.iter().map(|c| c.manifest.name()).collect();
        let mut to_load: Vec<(String, String)> = Vec::new();
        for name in &names {
            let mut mine = records
                .iter()
                .filter(|(id, _)| instance_owner(id, &names) == Some(name))
                .peekable();
            if mine.peek().is_none() {
                to_load.push(((*name).to_owned(), (*name).to_owned()));
            }
            for (id, record) in mine {
                if record.enabled {
                    to_load.push(((*name).to_owned(), id.clone()));
                }
            }
        }
        let mut out = Vec::with_capacity(to_load.len());
        for (name, id) in to_load {
            let loaded = self.load(&name, None, Some(&id)).await;
            out.push((name, id, loaded));
        }
        out
    }

    async fn load_as(
        &self,
        name: &str,
        config: Option<Value>,
        instance_id: Option<&str>,
        adapters: Option<&[String]>,
        persist: bool,
    ) -> Result<Arc<Instance>> {
        let id = match instance_id {
            Some(id) if !valid_instance_id(id) => {
                return Err(user(format!(
                    "invalid instance id '{id}': expected [A-Za-z0-9_-]{{1,64}}"
                )));
            }
            Some(id) => id.to_owned(),
            None => format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]),
        };
        let lock = Arc::clone(self.inner.loading.lock().entry(id.clone()).or_default());
        let _guard = lock.lock().await;
        let result = self
            .load_locked(name, config, id.clone(), adapters, persist)
            .await;
        self.inner.loading.lock().remove(&id);
        result
    }

    async fn load_locked(
        &self,
        name: &str,
        config: Option<Value>,
        id: String,
        adapters: Option<&[String]>,
        persist: bool,
    ) -> Result<Arc<Instance>> {
        if let Ok(existing) = self.instance(&id) {
            return Ok(existing);
        }
        let loaded = self.manifest(name)?;
        let bound = self.bound_adapters(&loaded.manifest, adapters)?;
        let stored = self.inner.stores.configs.get(&id)?;
        let overrides = stored
            .as_ref()
            .map(|r| r.worker_env.clone())
            .unwrap_or_default();
        let backend = self.build_backend(&loaded, &id, &overrides).await?;
        let given = config.or_else(|| stored.as_ref().map(|r| r.config.clone()));
        let schema = backend.info().config_schema.clone();
        // The merged view is what is validated; the worker gets what cjm-substrate's host
        // sends: the config as given (or stored), the schema's defaults only when there is
        // none.
        let effective = config::effective(&schema, given.as_ref());
        let sent = given.unwrap_or_else(|| config::defaults(&schema));
        let ready = async {
            config::validate(name, &schema, &effective, false)?;
            backend.initialize(sent.clone()).await
        }
        .await;
        if let Err(e) = ready {
            let _ = backend.shutdown().await;
            return Err(e);
        }
        let enabled = stored.as_ref().is_none_or(|r| r.enabled);
        let record = CapabilityConfigRecord {
            config: sent.clone(),
            enabled,
            ..stored.unwrap_or_default()
        };
        if persist {
            self.inner.stores.configs.set(&id, &record)?;
        }
        let host = &self.inner.config;
        // A wasm capability serves as many calls as its sandbox allows (one instance each); a
        // native worker as many as the host's default (1: same-worker concurrency is opt-in).
        let max = match &loaded.manifest.install.wasm {
            Some(w) => w.sandbox.max_concurrency.max(1) as usize,
            None => host.queue.default_instance_concurrency.max(1) as usize,
        };
        let drift = if host.substrate.drift_detection {
            Drift::of(&loaded.manifest, backend.info())
        } else {
            Drift::default()
        };
        let config_hash = manifest::hash::config_hash(Some(&sent));
        let profile = self.stored_profile(&id, &config_hash)?;
        if drift != Drift::default() {
            tracing::warn!(
                capability = name,
                ?drift,
                "the live capability drifted from its manifest"
            );
        }
        let instance = Instance::new(id.clone(), name.to_owned(), backend, sent, max);
        let instance = Arc::new(Instance {
            adapters: bound.iter().map(|a| a.name.clone()).collect(),
            adapter_specs: bound.iter().map(crate::adapter::worker_spec).collect(),
            drift,
            enabled: AtomicBool::new(enabled),
            config_hash: Mutex::new(config_hash),
            profile: Mutex::new(profile),
            ..instance
        });
        if let Err(e) = self.register(&instance) {
            let _ = instance.backend().shutdown().await;
            return Err(e);
        }
        Ok(instance)
    }

    /// Registers a loaded instance (journaled as `capability_loaded`); an id already
    /// registered is refused.
    fn register(&self, instance: &Arc<Instance>) -> Result<()> {
        {
            let mut instances = self.inner.instances.write();
            if instances.contains_key(&instance.id) {
                return Err(user(format!(
                    "capability instance '{}' is already loaded",
                    instance.id
                )));
            }
            instances.insert(instance.id.clone(), Arc::clone(instance));
        }
        let journaled = self.journal_event(
            instance,
            event_types::CAPABILITY_LOADED,
            json!({"runtime": instance.backend().kind().to_string()}),
        );
        if journaled.is_err() {
            self.inner.instances.write().remove(&instance.id);
        }
        journaled
    }

    /// Adds an instance `id` served by `backend`, a [`Backend`] the caller built (an
    /// embedder's own, or a test's): it is initialized with `config` (the schema's
    /// defaults when `None`) and takes up to `max_concurrency` calls at once. It has no
    /// manifest: it is never evicted, and [`reload`](Self::reload) refuses it. Its name
    /// is its info's.
    pub async fn attach(
        &self,
        id: &str,
        backend: Arc<dyn Backend>,
        config: Option<Value>,
        max_concurrency: usize,
    ) -> Result<Arc<Instance>> {
        if !valid_instance_id(id) {
            return Err(user(format!(
                "invalid instance id '{id}': expected [A-Za-z0-9_-]{{1,64}}"
            )));
        }
        // Serialised with loads of the same id.
        let lock = Arc::clone(self.inner.loading.lock().entry(id.to_owned()).or_default());
        let _guard = lock.lock().await;
        let result = self
            .attach_locked(id, backend, config, max_concurrency)
            .await;
        self.inner.loading.lock().remove(id);
        result
    }

    async fn attach_locked(
        &self,
        id: &str,
        backend: Arc<dyn Backend>,
        config: Option<Value>,
        max_concurrency: usize,
    ) -> Result<Arc<Instance>> {
        if self.instance(id).is_ok() {
            return Err(user(format!(
                "capability instance '{id}' is already loaded"
            )));
        }
        let info = backend.info().clone();
        let sent = config.unwrap_or_else(|| config::defaults(&info.config_schema));
        let effective = config::effective(&info.config_schema, Some(&sent));
        config::validate(&info.name, &info.config_schema, &effective, false)?;
        backend.initialize(sent.clone()).await?;
        let mut instance = Instance::new(
            id.to_owned(),
            info.name,
            backend,
            sent,
            max_concurrency.max(1),
        );
        instance.attached = true;
        let instance = Arc::new(instance);
        if let Err(e) = self.register(&instance) {
            let _ = instance.backend().shutdown().await;
            return Err(e);
        }
        Ok(instance)
    }

    /// The adapters a capability binds: every compatible one (one per task) unless
    /// `requested` names them, in which case an incompatible one is refused with its missing
    /// members named. Matched manifest against manifest, no code loaded.
    pub fn bound_adapters(
        &self,
        capability: &CapabilityManifest,
        requested: Option<&[String]>,
    ) -> Result<Vec<AdapterManifest>> {
        let adapters = self.inner.adapters.read();
        let chosen =
            crate::adapter::resolve(capability, adapters.iter().map(|a| &a.manifest), requested)?;
        Ok(chosen.into_iter().cloned().collect())
    }

    /// Unloads an instance: its worker or instance pool goes away; its persisted config stays.
    pub async fn unload(&self, id: &str) -> Result<()> {
        let instance = self
            .inner
            .instances
            .write()
            .remove(id)
            .ok_or_else(|| user(format!("no loaded capability instance '{id}'")))?;
        let result = instance.backend().shutdown().await;
        self.journal_event(&instance, event_types::CAPABILITY_UNLOADED, json!({}))?;
        result
    }

    /// Replaces an instance's backend by a fresh one with the same configuration, from its
    /// capability's manifest as it is on disk now (a reinstall takes effect).
    pub async fn reload(&self, id: &str) -> Result<()> {
        let instance = self.instance(id)?;
        if instance.attached {
            return Err(user(format!(
                "capability instance '{id}' was attached with its own backend: it has no manifest to reload from"
            )));
        }
        // A reinstalled capability (new component, new program, new manifest) is what
        // comes back.
        self.discover();
        let loaded = self.manifest(&instance.name)?;
        let overrides = self
            .inner
            .stores
            .configs
            .get(id)?
            .map(|r| r.worker_env)
            .unwrap_or_default();
        let fresh = self.build_backend(&loaded, id, &overrides).await?;
        if let Err(e) = fresh.initialize(instance.config()).await {
            let _ = fresh.shutdown().await;
            return Err(e);
        }
        let old = std::mem::replace(&mut *instance.backend.write(), fresh);
        instance.validators.lock().clear();
        let _ = old.shutdown().await;
        self.journal_event(&instance, event_types::CAPABILITY_RELOADED, json!({}))
    }

    /// Enables or disables an instance (persisted). A disabled instance refuses calls.
    pub async fn set_enabled(&self, id: &str, enabled: bool) -> Result<()> {
        let instance = self.instance(id)?;
        instance.enabled.store(enabled, Ordering::SeqCst);
        self.inner.stores.configs.set_enabled(id, enabled)?;
        // The hook runs once the instance is free: an in-flight call finishes first.
        let _permit = instance.permits.acquire().await;
        let backend = instance.backend();
        let _ = if enabled {
            backend.on_enable().await
        } else {
            backend.on_disable().await
        };
        self.journal_event(
            &instance,
            if enabled {
                event_types::CAPABILITY_ENABLED
            } else {
                event_types::CAPABILITY_DISABLED
            },
            json!({}),
        )
    }

    /// Validates `new` against the schema, reconfigures the instance and persists it.
    pub async fn update_config(&self, id: &str, new: Value) -> Result<()> {
        let instance = self.instance(id)?;
        let backend = instance.backend();
        let schema = backend.info().config_schema.clone();
        config::validate(&instance.name, &schema, &new, false)?;
        let old = instance.config();
        backend.reconfigure(old.clone(), new.clone()).await?;
        *instance.config.lock() = new.clone();
        let hash = manifest::hash::config_hash(Some(&new));
        self.flush_samples()?;
        *instance.profile.lock() = self.stored_profile(id, &hash)?;
        *instance.config_hash.lock() = hash;
        let mut record = self.inner.stores.configs.get(id)?.unwrap_or_default();
        record.config = new.clone();
        self.inner.stores.configs.set(id, &record)?;
        self.journal_event(
            &instance,
            event_types::CONFIG_CHANGED,
            json!({"old": old, "new": new}),
        )
    }

    /// What running instance `id` with the configuration hashed `config_hash` has cost so
    /// far. Without empirical tracking nothing is measured, so nothing is known: every job
    /// runs as a first run (alone), as under cjm-substrate with `empirical_tracking: false`.
    fn stored_profile(&self, id: &str, config_hash: &str) -> Result<Option<EmpiricalRecord>> {
        if !self.inner.config.substrate.empirical_tracking {
            return Ok(None);
        }
        self.inner.stores.empirical.get_record(id, config_hash)
    }

    /// Identity, schema and surface of a loaded instance.
    pub fn info(&self, id: &str) -> Result<CapabilityInfo> {
        Ok(self.instance(id)?.backend().info().clone())
    }

    fn journal_event(&self, instance: &Instance, event_type: &str, payload: Value) -> Result<()> {
        let mut e = JournalEvent::new(event_type)
            .instance(&instance.id)
            .payload(payload);
        e.capability_name = Some(instance.name.clone());
        self.inner.stores.journal.append(&e).map(|_| ())
    }

    /// The live config options of instance `id` (passed through from the capability).
    pub async fn config_options(&self, id: &str) -> Result<Value> {
        self.instance(id)?.backend().config_options().await
    }

    /// A handle pre-bound to instance `id`.
    pub fn binding(&self, id: &str) -> Result<Binding> {
        self.instance(id)?;
        Ok(Binding {
            manager: self.clone(),
            id: id.to_owned(),
        })
    }

    /// Unloads every instance and writes the buffered empirical samples.
    pub async fn shutdown(&self) -> Result<()> {
        // Every instance is stopped whatever fails on the way; the first failure is returned.
        let mut first = self.flush_samples().err();
        let ids: Vec<String> = self.instances().iter().map(|i| i.id.clone()).collect();
        for id in ids {
            if let Err(e) = self.unload(&id).await {
                tracing::warn!(instance = %id, error = %e, "stopping an instance failed; stopping the others");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}
