//! One wasm instance: a fresh `Store` with its sandbox, limits and the host services the guest
//! imports, and the calls into the component's exports with every trap turned into a typed
//! error.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cjm_guest::contract::{CallError, Envelope, JobError, Progress};
use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::Capability;
use super::bindings::cjm::capability::{host, types as wit};
use super::emit::{LogBudget, truncate};
use super::runtime::{LoadedComponent, TABLE_ELEMENTS};
use super::sandbox::{Capture, CaptureStream, LimitDenied, Limited, Limits, SandboxGrants};
use crate::backend::wasm::SandboxError;
use crate::backend::{Account, CallControl, DiagnosticsSink};
use crate::error::{Error, Result};
use crate::store::DiagnosticRecord;

/// Why the epoch callback stopped a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupted {
    /// The caller forced cancellation.
    Forced,
    /// The call ran past its deadline.
    Deadline,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Interrupted::Forced => "call forcibly cancelled",
            Interrupted::Deadline => "call ran past its deadline",
        })
    }
}

impl std::error::Error for Interrupted {}

/// The bounds on what the guest emits, shared by its imports and its captured output.
pub(crate) struct EmitLimits {
    pub(crate) max_message: usize,
    pub(crate) budget: Arc<Mutex<LogBudget>>,
}

/// The data of one store: the WASI context and what the host imports need.
pub struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limits,
    emit: EmitLimits,
    /// The call in progress, if any.
    call: Option<Arc<CallControl>>,
    /// When the export running now must stop (the grant's time limit, or sooner).
    deadline: Option<Instant>,
    job_id: Option<String>,
    session: Arc<str>,
    sink: Arc<dyn DiagnosticsSink>,
    /// The message of the last guest panic, reported through the log import before the trap.
    last_panic: Option<String>,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl InstanceState {
    fn budget(&self) -> parking_lot::MutexGuard<'_, LogBudget> {
        self.emit.budget.lock()
    }

    /// One warning record saying how many records the rate limit dropped since the last.
    fn report_dropped(&mut self) {
        let (dropped, rate) = {
            let mut b = self.budget();
            (b.take_dropped(), b.rate())
        };
        if dropped > 0 {
            let message = format!(
                "{dropped} log records or output lines dropped: the instance logs more than \
                 {rate} per second (the sandbox's log_records_per_second)"
            );
            self.sink.record(DiagnosticRecord {
                worker_session_id: Some(self.session.to_string()),
                job_id: self.job_id.clone(),
                logger_name: "cjm.sandbox".to_owned(),
                ..DiagnosticRecord::new("WARNING", message)
            });
        }
    }
}

impl wit::Host for InstanceState {}

impl host::Host for InstanceState {
    fn progress(&mut self, fraction: f64, message: String) {
        if let Some(call) = &self.call {
            call.set_progress(Progress {
                progress: fraction,
                message: truncate(message, self.emit.max_message),
            });
        }
    }

    fn cancelled(&mut self) -> bool {
        self.call.as_ref().is_some_and(|c| c.cancel_requested())
    }

    fn log(&mut self, level: host::LogLevel, logger: String, message: String) {
        let level = match level {
            host::LogLevel::Debug => "DEBUG",
            host::LogLevel::Info => "INFO",
            host::LogLevel::Warning => "WARNING",
            host::LogLevel::Error => "ERROR",
            host::LogLevel::Critical => "CRITICAL",
        };
        let message = truncate(message, self.emit.max_message);
        let logger = truncate(logger, self.emit.max_message);
        if logger == "panic" {
            self.last_panic = Some(message.clone());
        }
        if !self.budget().admit() {
            return;
        }
        // An event of the call's span when the call is traced (nothing is built otherwise).
        tracing::info!(
            target: "cjm::trace",
            log_level = level,
            log_logger = logger.as_str(),
            "{message}"
        );
        self.sink.record(DiagnosticRecord {
            worker_session_id: Some(self.session.to_string()),
            job_id: self.job_id.clone(),
            logger_name: logger,
            ..DiagnosticRecord::new(level, message)
        });
    }

    fn record_account(&mut self, event_type: String, payload: String) {
        if let Some(call) = &self.call {
            let payload = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
            call.push_account(Account {
                event_type,
                payload,
            });
        }
    }

    fn report_usage(&mut self, usage: String) {
        if let (Some(call), Ok(Value::Object(usage))) = (&self.call, serde_json::from_str(&usage)) {
            call.add_usage(&usage);
        }
    }
}

/// One export call, from the bindings to a future over the store.
type ExportCall<T> = Box<
    dyn for<'a> FnOnce(
            &'a Capability,
            &'a mut Store<InstanceState>,
        ) -> BoxFuture<'a, wasmtime::Result<T>>
        + Send,
>;

/// A live instance of a component.
pub(crate) struct Instance {
    store: Store<InstanceState>,
    bindings: Capability,
    /// The captured stdout/stderr (an unterminated last line is flushed after each call).
    captured: Vec<CaptureStream>,
    max_result: usize,
    /// The configuration generation this instance was initialized with.
    pub(crate) generation: u64,
}

impl Instance {
    /// Instantiates `component` in a fresh store under `grants`; what it logs and prints is
    /// stored within `budget`.
    pub(crate) async fn new(
        component: &LoadedComponent,
        grants: &SandboxGrants,
        session: Arc<str>,
        sink: Arc<dyn DiagnosticsSink>,
        budget: Arc<Mutex<LogBudget>>,
    ) -> Result<Self> {
        let capture = grants.capture_stdio.then(|| Capture {
            session: Arc::clone(&session),
            sink: Arc::clone(&sink),
            budget: Arc::clone(&budget),
        });
        let (wasi, captured) = grants.wasi_ctx(capture)?;
        let state = InstanceState {
            wasi,
            table: ResourceTable::new(),
            limits: Limits {
                memory: grants.memory_limit_bytes(),
                table_elements: TABLE_ELEMENTS,
            },
            emit: EmitLimits {
                max_message: grants.max_message_bytes as usize,
                budget,
            },
            call: None,
            deadline: None,
            job_id: None,
            session,
            sink,
            last_panic: None,
        };
        let mut store = Store::new(component.pre.engine(), state);
        store.limiter(|s| &mut s.limits);
        // Every tick past the deadline asks the callback; it stops the guest when the call
        // was forced or its wall-clock deadline passed, and otherwise yields to the async
        // runtime, so a long computation never holds a runtime thread for more than a tick.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|cx| {
            let state = cx.data();
            match &state.call {
                Some(call) if call.forced() => Err(Interrupted::Forced.into()),
                _ if state.deadline.is_some_and(|d| Instant::now() >= d) => {
                    Err(Interrupted::Deadline.into())
                }
                _ => Ok(UpdateDeadline::Yield(1)),
            }
        });
        let bindings = component
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| {
                // A full pool is a shortage, not a fault: typed `resource`, so the manager
                // evicts idle capabilities (freeing their instances) and retries.
                if let Some(full) = e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
                    return Error::job(JobError::resource(format!(
                        "the host's wasm instance pool is full ({full}): raise the host's \
                         wasm_instance_slots, or lower the max_concurrency or pool_size of \
                         its wasm capabilities"
                    )));
                }
                Error::Sandbox(SandboxError::Engine(
                    e.context("cannot instantiate the component"),
                ))
            })?;
        Ok(Instance {
            store,
            bindings,
            captured,
            max_result: usize::try_from(grants.max_result_bytes).unwrap_or(usize::MAX),
            generation: 0,
        })
    }

    fn begin(&mut self, control: Option<Arc<CallControl>>, job_id: Option<String>, limit: f64) {
        let state = self.store.data_mut();
        state.deadline = Duration::try_from_secs_f64(limit.max(0.0))
            .ok()
            .and_then(|d| Instant::now().checked_add(d));
        state.call = control;
        state.job_id = job_id;
        state.last_panic = None;
        self.store.set_epoch_deadline(1);
    }

    fn end(&mut self) {
        for stream in &self.captured {
            stream.flush_line();
        }
        let state = self.store.data_mut();
        state.report_dropped();
        state.call = None;
        state.deadline = None;
        state.job_id = None;
    }

    /// Maps a trap (or host error raised during a call) to the host's error. Every such
    /// error leaves the instance unusable: the caller discards it.
    fn trap(&self, e: wasmtime::Error, limit_secs: f64) -> Error {
        if let Some(why) = e.downcast_ref::<Interrupted>() {
            return interrupted(*why, limit_secs);
        }
        let mb = |b: usize| (b as f64 / (1024.0 * 1024.0) * 100.0).round() / 100.0;
        // A guest past its *own* limits is not short of host memory: another attempt or
        // evicting other capabilities would change nothing, so it is not retriable.
        if let Some(denied) = e.downcast_ref::<LimitDenied>() {
            let error = JobError::resource(format!("the guest exceeded its {denied}"));
            let error = match denied.what {
                Limited::Memory => {
                    error.with_shortfall("system_ram_mb", mb(denied.desired), mb(denied.limit))
                }
                Limited::Table => error,
            };
            return Error::job(error.with_retriable(false));
        }
        let panic = self.store.data().last_panic.clone();
        let job = match (e.downcast_ref::<Trap>(), panic) {
            (_, Some(panic)) => JobError::fatal(format!("the guest panicked: {panic}")),
            (Some(Trap::StackOverflow), None) => {
                JobError::fatal("the guest overflowed its stack (unbounded recursion?)")
            }
            (Some(trap), None) => JobError::fatal(format!("the guest trapped: {trap}")),
            (None, None) => JobError::fatal(format!("the guest failed: {e:#}")),
        };
        Error::job(job.with_repr(format!("{e:?}")))
    }

    /// Runs one export call under `control` and the time limit. The call is raced against
    /// the deadline and a forced cancel, so a guest blocked in a host call (a sleep, a poll,
    /// a slow read) is stopped too; traps become typed errors.
    async fn run<T>(
        &mut self,
        control: Option<Arc<CallControl>>,
        job_id: Option<String>,
        limit_secs: f64,
        f: ExportCall<T>,
    ) -> std::result::Result<T, Trapped> {
        self.begin(control.clone(), job_id, limit_secs);
        let deadline = self.store.data().deadline;
        let call = f(&self.bindings, &mut self.store);
        let out = race(call, deadline, control.as_deref()).await;
        self.end();
        match out {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Trapped(self.trap(e, limit_secs))),
            Err(why) => Err(Trapped(interrupted(why, limit_secs))),
        }
    }

    /// Reads the component's info.
    pub(crate) async fn info(
        &mut self,
        limit: f64,
    ) -> std::result::Result<wit::CapabilityInfo, Trapped> {
        self.run(
            None,
            None,
            limit,
            Box::new(|b, s| Box::pin(b.cjm_capability_guest().call_info(s))),
        )
        .await
    }

    /// Initializes with `config`.
    pub(crate) async fn initialize(&mut self, config: &Value, limit: f64) -> Result<(), Outcome> {
        let config = config.to_string();
        let f: ExportCall<_> = Box::new(move |b, s| {
            Box::pin(async move { b.cjm_capability_guest().call_initialize(s, &config).await })
        });
        let r = self.run(None, None, limit, f).await?;
        r.map_err(|e| Outcome::Failed(Error::job(job_error(e))))
    }

    /// Moves from `old` to `new` configuration.
    pub(crate) async fn reconfigure(
        &mut self,
        old: &Value,
        new: &Value,
        limit: f64,
    ) -> Result<(), Outcome> {
        let (old, new) = (old.to_string(), new.to_string());
        let f: ExportCall<_> = Box::new(move |b, s| {
            Box::pin(async move {
                b.cjm_capability_guest()
                    .call_reconfigure(s, &old, &new)
                    .await
            })
        });
        let r = self.run(None, None, limit, f).await?;
        r.map_err(|e| Outcome::Failed(Error::job(job_error(e))))
    }

    /// Reads a JSON answer of a no-argument export (`current-config`, `config-options`).
    pub(crate) async fn read_json(
        &mut self,
        which: JsonExport,
        limit: f64,
    ) -> Result<Value, Outcome> {
        let f: ExportCall<String> = Box::new(move |b, s| {
            let g = b.cjm_capability_guest();
            match which {
                JsonExport::CurrentConfig => Box::pin(g.call_current_config(s)),
                JsonExport::ConfigOptions => Box::pin(g.call_config_options(s)),
            }
        });
        let text = self.run(None, None, limit, f).await?;
        parse_guest_json(&text).map_err(Outcome::Failed)
    }

    /// Runs a status hook (`prefetch`, `on-enable`, `on-disable`) or `cleanup`.
    pub(crate) async fn hook(&mut self, which: Hook, limit: f64) -> Result<String, Outcome> {
        let f: ExportCall<Result<String, wit::JobError>> = Box::new(move |b, s| {
            let g = b.cjm_capability_guest();
            match which {
                Hook::Prefetch => Box::pin(g.call_prefetch(s)),
                Hook::OnEnable => Box::pin(g.call_on_enable(s)),
                Hook::OnDisable => Box::pin(g.call_on_disable(s)),
                Hook::Cleanup => Box::pin(async move {
                    g.call_cleanup(s)
                        .await
                        .map(|r| r.map(|()| "cleaned".to_owned()))
                }),
            }
        });
        let r = self.run(None, None, limit, f).await?;
        r.map_err(|e| Outcome::Failed(Error::job(job_error(e))))
    }

    /// Runs `execute` or a task method.
    pub(crate) async fn call(
        &mut self,
        target: &crate::backend::Target,
        kwargs: &Map<String, Value>,
        envelope: &Envelope,
        control: Arc<CallControl>,
        limit: f64,
    ) -> Result<Value, Outcome> {
        let kwargs = serde_json::to_string(kwargs).map_err(|e| {
            Outcome::Failed(Error::job(JobError::user_input(format!(
                "the kwargs cannot be encoded: {e}"
            ))))
        })?;
        let env = wit_envelope(envelope);
        let f: ExportCall<Result<String, wit::CallError>> = match target {
            crate::backend::Target::Execute { args } => {
                let args = if args.is_empty() {
                    "[]".to_owned()
                } else {
                    Value::Array(args.clone()).to_string()
                };
                Box::new(move |b, s| {
                    Box::pin(async move {
                        b.cjm_capability_guest()
                            .call_execute(s, &args, &kwargs, &env)
                            .await
                    })
                })
            }
            crate::backend::Target::Task { task, method } => {
                let (task, method) = (task.clone(), method.clone());
                Box::new(move |b, s| {
                    Box::pin(async move {
                        b.cjm_capability_guest()
                            .call_task(s, &task, &method, &kwargs, &env)
                            .await
                    })
                })
            }
        };
        let r = self
            .run(Some(control), envelope.job_id.clone(), limit, f)
            .await?;
        match r {
            Ok(text) if text.len() > self.max_result => Err(Outcome::Failed(Error::job(
                JobError::resource(format!(
                    "the result is {} bytes, more than the sandbox's max_result_bytes of {}",
                    text.len(),
                    self.max_result
                ))
                .with_retriable(false),
            ))),
            Ok(text) => parse_guest_json(&text).map_err(Outcome::Failed),
            Err(e) => Err(Outcome::Failed(call_error(e).into())),
        }
    }
}

/// The call's future, unless the deadline passes or the call is forced first. Neither timer
/// is armed for a call that completes on its first poll.
async fn race<T>(
    call: impl Future<Output = T>,
    deadline: Option<Instant>,
    control: Option<&CallControl>,
) -> std::result::Result<T, Interrupted> {
    let forced = async {
        match control {
            Some(c) => c.forced_wait().await,
            None => std::future::pending().await,
        }
    };
    let expired = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        out = call => Ok(out),
        () = forced => Err(Interrupted::Forced),
        () = expired => Err(Interrupted::Deadline),
    }
}

fn interrupted(why: Interrupted, limit_secs: f64) -> Error {
    match why {
        Interrupted::Forced => Error::Cancelled,
        Interrupted::Deadline => Error::job(JobError::transient(format!(
            "the call exceeded its time limit of {limit_secs}s and was stopped"
        ))),
    }
}

/// A trap: the instance must be discarded.
#[derive(Debug)]
pub(crate) struct Trapped(pub(crate) Error);

/// Why an instance call produced no value: the guest answered with an error (the instance
/// stays usable) or trapped (it does not).
#[derive(Debug)]
pub(crate) enum Outcome {
    Failed(Error),
    Trapped(Error),
}

impl From<Trapped> for Outcome {
    fn from(t: Trapped) -> Self {
        Outcome::Trapped(t.0)
    }
}

/// The no-argument exports answering JSON.
#[derive(Debug, Clone, Copy)]
pub(crate) enum JsonExport {
    CurrentConfig,
    ConfigOptions,
}

/// The status hooks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Hook {
    Prefetch,
    OnEnable,
    OnDisable,
    Cleanup,
}

fn parse_guest_json(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| {
        Error::job(JobError::fatal(format!(
            "the guest answered invalid JSON: {e}"
        )))
    })
}

fn wit_envelope(e: &Envelope) -> wit::Envelope {
    wit::Envelope {
        job_id: e.job_id.clone(),
        run_id: e.run_id.clone(),
        composition_id: e.composition_id.clone(),
        node_id: e.node_id.clone(),
        actor: e.actor.clone(),
        control: (!e.control.is_empty()).then(|| Value::Object(e.control.clone()).to_string()),
    }
}

/// The guest's error record, field for field.
pub(crate) fn job_error(e: wit::JobError) -> JobError {
    use cjm_guest::contract::ErrorCategory;
    let category = match e.category {
        wit::ErrorCategory::UserInput => ErrorCategory::UserInput,
        wit::ErrorCategory::Transient => ErrorCategory::Transient,
        wit::ErrorCategory::Resource => ErrorCategory::Resource,
        wit::ErrorCategory::Fatal => ErrorCategory::Fatal,
    };
    let mut out = JobError::new(category, e.message).with_retriable(e.retriable);
    out.original_exc_repr = e.original_exc_repr;
    out.traceback = e.traceback;
    out.retry_after_seconds = e.retry_after_seconds;
    out.fields_invalid = e.fields_invalid;
    out.resource_shortfall = e
        .resource_shortfall
        .map(|s| cjm_guest::contract::ResourceShortfall {
            resource: s.resource,
            needed: s.needed,
            available: s.available,
        });
    out
}

fn call_error(e: wit::CallError) -> CallError {
    match e {
        wit::CallError::Failed(e) => CallError::Failed(job_error(e)),
        wit::CallError::Cancelled => CallError::Cancelled,
        wit::CallError::NotFound(what) => CallError::NotFound(what),
    }
}
