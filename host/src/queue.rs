//! The job queue: resource-aware admission over lanes, cancellation, events and
//! compositions, over the [`CapabilityManager`], for both kinds of capability.
//!
//! - [`job`]: what is submitted and what is tracked;
//! - [`admission`]: the pending index and the admission ladder (lanes, exclusivity of
//!   unprofiled jobs, per-instance caps, the GPU ledger and live free memory);
//! - [`events`]: the one emission path (journal first, then subscribers; wedge on failure);
//! - [`composition`]: DAGs of calls with bindings to upstream results;
//! - this module: [`JobQueue`], which ties them together.
//!
//! All queue state sits behind one mutex held for microseconds: a state change (submit,
//! admission, completion, cancel, composition advance) queues its events in order while
//! holding it; the journal write and the fan-out happen after it is released. Admitted jobs
//! run as tokio tasks; there is no dispatcher loop to wake up: every state change that can
//! free capacity runs admission itself.

pub mod admission;
pub mod composition;
pub mod error;
pub mod events;
pub mod job;

use std::cmp::Reverse;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use cjm_guest::contract::JobError;
use serde_json::{Value, json};

pub use admission::{Peaks, ResourceSource, ResourceView, SystemResources};
pub use composition::{Arg, Composition, CompositionRun, Node, NodeRun, NodeState, OutputRef};
pub use error::QueueError;
pub use events::{EventKind, JobEvent, Scope, Subscription};
pub use job::{CancelPhase, Job, JobSpec, JobStatus, QueueStats};

use crate::backend::{CallControl, CallRequest};
pub use crate::config::QueueConfig;
use crate::error::{Error, Result};
use crate::manager::CapabilityManager;
use admission::{Grant, Ledger, Limits, Order, PendingIndex};
use events::{Bus, Done, Emitter, Item};

/// The journal event another process writes to ask for a job's cancellation.
pub const CANCEL_REQUESTED: &str = "cancel_requested";

/// How often the journal is read for cancel requests of other processes.
const CANCEL_POLL: Duration = Duration::from_millis(250);

/// How long the rows of a submission may wait for the next commit (group commit): a job
/// that finishes sooner is journaled in one transaction with them, one commit per job
/// instead of two. Subscribers see those events at most this much later.
const COMMIT_DELAY: Duration = Duration::from_millis(1);

/// Events buffered per subscriber before it starts dropping.
pub const SUBSCRIBER_BUFFER: usize = 1024;

/// The job queue. Cheap to clone; every clone is the same queue.
#[derive(Clone)]
pub struct JobQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueue")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    manager: CapabilityManager,
    config: QueueConfig,
    resources: Box<dyn ResourceSource>,
    runtime: tokio::runtime::Handle,
    state: Mutex<State>,
    emitter: Emitter,
    bus: Bus,
    /// A deferred flush is scheduled ([`COMMIT_DELAY`]).
    flush_scheduled: std::sync::atomic::AtomicBool,
}

struct Entry {
    job: Job,
    order: Order,
    request: Option<CallRequest>,
    timeout: Option<Duration>,
    control: Option<Arc<CallControl>>,
    grant: Option<Grant>,
    done: Arc<Done>,
    /// Cancelled because its timeout passed (it then fails instead of being cancelled).
    timed_out: bool,
}

struct CompositionEntry {
    run: CompositionRun,
    done: Arc<Done>,
}

#[derive(Default)]
struct State {
    jobs: HashMap<String, Entry>,
    pending: PendingIndex,
    ledger: Ledger,
    history: VecDeque<String>,
    compositions: HashMap<String, CompositionEntry>,
    composition_history: VecDeque<String>,
    stats: QueueStats,
    next_seq: u64,
    closed: bool,
}

/// Finishes a job whose task ended without finishing it (a panic in a backend): the job
/// fails, its lane and reservations are released, its waiters wake.
struct FinishGuard {
    inner: Arc<Inner>,
    id: Option<String>,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        tracing::error!(job = %id, "a job's task ended without finishing it (panic?)");
        let error = Error::job(JobError::fatal(
            "the job's task panicked; the instance may need a reload",
        ));
        let launches = {
            let mut st = self.inner.lock();
            self.inner.finish(&mut st, &id, Err(error));
            self.inner.dispatch(&mut st)
        };
        self.inner.after(launches);
    }
}

/// A job admitted under the lock, started after it is released.
struct Launch {
    id: String,
    instance_id: String,
    request: CallRequest,
    control: Arc<CallControl>,
}

fn now() -> String {
    cjm_guest::python::time::now_iso()
}

fn job_event(kind: events::EventKind, job: &Job, payload: Value) -> JobEvent {
    let mut e = JobEvent::new(kind, payload);
    e.job_id = Some(job.id.clone());
    e.instance_id = Some(job.instance_id.clone());
    e.capability_name.clone_from(&job.capability_name);
    e.composition_id.clone_from(&job.composition_id);
    e.node_id.clone_from(&job.node_id);
    e.run_id.clone_from(&job.run_id);
    e.actor.clone_from(&job.actor);
    e
}

impl JobQueue {
    /// A queue over `manager`, configured by its host config (`queue:` in `cjm.yaml`), with
    /// live resource figures from its telemetry. Call it inside a tokio runtime (jobs run as
    /// tasks on it).
    pub fn new(manager: CapabilityManager) -> Self {
        let config = manager.host_config().queue.clone();
        Self::with_config(manager, config)
    }

    /// A queue with its own configuration.
    pub fn with_config(manager: CapabilityManager, config: QueueConfig) -> Self {
        let resources = SystemResources::new(manager.telemetry().clone());
        Self::with_resources(manager, config, Box::new(resources))
    }

    /// A queue with its own source of live resource figures.
    pub fn with_resources(
        manager: CapabilityManager,
        config: QueueConfig,
        resources: Box<dyn ResourceSource>,
    ) -> Self {
        let queue = JobQueue {
            inner: Arc::new(Inner {
                manager,
                config,
                resources,
                runtime: tokio::runtime::Handle::current(),
                state: Mutex::new(State::default()),
                emitter: Emitter::default(),
                bus: Bus::default(),
                flush_scheduled: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        queue.watch_cancel_requests();
        queue
    }

    /// Follows the journal for `cancel_requested` rows written by other processes (`cjm-ctl
    /// cancel JOB` against the same data dir) and cancels the jobs of this queue they name.
    /// Stops when the queue is dropped.
    fn watch_cancel_requests(&self) {
        let weak = Arc::downgrade(&self.inner);
        let mut cursor = self.inner.manager.journal().last_seq().unwrap_or(0);
        self.inner.runtime.spawn(async move {
            let mut tick = tokio::time::interval(CANCEL_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let query = crate::store::JournalQuery {
                    event_type: Some(CANCEL_REQUESTED.to_owned()),
                    after_seq: Some(cursor),
                    ..Default::default()
                };
                let Ok(rows) = inner.manager.journal().query(&query) else {
                    continue;
                };
                for row in rows {
                    cursor = cursor.max(row.seq.unwrap_or(cursor));
                    if let Some(job) = row.job_id {
                        let queue = JobQueue {
                            inner: Arc::clone(&inner),
                        };
                        if queue.get(&job).is_some() {
                            let _ = queue.cancel(&job);
                        }
                    }
                }
            }
        });
    }

    /// The manager the queue runs jobs on.
    pub fn manager(&self) -> &CapabilityManager {
        &self.inner.manager
    }

    /// Submits a job; returns its id. Refused with a typed error for an unknown or disabled
    /// instance, a wedged journal or a closed queue.
    pub fn submit(&self, spec: JobSpec) -> Result<String> {
        let inner = &self.inner;
        inner.admissible_submission()?;
        let name = inner.check_instance(&spec.instance_id)?;
        let id = uuid::Uuid::now_v7().to_string();
        let launches = {
            let mut st = inner.lock();
            if st.closed {
                return Err(QueueError::Closed.into());
            }
            inner.enqueue(&mut st, id.clone(), spec, Some(name));
            inner.dispatch(&mut st)
        };
        inner.after_soon(launches);
        Ok(id)
    }

    /// Cancels a job. A pending job never starts; a running one goes through the cancel
    /// state machine (cooperative, then force after the grace period, then reload). Unknown
    /// and finished jobs are typed errors.
    pub fn cancel(&self, job_id: &str) -> Result<()> {
        let inner = &self.inner;
        let launches = {
            let mut st = inner.lock();
            inner.cancel_job(&mut st, job_id)?;
            inner.dispatch(&mut st)
        };
        inner.after(launches);
        Ok(())
    }

    /// Changes the priority of a pending job.
    pub fn reorder(&self, job_id: &str, priority: i64) -> Result<()> {
        let inner = &self.inner;
        let launches = {
            let mut st = inner.lock();
            let entry = st
                .jobs
                .get(job_id)
                .ok_or_else(|| QueueError::UnknownJob(job_id.to_owned()))?;
            if entry.job.status != JobStatus::Pending {
                return Err(QueueError::NotPending {
                    id: job_id.to_owned(),
                    status: entry.job.status,
                }
                .into());
            }
            let (instance, order) = (entry.job.instance_id.clone(), entry.order);
            st.pending.remove(&instance, order);
            let order = (Reverse(priority), order.1);
            st.pending.insert(&instance, order, job_id.to_owned());
            if let Some(e) = st.jobs.get_mut(job_id) {
                e.order = order;
                e.job.priority = priority;
            }
            inner.dispatch(&mut st)
        };
        inner.after(launches);
        Ok(())
    }

    /// A snapshot of a job the queue holds in memory.
    pub fn get(&self, job_id: &str) -> Option<Job> {
        self.inner.lock().jobs.get(job_id).map(|e| e.job.clone())
    }

    /// Waits until a job finished (its terminal row is in the journal) and returns it.
    pub async fn wait(&self, job_id: &str, timeout: Option<Duration>) -> Result<Job> {
        let done = {
            let st = self.inner.lock();
            match st.jobs.get(job_id) {
                Some(e) => Arc::clone(&e.done),
                None => {
                    drop(st);
                    return self.journal_record(job_id);
                }
            }
        };
        wait_done(&done, timeout, job_id).await?;
        self.get(job_id)
            .map_or_else(|| self.journal_record(job_id), Ok)
    }

    fn journal_record(&self, job_id: &str) -> Result<Job> {
        let rows = self
            .inner
            .manager
            .journal()
            .query(&crate::store::JournalQuery::job(job_id))?;
        rows.into_iter()
            .rev()
            .find_map(|e| {
                e.is_terminal_transition()
                    .then(|| e.job_snapshot())
                    .flatten()
            })
            .map(Job::from_snapshot)
            .ok_or_else(|| QueueError::UnknownJob(job_id.to_owned()).into())
    }

    /// Pending jobs, highest priority first, FIFO within a priority.
    pub fn pending(&self) -> Vec<Job> {
        let st = self.inner.lock();
        st.pending
            .all()
            .iter()
            .filter_map(|id| st.jobs.get(id).map(|e| e.job.clone()))
            .collect()
    }

    /// Running jobs.
    pub fn running(&self) -> Vec<Job> {
        let st = self.inner.lock();
        st.jobs
            .values()
            .filter(|e| e.job.status == JobStatus::Running)
            .map(|e| e.job.clone())
            .collect()
    }

    /// Finished jobs held in memory, newest first.
    pub fn history(&self, limit: Option<usize>) -> Vec<Job> {
        let st = self.inner.lock();
        st.history
            .iter()
            .rev()
            .take(limit.unwrap_or(usize::MAX))
            .filter_map(|id| st.jobs.get(id).map(|e| e.job.clone()))
            .collect()
    }

    /// The durable history: finished jobs rehydrated from the journal's terminal rows, newest
    /// first (records: no kwargs, no results). Survives restarts.
    pub fn history_from_journal(&self, limit: Option<u64>) -> Result<Vec<Job>> {
        Ok(self
            .inner
            .manager
            .journal()
            .terminal_state_events(limit)?
            .into_iter()
            .filter_map(|e| e.job_snapshot())
            .map(Job::from_snapshot)
            .collect())
    }

    /// Counts by state.
    pub fn stats(&self) -> QueueStats {
        let st = self.inner.lock();
        QueueStats {
            pending: st.pending.len(),
            running: st.ledger.running,
            ..st.stats
        }
    }

    /// Why the queue refuses submissions, if it does (a failed journal append).
    pub fn wedged(&self) -> Option<String> {
        self.inner.emitter.wedged()
    }

    /// A live stream of events in `scope`.
    pub fn subscribe(&self, scope: Scope) -> Subscription {
        self.inner.bus.subscribe(scope, SUBSCRIBER_BUFFER)
    }

    /// Submits a composition; returns its run id. Validated first: structure (duplicate ids,
    /// unknown bindings, cycles) and every node's instance (unknown, disabled), every problem
    /// listed. Member jobs are created when their inputs exist.
    pub fn submit_composition(&self, composition: Composition) -> Result<String> {
        let inner = &self.inner;
        inner.admissible_submission()?;
        let deps = composition
            .validate()
            .map_err(QueueError::InvalidComposition)?;
        let problems: Vec<String> = composition
            .nodes
            .iter()
            .filter_map(|n| {
                inner
                    .check_instance(&n.instance_id)
                    .err()
                    .map(|e| format!("node '{}': {}", n.id, e.to_job_error().message))
            })
            .collect();
        if !problems.is_empty() {
            return Err(QueueError::InvalidComposition(problems).into());
        }
        let id = uuid::Uuid::now_v7().to_string();
        let launches = {
            let mut st = inner.lock();
            if st.closed {
                return Err(QueueError::Closed.into());
            }
            st.compositions.insert(
                id.clone(),
                CompositionEntry {
                    run: CompositionRun::new(id.clone(), composition, deps),
                    done: Arc::new(Done::default()),
                },
            );
            inner.start_ready(&mut st, &id, None);
            inner.maybe_finish(&mut st, &id);
            inner.dispatch(&mut st)
        };
        inner.after_soon(launches);
        Ok(id)
    }

    /// A snapshot of a composition run.
    pub fn composition(&self, id: &str) -> Option<CompositionRun> {
        self.inner
            .lock()
            .compositions
            .get(id)
            .map(|c| c.run.clone())
    }

    /// Waits until a composition reached its terminal status and returns it.
    pub async fn wait_composition(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<CompositionRun> {
        let done = self
            .inner
            .lock()
            .compositions
            .get(id)
            .map(|c| Arc::clone(&c.done))
            .ok_or_else(|| QueueError::UnknownComposition(id.to_owned()))?;
        wait_done(&done, timeout, id).await?;
        self.composition(id)
            .ok_or_else(|| QueueError::UnknownComposition(id.to_owned()).into())
    }

    /// Cancels a composition as a unit (it lands `cancelled`): nodes without a job never
    /// get one, pending members are cancelled, running ones go through the cancel state
    /// machine.
    pub fn cancel_composition(&self, id: &str) -> Result<()> {
        let inner = &self.inner;
        let launches = {
            let mut st = inner.lock();
            let entry = st
                .compositions
                .get_mut(id)
                .ok_or_else(|| QueueError::UnknownComposition(id.to_owned()))?;
            if entry.run.status.is_terminal() {
                return Err(QueueError::Finished {
                    id: id.to_owned(),
                    status: entry.run.status.as_str().to_owned(),
                }
                .into());
            }
            entry.run.cancel_requested = true;
            inner.cancel_members(&mut st, id, true);
            inner.maybe_finish(&mut st, id);
            inner.dispatch(&mut st)
        };
        inner.after(launches);
        Ok(())
    }

    /// Stops taking work: new submissions are refused and pending jobs are cancelled;
    /// running jobs finish.
    pub fn close(&self) {
        let inner = &self.inner;
        {
            let mut st = inner.lock();
            st.closed = true;
            let ids = st.pending.all();
            for id in ids {
                let _ = inner.cancel_job(&mut st, &id);
            }
        }
        inner.after(Vec::new());
    }
}

async fn wait_done(done: &Done, timeout: Option<Duration>, what: &str) -> Result<()> {
    match timeout {
        None => {
            done.wait().await;
            Ok(())
        }
        Some(t) => tokio::time::timeout(t, done.wait())
            .await
            .map_err(|_| QueueError::Timeout(t, what.to_owned()).into()),
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn admissible_submission(&self) -> Result<()> {
        if self.lock().closed {
            return Err(QueueError::Closed.into());
        }
        match self.emitter.wedged() {
            Some(why) => Err(QueueError::Wedged(why).into()),
            None => Ok(()),
        }
    }

    /// The capability name of a loaded, enabled instance, or the typed refusal.
    fn check_instance(&self, id: &str) -> Result<String> {
        let instance = self.manager.instance(id)?;
        if !instance.enabled() {
            return Err(Error::job(JobError::user_input(format!(
                "capability instance '{id}' is disabled"
            ))));
        }
        Ok(instance.name().to_owned())
    }

    fn enqueue(&self, st: &mut State, id: String, mut spec: JobSpec, name: Option<String>) {
        spec.request.envelope.job_id = Some(id.clone());
        st.next_seq += 1;
        let order = (Reverse(spec.priority), st.next_seq);
        let job = Job::new(id.clone(), &spec, name);
        st.pending.insert(&spec.instance_id, order, id.clone());
        st.jobs.insert(
            id,
            Entry {
                job,
                order,
                request: Some(spec.request),
                timeout: spec.timeout,
                control: None,
                grant: None,
                done: Arc::new(Done::default()),
                timed_out: false,
            },
        );
    }

    /// Admits every job the ladder allows, in priority order with skip-ahead.
    fn dispatch(self: &Arc<Self>, st: &mut State) -> Vec<Launch> {
        let limits = Limits {
            lanes: (self.config.max_concurrent_lanes as usize).max(1),
            gpu_headroom: self.config.gpu_headroom_fraction,
        };
        let mut launches = Vec::new();
        let mut view: Option<ResourceView> = None;
        while st.ledger.running < limits.lanes && !st.ledger.exclusive && st.pending.len() > 0 {
            let mut chosen = None;
            for (order, instance_id) in st.pending.heads() {
                let (cap, peaks) = match self.manager.instance(instance_id) {
                    Ok(i) => (i.max_concurrency(), i.peaks()),
                    // Unloaded since submit: admit it, the call fails with the typed error.
                    Err(_) => (usize::MAX, Some(Peaks::default())),
                };
                let mut live = || *view.get_or_insert_with(|| self.resources.view());
                match admission::decide(&st.ledger, limits, instance_id, cap, peaks, &mut live) {
                    Ok(grant) => {
                        chosen = Some((*order, instance_id.clone(), grant, peaks));
                        break;
                    }
                    // A first run waits for the lanes to drain: admitting what comes after
                    // it would starve it under steady load.
                    Err(admission::Blocked::Exclusive) => break,
                    Err(_) => {}
                }
            }
            let Some((order, instance_id, grant, peaks)) = chosen else {
                break;
            };
            let Some(id) = st.pending.remove(&instance_id, order) else {
                break;
            };
            if !st.jobs.contains_key(&id) {
                continue;
            }
            st.ledger.running += 1;
            *st.ledger
                .by_instance
                .entry(instance_id.clone())
                .or_default() += 1;
            st.ledger.exclusive |= grant.exclusive;
            st.ledger.gpu_reserved_mb += grant.gpu_mb;
            let detail = json!({
                "lanes_in_use": st.ledger.running,
                "lanes": limits.lanes,
                "exclusive": grant.exclusive,
                "measured": peaks.is_some(),
                "gpu_memory_mb": grant.gpu_mb,
                "gpu_reserved_mb": st.ledger.gpu_reserved_mb,
                "memory_mb_peak": peaks.map_or(0.0, |p| p.ram_mb),
                "pending": st.pending.len(),
            });
            let Some(entry) = st.jobs.get_mut(&id) else {
                break;
            };
            entry.grant = Some(grant);
            entry.job.status = JobStatus::Running;
            entry.job.started_at = Some(now());
            let mut control = CallControl::new();
            if let Some(t) = entry.timeout {
                control = control.with_timeout(t);
            }
            let weak = Arc::downgrade(self);
            let job_id = id.clone();
            let control = Arc::new(control.with_progress_listener(move |p| {
                if let Some(inner) = weak.upgrade() {
                    inner.progress(&job_id, p);
                }
            }));
            entry.control = Some(Arc::clone(&control));
            let request = entry
                .request
                .take()
                .unwrap_or_else(|| CallRequest::execute(Default::default()));
            self.emitter.push(Item::Event(job_event(
                EventKind::AdmissionDecided,
                &entry.job,
                detail,
            )));
            self.emitter.push(Item::Event(job_event(
                EventKind::StateTransition,
                &entry.job,
                json!({"from": "pending", "to": "running"}),
            )));
            launches.push(Launch {
                id,
                instance_id,
                request,
                control,
            });
        }
        launches
    }

    /// Starts admitted jobs, then writes and publishes what the state changes queued.
    fn after(self: &Arc<Self>, launches: Vec<Launch>) {
        for launch in launches {
            let me = Arc::clone(self);
            self.runtime.spawn(async move { me.run(launch).await });
        }
        self.flush();
    }

    fn flush(&self) {
        self.emitter.flush(self.manager.journal(), &self.bus);
    }

    /// Starts admitted jobs; what the state change queued is written by the next flush, at
    /// most [`COMMIT_DELAY`] from now.
    fn after_soon(self: &Arc<Self>, launches: Vec<Launch>) {
        for launch in launches {
            let me = Arc::clone(self);
            self.runtime.spawn(async move { me.run(launch).await });
        }
        use std::sync::atomic::Ordering;
        if self.flush_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::clone(self);
        self.runtime.spawn(async move {
            tokio::time::sleep(COMMIT_DELAY).await;
            me.flush_scheduled.store(false, Ordering::Release);
            me.flush();
        });
    }

    async fn run(self: Arc<Self>, launch: Launch) {
        // Whatever happens to this task (a panic in a backend included), the job finishes
        // and releases what admission reserved.
        let mut guard = FinishGuard {
            inner: Arc::clone(&self),
            id: Some(launch.id.clone()),
        };
        let deadline = self.deadline_timer(&launch);
        let snapshots = self.snapshots(&launch);
        let result = self
            .manager
            .call_with(
                &launch.instance_id,
                launch.request,
                Arc::clone(&launch.control),
            )
            .await;
        if let Some(task) = snapshots {
            task.abort();
        }
        if let Some(task) = deadline {
            task.abort();
        }
        // Forced and actually stopped (a call that returned just before the force needs no
        // replacement).
        if launch.control.forced() && matches!(result, Err(Error::Cancelled)) {
            self.cancel_phase(&launch.id, CancelPhase::Reloading);
            if let Err(e) = self.manager.reload(&launch.instance_id).await {
                tracing::warn!(instance = %launch.instance_id, error = %e, "reload after a forced cancel failed; the next call respawns");
            }
        }
        if launch.control.cancel_requested() {
            self.cancel_phase(&launch.id, CancelPhase::Completed);
        }
        guard.id = None;
        let launches = {
            let mut st = self.lock();
            self.finish(&mut st, &launch.id, result);
            self.dispatch(&mut st)
        };
        self.after(launches);
    }

    /// For a backend that does not enforce deadlines itself (native workers; a wasm call
    /// traps at its own), cancels the job when its timeout passes; it then fails as
    /// `transient` ("ran past its timeout").
    fn deadline_timer(self: &Arc<Self>, launch: &Launch) -> Option<tokio::task::JoinHandle<()>> {
        let deadline = launch.control.deadline()?;
        let kind = self
            .manager
            .instance(&launch.instance_id)
            .ok()?
            .backend()
            .kind();
        if kind == crate::backend::RuntimeKind::Wasm {
            return None;
        }
        let weak = Arc::downgrade(self);
        let id = launch.id.clone();
        Some(self.runtime.spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            let Some(inner) = weak.upgrade() else { return };
            let launches = {
                let mut st = inner.lock();
                match st.jobs.get_mut(&id) {
                    Some(e) if e.job.status == JobStatus::Running => e.timed_out = true,
                    _ => return,
                }
                let _ = inner.cancel_job(&mut st, &id);
                inner.dispatch(&mut st)
            };
            inner.after(launches);
        }))
    }

    /// While a native job runs, publishes a resource snapshot of its worker's process
    /// subtree every `progress_poll_interval x resource_snapshot_cadence_polls`.
    fn snapshots(self: &Arc<Self>, launch: &Launch) -> Option<tokio::task::JoinHandle<()>> {
        let pid = self
            .manager
            .instance(&launch.instance_id)
            .ok()?
            .backend()
            .pid()?;
        let every = self.config.progress_poll_interval.mul_f64(f64::from(
            self.config.resource_snapshot_cadence_polls.max(1),
        ));
        let weak = Arc::downgrade(self);
        let job_id = launch.id.clone();
        Some(self.runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let telemetry = inner.manager.telemetry().clone();
                let sample = tokio::task::spawn_blocking(move || {
                    let tree = telemetry.process_tree(pid)?;
                    let gpu = telemetry.gpu_memory_of(&tree.subtree_pids);
                    Some((tree, gpu))
                })
                .await;
                let Ok(Some((tree, gpu))) = sample else {
                    continue;
                };
                let event = {
                    let st = inner.lock();
                    let Some(entry) = st.jobs.get(&job_id) else {
                        return;
                    };
                    job_event(
                        EventKind::ResourceSnapshot,
                        &entry.job,
                        json!({
                            "worker_pid": pid,
                            "cpu_percent": tree.cpu_percent,
                            "memory_rss_mb": tree.memory_rss_mb,
                            "subtree_pids": tree.subtree_pids,
                            "gpu_memory_mb": gpu.as_ref().map(|g| g.gpu_memory_mb),
                            "gpu_index": gpu.as_ref().and_then(|g| g.gpu_index),
                        }),
                    )
                };
                inner.bus.publish(&event);
            }
        }))
    }

    fn progress(&self, job_id: &str, p: &cjm_guest::contract::Progress) {
        let event = {
            let mut st = self.lock();
            let Some(entry) = st.jobs.get_mut(job_id) else {
                return;
            };
            entry.job.progress = p.progress;
            entry.job.status_message.clone_from(&p.message);
            job_event(
                EventKind::ProgressChanged,
                &entry.job,
                json!({"progress": p.progress, "message": p.message}),
            )
        };
        self.bus.publish(&event);
    }

    fn cancel_phase(&self, job_id: &str, phase: CancelPhase) {
        {
            let mut st = self.lock();
            let Some(entry) = st.jobs.get_mut(job_id) else {
                return;
            };
            let from = entry.job.cancel_phase.map(CancelPhase::as_str);
            entry.job.cancel_phase = Some(phase);
            self.emitter.push(Item::Event(job_event(
                EventKind::CancelPhaseChanged,
                &entry.job,
                json!({"from": from, "to": phase.as_str()}),
            )));
        }
        self.flush();
    }

    /// Records a running job's outcome, releases what admission reserved and advances its
    /// composition.
    fn finish(self: &Arc<Self>, st: &mut State, job_id: &str, result: Result<Value>) {
        let Some(entry) = st.jobs.get_mut(job_id) else {
            return;
        };
        let timeout = entry.timed_out.then_some(entry.timeout).flatten();
        let (status, value, error) = match result {
            Ok(v) => (JobStatus::Completed, Some(v), None),
            Err(Error::Cancelled) if timeout.is_some() => {
                let t = timeout.unwrap_or_default().as_secs_f64();
                let mut e = JobError::transient(format!("the job ran past its timeout of {t} s"));
                e.capability_instance_id = Some(entry.job.instance_id.clone());
                e.capability_name.clone_from(&entry.job.capability_name);
                (JobStatus::Failed, None, Some(e))
            }
            Err(Error::Cancelled) => (JobStatus::Cancelled, None, None),
            Err(e) => {
                let name = entry.job.capability_name.clone().unwrap_or_default();
                // The host's names for the instance, whatever the worker calls itself.
                let mut je = e.to_job_error();
                je.capability_instance_id = Some(entry.job.instance_id.clone());
                if !name.is_empty() {
                    je.capability_name = Some(name);
                }
                (JobStatus::Failed, None, Some(je))
            }
        };
        if let Some(grant) = entry.grant.take() {
            st.ledger.running -= 1;
            if let Some(n) = st.ledger.by_instance.get_mut(&entry.job.instance_id) {
                *n -= 1;
                if *n == 0 {
                    st.ledger.by_instance.remove(&entry.job.instance_id);
                }
            }
            if grant.exclusive {
                st.ledger.exclusive = false;
            }
            st.ledger.gpu_reserved_mb = (st.ledger.gpu_reserved_mb - grant.gpu_mb).max(0.0);
        }
        entry.control = None;
        if status == JobStatus::Completed {
            entry.job.progress = 1.0;
        }
        entry.job.result.clone_from(&value);
        entry.job.error.clone_from(&error);
        self.terminal(st, job_id, JobStatus::Running, status);
        let member = st
            .jobs
            .get(job_id)
            .and_then(|e| Some((e.job.composition_id.clone()?, e.job.node_id.clone()?)));
        if let Some((comp, node)) = member {
            let state = match status {
                JobStatus::Completed => NodeState::Completed,
                JobStatus::Cancelled => NodeState::Cancelled,
                _ => NodeState::Failed,
            };
            self.advance(st, &comp, &node, state, value, error);
        }
    }

    /// Marks a job terminal: counts it, journals the transition with its snapshot, marks
    /// it done after that row, keeps it in the bounded in-memory history.
    fn terminal(&self, st: &mut State, job_id: &str, from: JobStatus, to: JobStatus) {
        let Some(entry) = st.jobs.get_mut(job_id) else {
            return;
        };
        entry.job.status = to;
        entry.job.completed_at = Some(now());
        entry.request = None;
        let snapshot = serde_json::to_value(entry.job.snapshot()).unwrap_or(Value::Null);
        self.emitter.push(Item::Event(job_event(
            EventKind::StateTransition,
            &entry.job,
            json!({"from": from.as_str(), "to": to.as_str(), "job_snapshot": snapshot}),
        )));
        self.emitter.push(Item::Done(Arc::clone(&entry.done)));
        match to {
            JobStatus::Completed => st.stats.completed += 1,
            JobStatus::Cancelled => st.stats.cancelled += 1,
            _ => st.stats.failed += 1,
        }
        st.history.push_back(job_id.to_owned());
        // Forget the oldest finished jobs once their terminal row is written: a job not in
        // memory is then always in the journal.
        while st.history.len() > self.config.max_history as usize {
            // ... and nobody is waiting on it (a waiter gets the result, not a record).
            let written = st
                .history
                .front()
                .and_then(|id| st.jobs.get(id))
                .is_none_or(|e| e.done.is_set() && Arc::strong_count(&e.done) == 1);
            if !written {
                break;
            }
            if let Some(old) = st.history.pop_front() {
                st.jobs.remove(&old);
            }
        }
    }

    fn cancel_job(self: &Arc<Self>, st: &mut State, job_id: &str) -> Result<()> {
        let entry = st
            .jobs
            .get_mut(job_id)
            .ok_or_else(|| QueueError::UnknownJob(job_id.to_owned()))?;
        match entry.job.status {
            JobStatus::Pending => {
                entry.job.cancel_requested_at = Some(now());
                let (instance, order) = (entry.job.instance_id.clone(), entry.order);
                st.pending.remove(&instance, order);
                self.terminal(st, job_id, JobStatus::Pending, JobStatus::Cancelled);
                let member = st
                    .jobs
                    .get(job_id)
                    .and_then(|e| Some((e.job.composition_id.clone()?, e.job.node_id.clone()?)));
                if let Some((comp, node)) = member {
                    self.advance(st, &comp, &node, NodeState::Cancelled, None, None);
                }
                Ok(())
            }
            JobStatus::Running => {
                if entry.job.cancel_requested_at.is_some() {
                    return Ok(());
                }
                entry.job.cancel_requested_at = Some(now());
                entry.job.cancel_phase = Some(CancelPhase::Cooperative);
                self.emitter.push(Item::Event(job_event(
                    EventKind::CancelPhaseChanged,
                    &entry.job,
                    json!({"from": null, "to": CancelPhase::Cooperative.as_str()}),
                )));
                if let Some(control) = &entry.control {
                    control.request_cancel();
                    let control = Arc::clone(control);
                    let weak: Weak<Inner> = Arc::downgrade(self);
                    let grace = self.config.cancel_timeout;
                    let id = job_id.to_owned();
                    self.runtime.spawn(async move {
                        tokio::time::sleep(grace).await;
                        let Some(inner) = weak.upgrade() else { return };
                        let still_running = inner
                            .lock()
                            .jobs
                            .get(&id)
                            .is_some_and(|e| e.job.status == JobStatus::Running);
                        if still_running {
                            inner.cancel_phase(&id, CancelPhase::Force);
                            control.force_cancel();
                        }
                    });
                }
                Ok(())
            }
            done => Err(QueueError::Finished {
                id: job_id.to_owned(),
                status: done.as_str().to_owned(),
            }
            .into()),
        }
    }

    /// Records a member's outcome and moves its composition on: downstream nodes whose
    /// inputs now exist get jobs; a failure or cancel skips dependents and, fail-fast,
    /// cancels independent pending members.
    fn advance(
        self: &Arc<Self>,
        st: &mut State,
        comp_id: &str,
        node_id: &str,
        state: NodeState,
        result: Option<Value>,
        error: Option<JobError>,
    ) {
        let Some(entry) = st.compositions.get_mut(comp_id) else {
            return;
        };
        entry.run.record(node_id, state, result, error);
        match state {
            NodeState::Completed => self.start_ready(st, comp_id, Some(node_id)),
            NodeState::Failed | NodeState::Cancelled => {
                entry.run.skip_dependents(node_id);
                if state == NodeState::Failed
                    && entry.run.composition.fail_fast
                    && !entry.run.cancel_requested
                {
                    self.cancel_members(st, comp_id, false);
                }
            }
            _ => {}
        }
        self.maybe_finish(st, comp_id);
    }

    /// Creates jobs for every ready node (bindings resolved now); a binding that cannot be
    /// resolved fails its node.
    fn start_ready(self: &Arc<Self>, st: &mut State, comp_id: &str, completed: Option<&str>) {
        if st.closed {
            // A closed queue starts nothing new: what would run next is cancelled.
            if let Some(entry) = st.compositions.get_mut(comp_id) {
                for node in entry.run.ready_nodes() {
                    entry.run.record(&node, NodeState::Cancelled, None, None);
                    entry.run.skip_dependents(&node);
                }
            }
            return;
        }
        let Some(entry) = st.compositions.get(comp_id) else {
            return;
        };
        let run = &entry.run;
        let results = run.results();
        let mut specs = Vec::new();
        let mut failures = Vec::new();
        for node_id in run.ready_nodes() {
            let Some(node) = run.composition.nodes.iter().find(|n| n.id == node_id) else {
                continue;
            };
            let resolved = node
                .resolve(&results)
                .map_err(|m| JobError::user_input(format!("composition binding failed: {m}")));
            let checked = resolved.and_then(|kwargs| {
                self.check_instance(&node.instance_id)
                    .map(|name| (kwargs, name))
                    .map_err(|e| e.to_job_error())
            });
            match checked {
                Ok((kwargs, name)) => {
                    let request = match (&node.task, &node.method) {
                        (Some(t), Some(m)) => CallRequest::task(t, m, kwargs),
                        _ => CallRequest::execute(kwargs),
                    };
                    let mut spec =
                        JobSpec::call(&node.instance_id, request).priority(if node.priority != 0 {
                            node.priority
                        } else {
                            run.composition.priority
                        });
                    let env = &mut spec.request.envelope;
                    env.composition_id = Some(comp_id.to_owned());
                    env.node_id = Some(node.id.clone());
                    env.run_id.clone_from(&run.composition.run_id);
                    env.actor.clone_from(&run.composition.actor);
                    env.control.clone_from(&node.control);
                    specs.push((node.id.clone(), spec, name));
                }
                Err(e) => failures.push((node.id.clone(), e)),
            }
        }
        let mut enqueued = Vec::new();
        for (node_id, spec, name) in specs {
            let id = uuid::Uuid::now_v7().to_string();
            self.enqueue(st, id.clone(), spec, Some(name));
            if let Some(entry) = st.compositions.get_mut(comp_id)
                && let Some(n) = entry.run.nodes.get_mut(&node_id)
            {
                n.job_id = Some(id);
                n.state = NodeState::Running;
            }
            enqueued.push(node_id);
        }
        if let Some(entry) = st.compositions.get(comp_id)
            && completed.is_some()
            && !enqueued.is_empty()
        {
            let mut e = JobEvent::new(
                EventKind::CompositionAdvanced,
                json!({"completed_node": completed, "enqueued_nodes": enqueued}),
            );
            e.composition_id = Some(comp_id.to_owned());
            e.node_id = completed.map(str::to_owned);
            e.run_id.clone_from(&entry.run.composition.run_id);
            e.actor.clone_from(&entry.run.composition.actor);
            self.emitter.push(Item::Event(e));
        }
        for (node_id, error) in failures {
            self.advance(st, comp_id, &node_id, NodeState::Failed, None, Some(error));
        }
    }

    /// Stops members that have not started: nodes without a job are cancelled, pending
    /// member jobs are cancelled; running members run to completion unless `running` (a
    /// user cancel of the whole composition).
    fn cancel_members(self: &Arc<Self>, st: &mut State, comp_id: &str, running: bool) {
        let Some(entry) = st.compositions.get_mut(comp_id) else {
            return;
        };
        let mut jobs = Vec::new();
        for n in entry.run.nodes.values_mut() {
            match (&n.job_id, n.state) {
                (None, NodeState::Pending) => n.state = NodeState::Cancelled,
                (Some(job), NodeState::Running) => jobs.push(job.clone()),
                _ => {}
            }
        }
        for job in jobs {
            let status = st.jobs.get(&job).map(|e| e.job.status);
            if status == Some(JobStatus::Pending) || (running && status == Some(JobStatus::Running))
            {
                let _ = self.cancel_job(st, &job);
            }
        }
    }

    fn maybe_finish(&self, st: &mut State, comp_id: &str) {
        let Some(entry) = st.compositions.get_mut(comp_id) else {
            return;
        };
        let run = &mut entry.run;
        if run.status.is_terminal() || !run.all_terminal() {
            return;
        }
        run.status = run.terminal_status();
        run.completed_at = Some(now());
        let nodes: serde_json::Map<String, Value> = run
            .nodes
            .iter()
            .map(|(id, n)| (id.clone(), Value::from(n.state.as_str())))
            .collect();
        let mut e = JobEvent::new(
            EventKind::CompositionFinished,
            json!({"status": run.status.as_str(), "nodes": nodes, "fail_fast": run.composition.fail_fast}),
        );
        e.composition_id = Some(comp_id.to_owned());
        e.run_id.clone_from(&run.composition.run_id);
        e.actor.clone_from(&run.composition.actor);
        self.emitter.push(Item::Event(e));
        self.emitter.push(Item::Done(Arc::clone(&entry.done)));
        st.composition_history.push_back(comp_id.to_owned());
        while st.composition_history.len() > self.config.max_history as usize {
            let idle = st
                .composition_history
                .front()
                .and_then(|id| st.compositions.get(id))
                .is_none_or(|c| c.done.is_set() && Arc::strong_count(&c.done) == 1);
            if !idle {
                break;
            }
            if let Some(old) = st.composition_history.pop_front() {
                st.compositions.remove(&old);
            }
        }
    }
}
