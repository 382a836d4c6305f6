//! Events and their one emission path.
//!
//! Every event passes through one emitter: journal-class events are appended to the journal
//! *first* (group commit: the journal writer thread writes everything queued so far in one
//! transaction) and fanned out to subscribers after the commit, in journal order; liveness
//! events (progress, resource snapshots) fan out only. A journal append failure wedges the
//! queue: it keeps running what it admitted (leaking no lane), new submissions are refused
//! loudly. Subscribers get a bounded buffer each; a full buffer drops the event for that
//! subscriber and counts it, so a slow subscriber never blocks the queue.

use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use crate::manager::CapabilityManager;
use crate::store::{JournalEvent, JournalStore, event_types};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A job was accepted (`payload.spec`: everything needed to run it; `payload.host_id`:
    /// the host that owns it). Journaled before its id is returned.
    JobSubmitted,
    /// A composition was accepted (`payload.composition`: its definition).
    CompositionSubmitted,
    /// A job changed state (`payload.from`, `payload.to`; terminal ones carry
    /// `job_snapshot`).
    StateTransition,
    /// A job was admitted (`payload`: lanes, exclusivity, the GPU ledger, the profile used).
    AdmissionDecided,
    /// The cancel state machine of a job moved (`payload.from`, `payload.to`).
    CancelPhaseChanged,
    /// A composition member finished and downstream nodes were enqueued.
    CompositionAdvanced,
    /// A composition was cancelled as a unit (a host resuming it cancels what is left).
    CompositionCancelRequested,
    /// A composition reached its terminal status.
    CompositionFinished,
    /// Progress of a running job (liveness: not journaled).
    ProgressChanged,
    /// CPU, resident and GPU memory of a running native job's worker subtree (liveness: not
    /// journaled).
    ResourceSnapshot,
}

impl EventKind {
    /// Its journal event type.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::JobSubmitted => event_types::JOB_SUBMITTED,
            EventKind::CompositionSubmitted => event_types::COMPOSITION_SUBMITTED,
            EventKind::StateTransition => event_types::STATE_TRANSITION,
            EventKind::AdmissionDecided => event_types::ADMISSION_DECIDED,
            EventKind::CancelPhaseChanged => event_types::CANCEL_PHASE_CHANGED,
            EventKind::CompositionAdvanced => event_types::COMPOSITION_ADVANCED,
            EventKind::CompositionCancelRequested => event_types::COMPOSITION_CANCEL_REQUESTED,
            EventKind::CompositionFinished => event_types::COMPOSITION_FINISHED,
            EventKind::ProgressChanged => event_types::PROGRESS_CHANGED,
            EventKind::ResourceSnapshot => event_types::RESOURCE_SNAPSHOT,
        }
    }

    /// Whether it becomes a journal row (liveness events do not).
    pub fn journaled(self) -> bool {
        !matches!(
            self,
            EventKind::ProgressChanged | EventKind::ResourceSnapshot
        )
    }
}

/// One event, as subscribers receive it.
#[derive(Debug, Clone, Serialize)]
pub struct JobEvent {
    /// What happened.
    pub kind: EventKind,
    /// The job (none for composition-level events).
    pub job_id: Option<String>,
    /// The instance the job runs on.
    pub instance_id: Option<String>,
    /// The capability of the instance.
    pub capability_name: Option<String>,
    /// The composition the job belongs to.
    pub composition_id: Option<String>,
    /// The composition node.
    pub node_id: Option<String>,
    /// Host-tier run correlation.
    pub run_id: Option<String>,
    /// Who asked.
    pub actor: Option<String>,
    /// When (ISO-8601 UTC).
    pub ts: String,
    /// Per-kind detail.
    pub payload: Value,
    /// Its journal `seq` (journal-class events whose append succeeded).
    pub seq: Option<i64>,
}

impl JobEvent {
    pub(crate) fn new(kind: EventKind, payload: Value) -> Self {
        JobEvent {
            kind,
            job_id: None,
            instance_id: None,
            capability_name: None,
            composition_id: None,
            node_id: None,
            run_id: None,
            actor: None,
            ts: cjm_guest::python::time::now_iso(),
            payload,
            seq: None,
        }
    }

    /// Moves the event's fields into a journal row (no copies on the hot path); [`restore`]
    /// moves them back once the row is written.
    ///
    /// [`restore`]: JobEvent::restore
    fn take_row(&mut self) -> JournalEvent {
        use std::mem::take;
        JournalEvent {
            seq: None,
            event_id: uuid::Uuid::now_v7().to_string(),
            ts: take(&mut self.ts),
            event_type: self.kind.as_str().to_owned(),
            run_id: take(&mut self.run_id),
            job_id: take(&mut self.job_id),
            composition_id: take(&mut self.composition_id),
            node_id: take(&mut self.node_id),
            capability_instance_id: take(&mut self.instance_id),
            capability_name: take(&mut self.capability_name),
            config_hash: None,
            task_name: None,
            method: None,
            worker_session_id: None,
            actor: take(&mut self.actor),
            worker_reported: false,
            payload: take(&mut self.payload),
        }
    }

    fn restore(&mut self, row: JournalEvent) {
        self.ts = row.ts;
        self.run_id = row.run_id;
        self.job_id = row.job_id;
        self.composition_id = row.composition_id;
        self.node_id = row.node_id;
        self.instance_id = row.capability_instance_id;
        self.capability_name = row.capability_name;
        self.actor = row.actor;
        self.payload = row.payload;
    }
}

/// Which events a subscription receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    All,
    /// The events of one job.
    Job(String),
    /// The events of one composition and of its member jobs.
    Composition(String),
}

impl Scope {
    fn matches(&self, e: &JobEvent) -> bool {
        match self {
            Scope::All => true,
            Scope::Job(id) => e.job_id.as_deref() == Some(id),
            Scope::Composition(id) => e.composition_id.as_deref() == Some(id),
        }
    }
}

/// A live event stream with a bounded buffer.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<JobEvent>,
    dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// The next event; `None` once the queue is gone.
    pub async fn next(&mut self) -> Option<JobEvent> {
        self.rx.recv().await
    }

    /// An event already buffered, without waiting.
    pub fn try_next(&mut self) -> Option<JobEvent> {
        self.rx.try_recv().ok()
    }

    /// How many events were dropped because this subscriber's buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

struct Subscriber {
    scope: Scope,
    tx: mpsc::Sender<JobEvent>,
    dropped: Arc<AtomicU64>,
}

/// The subscribers.
#[derive(Default)]
pub(crate) struct Bus {
    subscribers: Mutex<Vec<Subscriber>>,
    count: AtomicUsize,
}

impl Bus {
    pub(crate) fn subscribe(&self, scope: Scope, buffer: usize) -> Subscription {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let mut subs = self.subscribers.lock();
        subs.push(Subscriber {
            scope,
            tx,
            dropped: Arc::clone(&dropped),
        });
        self.count.store(subs.len(), Ordering::Release);
        Subscription { rx, dropped }
    }

    /// Offers `e` to every matching subscriber without waiting; closed ones are removed.
    pub(crate) fn publish(&self, e: &JobEvent) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut subs = self.subscribers.lock();
        subs.retain(|s| {
            if !s.scope.matches(e) {
                return !s.tx.is_closed();
            }
            match s.tx.try_send(e.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.dropped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        self.count.store(subs.len(), Ordering::Release);
    }
}

/// Set once the events queued before it are journaled and published (a job's or a
/// composition's terminal event, a submission), or once the writer gave up on them.
#[derive(Debug, Default)]
pub(crate) struct Done {
    flag: AtomicBool,
    /// Set with `flag` when the rows before it were committed.
    written: AtomicBool,
    notify: Notify,
}

impl Done {
    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Whether the rows it waited for were committed (meaningful once set).
    pub(crate) fn written(&self) -> bool {
        self.written.load(Ordering::Acquire)
    }

    fn set(&self, written: bool) {
        self.written.store(written, Ordering::Release);
        self.flag.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Waits until set.
    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

pub(crate) enum Item {
    Event(JobEvent),
    Done(Arc<Done>),
}

/// How long a batch may wait for more rows before it is committed, unless something is
/// waiting on it (a finished job, a composition): a job that finishes within it is journaled
/// in one transaction with its admission.
pub(crate) const COMMIT_DELAY: Duration = Duration::from_millis(1);

/// How long a stopping queue keeps retrying a failing journal before it gives up.
const GIVE_UP_AFTER_CLOSE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Queued {
    items: Vec<Item>,
    /// When the oldest queued item came.
    since: Option<Instant>,
    /// Someone waits on what is queued: commit now.
    urgent: bool,
    closed: bool,
    /// The writer sleeps with no deadline: a row queued now must wake it.
    parked: bool,
}

/// The one emission path: items are queued in order (under the queue's state lock, so the
/// order is the order of the state changes) and written by one writer thread, which commits
/// them in batches (group commit), publishes them in journal order and then marks what was
/// waiting on them done. No SQLite write ever runs on an async runtime thread, so a journal
/// held by another process stalls the writer, never the runtime.
pub(crate) struct Emitter {
    queued: Mutex<Queued>,
    wake: Condvar,
    wedged: Mutex<Option<String>>,
    is_wedged: AtomicBool,
    /// The host whose lease guards every write (see [`JournalStore::append_batch_as`]).
    host_id: String,
    /// Its lease, registered by the writer before its first write.
    lease_ttl: Duration,
    /// The lease was taken over: nothing more is written, the queue stays wedged.
    lease_lost: AtomicBool,
}

impl Emitter {
    pub(crate) fn new(host_id: String, lease_ttl: Duration) -> Self {
        Emitter {
            queued: Mutex::default(),
            wake: Condvar::new(),
            wedged: Mutex::default(),
            is_wedged: AtomicBool::new(false),
            host_id,
            lease_ttl,
            lease_lost: AtomicBool::new(false),
        }
    }

    /// The host id whose lease guards the writes.
    pub(crate) fn host_id(&self) -> &str {
        &self.host_id
    }

    /// Marks the lease lost: the queue is wedged for good.
    pub(crate) fn lose_lease(&self, why: String) {
        self.lease_lost.store(true, Ordering::Release);
        tracing::error!(host = %self.host_id, %why, "this host lost its lease on the data dir; it writes no more job outcomes");
        self.wedge(why);
    }

    /// Registers the host's lease, retrying a store held by another connection; a
    /// persistent failure wedges the queue.
    fn register(&self, journal: &JournalStore) {
        let mut backoff = Duration::from_millis(50);
        for _ in 0..20 {
            match journal.register_host(&self.host_id, self.lease_ttl.as_secs_f64()) {
                Ok(_) => return,
                Err(e) if e.is_transient_lock() => {}
                Err(e) => {
                    self.wedge(format!("cannot register this host in the journal: {e}"));
                    return;
                }
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        self.wedge("cannot register this host in the journal: it stays locked".into());
    }

    /// Starts the writer thread of `emitter`, journaling into `manager`'s journal and
    /// publishing on `bus`; it ends after [`close`](Self::close), once the queue is written.
    pub(crate) fn start(
        emitter: &Arc<Emitter>,
        manager: CapabilityManager,
        bus: Arc<Bus>,
    ) -> std::io::Result<()> {
        let emitter = Arc::clone(emitter);
        std::thread::Builder::new()
            .name("cjm-journal".into())
            .spawn(move || {
                emitter.register(manager.journal());
                while let Some(mut batch) = emitter.next_batch() {
                    let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        emitter.write(manager.journal(), &bus, &mut batch);
                    }));
                    if written.is_err() {
                        // Nothing may wait forever on a batch the writer could not finish.
                        emitter.wedge("the journal writer panicked".into());
                        for item in &batch {
                            if let Item::Done(d) = item {
                                d.set(false);
                            }
                        }
                    }
                }
                if !emitter.lease_lost.load(Ordering::Acquire)
                    && let Err(e) = manager.journal().stop_host(&emitter.host_id)
                {
                    tracing::warn!(error = %e, "cannot mark this host stopped in the journal; its lease expires instead");
                }
            })
            .map(|_| ())
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Queued> {
        self.queued.lock()
    }

    /// Waits for the next batch: at once when something waits on it, else once the oldest
    /// item is [`COMMIT_DELAY`] old. `None` once closed and drained.
    fn next_batch(&self) -> Option<Vec<Item>> {
        let mut q = self.lock();
        loop {
            if !q.items.is_empty() {
                let due = q.since.map_or_else(Instant::now, |t| t + COMMIT_DELAY);
                let now = Instant::now();
                if q.urgent || q.closed || now >= due {
                    q.urgent = false;
                    q.since = None;
                    return Some(std::mem::take(&mut q.items));
                }
                self.wake.wait_for(&mut q, due - now);
                continue;
            }
            if q.closed {
                return None;
            }
            q.parked = true;
            self.wake.wait(&mut q);
            q.parked = false;
        }
    }

    /// Queues an item (called under the queue's state lock: cheap, never blocks on I/O). A
    /// [`Done`] is urgent: what is queued is written at once.
    pub(crate) fn push(&self, item: Item) {
        let urgent = matches!(item, Item::Done(_));
        self.queue(item, urgent);
    }

    /// Queues `done`, set once the rows queued before it are written: at once when
    /// `urgent` (someone waits on it), else with the next batch, within [`COMMIT_DELAY`]
    /// or as soon as someone [`hurry`](Self::hurry)s.
    pub(crate) fn push_done(&self, done: Arc<Done>, urgent: bool) {
        self.queue(Item::Done(done), urgent);
    }

    fn queue(&self, item: Item, urgent: bool) {
        let mut q = self.lock();
        if q.items.is_empty() {
            q.since = Some(Instant::now());
        }
        q.urgent |= urgent;
        q.items.push(item);
    }

    /// Someone now waits on what is queued: it is written at once.
    pub(crate) fn hurry(&self) {
        let mut q = self.lock();
        if !q.items.is_empty() && !q.urgent {
            q.urgent = true;
            self.wake.notify_one();
        }
    }

    /// Wakes the writer when it must: what is queued is written now if anything waits on
    /// it, else within [`COMMIT_DELAY`]. A writer already waiting out that delay is not
    /// woken for more rows nothing waits on.
    pub(crate) fn flush(&self) {
        let q = self.lock();
        if q.urgent || q.closed || (q.parked && !q.items.is_empty()) {
            self.wake.notify_one();
        }
    }

    /// Writes what is queued, then stops the writer.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Refuses new work from now on, for `why` (the first reason is kept).
    pub(crate) fn wedge(&self, why: String) {
        let mut wedged = self.wedged.lock();
        if wedged.is_none() {
            *wedged = Some(why);
        }
        self.is_wedged.store(true, Ordering::Release);
    }

    pub(crate) fn wedged(&self) -> Option<String> {
        if !self.is_wedged.load(Ordering::Acquire) {
            return None;
        }
        self.wedged.lock().clone()
    }

    /// Un-wedges after a write went through again.
    fn unwedge(&self) {
        if self.lease_lost.load(Ordering::Acquire) {
            return;
        }
        let mut wedged = self.wedged.lock();
        if let Some(why) = wedged.take() {
            tracing::warn!(was = %why, "the journal takes writes again: the queue is serving");
        }
        self.is_wedged.store(false, Ordering::Release);
    }

    /// Commits `rows`, never giving up on them while the queue runs: a store held by another
    /// connection is retried with backoff (submissions keep being accepted); any other
    /// failure wedges the queue (submissions refused, visibly) and is retried as a probe
    /// until a write goes through, which un-wedges it. Only a closed queue whose journal
    /// still fails after [`GIVE_UP_AFTER_CLOSE`] gives up, and then reports nothing as
    /// written. Returns the rows' seqs, or `None` when they were not written.
    fn commit(&self, journal: &JournalStore, rows: &[JournalEvent]) -> Option<Vec<i64>> {
        let mut backoff = Duration::from_millis(50);
        let mut closed_since: Option<Instant> = None;
        loop {
            if self.lease_lost.load(Ordering::Acquire) {
                return None;
            }
            match journal.append_batch_as(&self.host_id, rows) {
                Ok(seqs) => {
                    if self.is_wedged.load(Ordering::Acquire) {
                        self.unwedge();
                    }
                    return Some(seqs);
                }
                Err(err @ crate::Error::LeaseLost { .. }) => {
                    self.lose_lease(err.to_string());
                    return None;
                }
                Err(err) if err.is_transient_lock() => {
                    tracing::warn!(error = %err, rows = rows.len(), "the journal is held by another connection; retrying");
                }
                Err(err) => {
                    tracing::error!(error = %err, rows = rows.len(), "journal append failed: the queue is wedged and refuses new submissions until a write goes through");
                    self.wedge(err.to_string());
                }
            }
            if self.lock().closed {
                let since = *closed_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= GIVE_UP_AFTER_CLOSE {
                    tracing::error!(
                        rows = rows.len(),
                        "the host is stopping and the journal still fails: these rows are lost, and nothing waiting on them is told they were written"
                    );
                    return None;
                }
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    fn write(&self, journal: &JournalStore, bus: &Bus, batch: &mut [Item]) {
        // Sized once for the batch (a burst's batch is tens of thousands of rows: growing it
        // by doubling would copy them and hold both copies at the peak).
        let mut rows: Vec<JournalEvent> = Vec::with_capacity(batch.len());
        rows.extend(batch.iter_mut().filter_map(|i| match i {
            Item::Event(e) if e.kind.journaled() => Some(e.take_row()),
            _ => None,
        }));
        let Some(seqs) = self.commit(journal, &rows) else {
            // Nothing waits forever on rows that were not written, and nobody is told
            // they were.
            for item in batch.iter() {
                if let Item::Done(d) = item {
                    d.set(false);
                }
            }
            return;
        };
        let mut seqs = seqs.into_iter();
        let mut rows = rows.into_iter();
        for item in batch.iter_mut() {
            if let Item::Event(e) = item
                && e.kind.journaled()
                && let Some(row) = rows.next()
            {
                e.restore(row);
                e.seq = seqs.next();
            }
        }
        for item in batch.iter() {
            match item {
                Item::Event(e) => bus.publish(e),
                Item::Done(d) => d.set(true),
            }
        }
    }
}
