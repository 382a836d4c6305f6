//! The wasm backend: capabilities as WebAssembly components run in the host's sandbox.
//!
//! - [`runtime`]: one engine per host, the epoch ticker, the compile cache.
//! - [`sandbox`]: grants (deny by default), limits, stdio capture.
//! - `instance`: one store + instance, the host imports, traps to typed errors.
//! - this module: [`WasmBackend`], a pool of instances of one component serving the
//!   [`Backend`] trait. Up to `max_instances` calls run at once, each on its own instance; an
//!   instance that trapped is discarded and the next call gets a fresh one.

mod bindings;
mod instance;
pub mod runtime;
pub mod sandbox;

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use cjm_guest::contract::{CapabilityInfo, JobError, Status};
use serde_json::{Map, Value, json};

pub use runtime::{LoadedComponent, WasmRuntime};
pub use sandbox::{DirGrant, SandboxGrants};

use self::instance::{Hook, Instance, JsonExport, Outcome};
use crate::backend::{Backend, CallControl, CallRequest, DiagnosticsSink, RuntimeKind};
use crate::error::{Error, Result};

/// Time allowed to lifecycle exports (`info`, `initialize`, hooks) that take no call deadline.
const LIFECYCLE_LIMIT_SECS: f64 = 60.0;

struct PoolState {
    /// The effective configuration; `None` until `initialize`.
    config: Option<Value>,
    /// Bumped on every configuration change; instances of an older generation are dropped.
    generation: u64,
    idle: Vec<Instance>,
    busy: u32,
    shut_down: bool,
    instantiated: u64,
    discarded: u64,
}

struct Pool {
    component: Arc<LoadedComponent>,
    grants: SandboxGrants,
    info: CapabilityInfo,
    session: Arc<str>,
    sink: Arc<dyn DiagnosticsSink>,
    state: Mutex<PoolState>,
    freed: Condvar,
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

impl WasmBackend {
    /// Loads the component at `path` under `grants` and reads its info in the sandbox. The
    /// capability is not initialized yet: call [`Backend::initialize`] before any call.
    pub fn load(
        runtime: &WasmRuntime,
        path: &std::path::Path,
        grants: SandboxGrants,
        sink: Arc<dyn DiagnosticsSink>,
    ) -> Result<Self> {
        grants.validate()?;
        let component = runtime.load(path)?;
        let session: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        let mut first =
            Instance::new(&component, &grants, Arc::clone(&session), Arc::clone(&sink))?;
        let raw = first.info(LIFECYCLE_LIMIT_SECS).map_err(|t| t.0)?;
        let info = parse_info(raw).map_err(|reason| Error::InvalidComponent {
            path: path.to_owned(),
            reason,
            source: None,
        })?;
        Ok(WasmBackend {
            pool: Arc::new(Pool {
                component,
                grants,
                info,
                session,
                sink,
                state: Mutex::new(PoolState {
                    config: None,
                    generation: 0,
                    idle: vec![first],
                    busy: 0,
                    shut_down: false,
                    instantiated: 1,
                    discarded: 0,
                }),
                freed: Condvar::new(),
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

    /// Runs one call on the current thread (it blocks for as long as the guest runs). The
    /// async [`Backend::call`] runs this on a blocking thread.
    pub fn call_blocking(&self, request: &CallRequest, control: Arc<CallControl>) -> Result<Value> {
        if control.cancel_requested() {
            return Err(Error::Cancelled);
        }
        let limit = self.call_limit(&control);
        self.with_instance(|inst| {
            inst.call(
                &request.target,
                &request.kwargs,
                &request.envelope,
                control,
                limit,
            )
        })
    }

    /// A fresh instance, instantiated and initialized; the cost a pool pays to grow or to
    /// replace a trapped instance. Public for benchmarks.
    pub fn instantiate_fresh(&self) -> Result<()> {
        let config = self.lock().config.clone();
        let mut inst = self.pool.new_instance()?;
        if let Some(config) = config {
            inst.initialize(&config, LIFECYCLE_LIMIT_SECS)
                .map_err(outcome_error)?;
        }
        Ok(())
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

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.pool
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks out an instance of the current configuration (waiting while `max_instances`
    /// are busy), runs `f` on it, and returns it to the pool unless it trapped.
    fn with_instance<T>(&self, f: impl FnOnce(&mut Instance) -> Result<T, Outcome>) -> Result<T> {
        let (mut inst, config, generation) = {
            let mut state = self.lock();
            loop {
                if state.shut_down {
                    return Err(self.stopped());
                }
                if state.busy < self.pool.grants.max_instances {
                    break;
                }
                state = self
                    .pool
                    .freed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            let Some(config) = state.config.clone() else {
                return Err(Error::job(JobError::fatal(format!(
                    "capability '{}' is not initialized",
                    self.pool.info.name
                ))));
            };
            state.busy += 1;
            let generation = state.generation;
            let found = loop {
                match state.idle.pop() {
                    Some(i) if i.generation == generation => break Some(i),
                    Some(_) => state.discarded += 1,
                    None => break None,
                }
            };
            match found {
                Some(i) => (Some(i), config, generation),
                None => (None, config, generation),
            }
        };
        let result = (|| {
            let mut inst = match inst.take() {
                Some(i) => i,
                None => {
                    let mut i = self.pool.new_instance()?;
                    i.initialize(&config, LIFECYCLE_LIMIT_SECS)
                        .map_err(outcome_error)?;
                    i.generation = generation;
                    self.lock().instantiated += 1;
                    i
                }
            };
            let out = f(&mut inst);
            Ok::<_, Error>((inst, out))
        })();
        let mut state = self.lock();
        state.busy -= 1;
        self.pool.freed.notify_one();
        let (inst, out) = result?;
        match out {
            Ok(v) => {
                state.idle.push(inst);
                Ok(v)
            }
            Err(Outcome::Failed(e)) => {
                state.idle.push(inst);
                Err(self.stamp(e))
            }
            Err(Outcome::Trapped(e)) => {
                state.discarded += 1;
                drop(inst);
                Err(self.stamp(e))
            }
        }
    }

    /// Applies a configuration change through one instance and makes it the pool's
    /// configuration; other idle instances are dropped (they were built for the old one).
    fn apply_config(
        &self,
        new: Value,
        f: impl FnOnce(&mut Instance) -> Result<(), Outcome>,
    ) -> Result<()> {
        let inst = {
            let mut state = self.lock();
            if state.shut_down {
                return Err(self.stopped());
            }
            state.idle.pop()
        };
        let mut inst = match inst {
            Some(i) => i,
            None => self.pool.new_instance()?,
        };
        f(&mut inst).map_err(|o| self.stamp(outcome_error(o)))?;
        let mut state = self.lock();
        state.generation += 1;
        state.config = Some(new);
        inst.generation = state.generation;
        state.discarded += state.idle.len() as u64;
        state.idle.clear();
        state.idle.push(inst);
        Ok(())
    }

    fn stamp(&self, e: Error) -> Error {
        match e {
            Error::Job(job) => Error::job(job.stamped(&self.pool.info.name, &self.pool.session)),
            other => other,
        }
    }

    fn stopped(&self) -> Error {
        Error::job(JobError::fatal(format!(
            "capability '{}' was shut down",
            self.pool.info.name
        )))
    }

    /// Runs guest work without stalling the async runtime. On a multi-threaded runtime the
    /// call runs in place (`block_in_place` hands this worker's other tasks to the rest of the
    /// pool), which saves the thread hop of `spawn_blocking` — most guest calls take
    /// microseconds. Elsewhere it goes to the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WasmBackend) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        if Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread) {
            return tokio::task::block_in_place(|| f(self));
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| Error::job(JobError::fatal(format!("wasm call thread failed: {e}"))))?
    }

    fn hook(&self, which: Hook) -> Result<String> {
        self.with_instance(|inst| inst.hook(which, LIFECYCLE_LIMIT_SECS))
    }
}

impl Pool {
    fn new_instance(&self) -> Result<Instance> {
        Instance::new(
            &self.component,
            &self.grants,
            Arc::clone(&self.session),
            Arc::clone(&self.sink),
        )
    }
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
        let state = self.lock();
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
        let state = self.lock();
        Ok(json!({
            "pid": std::process::id(),
            "runtime": "wasm",
            "instances_idle": state.idle.len(),
            "instances_busy": state.busy,
            "max_instances": self.pool.grants.max_instances,
            "instances_created": state.instantiated,
            "instances_discarded": state.discarded,
            "memory_limit_mb": self.pool.grants.memory_limit_mb,
            "usage": null,
        }))
    }

    async fn initialize(&self, config: Value) -> Result<()> {
        self.blocking(move |me| {
            let new = config.clone();
            me.apply_config(new, |inst| inst.initialize(&config, LIFECYCLE_LIMIT_SECS))
        })
        .await
    }

    async fn reconfigure(&self, old: Value, new: Value) -> Result<()> {
        self.blocking(move |me| {
            let to = new.clone();
            me.apply_config(to, |inst| {
                inst.reconfigure(&old, &new, LIFECYCLE_LIMIT_SECS)
            })
        })
        .await
    }

    async fn current_config(&self) -> Result<Value> {
        self.blocking(|me| {
            me.with_instance(|i| i.read_json(JsonExport::CurrentConfig, LIFECYCLE_LIMIT_SECS))
        })
        .await
    }

    async fn config_options(&self) -> Result<Value> {
        self.blocking(|me| {
            me.with_instance(|i| i.read_json(JsonExport::ConfigOptions, LIFECYCLE_LIMIT_SECS))
        })
        .await
    }

    async fn call(&self, request: CallRequest, control: Arc<CallControl>) -> Result<Value> {
        // A call measured to take microseconds runs right here: handing the worker thread
        // over (`block_in_place`) would cost more than the call. A runaway still ends at its
        // deadline or forced cancel (the epoch ticker runs on its own thread).
        if control.expected_short() {
            return self.call_blocking(&request, control);
        }
        self.blocking(move |me| me.call_blocking(&request, control))
            .await
    }

    async fn prefetch(&self) -> Result<Status> {
        self.blocking(|me| me.hook(Hook::Prefetch))
            .await
            .map(Status::new)
    }

    async fn on_enable(&self) -> Result<Status> {
        self.blocking(|me| me.hook(Hook::OnEnable))
            .await
            .map(Status::new)
    }

    async fn on_disable(&self) -> Result<Status> {
        self.blocking(|me| me.hook(Hook::OnDisable))
            .await
            .map(Status::new)
    }

    async fn shutdown(&self) -> Result<()> {
        self.blocking(|me| {
            let idle = {
                let mut state = me.lock();
                state.shut_down = true;
                me.pool.freed.notify_all();
                std::mem::take(&mut state.idle)
            };
            // Cleanup is best effort per instance: one failing must not keep the others alive.
            let mut first_error = None;
            for mut inst in idle {
                if let Err(o) = inst.hook(Hook::Cleanup, LIFECYCLE_LIMIT_SECS) {
                    first_error.get_or_insert(outcome_error(o));
                }
            }
            first_error.map_or(Ok(()), Err)
        })
        .await
    }
}
