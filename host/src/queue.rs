//! The job queue: resource-aware admission over lanes, cancellation, events and
//! compositions, over the [`CapabilityManager`], for both kinds of capability.
//!
//! - [`job`]: what is submitted and what is tracked;
//! - [`admission`]: the pending index and the admission ladder (lanes, exclusivity of
//!   unprofiled jobs, per-instance caps, the GPU ledger and live free memory);
//! - [`events`]: the one emission path (journal first, then subscribers; wedge on failure);
//! - [`composition`]: DAGs of calls with bindings to upstream results;
//! - `dispatch`, `execution`: the queue's internals (admitting, running and finishing jobs);
//! - `advance`: compositions at run time (submitting, inspecting, cancelling; moving them
//!   on as their members end);
//! - this module: [`JobQueue`], its public API.
//!
//! All queue state sits behind one mutex held for microseconds: a state change (submit,
//! admission, completion, cancel, composition advance) queues its events in order while
//! holding it; the journal write and the fan-out happen after it is released. Admitted jobs
//! run as tokio tasks; there is no dispatcher loop to wake up: every state change that can
//! free capacity runs admission itself.

pub mod admission;
mod advance;
pub mod composition;
mod dispatch;
pub mod error;
pub mod events;
mod execution;
pub mod job;
pub mod listing;
mod recovery;

use parking_lot::{Mutex, MutexGuard};
use std::cmp::Reverse;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use cjm_guest::contract::JobError;
use serde_json::{Value, json};

pub use crate::config::RetryPolicy;
use crate::config::retry;
pub use admission::{Peaks, ResourceSource, ResourceView, SystemResources, WaitReason};
pub use composition::{Arg, Composition, CompositionRun, Node, NodeRun, NodeState, OutputRef};
pub use error::QueueError;
pub use events::{EventKind, JobEvent, Scope, Subscription};
pub use job::{
    CancelPhase, Job, JobSpec, JobStatus, PayloadRef, QueueStats, SpecRecord, host_view,
};
pub use listing::{JobFilter, JobPage, list_jobs};

use crate::backend::{CallControl, CallRequest};
use crate::bounds::size_over;
pub use crate::config::QueueConfig;
use crate::error::{Error, Result};
use crate::manager::CapabilityManager;
use admission::{Grant, Ledger, Limits, Order, PendingIndex};
use dispatch::Launch;
use events::{Bus, Done, Emitter, Item};

/// The journal event another process writes to ask for a job's cancellation.
pub const CANCEL_REQUESTED: &str = "cancel_requested";

/// How often the journal is read for cancel requests of other processes.
const CANCEL_POLL: Duration = Duration::from_millis(250);

/// How often a wait on a job another process holds reads the journal again.
const JOURNAL_POLL: Duration = Duration::from_millis(100);

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
    emitter: Arc<Emitter>,
    bus: Arc<Bus>,
    /// `State::closed`, readable without the lock (set under it).
    closed: std::sync::atomic::AtomicBool,
    /// Held by a reconciliation from its claims until its adopted jobs are queued, so a
    /// second one (the lease loop's, a caller's) returns only once the first is done.
    reconciling: tokio::sync::Mutex<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The journal writer writes what is left, then ends.
        self.emitter.close();
    }
}

struct Entry {
    job: Job,
    order: Order,
    request: Option<CallRequest>,
    timeout: Option<Duration>,
    control: Option<Arc<CallControl>>,
    grant: Option<Grant>,
    done: Arc<Done>,
    /// Callers of [`JobQueue::wait`] on it now: a large result stays until the last leaves.
    waiters: u32,
    /// The approximate bytes of its kwargs while it waits (counted in `pending_bytes`).
    bytes: usize,
    /// When it runs again after a failure.
    retry: RetryPolicy,
    /// A copy of the call kept at admission while attempts remain (boxed: most jobs have
    /// none, and every waiting job pays for the field).
    retry_request: Option<Box<CallRequest>>,
    /// Its kwargs file in the data dir (large kwargs), removed when it ends.
    payload_file: Option<String>,
    /// Whether it waits out a retry's delay (counted in `State::retry_waiting`).
    retry_wait: bool,
    /// A composition member's result as its terminal row journals it (`{"result": ..}`,
    /// or `{"result_ref": ..}` past the inline limit), so another host can resume the
    /// composition from it.
    node_result: Option<Value>,
    /// Its wait in the queue, as a span of its trace (ended by admission; disabled when no
    /// trace is exported).
    admission: tracing::Span,
}

struct CompositionEntry {
    run: CompositionRun,
    done: Arc<Done>,
}

#[derive(Default)]
struct State {
    /// Boxed: the table holds a pointer per job, not a 2 KB entry, so a burst's table (and
    /// its copy while it grows) stays small.
    jobs: HashMap<String, Box<Entry>>,
    pending: PendingIndex,
    ledger: Ledger,
    history: VecDeque<String>,
    compositions: HashMap<String, CompositionEntry>,
    composition_history: VecDeque<String>,
    stats: QueueStats,
    next_seq: u64,
    closed: bool,
    /// Bytes of kwargs held by waiting jobs (bounded by `max_pending_bytes`).
    pending_bytes: usize,
    /// Jobs waiting out a retry's delay: pending, though not yet in the pending index.
    retry_waiting: usize,
    /// Closed by [`JobQueue::stop_admitting`]: what waits (compositions' next nodes
    /// included) is left to the host that reconciles this one, not cancelled.
    leaving: bool,
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
        let host_id = uuid::Uuid::now_v7().to_string();
        let emitter = Arc::new(Emitter::new(host_id, config.lease_ttl));
        let bus = Arc::new(Bus::default());
        let queue = JobQueue {
            inner: Arc::new(Inner {
                manager,
                config,
                resources,
                runtime: tokio::runtime::Handle::current(),
                state: Mutex::new(State::default()),
                emitter: Arc::clone(&emitter),
                bus: Arc::clone(&bus),
                closed: std::sync::atomic::AtomicBool::new(false),
                reconciling: tokio::sync::Mutex::new(()),
            }),
        };
        if let Err(e) = Emitter::start(&emitter, queue.inner.manager.clone(), bus) {
            tracing::error!(error = %e, "cannot start the journal writer");
            emitter.wedge(format!("cannot start the journal writer thread: {e}"));
        }
        queue.watch_cancel_requests();
        queue.hold_lease();
        queue
    }

    /// This host's id on the data dir (its lease in the journal's `hosts` table, and the
    /// owner named in the `job_submitted` row of every job it accepts).
    pub fn host_id(&self) -> &str {
        self.inner.emitter.host_id()
    }

    /// Follows the journal for `cancel_requested` rows written by other processes (`cjm-ctl
    /// cancel JOB` against the same data dir) and cancels the jobs of this queue they name:
    /// read on a blocking thread, only while the queue holds jobs. Stops when the queue is
    /// dropped.
    fn watch_cancel_requests(&self) {
        let weak = Arc::downgrade(&self.inner);
        let mut cursor = self.inner.manager.journal().last_seq().unwrap_or(0);
        self.inner.runtime.spawn(async move {
            let mut tick = tokio::time::interval(CANCEL_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                // Only a queue holding jobs (also one waiting out a retry's delay) has
                // anything to cancel (request ids are job ids, so rows skipped while idle can
                // never name a later job).
                let busy = {
                    let st = inner.lock();
                    st.pending.len() + st.retry_waiting + st.ledger.running > 0
                };
                if !busy {
                    continue;
                }
                let query = crate::store::JournalQuery {
                    event_type: Some(CANCEL_REQUESTED.to_owned()),
                    after_seq: Some(cursor),
                    ..Default::default()
                };
                let manager = inner.manager.clone();
                let read =
                    tokio::task::spawn_blocking(move || manager.journal().query(&query)).await;
                let Ok(Ok(rows)) = read else {
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

    /// Submits a job; returns its id once the job's `job_submitted` row (its spec) is
    /// committed to the journal: an id a caller holds always has a record, and a host that
    /// dies before running it leaves it to the next host. Refused with a typed error for an
    /// unknown or disabled instance, input past the bounds, a full or closed queue, or a
    /// wedged journal.
    pub async fn submit(&self, spec: JobSpec) -> Result<String> {
        self.submit_one(spec, Ack::Committed).await
    }

    /// Submits a job for a caller that shows nothing but its outcome (the worker contract's
    /// `/execute` over HTTP, an MCP tool call): the id comes back at once, without waiting
    /// for the submission rows, which are committed with what follows them: a job that ends
    /// within the group-commit window is journaled in one transaction, submission to
    /// outcome; a longer one's submission commits within the window as usual. [`Self::wait`]
    /// still returns once the outcome is committed. Use [`Self::submit`] whenever the id is
    /// shown to anyone before the outcome: only a committed submission is promised to
    /// survive a crash of the host.
    pub async fn submit_for_outcome(&self, spec: JobSpec) -> Result<String> {
        self.submit_one(spec, Ack::WithOutcome).await
    }

    async fn submit_one(&self, spec: JobSpec, ack: Ack) -> Result<String> {
        let mut ids = self.submit_traced(vec![spec], ack).await?;
        ids.pop()
            .ok_or_else(|| Error::job(JobError::fatal("a submission returned no id")))
    }

    /// Submits jobs together, all or none: their rows are committed in one transaction
    /// before their ids (in order) are returned. The first refusal refuses them all.
    pub async fn submit_many(&self, specs: Vec<JobSpec>) -> Result<Vec<String>> {
        self.submit_traced(specs, Ack::Committed).await
    }

    /// [`Self::submit_many`] in a `cjm.submit` span when traced.
    async fn submit_traced(&self, specs: Vec<JobSpec>, ack: Ack) -> Result<Vec<String>> {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            target: "cjm::trace",
            "cjm.submit",
            cjm.jobs = specs.len(),
            cjm.job_id = tracing::field::Empty,
            cjm.instance = tracing::field::Empty,
        );
        if !crate::trace::is_traced(&span) {
            return self.submit_within(specs, &span, ack).await;
        }
        if let [one] = specs.as_slice() {
            span.record("cjm.instance", one.instance_id.as_str());
            crate::trace::adopt(&span, one.request.envelope.traceparent.as_deref());
        }
        let result = self
            .submit_within(specs, &span, ack)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(ids) if ids.len() == 1 => {
                span.record("cjm.job_id", ids[0].as_str());
            }
            Ok(_) => {}
            Err(e) => crate::trace::fail(&span, &e.to_string()),
        }
        result
    }

    /// [`Self::submit_many`] within its span (a disabled one when untraced): each job's
    /// envelope carries the span's trace context (its attempts and the workers they call join
    /// the trace).
    async fn submit_within(
        &self,
        specs: Vec<JobSpec>,
        span: &tracing::Span,
        ack: Ack,
    ) -> Result<Vec<String>> {
        let inner = &self.inner;
        let traceparent = crate::trace::traceparent(span);
        inner.admissible_submission()?;
        let mut accepted = Vec::with_capacity(specs.len());
        let mut refused = None;
        for spec in specs {
            let checked = if refused.is_some() {
                Err(None)
            } else {
                spec.request
                    .check_bounds()
                    .and_then(|()| spec.retry.as_ref().map_or(Ok(()), RetryPolicy::check))
                    .map_err(|e| Some(Error::job(e)))
                    .and_then(|()| inner.check_instance(&spec.instance_id).map_err(Some))
            };
            match checked {
                Ok(name) => accepted.push((spec, name)),
                Err(e) => {
                    refused = refused.or(e);
                    spec.request.drop_flat();
                }
            }
        }
        if let Some(e) = refused {
            for (spec, _) in accepted {
                spec.request.drop_flat();
            }
            return Err(e);
        }
        let mut prepared = Vec::with_capacity(accepted.len());
        let mut total = 0usize;
        for (mut spec, name) in accepted {
            let id = uuid::Uuid::now_v7().to_string();
            if traceparent.is_some() {
                spec.request.envelope.traceparent.clone_from(&traceparent);
            }
            let bytes = spec.request.approx_bytes();
            total = total.saturating_add(bytes);
            let kwargs_ref = if bytes > job::INLINE_KWARGS_BYTES {
                Some(inner.spill_kwargs(&id, &spec).await?)
            } else {
                None
            };
            prepared.push((id, spec, name, bytes, kwargs_ref));
        }
        let written = Arc::new(Done::default());
        let mut ids = Vec::with_capacity(prepared.len());
        let launches = {
            let mut st = inner.lock();
            if st.closed {
                return Err(QueueError::Closed.into());
            }
            let limit = inner.config.max_pending_bytes;
            if st.pending_bytes.saturating_add(total) > limit {
                return Err(QueueError::Full {
                    pending_bytes: st.pending_bytes,
                    bytes: total,
                    limit,
                }
                .into());
            }
            for (id, spec, name, bytes, kwargs_ref) in prepared {
                ids.push(id.clone());
                let origin = dispatch::Origin::Submitted(kwargs_ref);
                inner.enqueue(&mut st, id, spec, Some(name), bytes, origin);
            }
            if ack == Ack::Committed {
                inner.emitter.push(Item::Done(Arc::clone(&written)));
            }
            inner.dispatch(&mut st)
        };
        inner.after(launches);
        if ack == Ack::Committed {
            self.journaled(&written).await?;
        }
        Ok(ids)
    }

    /// Waits for a submission's rows; a typed refusal when they were not written.
    async fn journaled(&self, written: &Done) -> Result<()> {
        written.wait().await;
        if written.written() {
            return Ok(());
        }
        Err(QueueError::Wedged(
            self.wedged()
                .unwrap_or_else(|| "the submission could not be journaled".into()),
        )
        .into())
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
            // A job waiting for its retry is not in the index yet: its new priority applies
            // when it is put back.
            let indexed = st.pending.remove(&instance, order).is_some();
            let order = (Reverse(priority), order.1);
            if indexed {
                st.pending.insert(&instance, order, job_id.to_owned());
            }
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
        let done = self.inner.lock().jobs.get_mut(job_id).map(|e| {
            e.waiters += 1;
            Arc::clone(&e.done)
        });
        let Some(done) = done else {
            return self.journal_record(job_id, timeout).await;
        };
        // An outcome queued before this waiter came is written now, not with the next batch.
        if !done.is_set() {
            self.inner.emitter.hurry();
        }
        // Counted out however this future ends (a caller may drop it).
        let _leaving = Leaving {
            inner: &self.inner,
            job_id,
        };
        let waited = wait_done(&done, timeout, job_id).await;
        let job = waited.is_ok().then(|| self.get(job_id)).flatten();
        waited?;
        // An outcome whose rows were never committed (a lost lease, a journal that kept
        // failing while the host stopped) is not reported as one.
        if !done.written() {
            return Err(QueueError::Wedged(self.wedged().unwrap_or_else(|| {
                format!("the outcome of job {job_id} could not be journaled")
            }))
            .into());
        }
        match job {
            Some(job) => Ok(job),
            None => self.journal_record(job_id, Some(Duration::ZERO)).await,
        }
    }

    /// Waits on a job this queue does not hold, through the journal: its terminal record at
    /// once when there is one; a job another process (host) holds is read again every
    /// [`JOURNAL_POLL`] until it ends or `timeout` passes.
    async fn journal_record(&self, job_id: &str, timeout: Option<Duration>) -> Result<Job> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            match self.job_from_journal(job_id).await? {
                None => return Err(QueueError::UnknownJob(job_id.to_owned()).into()),
                Some(job) if job.status.is_terminal() => return Ok(job),
                Some(_) => {}
            }
            if let Some(t) = timeout
                && deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
            {
                return Err(QueueError::Timeout(t, job_id.to_owned()).into());
            }
            tokio::time::sleep(JOURNAL_POLL).await;
        }
    }

    /// A job as the journal knows it (read on a blocking thread): its terminal record, or for
    /// one still waiting or running (here or in another process) its spec and latest state.
    /// `None` when the journal has no row of it.
    pub async fn job_from_journal(&self, job_id: &str) -> Result<Option<Job>> {
        let manager = self.inner.manager.clone();
        let query = crate::store::JournalQuery::job(job_id);
        let rows = tokio::task::spawn_blocking(move || manager.journal().query(&query))
            .await
            .map_err(|e| Error::job(JobError::fatal(format!("journal read failed: {e}"))))??;
        if let Some(snapshot) = rows.iter().rev().find_map(|e| {
            e.is_terminal_transition()
                .then(|| e.job_snapshot())
                .flatten()
        }) {
            return Ok(Some(Job::from_snapshot(snapshot)));
        }
        let Some(submitted) = rows.iter().rev().find(|e| {
            matches!(
                e.event_type.as_str(),
                crate::store::event_types::JOB_SUBMITTED | crate::store::event_types::JOB_ADOPTED
            )
        }) else {
            return Ok(None);
        };
        let Some(record) = submitted
            .payload
            .get("spec")
            .and_then(|s| serde_json::from_value::<SpecRecord>(s.clone()).ok())
        else {
            return Ok(None);
        };
        // Kwargs are not part of the view: the record is enough, no file read.
        let mut inline = record.clone();
        inline.kwargs_ref = None;
        let spec = inline.to_spec(&self.inner.manager.host_config().data_dir)?;
        let mut job = Job::new(job_id.to_owned(), &spec, record.capability_name.clone());
        job.submitted_at = rows
            .first()
            .map(|e| e.ts.clone())
            .unwrap_or_else(|| submitted.ts.clone());
        if let Some(last) = rows
            .iter()
            .rev()
            .find(|e| e.event_type == crate::store::event_types::STATE_TRANSITION)
        {
            if let Some(status) = last.payload["to"].as_str().and_then(JobStatus::parse) {
                job.status = status;
            }
            if job.status == JobStatus::Running {
                job.started_at = Some(last.ts.clone());
            }
        }
        Ok(Some(job))
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
            pending: st.pending.len() + st.retry_waiting,
            running: st.ledger.running,
            ..st.stats
        }
    }

    /// Its configuration (lanes, history, GPU headroom).
    pub fn config(&self) -> &QueueConfig {
        &self.inner.config
    }

    /// Why each of the first `limit` pending jobs (priority order) waits: the admission
    /// ladder's verdict on it now.
    pub fn waiting(&self, limit: usize) -> Vec<WaitReason> {
        let st = self.inner.lock();
        self.inner.waiting(&st, limit, None)
    }

    /// Why each of `jobs` that is pending waits (the others are left out).
    pub fn waiting_for(&self, jobs: &std::collections::BTreeSet<String>) -> Vec<WaitReason> {
        let st = self.inner.lock();
        self.inner.waiting(&st, jobs.len(), Some(jobs))
    }

    /// Why the queue refuses submissions, if it does (a failed journal append).
    pub fn wedged(&self) -> Option<String> {
        self.inner.emitter.wedged()
    }

    /// A live stream of events in `scope`.
    pub fn subscribe(&self, scope: Scope) -> Subscription {
        self.inner.bus.subscribe(scope, SUBSCRIBER_BUFFER)
    }

    /// Stops taking work but keeps what waits: new submissions are refused, nothing more is
    /// admitted, and waiting jobs stay in the journal as submitted, for the host that
    /// reconciles this one once it is gone (`cjm-ctl serve` on SIGTERM). Running jobs finish.
    pub fn stop_admitting(&self) {
        let mut st = self.inner.lock();
        st.closed = true;
        st.leaving = true;
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether it has stopped taking work ([`close`](Self::close),
    /// [`stop_admitting`](Self::stop_admitting)).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops taking work: new submissions are refused and pending jobs are cancelled;
    /// running jobs finish.
    pub fn close(&self) {
        let inner = &self.inner;
        {
            let mut st = inner.lock();
            st.closed = true;
            st.leaving = false;
            inner
                .closed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            // Every waiting job, those waiting for a retry included.
            let ids: Vec<String> = st
                .jobs
                .iter()
                .filter(|(_, e)| e.job.status == JobStatus::Pending)
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                let _ = inner.cancel_job(&mut st, &id);
            }
        }
        inner.after(Vec::new());
    }
}

impl JobQueue {
    /// Waits up to `grace` for running jobs to finish, then (up to 5 s more) for the journal
    /// writer to commit everything queued so far. Returns whether both happened.
    pub async fn drain(&self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        while self.stats().running > 0 {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let idle = self.stats().running == 0;
        let written = Arc::new(Done::default());
        self.inner.emitter.push(Item::Done(Arc::clone(&written)));
        self.inner.flush();
        let flushed = tokio::time::timeout(Duration::from_secs(5), written.wait())
            .await
            .is_ok()
            && written.written();
        idle && flushed
    }
}

/// A waiter of a job leaving [`JobQueue::wait`]: see [`Inner::release_result`].
struct Leaving<'a> {
    inner: &'a Inner,
    job_id: &'a str,
}

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        self.inner.release_result(self.job_id);
    }
}

/// When a submission returns its ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ack {
    /// Once its rows are committed.
    Committed,
    /// At once: the caller shows only the outcome, committed with (or after) them.
    WithOutcome,
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
        self.state.lock()
    }

    fn admissible_submission(&self) -> Result<()> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(QueueError::Closed.into());
        }
        match self.emitter.wedged() {
            Some(why) => Err(QueueError::Wedged(why).into()),
            None => Ok(()),
        }
    }

    /// Writes the kwargs of job `id` to its file in the data dir (off the runtime).
    async fn spill_kwargs(&self, id: &str, spec: &JobSpec) -> Result<job::PayloadRef> {
        let bytes = serde_json::to_vec(&spec.request.kwargs).map_err(|e| Error::Json {
            what: "job kwargs".into(),
            source: e,
        })?;
        let dir = self.manager.host_config().data_dir.clone();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || job::PayloadRef::write(&dir, &id, &bytes))
            .await
            .map_err(|e| Error::job(JobError::fatal(format!("writing kwargs failed: {e}"))))?
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
}
