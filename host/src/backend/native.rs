//! The native backend: a capability in its own subprocess behind the HTTP/JSON worker contract
//! (`CONTRACT.md`), a Python capability through the real cjm-substrate worker or a binary built
//! on `cjm-native-worker`.
//!
//! - [`process`]: spawning per the contract, output pumping, group termination.
//! - this module: [`NativeBackend`], the contract's client and the worker's supervisor. A
//!   worker that died (killed, crashed, forcibly cancelled) is respawned and re-initialized
//!   with the configuration in force on the next call.

mod calls;
mod http;
pub mod process;
mod supervise;
mod watchdog;

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cjm_guest::contract::{CapabilityInfo, JobError, Progress, Status, StructuralSurface};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

pub use super::mask::Masker;
pub use process::WorkerSpec;

use self::http::{Answer, MAX_STREAM_LINE, request_body, snippet, stream_item};
use self::process::{Process, describe_exit};
use crate::backend::{
    Account, Backend, CallControl, CallRequest, CallStream, CancelState, Condition,
    DiagnosticsSink, RuntimeKind, Target, WorkerEvents,
};
use crate::error::{Error, Result};
use crate::store::event_types;

/// Time allowed to lifecycle endpoints.
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Time allowed to a progress poll or a cancel request during a call: a worker that cannot
/// answer these in a second is hung, and the call's deadline or a forced cancel handles it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Time allowed to a status read asked for by a caller (`/health`, `/stats`): a stopped or
/// hung worker makes the read fail as `transient` instead of holding the caller.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// The `/health` answer that found the worker ready, for the introspection that follows
    /// (cjm-substrate's `/health` takes about 45 ms: asking twice made a Python worker's
    /// load slower than under cjm-substrate's own host).
    ready_health: Mutex<Option<Value>>,
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
                ready_health: Mutex::new(None),
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
        self.inner.live.lock().as_ref().map(|l| l.pid)
    }

    fn live(&self) -> Option<(String, Endpoint)> {
        self.inner
            .live
            .lock()
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
        let next = self
            .inner
            .supervision
            .lock()
            .next_spawn(self.name(), jitter);
        match next {
            supervise::NextSpawn::Now => Ok(()),
            supervise::NextSpawn::After { attempt, delay } => {
                self.inner.events.event(
                    event_types::WORKER_RESTART_SCHEDULED,
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
                        event_types::WORKER_CRASH_LOOP,
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
                    self.inner.supervision.lock().death();
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
            event_types::WORKER_SPAWNED,
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
            self.inner.supervision.lock().death();
            let status = p.terminate(self.inner.spec.stop_grace).await;
            self.inner.events.event(
                event_types::WORKER_DIED,
                &session,
                json!({"capability_name": self.name(), "pid": p.pid, "during": "startup",
                       "reason": describe_exit(status)}),
            );
            return Err(e);
        }
        self.inner.events.event(
            event_types::WORKER_READY,
            &session,
            json!({"capability_name": self.name(), "pid": p.pid, "socket": p.socket,
                   "startup_ms": started.elapsed().as_secs_f64() * 1000.0}),
        );
        let pid = p.pid;
        *guard = Some(p);
        drop(guard);
        // The worker is reachable (`live`) only once initialized: a start interrupted here
        // (a deadline, a dropped call) leaves it unpublished, and the next call replaces it.
        let config = self.inner.config.lock().clone();
        if let Some(config) = config
            && let Err(e) = self.post_initialize(&endpoint, &config).await
        {
            self.stop_worker("initialize failed").await;
            return Err(e);
        }
        *self.inner.live.lock() = Some(Live {
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
                    Ok(health) => {
                        *self.inner.ready_health.lock() = Some(health);
                        Ok(())
                    }
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
            // At most 10 ms between probes: a Python worker is ready after 0.3-0.5 s of
            // imports, and a coarser step was late by half of it on average (a refused
            // connection costs microseconds).
            pause = (pause * 2).min(Duration::from_millis(10));
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
            event_types::WORKER_DIED,
            &p.session,
            json!({"capability_name": self.name(), "pid": p.pid, "reason": reason}),
        );
        self.scrub_session(&p.session);
        let mut live = self.inner.live.lock();
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
        self.inner.supervision.lock().death();
        *guard = None;
    }

    async fn stop_worker(&self, why: &str) -> Option<std::process::ExitStatus> {
        let mut guard = self.inner.process.lock().await;
        let mut p = guard.take()?;
        let status = p.terminate(self.inner.spec.stop_grace).await;
        // A stopped Python worker has flushed its last records into the store.
        self.scrub_session(&p.session);
        self.inner.events.event(
            event_types::WORKER_STOPPED,
            &p.session,
            json!({"capability_name": self.name(), "pid": p.pid, "reason": why,
                   "exit": describe_exit(status)}),
        );
        *self.inner.live.lock() = None;
        status
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
                event_types::WORKER_KILLED,
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
