//! The native backend: a capability in its own subprocess behind the HTTP/JSON worker contract
//! (`CONTRACT.md`), a Python capability through the real cjm-substrate worker or a binary built
//! on `cjm-native-worker`.
//!
//! - [`process`]: spawning per the contract, output pumping, group termination.
//! - this module: [`NativeBackend`], the contract's client and the worker's supervisor. A
//!   worker that died (killed, crashed, forcibly cancelled) is respawned and re-initialized
//!   with the configuration in force on the next call.

pub mod process;
mod supervise;
mod watchdog;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cjm_guest::contract::{CapabilityInfo, JobError, Progress, Status, StructuralSurface};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

pub use super::mask::Masker;
pub use process::WorkerSpec;

use self::process::{Process, describe_exit};
use crate::backend::{
    Account, Backend, CallControl, CallRequest, CallStream, CancelState, Condition,
    DiagnosticsSink, RuntimeKind, Target, WorkerEvents,
};
use crate::error::{Error, Result};

/// How often progress is polled during a call.
const PROGRESS_POLL: Duration = Duration::from_millis(200);
/// Time allowed to lifecycle endpoints.
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Time allowed to a progress poll or a cancel request during a call: a worker that cannot
/// answer these in a second is hung, and the call's deadline or a forced cancel handles it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an idle worker may take to answer its `/health` probe.
pub const IDLE_HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// How to reach one worker: a client bound to its Unix socket.
#[derive(Clone)]
struct Endpoint {
    http: reqwest::Client,
    socket: std::path::PathBuf,
}

/// The authority of every request to a worker (the connection is its Unix socket).
const BASE: &str = "http://worker";

impl Endpoint {
    fn of(socket: &std::path::Path) -> Result<Endpoint> {
        let http = reqwest::Client::builder()
            .unix_socket(socket)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| {
                Error::job(JobError::fatal(format!(
                    "cannot build the HTTP client: {e}"
                )))
            })?;
        Ok(Endpoint {
            http,
            socket: socket.to_owned(),
        })
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{BASE}{path}"))
    }
}

struct Live {
    endpoint: Endpoint,
    session: String,
    pid: u32,
}

struct Inner {
    spec: WorkerSpec,
    kind: RuntimeKind,
    sink: Arc<dyn DiagnosticsSink>,
    events: Arc<dyn WorkerEvents>,
    info: CapabilityInfo,
    /// The worker process; the async lock serialises spawns and terminations.
    process: tokio::sync::Mutex<Option<Process>>,
    /// Where to reach the live worker, readable without waiting on `process`.
    live: Mutex<Option<Live>>,
    /// The configuration in force, re-applied after a respawn.
    config: Mutex<Option<Value>>,
    /// Deaths of its workers: restart backoff and crash-loop detection.
    supervision: Mutex<supervise::Supervision>,
    /// Requests in flight to the worker (calls, streams, lifecycle): while any is, the
    /// worker is not idle and its health is not probed.
    busy: std::sync::atomic::AtomicUsize,
}

/// Counts one request in flight for as long as it lives.
struct Busy(Arc<Inner>);

impl Busy {
    fn new(inner: &Arc<Inner>) -> Busy {
        inner.busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Busy(Arc::clone(inner))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .busy
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A capability served by a worker subprocess.
#[derive(Clone)]
pub struct NativeBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NativeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeBackend")
            .field("spec", &self.inner.spec)
            .finish_non_exhaustive()
    }
}

/// An answer of the worker: status, accounts header, body.
struct Answer {
    status: StatusCode,
    accounts: Option<String>,
    body: bytes::Bytes,
}

impl NativeBackend {
    /// Spawns the worker of `spec`, waits until it is ready and reads its identity, config
    /// schema and structural surface. The capability is not initialized yet.
    pub async fn start(
        spec: WorkerSpec,
        kind: RuntimeKind,
        sink: Arc<dyn DiagnosticsSink>,
        events: Arc<dyn WorkerEvents>,
    ) -> Result<Self> {
        let mut me = NativeBackend {
            inner: Arc::new(Inner {
                info: CapabilityInfo {
                    name: spec.name.clone(),
                    version: String::new(),
                    description: String::new(),
                    config_schema: Value::Null,
                    structural_surface: StructuralSurface::default(),
                    tasks: Vec::new(),
                    extra: Map::new(),
                },
                spec,
                kind,
                sink,
                events,
                process: tokio::sync::Mutex::new(None),
                live: Mutex::new(None),
                config: Mutex::new(None),
                supervision: Mutex::new(supervise::Supervision::default()),
                busy: std::sync::atomic::AtomicUsize::new(0),
            }),
        };
        me.ensure_worker().await?;
        let info = me.read_info().await;
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                me.stop_worker("introspection failed").await;
                return Err(e);
            }
        };
        match Arc::get_mut(&mut me.inner) {
            Some(inner) => inner.info = info,
            None => {
                me.stop_worker("introspection failed").await;
                return Err(Error::job(JobError::fatal(
                    "native backend shared before start finished",
                )));
            }
        }
        me.watch_idle();
        Ok(me)
    }

    /// The worker session id of the live worker, if one runs.
    pub fn session_id(&self) -> Option<String> {
        self.live().map(|l| l.0)
    }

    /// The Unix socket of the live worker (its private channel), if one runs.
    pub fn endpoint(&self) -> Option<std::path::PathBuf> {
        self.live().map(|l| l.1.socket)
    }

    /// The pid of the live worker, if one runs.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.inner.live).as_ref().map(|l| l.pid)
    }

    fn live(&self) -> Option<(String, Endpoint)> {
        lock(&self.inner.live)
            .as_ref()
            .map(|l| (l.session.clone(), l.endpoint.clone()))
    }

    fn name(&self) -> &str {
        &self.inner.spec.name
    }

    /// Waits out the restart backoff after deaths of the worker, or refuses to spawn once it
    /// crash-loops (journaled once, as `worker_crash_loop`).
    async fn before_spawn(&self) -> Result<()> {
        let jitter = f64::from(uuid::Uuid::new_v4().as_u128() as u16) / f64::from(u16::MAX);
        let next = lock(&self.inner.supervision).next_spawn(self.name(), jitter);
        match next {
            supervise::NextSpawn::Now => Ok(()),
            supervise::NextSpawn::After { attempt, delay } => {
                self.inner.events.event(
                    "worker_restart_scheduled",
                    "",
                    json!({"capability_name": self.name(), "attempt": attempt,
                           "delay_ms": delay.as_secs_f64() * 1000.0}),
                );
                tokio::time::sleep(delay).await;
                Ok(())
            }
            supervise::NextSpawn::Failed { why, newly } => {
                if newly {
                    tracing::error!(capability = self.name(), "{why}");
                    self.inner.events.event(
                        "worker_crash_loop",
                        "",
                        json!({"capability_name": self.name(), "reason": why}),
                    );
                }
                Err(Error::job(JobError::fatal(why)))
            }
        }
    }

    /// Spawns a worker unless a live one runs; a fresh worker gets the configuration in force.
    async fn ensure_worker(&self) -> Result<Endpoint> {
        let mut guard = self.inner.process.lock().await;
        let live = self.live();
        if let Some(p) = guard.as_mut() {
            match p.exited() {
                None if let Some((_, endpoint)) = live => return Ok(endpoint),
                // Alive but never initialized (its start was interrupted): replaced.
                None => {
                    p.terminate(Duration::ZERO).await;
                    *guard = None;
                }
                Some(status) => {
                    self.died(p, &format!("worker {}", describe_exit(Some(status))));
                    lock(&self.inner.supervision).death();
                    *guard = None;
                }
            }
        }
        self.before_spawn().await?;
        let session = uuid::Uuid::new_v4().to_string();
        let started = Instant::now();
        let mut p = Process::spawn(
            &self.inner.spec,
            session.clone(),
            Arc::clone(&self.inner.sink),
        )?;
        self.inner.events.event(
            "worker_spawned",
            &session,
            json!({"capability_name": self.name(), "pid": p.pid, "program": self.inner.spec.program}),
        );
        let endpoint = match Endpoint::of(&p.socket) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                p.terminate(Duration::ZERO).await;
                return Err(e);
            }
        };
        if let Err(e) = self.wait_ready(&mut p, &endpoint).await {
            lock(&self.inner.supervision).death();
            let status = p.terminate(self.inner.spec.stop_grace).await;
            self.inner.events.event(
                "worker_died",
                &session,
                json!({"capability_name": self.name(), "pid": p.pid, "during": "startup",
                       "reason": describe_exit(status)}),
            );
            return Err(e);
        }
        self.inner.events.event(
            "worker_ready",
            &session,
            json!({"capability_name": self.name(), "pid": p.pid, "socket": p.socket,
                   "startup_ms": started.elapsed().as_secs_f64() * 1000.0}),
        );
        let pid = p.pid;
        *guard = Some(p);
        drop(guard);
        // The worker is reachable (`live`) only once initialized: a start interrupted here
        // (a deadline, a dropped call) leaves it unpublished, and the next call replaces it.
        let config = lock(&self.inner.config).clone();
        if let Some(config) = config
            && let Err(e) = self.post_initialize(&endpoint, &config).await
        {
            self.stop_worker("initialize failed").await;
            return Err(e);
        }
        *lock(&self.inner.live) = Some(Live {
            endpoint: endpoint.clone(),
            session,
            pid,
        });
        Ok(endpoint)
    }

    async fn wait_ready(&self, p: &mut Process, endpoint: &Endpoint) -> Result<()> {
        let deadline = Instant::now() + self.inner.spec.ready_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = p.exited() {
                return Err(self.worker_failed(
                    p,
                    &format!(
                        "worker {} before it became ready",
                        describe_exit(Some(status))
                    ),
                ));
            }
            let probe = endpoint
                .request(Method::GET, "/health")
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(r) = probe
                && r.status() == StatusCode::OK
            {
                let body = r.bytes().await.unwrap_or_default();
                return match serde_json::from_slice::<Value>(&body) {
                    Ok(_) => Ok(()),
                    Err(e) => Err(self.worker_failed(
                        p,
                        &format!(
                            "worker answered /health with non-JSON ({e}): {}",
                            snippet(&body)
                        ),
                    )),
                };
            }
            if Instant::now() >= deadline {
                return Err(self.worker_failed(
                    p,
                    &format!(
                        "worker did not become ready within {:.1}s",
                        self.inner.spec.ready_timeout.as_secs_f64()
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// A transient error naming the capability and what happened, with the worker's last
    /// output lines attached.
    fn worker_failed(&self, p: &Process, what: &str) -> Error {
        let tail = p.tail.text();
        let mut e = JobError::transient(format!("capability '{}': {what}", self.name()));
        if !tail.is_empty() {
            e.message.push_str(&format!("; last output:\n{tail}"));
            e = e.with_traceback(tail);
        }
        Error::job(e.stamped(self.name(), &p.session))
    }

    fn died(&self, p: &Process, reason: &str) {
        self.inner.events.event(
            "worker_died",
            &p.session,
            json!({"capability_name": self.name(), "pid": p.pid, "reason": reason}),
        );
        self.scrub_session(&p.session);
        let mut live = lock(&self.inner.live);
        if live.as_ref().is_some_and(|l| l.pid == p.pid) {
            *live = None;
        }
    }

    /// Probes the worker's `/health` every `idle_probe` while no request is in flight; one
    /// that has exited, or does not answer within [`IDLE_HEALTH_TIMEOUT`] (hung, stopped),
    /// is killed and journaled dead, and the next call starts a fresh one. The task ends with
    /// the backend.
    fn watch_idle(&self) {
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.spec.idle_probe;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                NativeBackend { inner }.probe_idle().await;
            }
        });
    }

    fn idle(&self) -> bool {
        self.inner.busy.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    async fn probe_idle(&self) {
        let Some((session, endpoint)) = self.live() else {
            return;
        };
        if !self.idle() {
            return;
        }
        let answered = endpoint
            .request(Method::GET, "/health")
            .timeout(IDLE_HEALTH_TIMEOUT)
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK);
        if answered || !self.idle() {
            return;
        }
        let mut guard = self.inner.process.lock().await;
        let Some(p) = guard.as_mut().filter(|p| p.session == session) else {
            return;
        };
        if !self.idle() {
            return;
        }
        let reason = match p.exited() {
            Some(status) => format!("worker {} while idle", describe_exit(Some(status))),
            None => format!(
                "worker did not answer /health within {}s while idle",
                IDLE_HEALTH_TIMEOUT.as_secs()
            ),
        };
        tracing::warn!(capability = self.name(), pid = p.pid, "{reason}: replaced");
        p.terminate(Duration::ZERO).await;
        self.died(p, &reason);
        lock(&self.inner.supervision).death();
        *guard = None;
    }

    async fn stop_worker(&self, why: &str) -> Option<std::process::ExitStatus> {
        let mut guard = self.inner.process.lock().await;
        let mut p = guard.take()?;
        let status = p.terminate(self.inner.spec.stop_grace).await;
        // A stopped Python worker has flushed its last records into the store.
        self.scrub_session(&p.session);
        self.inner.events.event(
            "worker_stopped",
            &p.session,
            json!({"capability_name": self.name(), "pid": p.pid, "reason": why,
                   "exit": describe_exit(status)}),
        );
        *lock(&self.inner.live) = None;
        status
    }

    async fn read_info(&self) -> Result<CapabilityInfo> {
        let health = self.get_json("/health").await?;
        let schema = self.get_json("/config_schema").await?;
        // A worker that predates /structural_surface has none: recorded as empty, not fatal.
        let surface = match self.get_json("/structural_surface").await {
            Ok(v) => serde_json::from_value(v).unwrap_or_default(),
            Err(Error::NotFound(_)) => StructuralSurface::default(),
            Err(e) => return Err(e),
        };
        let text = |k: &str| {
            health
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        if self.inner.kind == RuntimeKind::Python {
            check_substrate(self.name(), health.get("substrate_version"))?;
        }
        let mut extra = Map::new();
        for key in ["substrate_version", "runtime"] {
            if let Some(v) = health.get(key) {
                extra.insert(key.to_owned(), v.clone());
            }
        }
        Ok(CapabilityInfo {
            name: Some(text("name"))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| self.name().to_owned()),
            version: text("version"),
            description: text("description"),
            config_schema: schema,
            structural_surface: surface,
            tasks: Vec::new(),
            extra,
        })
    }

    /// Sends one request to the live worker (spawning one if needed). A transport failure is
    /// checked against the process: a dead worker becomes a typed error (SIGKILL: `resource`,
    /// assumed out of memory; anything else: `transient`).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<Answer> {
        let _busy = Busy::new(&self.inner);
        let endpoint = match self.live() {
            Some((_, endpoint)) => endpoint,
            None => self.ensure_worker().await?,
        };
        let mut req = endpoint.request(method, path);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let sent = async {
            let r = req.send().await?;
            let status = r.status();
            let accounts = r
                .headers()
                .get("x-cjm-accounts")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = r.bytes().await?;
            Ok::<_, reqwest::Error>(Answer {
                status,
                accounts,
                body,
            })
        }
        .await;
        match sent {
            Ok(answer) => Ok(answer),
            Err(e) => Err(self.transport_failed(path, e).await),
        }
    }

    async fn transport_failed(&self, path: &str, e: reqwest::Error) -> Error {
        // Give a dying worker a moment to be reaped so its exit status is known.
        for _ in 0..20 {
            let mut guard = self.inner.process.lock().await;
            if let Some(p) = guard.as_mut()
                && let Some(status) = p.exited()
            {
                use std::os::unix::process::ExitStatusExt as _;
                let reason = describe_exit(Some(status));
                self.died(p, &format!("worker {reason} during {path}"));
                lock(&self.inner.supervision).death();
                let err = self.worker_failed(p, &format!("worker {reason} during {path}"));
                *guard = None;
                return match (status.signal(), err) {
                    (Some(9), Error::Job(mut job)) => {
                        job.category = cjm_guest::ErrorCategory::Resource;
                        job.retriable = true;
                        job.message.push_str(" (SIGKILL: assumed out of memory)");
                        Error::Job(job)
                    }
                    (_, err) => err,
                };
            }
            drop(guard);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Error::job(
            JobError::transient(format!("capability '{}': {path} failed: {e}", self.name()))
                .stamped(self.name(), &self.session_id().unwrap_or_default()),
        )
    }

    async fn get_json(&self, path: &str) -> Result<Value> {
        let a = self
            .send(Method::GET, path, None, Some(LIFECYCLE_TIMEOUT))
            .await?;
        self.answer_json(path, a)
    }

    async fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let a = self
            .send(
                Method::POST,
                path,
                Some(body.to_string().into_bytes()),
                Some(LIFECYCLE_TIMEOUT),
            )
            .await?;
        self.answer_json(path, a)
    }

    async fn post_initialize(&self, endpoint: &Endpoint, config: &Value) -> Result<()> {
        let r = endpoint
            .request(Method::POST, "/initialize")
            .header("content-type", "application/json")
            .body(config.to_string())
            .timeout(LIFECYCLE_TIMEOUT)
            .send()
            .await;
        let a = match r {
            Ok(r) => Answer {
                status: r.status(),
                accounts: None,
                body: r.bytes().await.unwrap_or_default(),
            },
            Err(e) => return Err(self.transport_failed("/initialize", e).await),
        };
        self.answer_json("/initialize", a).map(|_| ())
    }

    /// Maps a worker answer to a value or a typed error.
    fn answer_json(&self, path: &str, a: Answer) -> Result<Value> {
        let session = self.session_id().unwrap_or_default();
        let parsed = || -> Result<Value> {
            if a.body.is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_slice(&a.body).map_err(|e| {
                Error::job(
                    JobError::transient(format!(
                        "capability '{}': {path} answered non-JSON ({e}): {}",
                        self.name(),
                        self.inner.spec.masker.mask(&snippet(&a.body))
                    ))
                    .stamped(self.name(), &session),
                )
            })
        };
        let masker = &self.inner.spec.masker;
        let detail = |v: &Value| {
            let text = v
                .get("detail")
                .map(|d| {
                    d.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| d.to_string())
                })
                .unwrap_or_else(|| snippet(&a.body));
            masker.mask(&text).into_owned()
        };
        match a.status {
            StatusCode::OK => parsed(),
            StatusCode::CONFLICT => Err(Error::Cancelled),
            StatusCode::NOT_FOUND => Err(Error::NotFound(detail(&parsed().unwrap_or_default()))),
            status => {
                let body = parsed().unwrap_or(Value::Null);
                if let Some(job) = body.get("_job_error")
                    && let Ok(job) = serde_json::from_value::<JobError>(self.masked(job))
                {
                    return Err(Error::job(job.stamped(self.name(), &session)));
                }
                let e = if status == StatusCode::BAD_REQUEST
                    || status == StatusCode::UNPROCESSABLE_ENTITY
                {
                    JobError::user_input(format!(
                        "capability '{}': {path}: {}",
                        self.name(),
                        detail(&body)
                    ))
                } else {
                    JobError::transient(format!(
                        "capability '{}': {path} answered HTTP {status}: {}",
                        self.name(),
                        detail(&body)
                    ))
                };
                Err(Error::job(e.stamped(self.name(), &session)))
            }
        }
    }

    async fn status_hook(&self, path: &str) -> Result<Status> {
        let v = self.post_json(path, &json!({})).await?;
        Ok(Status::new(
            v.get("status").and_then(Value::as_str).unwrap_or("ok"),
        ))
    }

    /// Runs one call, cancelling through the contract: a cooperative request becomes
    /// `POST /cancel`, a forced one kills the worker's process group (the next call respawns
    /// it), and so does the call's deadline (a `transient` error). Progress is polled from
    /// `GET /progress` while the call runs. The probes run beside the call with short
    /// timeouts, so a hung worker (SIGSTOP, a wedged event loop) delays neither the deadline
    /// nor a forced cancel.
    async fn run_call(&self, request: CallRequest, control: Arc<CallControl>) -> Result<Value> {
        let (path, body) = request_body(request);
        let expired = async {
            match control.deadline() {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        tokio::select! {
            started = self.ensure_worker() => started?,
            () = &mut expired => return Err(self.past_deadline()),
        };
        let pid = self.pid();
        let call = self.send(
            Method::POST,
            path,
            Some(body.to_string().into_bytes()),
            None,
        );
        tokio::pin!(call);
        let poller = self.progress_poller(Arc::clone(&control));
        let _stop_polling = AbortOnDrop(poller);
        // From `Running`: a cancel asked while the worker was still starting is seen at once.
        let mut seen = CancelState::Running;
        let answer = loop {
            tokio::select! {
                answer = &mut call => break answer,
                () = &mut expired => {
                    let error = self.past_deadline();
                    self.kill(pid, "the call ran past its deadline").await;
                    return Err(error);
                }
                state = control.changed_from(seen) => {
                    seen = state;
                    match state {
                        CancelState::Requested => self.post_cancel(),
                        CancelState::Forced => {
                            self.kill(pid, "forced cancellation").await;
                            return Err(Error::Cancelled);
                        }
                        CancelState::Running => {}
                    }
                }
            }
        };
        if control.forced() {
            return Err(Error::Cancelled);
        }
        let answer = answer?;
        if let Some(accounts) = &answer.accounts
            && let Ok(list) = serde_json::from_str::<Vec<Account>>(accounts)
        {
            // Masked once parsed: a secret JSON-escaped in the header text would not match.
            for mut a in list {
                self.inner.spec.masker.mask_json(&mut a.payload);
                control.push_account(a);
            }
        }
        self.scrub_records();
        self.answer_json(path, answer)
    }

    /// `value` with the worker's secrets masked in its strings.
    fn masked(&self, value: &Value) -> Value {
        let mut value = value.clone();
        self.inner.spec.masker.mask_json(&mut value);
        value
    }

    /// Masks the worker's secrets in the log records it wrote into the diagnostics store.
    fn scrub_records(&self) {
        if let Some(session) = self.session_id() {
            self.scrub_session(&session);
        }
    }

    fn scrub_session(&self, session: &str) {
        let masker = &self.inner.spec.masker;
        if !masker.is_empty() {
            self.inner.sink.scrub(session, masker.values());
        }
    }

    fn past_deadline(&self) -> Error {
        Error::job(
            JobError::transient(format!(
                "capability '{}': the call ran past its time limit and its worker was stopped",
                self.name()
            ))
            .stamped(self.name(), &self.session_id().unwrap_or_default()),
        )
    }

    /// `GET /progress` every [`PROGRESS_POLL`] on the live worker (never spawning one), each
    /// bounded by [`PROBE_TIMEOUT`], into `control`.
    fn progress_poller(&self, control: Arc<CallControl>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            // The first poll is one period away: most calls end before it.
            let mut poll = tokio::time::interval_at(
                tokio::time::Instant::now() + PROGRESS_POLL,
                PROGRESS_POLL,
            );
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last: Option<Progress> = None;
            loop {
                poll.tick().await;
                let Some(v) = me.probe(Method::GET, "/progress").await else {
                    continue;
                };
                if let Ok(p) = serde_json::from_value::<Progress>(me.masked(&v))
                    && last.as_ref() != Some(&p)
                {
                    control.set_progress(p.clone());
                    last = Some(p);
                }
            }
        })
    }

    /// `POST /cancel` to the live worker, in the background, bounded by [`PROBE_TIMEOUT`].
    fn post_cancel(&self) {
        let me = self.clone();
        tokio::spawn(async move { me.probe(Method::POST, "/cancel").await });
    }

    /// One short request to the live worker (none when no worker runs): its JSON answer, or
    /// nothing when it failed or took longer than [`PROBE_TIMEOUT`].
    async fn probe(&self, method: Method, path: &str) -> Option<Value> {
        let (_, endpoint) = self.live()?;
        let mut req = endpoint
            .request(method.clone(), path)
            .timeout(PROBE_TIMEOUT);
        if method == Method::POST {
            req = req.header("content-type", "application/json").body("{}");
        }
        let r = req.send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        serde_json::from_slice(&r.bytes().await.ok()?).ok()
    }

    /// Kills the worker's process group (when it is still the worker `pid` the caller saw),
    /// reaps it and forgets it: the next call spawns a fresh one.
    async fn kill(&self, pid: Option<u32>, why: &str) {
        let mut guard = self.inner.process.lock().await;
        if let Some(p) = guard.as_mut()
            && Some(p.pid) == pid
        {
            p.kill_now();
            self.inner.events.event(
                "worker_killed",
                &p.session,
                json!({"capability_name": self.name(), "pid": p.pid, "reason": why}),
            );
            let status = p.terminate(Duration::ZERO).await;
            self.died(p, &format!("worker {} ({why})", describe_exit(status)));
            *guard = None;
        }
    }
}

/// The cjm-substrate releases whose worker contract this host speaks (a Python worker's
/// `/health` reports its `substrate_version`). cjm-substrate's own host accepts only its own
/// release; so does this one, for the release it was verified against.
pub const SUPPORTED_SUBSTRATE_VERSIONS: &[&str] = &["0.0.74"];

/// Refuses a Python worker whose cjm-substrate this host does not speak, as cjm-substrate's
/// host does; `CJM_SUBSTRATE_MISMATCH=warn` only warns.
fn check_substrate(name: &str, reported: Option<&Value>) -> Result<()> {
    let problem = match reported.and_then(Value::as_str) {
        Some(v) if SUPPORTED_SUBSTRATE_VERSIONS.contains(&v) => return Ok(()),
        Some(v) => format!("its env runs cjm-substrate {v}"),
        None => "it answered /health without a substrate_version (a cjm-substrate older \
                 than 0.0.70)"
            .to_owned(),
    };
    let supported = SUPPORTED_SUBSTRATE_VERSIONS.join(", ");
    if std::env::var("CJM_SUBSTRATE_MISMATCH").is_ok_and(|v| v.eq_ignore_ascii_case("warn")) {
        tracing::warn!(
            capability = name,
            "{problem}; this host speaks cjm-substrate {supported}"
        );
        return Ok(());
    }
    Err(Error::job(JobError::fatal(format!(
        "capability '{name}' refused at launch: {problem}, and this host speaks cjm-substrate \
         {supported}. Install cjm-substrate=={} in its environment (or set \
         CJM_SUBSTRATE_MISMATCH=warn to try anyway)",
        SUPPORTED_SUBSTRATE_VERSIONS[SUPPORTED_SUBSTRATE_VERSIONS.len() - 1]
    ))))
}

/// Aborts a background task when dropped (the call it served ended, or was dropped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The client span of a call to the worker; when traced, the call's envelope carries its
/// context, so a worker that traces makes its spans children of it.
fn worker_call_span(request: &mut CallRequest, pid: Option<u32>) -> tracing::Span {
    let path = match request.target {
        Target::Execute { .. } => "/execute",
        Target::Task { .. } => "/task",
    };
    let span = tracing::info_span!(
        target: "cjm::trace",
        "cjm.worker.call",
        otel.name = format_args!("POST {path}"),
        otel.kind = "client",
        http.request.method = "POST",
        url.path = path,
        cjm.job_id = request.envelope.job_id.as_deref(),
        cjm.worker.pid = pid,
    );
    if let Some(traceparent) = crate::trace::traceparent(&span) {
        request.envelope.traceparent = Some(traceparent);
    }
    span
}

/// The endpoint and body of a call: `/execute` `{"args","kwargs"}` or `/task`
/// `{"task","method","kwargs"}`, with the envelope only when something in it is set.
fn request_body(request: CallRequest) -> (&'static str, Value) {
    let (path, mut body) = match request.target {
        Target::Execute { args } => ("/execute", json!({"args": args, "kwargs": request.kwargs})),
        Target::Task { task, method } => (
            "/task",
            json!({"task": task, "method": method, "kwargs": request.kwargs}),
        ),
    };
    if !request.envelope.is_empty()
        && let Some(obj) = body.as_object_mut()
    {
        obj.insert(
            "envelope".into(),
            serde_json::to_value(&request.envelope).unwrap_or_default(),
        );
    }
    (path, body)
}

/// One NDJSON line of a stream: a chunk, or the `_job_error` that ends it.
/// The longest NDJSON line a stream may send (one chunk); past it the stream fails.
const MAX_STREAM_LINE: usize = 64 * 1024 * 1024;

fn stream_item(line: &[u8], name: &str, session: &str, masker: &Masker) -> Result<Value> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        Error::job(
            JobError::transient(format!(
                "capability '{name}': stream line is not JSON ({e}): {}",
                snippet(line)
            ))
            .stamped(name, session),
        )
    })?;
    match value.get("_job_error").map(|j| {
        let mut j = j.clone();
        masker.mask_json(&mut j);
        serde_json::from_value::<JobError>(j)
    }) {
        Some(Ok(job)) => Err(Error::job(job.stamped(name, session))),
        _ => Ok(value),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The start of a body, for messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let cut: String = text.chars().take(300).collect();
    if cut.len() < text.len() {
        format!("{cut}...")
    } else {
        cut
    }
}

#[async_trait]
impl Backend for NativeBackend {
    fn kind(&self) -> RuntimeKind {
        self.inner.kind
    }

    fn info(&self) -> &CapabilityInfo {
        &self.inner.info
    }

    fn pid(&self) -> Option<u32> {
        NativeBackend::pid(self)
    }

    fn condition(&self) -> Condition {
        if let Some(why) = lock(&self.inner.supervision).failed() {
            return Condition::CrashLooping(why.to_owned());
        }
        if lock(&self.inner.live).is_some() {
            Condition::Ready
        } else {
            Condition::Starting
        }
    }

    async fn health(&self) -> Result<Value> {
        if let Some(why) = lock(&self.inner.supervision).failed() {
            return Ok(json!({"status": "failed", "name": self.name(), "reason": why}));
        }
        self.get_json("/health").await
    }

    async fn stats(&self) -> Result<Value> {
        self.get_json("/stats").await
    }

    async fn initialize(&self, config: Value) -> Result<()> {
        let endpoint = self.ensure_worker().await?;
        self.post_initialize(&endpoint, &config).await?;
        *lock(&self.inner.config) = Some(config);
        Ok(())
    }

    async fn reconfigure(&self, old: Value, new: Value) -> Result<()> {
        self.post_json(
            "/reconfigure",
            &json!({"old_config": old, "new_config": new}),
        )
        .await?;
        *lock(&self.inner.config) = Some(new);
        Ok(())
    }

    async fn current_config(&self) -> Result<Value> {
        self.get_json("/config").await
    }

    async fn config_options(&self) -> Result<Value> {
        self.get_json("/config_options").await
    }

    async fn call(&self, mut request: CallRequest, control: Arc<CallControl>) -> Result<Value> {
        if control.cancel_requested() {
            return Err(Error::Cancelled);
        }
        let span = worker_call_span(&mut request, self.pid());
        crate::trace::within(span, self.run_call(request, control)).await
    }

    async fn call_stream(
        &self,
        mut request: CallRequest,
        control: Arc<CallControl>,
    ) -> Result<CallStream> {
        if control.cancel_requested() {
            return Err(Error::Cancelled);
        }
        // Ends when the stream starts (the worker's own spans cover the chunks).
        let _span = worker_call_span(&mut request, self.pid());
        let (_, body) = request_body(request);
        let busy = Busy::new(&self.inner);
        let answer = self
            .ensure_worker()
            .await?
            .request(Method::POST, "/execute_stream");
        let mut response = match answer
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Err(self.transport_failed("/execute_stream", e).await),
        };
        if response.status() != StatusCode::OK {
            let a = Answer {
                status: response.status(),
                accounts: None,
                body: response.bytes().await.unwrap_or_default(),
            };
            self.answer_json("/execute_stream", a)?;
            return Err(Error::job(JobError::transient(
                "execute_stream answered without a stream",
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let me = self.clone();
        let session = self.session_id().unwrap_or_default();
        tokio::spawn(async move {
            let _busy = busy;
            let name = me.name().to_owned();
            let mut pending: Vec<u8> = Vec::new();
            let mut seen = control.state();
            loop {
                let chunk = tokio::select! {
                    chunk = response.chunk() => chunk,
                    state = control.changed_from(seen) => {
                        seen = state;
                        match state {
                            CancelState::Requested => me.post_cancel(),
                            CancelState::Forced => {
                                me.kill(me.pid(), "forced cancellation").await;
                                let _ = tx.send(Err(Error::Cancelled)).await;
                                return;
                            }
                            CancelState::Running => {}
                        }
                        continue;
                    }
                };
                let bytes = match chunk {
                    Ok(Some(bytes)) => bytes,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx
                            .send(Err(me.transport_failed("/execute_stream", e).await))
                            .await;
                        return;
                    }
                };
                pending.extend_from_slice(&bytes);
                if pending.len() > MAX_STREAM_LINE && !pending.contains(&b'\n') {
                    let e = JobError::transient(format!(
                        "capability '{name}': a stream line grew past {MAX_STREAM_LINE} bytes without a newline"
                    ))
                    .stamped(&name, &session);
                    let _ = tx.send(Err(Error::job(e))).await;
                    return;
                }
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let line = line.trim_ascii();
                    if line.is_empty() {
                        continue;
                    }
                    let item = stream_item(line, &name, &session, &me.inner.spec.masker);
                    let last = item.is_err();
                    if tx.send(item).await.is_err() || last {
                        return;
                    }
                }
            }
            let rest = pending.trim_ascii();
            if !rest.is_empty() {
                let _ = tx
                    .send(stream_item(rest, &name, &session, &me.inner.spec.masker))
                    .await;
            }
        });
        Ok(rx)
    }

    /// `POST /prefetch` while watching progress: when it does not move for the configured
    /// stall threshold, the worker is stopped and the prefetch fails with a timeout.
    async fn prefetch(&self) -> Result<Status> {
        let stall = self.inner.spec.prefetch_stall;
        let hook = self.status_hook("/prefetch");
        tokio::pin!(hook);
        let mut last: Option<Progress> = None;
        let mut since = Instant::now();
        let mut poll = tokio::time::interval_at(
            tokio::time::Instant::now() + PROGRESS_POLL,
            PROGRESS_POLL.min(stall),
        );
        loop {
            tokio::select! {
                status = &mut hook => return status,
                _ = poll.tick() => {
                    let now = self.get_json("/progress").await.ok().and_then(|v| serde_json::from_value::<Progress>(v).ok());
                    if now.is_some() && now != last {
                        last = now;
                        since = Instant::now();
                    } else if since.elapsed() >= stall {
                        self.stop_worker("prefetch stalled").await;
                        return Err(Error::job(
                            JobError::transient(format!(
                                "capability '{}': prefetch made no progress for {:.0}s; the worker was stopped",
                                self.name(),
                                stall.as_secs_f64()
                            ))
                            .stamped(self.name(), ""),
                        ));
                    }
                }
            }
        }
    }

    async fn on_enable(&self) -> Result<Status> {
        self.status_hook("/on_enable").await
    }

    async fn on_disable(&self) -> Result<Status> {
        self.status_hook("/on_disable").await
    }

    async fn shutdown(&self) -> Result<()> {
        if self.live().is_some() {
            // Cleanup is best effort: the worker is terminated whatever it answers.
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                self.post_json("/cleanup", &json!({})),
            )
            .await;
        }
        self.stop_worker("unload").await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_of_another_cjm_substrate_is_refused_with_what_to_do() {
        assert!(check_substrate("echo", Some(&json!("0.0.74"))).is_ok());
        let e = check_substrate("echo", Some(&json!("0.0.61")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("echo") && e.contains("0.0.61") && e.contains("0.0.74"),
            "{e}"
        );
        assert!(e.contains("CJM_SUBSTRATE_MISMATCH"), "{e}");
        let e = check_substrate("echo", None).unwrap_err().to_string();
        assert!(e.contains("without a substrate_version"), "{e}");
    }
}
