//! The wasm backend: capabilities as WebAssembly components run in the host's sandbox.
//!
//! - [`runtime`]: one engine per host, the epoch ticker, the compile cache.
//! - [`sandbox`]: grants (deny by default), limits, stdio capture.
//! - `instance`: one store + instance, the host imports, traps to typed errors.
//! - `emit`: bounds on what a guest emits (message sizes, a log rate per instance).
//! - this module: [`WasmBackend`], a pool of instances of one component serving the
//!   [`Backend`] trait. Up to `max_instances` calls run at once, each on its own instance; an
//!   instance that trapped, panicked or was stopped midway is discarded and the next call
//!   gets a fresh one. Under `isolation: per_call` every call gets a fresh instance
//!   (initialized with the current configuration) and it is dropped after the call; with the
//!   engine's instance pool a fresh instance costs a few µs.
//!
//! Every guest call is a future (wasmtime's async support with the async WASI linker): a
//! blocking WASI operation is an `.await` on the runtime, never a nested `block_on`; a long
//! computation yields to the runtime at every epoch tick; and the call is raced against its
//! deadline and a forced cancel, so a guest asleep in a host call is stopped on time too.

mod bindings;
mod emit;
mod error;
mod instance;
pub mod runtime;
pub mod sandbox;

use parking_lot::{Mutex, MutexGuard};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use cjm_guest::contract::{CapabilityInfo, JobError, Status};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, SemaphorePermit};

pub use error::SandboxError;
pub use runtime::{Allocation, LoadedComponent, WasmRuntime};
pub use sandbox::{DirGrant, SandboxGrants};

use self::emit::LogBudget;
use self::instance::{Hook, Instance, JsonExport, Outcome};
use crate::backend::{Backend, CallControl, CallRequest, DiagnosticsSink, RuntimeKind};
use crate::error::{Error, Result};
use crate::manifest::Isolation;

/// Time allowed to lifecycle exports (`info`, `initialize`, hooks) that take no call deadline.
const LIFECYCLE_LIMIT_SECS: f64 = 60.0;

struct PoolState {
    /// The effective configuration; `None` until `initialize`.
    config: Option<Value>,
    /// Bumped on every configuration change; instances of an older generation are dropped.
    generation: u64,
    /// Boxed: an instance (its store handle and the bindings' export handles) is hundreds of
    /// bytes, moved on every checkout and hand-back; a box moves as a pointer (the warm
    /// call's time in `memcpy` 21 -> 13 %).
    #[expect(clippy::vec_box, reason = "instances move in and out on every call")]
    idle: Vec<Box<Instance>>,
    shut_down: bool,
    instantiated: u64,
    discarded: u64,
    /// Instances dropped after serving their one call (per-call isolation).
    retired: u64,
}

struct Pool {
    component: Arc<LoadedComponent>,
    grants: SandboxGrants,
    info: CapabilityInfo,
    session: Arc<str>,
    sink: Arc<dyn DiagnosticsSink>,
    /// The granted secrets' values, masked in the errors the guest reports.
    masker: crate::backend::mask::Masker,
    state: Mutex<PoolState>,
    /// One permit per instance allowed to serve a call at once (`max_instances`); closed
    /// at shutdown. Waiting for one never holds a thread.
    permits: Semaphore,
    /// Log records the rate limit dropped, over all instances.
    log_dropped: Arc<AtomicU64>,
    /// Under per-call isolation, the one log budget of all its instances (each lives for
    /// one call: a budget of its own would start full every call).
    shared_budget: Option<Arc<Mutex<LogBudget>>>,
}

/// A wasm capability: a pool of sandboxed instances of one component.
#[derive(Clone)]
pub struct WasmBackend {
    pool: Arc<Pool>,
}

impl std::fmt::Debug for WasmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmBackend")
            .field("name", &self.pool.info.name)
            .field("component", &self.pool.component.path())
            .finish_non_exhaustive()
    }
}

/// An instance checked out for one call, with the permit it runs under. Unless the call
/// hands it back ([`Slot::keep`]), dropping the slot discards the instance: a call that
/// trapped, panicked, or whose future was dropped midway (a deadline, a forced cancel, an
/// aborted task) never leaves a half-run instance in the pool, and always frees its permit.
struct Slot<'p> {
    pool: &'p Pool,
    instance: Option<Box<Instance>>,
    _permit: SemaphorePermit<'p>,
}

impl Slot<'_> {
    /// Hands the instance back after a call that did not trap: to the idle instances, or,
    /// under per-call isolation, to nobody (it served its one call; what the guest kept in
    /// memory goes with it).
    fn keep(mut self) {
        if let Some(inst) = self.instance.take() {
            let mut state = self.pool.lock();
            if self.pool.grants.isolation == Isolation::PerCall {
                state.retired += 1;
            } else if state.shut_down || inst.generation != state.generation {
                state.discarded += 1;
            } else {
                state.idle.push(inst);
            }
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.instance.take().is_some() {
            self.pool.lock().discarded += 1;
        }
    }
}

impl WasmBackend {
    /// Loads the component at `path` under `grants` and reads its info in the sandbox. The
    /// capability is not initialized yet: call [`Backend::initialize`] before any call.
    pub async fn load(
        runtime: &WasmRuntime,
        path: &std::path::Path,
        grants: SandboxGrants,
        sink: Arc<dyn DiagnosticsSink>,
    ) -> Result<Self> {
        grants.validate()?;
        // What the guest logs, prints or fails with never holds a granted secret's value.
        let masker = crate::backend::mask::Masker::new(
            grants.secrets.iter().map(|(_, v)| v.expose().to_owned()),
        );
        let sink: Arc<dyn DiagnosticsSink> = if masker.is_empty() {
            sink
        } else {
            Arc::new(crate::backend::mask::MaskingSink {
                inner: sink,
                masker: masker.clone(),
            })
        };
        let component = runtime.load(path)?;
        let session: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        let log_dropped = Arc::new(AtomicU64::new(0));
        let shared_budget =
            (grants.isolation == Isolation::PerCall).then(|| log_budget(&grants, &log_dropped));
        let mut first = Instance::new(
            &component,
            &grants,
            Arc::clone(&session),
            Arc::clone(&sink),
            shared_budget
                .clone()
                .unwrap_or_else(|| log_budget(&grants, &log_dropped)),
        )
        .await?;
        let raw = first.info(LIFECYCLE_LIMIT_SECS).await.map_err(|t| t.0)?;
        let info = parse_info(raw).map_err(|reason| {
            Error::Sandbox(SandboxError::InvalidComponent {
                path: path.to_owned(),
                reason,
                source: None,
            })
        })?;
        let permits = Semaphore::new(grants.max_instances as usize);
        Ok(WasmBackend {
            pool: Arc::new(Pool {
                component,
                grants,
                info,
                session,
                sink,
                masker,
                state: Mutex::new(PoolState {
                    config: None,
                    generation: 0,
                    idle: vec![Box::new(first)],
                    shut_down: false,
                    instantiated: 1,
                    discarded: 0,
                    retired: 0,
                }),
                permits,
                log_dropped,
                shared_budget,
            }),
        })
    }

    /// The sandbox grants the capability runs under.
    pub fn grants(&self) -> &SandboxGrants {
        &self.pool.grants
    }

    /// The worker session id its logs and stdio are attributed to.
    pub fn session_id(&self) -> &str {
        &self.pool.session
    }

    /// A fresh instance, instantiated and initialized; the cost a pool pays to grow or to
    /// replace a trapped instance. Public for benchmarks.
    pub async fn instantiate_fresh(&self) -> Result<()> {
        let config = self.pool.lock().config.clone();
        let mut inst = self.pool.new_instance().await?;
        if let Some(config) = config {
            inst.initialize(&config, LIFECYCLE_LIMIT_SECS)
                .await
                .map_err(outcome_error)?;
        }
        Ok(())
    }

    /// A fresh instance made and dropped without its `initialize`: the engine's own
    /// instantiation and teardown, which [`Self::instantiate_fresh`] adds the guest's
    /// `initialize` to. Public for benchmarks.
    pub async fn instantiate_bare(&self) -> Result<()> {
        self.pool.new_instance().await.map(drop)
    }

    fn call_limit(&self, control: &CallControl) -> f64 {
        match control.deadline() {
            Some(d) => d
                .saturating_duration_since(std::time::Instant::now())
                .as_secs_f64()
                .min(self.pool.grants.time_limit_secs),
            None => self.pool.grants.time_limit_secs,
        }
    }

    /// One of the `max_instances` permits to run guest code (waiting without a thread); a
    /// shut-down pool has none.
    async fn permit(&self) -> Result<SemaphorePermit<'_>> {
        self.pool
            .permits
            .acquire()
            .await
            .map_err(|_| self.stopped())
    }

    /// Checks out an instance of the current configuration, waiting (asynchronously) while
    /// `max_instances` are busy; a fresh one is made when none is idle.
    async fn checkout(&self) -> Result<Slot<'_>> {
        let permit = self.permit().await?;
        let found = {
            let mut guard = self.pool.lock();
            let state = &mut *guard;
            if state.shut_down {
                return Err(self.stopped());
            }
            let Some(config) = &state.config else {
                return Err(Error::job(JobError::fatal(format!(
                    "capability '{}' is not initialized",
                    self.pool.info.name
                ))));
            };
            let generation = state.generation;
            loop {
                match state.idle.pop() {
                    Some(i) if i.generation == generation => break Ok(i),
                    Some(_) => state.discarded += 1,
                    // The configuration is copied only when an instance must be made for it.
                    None => break Err((config.clone(), generation)),
                }
            }
        };
        let instance = match found {
            Ok(i) => i,
            // Boxed: instantiating is the rare path, and its future is large; inline, every
            // warm call's future would carry (and copy) its space.
            Err((config, generation)) => Box::pin(self.fresh_instance(config, generation)).await?,
        };
        Ok(Slot {
            pool: &self.pool,
            instance: Some(instance),
            _permit: permit,
        })
    }

    /// A new instance initialized with `config`, of configuration `generation`.
    async fn fresh_instance(&self, config: Value, generation: u64) -> Result<Box<Instance>> {
        let mut i = self.pool.new_instance().await?;
        i.initialize(&config, LIFECYCLE_LIMIT_SECS)
            .await
            .map_err(|o| self.stamp(outcome_error(o)))?;
        i.generation = generation;
        self.pool.lock().instantiated += 1;
        Ok(i)
    }

    /// Runs `f` on a checked-out instance and hands the instance back unless it trapped. A
    /// panic anywhere in the call (a host import included) fails the call with a typed
    /// `fatal` error and discards the instance; the next call gets a fresh one.
    async fn with_instance<T>(
        &self,
        f: impl for<'i> FnOnce(&'i mut Instance) -> BoxFuture<'i, Result<T, Outcome>>,
    ) -> Result<T> {
        let mut slot = self.checkout().await?;
        let Some(inst) = slot.instance.as_deref_mut() else {
            return Err(self.stopped());
        };
        let out = AssertUnwindSafe(f(inst)).catch_unwind().await;
        match out {
            Ok(Ok(v)) => {
                slot.keep();
                Ok(v)
            }
            Ok(Err(Outcome::Failed(e))) => {
                slot.keep();
                Err(self.stamp(e))
            }
            Ok(Err(Outcome::Trapped(e))) => Err(self.stamp(e)),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned());
                tracing::error!(capability = %self.pool.info.name, panic = %what, "a wasm call panicked in the host; the instance is discarded");
                Err(self.stamp(Error::job(JobError::fatal(format!(
                    "the host failed while serving the call ({what}); the instance was replaced"
                )))))
            }
        }
    }

    /// Applies a configuration change through one instance and makes it the pool's
    /// configuration; other idle instances are dropped (they were built for the old one).
    async fn apply_config(
        &self,
        new: Value,
        f: impl for<'i> FnOnce(&'i mut Instance) -> BoxFuture<'i, Result<(), Outcome>>,
    ) -> Result<()> {
        // A configuration change runs guest code too: under a permit like any call, so no
        // more than `max_instances` guests ever run at once.
        let _permit = self.permit().await?;
        let inst = {
            let mut state = self.pool.lock();
            if state.shut_down {
                return Err(self.stopped());
            }
            state.idle.pop()
        };
        let mut inst = match inst {
            Some(i) => i,
            None => self.pool.new_instance().await?,
        };
        f(&mut inst)
            .await
            .map_err(|o| self.stamp(outcome_error(o)))?;
        {
            let mut state = self.pool.lock();
            state.generation += 1;
            state.config = Some(new);
            inst.generation = state.generation;
            state.discarded += state.idle.len() as u64;
            state.idle.clear();
            state.idle.push(inst);
        }
        drop(_permit);
        // Warming the spare instances is best effort: the configuration is applied (an
        // instance took it); a full instance pool or a failing spare only means that the
        // next calls instantiate their own.
        if let Err(e) = self.fill_pool().await {
            tracing::warn!(capability = %self.pool.info.name, error = %e, "cannot keep pool_size instances ready");
        }
        Ok(())
    }

    /// Brings the idle instances of the current configuration up to the sandbox's
    /// `pool_size` (the instances kept ready, so the first concurrent calls after a
    /// (re)configuration pay no instantiation). Each one is made under a permit, like a
    /// call: initializing runs guest code.
    async fn fill_pool(&self) -> Result<()> {
        loop {
            let _permit = self.permit().await?;
            let (config, generation) = {
                let state = self.pool.lock();
                let ready = state.idle.len() >= self.pool.grants.pool_size as usize;
                match &state.config {
                    Some(c) if !state.shut_down && !ready => (c.clone(), state.generation),
                    _ => return Ok(()),
                }
            };
            let mut inst = self.pool.new_instance().await?;
            inst.initialize(&config, LIFECYCLE_LIMIT_SECS)
                .await
                .map_err(|o| self.stamp(outcome_error(o)))?;
            inst.generation = generation;
            let mut state = self.pool.lock();
            state.instantiated += 1;
            if state.shut_down || state.generation != generation {
                state.discarded += 1;
                return Ok(());
            }
            state.idle.push(inst);
        }
    }

    fn stamp(&self, e: Error) -> Error {
        match e {
            Error::Job(job) => {
                let job = job.stamped(&self.pool.info.name, &self.pool.session);
                Error::job(self.pool.masker.mask_error(job))
            }
            other => other,
        }
    }

    fn stopped(&self) -> Error {
        Error::job(JobError::fatal(format!(
            "capability '{}' was shut down",
            self.pool.info.name
        )))
    }

    async fn hook(&self, which: Hook) -> Result<String> {
        self.with_instance(|inst| Box::pin(inst.hook(which, LIFECYCLE_LIMIT_SECS)))
            .await
    }
}

impl Pool {
    async fn new_instance(&self) -> Result<Box<Instance>> {
        let budget = match &self.shared_budget {
            Some(shared) => Arc::clone(shared),
            None => log_budget(&self.grants, &self.log_dropped),
        };
        Instance::new(
            &self.component,
            &self.grants,
            Arc::clone(&self.session),
            Arc::clone(&self.sink),
            budget,
        )
        .await
        .map(Box::new)
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock()
    }
}

/// A budget of `log_records_per_second`, its refusals counted into `dropped`.
fn log_budget(grants: &SandboxGrants, dropped: &Arc<AtomicU64>) -> Arc<Mutex<LogBudget>> {
    Arc::new(Mutex::new(LogBudget::new(
        grants.log_records_per_second,
        Arc::clone(dropped),
    )))
}

fn outcome_error(o: Outcome) -> Error {
    match o {
        Outcome::Failed(e) | Outcome::Trapped(e) => e,
    }
}

fn parse_info(
    raw: self::bindings::cjm::capability::types::CapabilityInfo,
) -> std::result::Result<CapabilityInfo, String> {
    let parse = |what: &str, text: &str| {
        serde_json::from_str::<Value>(text).map_err(|e| format!("its info has invalid {what}: {e}"))
    };
    let surface = serde_json::from_value(parse("structural-surface", &raw.structural_surface)?)
        .map_err(|e| format!("its info has an invalid structural surface: {e}"))?;
    let tasks = serde_json::from_value(parse("tasks", &raw.tasks)?)
        .map_err(|e| format!("its info has an invalid task list: {e}"))?;
    if raw.name.is_empty() {
        return Err("its info has an empty name".into());
    }
    Ok(CapabilityInfo {
        name: raw.name,
        version: raw.version,
        description: raw.description,
        config_schema: parse("config-schema", &raw.config_schema)?,
        structural_surface: surface,
        tasks,
        extra: Map::new(),
    })
}

#[async_trait]
impl Backend for WasmBackend {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Wasm
    }

    fn info(&self) -> &CapabilityInfo {
        &self.pool.info
    }

    async fn health(&self) -> Result<Value> {
        let state = self.pool.lock();
        Ok(json!({
            "status": if state.shut_down { "stopped" } else { "running" },
            "name": self.pool.info.name,
            "version": self.pool.info.version,
            "runtime": "wasm",
            "worker_session_id": &*self.pool.session,
            "initialized": state.config.is_some(),
        }))
    }

    async fn stats(&self) -> Result<Value> {
        let max = self.pool.grants.max_instances;
        let busy = if self.pool.permits.is_closed() {
            0
        } else {
            max.saturating_sub(u32::try_from(self.pool.permits.available_permits()).unwrap_or(max))
        };
        let state = self.pool.lock();
        Ok(json!({
            "pid": std::process::id(),
            "runtime": "wasm",
            "instances_idle": state.idle.len(),
            "instances_busy": busy,
            "max_instances": max,
            "instances_created": state.instantiated,
            "instances_discarded": state.discarded,
            "instances_retired": state.retired,
            "isolation": self.pool.grants.isolation,
            "allocator": match self.pool.component.allocation {
                Allocation::Pooled { .. } => "pooling",
                Allocation::OnDemand => "on_demand",
            },
            "memory_limit_mb": self.pool.grants.memory_limit_mb,
            "log_records_dropped": self.pool.log_dropped.load(Ordering::Relaxed),
            "usage": null,
        }))
    }

    async fn initialize(&self, config: Value) -> Result<()> {
        let new = config.clone();
        self.apply_config(new, move |inst| {
            Box::pin(async move { inst.initialize(&config, LIFECYCLE_LIMIT_SECS).await })
        })
        .await
    }

    async fn reconfigure(&self, old: Value, new: Value) -> Result<()> {
        let to = new.clone();
        self.apply_config(to, move |inst| {
            Box::pin(async move { inst.reconfigure(&old, &new, LIFECYCLE_LIMIT_SECS).await })
        })
        .await
    }

    async fn current_config(&self) -> Result<Value> {
        self.with_instance(|i| {
            Box::pin(i.read_json(JsonExport::CurrentConfig, LIFECYCLE_LIMIT_SECS))
        })
        .await
    }

    async fn config_options(&self) -> Result<Value> {
        self.with_instance(|i| {
            Box::pin(i.read_json(JsonExport::ConfigOptions, LIFECYCLE_LIMIT_SECS))
        })
        .await
    }

    async fn call(&self, request: CallRequest, control: Arc<CallControl>) -> Result<Value> {
        if control.cancel_requested() {
            return Err(Error::Cancelled);
        }
        let limit = self.call_limit(&control);
        self.with_instance(move |inst| {
            Box::pin(async move {
                let r = &request;
                inst.call(&r.target, &r.kwargs, &r.envelope, control, limit)
                    .await
            })
        })
        .await
    }

    async fn prefetch(&self) -> Result<Status> {
        self.hook(Hook::Prefetch).await.map(Status::new)
    }

    async fn on_enable(&self) -> Result<Status> {
        self.hook(Hook::OnEnable).await.map(Status::new)
    }

    async fn on_disable(&self) -> Result<Status> {
        self.hook(Hook::OnDisable).await.map(Status::new)
    }

    async fn shutdown(&self) -> Result<()> {
        let idle = {
            let mut state = self.pool.lock();
            state.shut_down = true;
            self.pool.permits.close();
            std::mem::take(&mut state.idle)
        };
        // Cleanup is best effort per instance: one failing must not keep the others alive.
        let mut first_error = None;
        for mut inst in idle {
            if let Err(o) = inst.hook(Hook::Cleanup, LIFECYCLE_LIMIT_SECS).await {
                first_error.get_or_insert(outcome_error(o));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
