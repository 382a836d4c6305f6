//! The host's lease on its data dir and the reconciliation of gone hosts.
//!
//! Every queue is a host on its data dir: it renews its lease (the journal's `hosts` row)
//! every third of [`QueueConfig::lease_ttl`], and, when [`QueueConfig::recover`] is set,
//! looks for gone hosts at the same time (at start, then on every renewal). For each gone
//! host it wins the claim of (see [`JournalStore::reconcile`]), in one transaction:
//!
//! - a job that was waiting (never admitted, or waiting for a retry) is *adopted*: a
//!   `job_adopted` row names this host, and it runs here on its next attempt, same id;
//! - a job that was running fails with a typed `transient` "host lost" error, and is adopted
//!   instead when its retry policy retries that (a `running -> pending` row carries the
//!   attempt, as for any retry);
//! - a composition that was running is *resumed* here (a `composition_adopted` row): each
//!   member's terminal row carries its result (inline, or by reference past 64 KiB), so
//!   completed nodes keep their results and are not rerun; its open members are settled
//!   as any job (adopted, or ended "host lost" by their retry policy, which fails the node);
//!   a waiting member whose kwargs were too large to journal is ended and its node bound
//!   again from the upstream results; nodes without a job start once their inputs exist.
//!   A composition whose definition cannot be read ends `failed` "host lost", its members
//!   with it.
//!
//! Exactly one terminal row per job holds across hosts: the claim is taken once, the rows
//! go in with it, and a host that lost its lease can write nothing more.
//!
//! [`JournalStore::reconcile`]: crate::store::JournalStore::reconcile

use std::path::Path;

use crate::store::{JournalEvent, Leftovers, OpenJob, event_types};

use super::*;

/// What reconciliation decided for one job of a gone host.
enum Verdict {
    /// Runs here on `attempt`.
    Adopt {
        spec: Box<JobSpec>,
        name: Option<String>,
        attempt: u32,
        payload_file: Option<String>,
    },
    /// Ended with its terminal row (this error).
    Ended(JobError),
}

impl JobQueue {
    /// Renews this host's lease on an interval and, when the queue recovers, reconciles gone
    /// hosts (at once, then at every renewal). Stops with the queue.
    pub(super) fn hold_lease(&self) {
        let weak = Arc::downgrade(&self.inner);
        let every = (self.inner.config.lease_ttl / 3).max(Duration::from_millis(100));
        self.inner.runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let manager = inner.manager.clone();
                let me = inner.emitter.host_id().to_owned();
                let renewed =
                    tokio::task::spawn_blocking(move || manager.journal().heartbeat(&me)).await;
                match renewed {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => {
                        inner.emitter.lose_lease(format!(
                            "host {} lost its lease on the data dir: another host reconciled its jobs",
                            inner.emitter.host_id()
                        ));
                        return;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "lease renewal failed; retrying");
                    }
                    Err(_) => {}
                }
                // Reconciling (loading what adopted jobs call: seconds for a Python worker)
                // runs beside the heartbeats, one at a time: a renewal never waits for it.
                if inner.config.recover && inner.reconciling.try_lock().is_ok() {
                    let queue = JobQueue {
                        inner: Arc::clone(&inner),
                    };
                    inner.runtime.spawn(async move {
                        if let Err(e) = queue.reconcile().await {
                            tracing::warn!(error = %e, "reconciling gone hosts failed; retrying at the next renewal");
                        }
                    });
                }
            }
        });
    }

    /// Reconciles every gone host this host can claim; returns how many jobs it adopted
    /// and how many it ended. One that another reconciliation of this host (the lease
    /// loop's) has claimed is left to it, and this returns once it has queued what it
    /// adopted, so the caller then sees those jobs in the queue.
    pub async fn reconcile(&self) -> Result<(usize, usize)> {
        let inner = &self.inner;
        let _one_at_a_time = inner.reconciling.lock().await;
        let manager = inner.manager.clone();
        let gone = tokio::task::spawn_blocking(move || {
            manager.journal().gone_hosts(crate::store::unix_now())
        })
        .await
        .map_err(|e| Error::job(JobError::fatal(format!("journal read failed: {e}"))))??;
        let me = inner.emitter.host_id().to_owned();
        let (mut adopted, mut ended) = (0, 0);
        for (host, why) in gone {
            if host.host_id == me {
                continue;
            }
            let manager = inner.manager.clone();
            let data_dir = manager.host_config().data_dir.clone();
            let me = me.clone();
            let defaults = inner.config.retry_defaults.clone();
            let claimed = tokio::task::spawn_blocking(move || {
                let mut decided = Decisions::default();
                let out = manager.journal().reconcile(&host.host_id, &me, |left| {
                    decided = decide(left, &host.host_id, &why, &me, &data_dir, &defaults);
                    std::mem::take(&mut decided.rows)
                })?;
                // Results kept by reference are read once the claim is committed.
                for resumed in &mut decided.compositions {
                    resumed.read_results(&data_dir);
                }
                Ok::<_, Error>(out.map(|(left, _)| (left, decided, host.host_id)))
            })
            .await
            .map_err(|e| Error::job(JobError::fatal(format!("reconciliation failed: {e}"))))??;
            let Some((left, decided, gone_id)) = claimed else {
                continue;
            };
            tracing::info!(
                host = %gone_id,
                jobs = left.jobs.len(),
                compositions = left.compositions.len(),
                resumed = decided.compositions.len(),
                "reconciled a gone host"
            );
            // What the adopted jobs and resumed compositions call is loaded first. Then, under
            // one lock, the compositions are put in place, the adopted jobs queued and the
            // compositions moved on (a cancel or a fail-fast failure stops adopted members
            // before any of them runs), and only then is anything admitted.
            for c in &decided.compositions {
                for (instance, name) in &c.instances {
                    self.ensure_loaded(instance, Some(name)).await;
                }
            }
            let mut queued = Vec::new();
            for (job_id, verdict) in decided.jobs {
                match verdict {
                    Verdict::Ended(_) => ended += 1,
                    Verdict::Adopt {
                        spec,
                        name,
                        attempt,
                        payload_file,
                    } => {
                        adopted += 1;
                        self.ensure_loaded(&spec.instance_id, name.as_deref()).await;
                        let origin = dispatch::Origin::Adopted {
                            attempt,
                            payload_file,
                        };
                        queued.push((job_id, spec, name, origin));
                    }
                }
            }
            let launches = {
                let mut st = inner.lock();
                // A host that stops leaves them to the one that reconciles it.
                if st.closed {
                    continue;
                }
                let mut resumed = Vec::with_capacity(decided.compositions.len());
                for c in decided.compositions {
                    resumed.push(c.run.id.clone());
                    st.compositions.insert(
                        c.run.id.clone(),
                        CompositionEntry {
                            run: c.run,
                            done: Arc::new(Done::default()),
                        },
                    );
                }
                for (id, spec, name, origin) in queued {
                    let bytes = spec.request.approx_bytes();
                    inner.enqueue(&mut st, id, *spec, name, bytes, origin);
                }
                for id in &resumed {
                    inner.resume(&mut st, id);
                }
                inner.dispatch(&mut st)
            };
            inner.after(launches);
        }
        Ok((adopted, ended))
    }

    /// Loads instance `instance` of capability `name` when this host has not (a failure is
    /// logged: its jobs fail when admitted).
    async fn ensure_loaded(&self, instance: &str, name: Option<&str>) {
        let manager = &self.inner.manager;
        if manager.instance(instance).is_ok() {
            return;
        }
        let Some(name) = name else { return };
        if let Err(e) = manager.load(name, None, Some(instance)).await {
            tracing::warn!(instance = %instance, capability = %name, error = %e, "an adopted job's capability does not load here; its jobs fail when admitted");
        }
    }
}

/// What reconciling one gone host decided: the rows to write with the claim, each job's
/// verdict, and the compositions resumed here.
#[derive(Default)]
struct Decisions {
    rows: Vec<JournalEvent>,
    jobs: Vec<(String, Verdict)>,
    compositions: Vec<Resumed>,
}

/// A composition resumed here: its run rebuilt from the journal.
struct Resumed {
    run: CompositionRun,
    /// Completed nodes whose results are kept by reference (read after the claim).
    result_refs: Vec<(String, PayloadRef)>,
    /// The instances its nodes call, with their capability (to load those missing here).
    instances: std::collections::BTreeMap<String, String>,
}

impl Resumed {
    /// Reads the results kept by reference; one that cannot be read stays missing (a node
    /// bound to it fails, naming it).
    fn read_results(&mut self, data_dir: &Path) {
        for (node, r) in std::mem::take(&mut self.result_refs) {
            match r.read::<Value>(data_dir) {
                Ok(v) => {
                    if let Some(n) = self.run.nodes.get_mut(&node) {
                        n.result = Some(v);
                    }
                }
                Err(e) => {
                    tracing::warn!(composition = %self.run.id, node = %node, error = %e, "a resumed node's result cannot be read: it runs again");
                    if let Some(n) = self.run.nodes.get_mut(&node)
                        && !self.run.dependents[&node].is_empty()
                    {
                        n.state = NodeState::Pending;
                        n.job_id = None;
                    }
                }
            }
        }
    }
}

/// The rows that settle what host `gone` left (`why`: how it was found gone), adopted by
/// `me`, the verdict for each job and the compositions resumed.
fn decide(
    left: &Leftovers,
    gone: &str,
    why: &str,
    me: &str,
    data_dir: &Path,
    defaults: &std::collections::BTreeMap<String, RetryPolicy>,
) -> Decisions {
    let lost = |what: &str| {
        JobError::transient(format!(
            "host lost: host {gone} was gone ({why}) while {what}"
        ))
    };
    let mut out = Decisions::default();
    let mut dead_compositions = std::collections::BTreeSet::new();
    let mut live = Vec::new();
    for c in &left.compositions {
        let Some(id) = c.submitted.composition_id.clone() else {
            continue;
        };
        let definition = c
            .submitted
            .payload
            .get("composition")
            .and_then(|d| serde_json::from_value::<Composition>(d.clone()).ok())
            .and_then(|d| d.validate().ok().map(|deps| (d, deps)));
        let mut row = match &definition {
            Some(_) => JournalEvent::new(event_types::COMPOSITION_ADOPTED)
                .payload(json!({"host_id": me, "from_host": gone})),
            None => JournalEvent::new(event_types::COMPOSITION_FINISHED).payload(json!({
                "status": "failed",
                "error": lost("the composition ran (its definition cannot be read)"),
                "reconciled_by": me,
            })),
        };
        row.composition_id = Some(id.clone());
        row.run_id.clone_from(&c.submitted.run_id);
        row.actor.clone_from(&c.submitted.actor);
        out.rows.push(row);
        match definition {
            Some((composition, deps)) => live.push((c, id, composition, deps)),
            None => {
                dead_compositions.insert(id);
            }
        }
    }
    let live_ids: std::collections::BTreeSet<&str> =
        live.iter().map(|(_, id, _, _)| id.as_str()).collect();
    let mut settled = std::collections::HashMap::new();
    for job in &left.jobs {
        let (mut job_rows, verdict) =
            settle(job, &lost, me, gone, data_dir, defaults, &dead_compositions);
        // A member ended only to be bound again says so: a host resuming the composition
        // after this one runs its node again too.
        let member_of_live = job
            .submitted
            .composition_id
            .as_deref()
            .is_some_and(|c| live_ids.contains(c));
        if member_of_live && matches!(verdict, Verdict::Ended(_)) && left_out(job) {
            for row in &mut job_rows {
                if row.is_terminal_transition() {
                    row.payload["rebind"] = Value::Bool(true);
                }
            }
        }
        out.rows.extend(job_rows);
        let outcome = match &verdict {
            Verdict::Adopt { .. } => None,
            Verdict::Ended(error) => Some((error.clone(), left_out(job))),
        };
        settled.insert(job.job_id.clone(), outcome);
        out.jobs.push((job.job_id.clone(), verdict));
    }
    for (c, id, composition, deps) in live {
        out.compositions
            .push(resumed(c, id, composition, deps, &settled, &lost));
    }
    out
}

/// Whether a job's journaled spec left its kwargs out (a member bound past the inline
/// limit): its node is bound again rather than failed.
fn left_out(job: &OpenJob) -> bool {
    job.submitted
        .payload
        .get("spec")
        .and_then(|s| s.get("kwargs_left_out"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Rebuilds a composition's run from its members' rows: a node's latest job decides its
/// state (its terminal row, or the verdict on it when it was open).
fn resumed(
    c: &crate::store::OpenComposition,
    id: String,
    composition: Composition,
    deps: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    settled: &std::collections::HashMap<String, Option<(JobError, bool)>>,
    lost: &dyn Fn(&str) -> JobError,
) -> Resumed {
    let mut run = CompositionRun::new(id, composition, deps);
    run.submitted_at.clone_from(&c.submitted.ts);
    run.cancel_requested = c.cancel_requested;
    let mut latest: std::collections::BTreeMap<String, String> = Default::default();
    let mut ended: std::collections::HashMap<&str, &JournalEvent> = Default::default();
    let mut instances = std::collections::BTreeMap::new();
    for row in &c.members {
        let Some(job) = row.job_id.as_deref() else {
            continue;
        };
        if row.event_type == event_types::JOB_SUBMITTED {
            if let Some(node) = &row.node_id {
                latest.insert(node.clone(), job.to_owned());
            }
            if let (Some(instance), Some(name)) =
                (&row.capability_instance_id, &row.capability_name)
            {
                instances.insert(instance.clone(), name.clone());
            }
        } else if row.is_terminal_transition() {
            ended.insert(job, row);
        }
    }
    // What the submission recorded; else a node's instance is taken for its capability.
    if let Some(known) = c.submitted.payload["instances"].as_object() {
        for (instance, name) in known {
            if let Some(name) = name.as_str() {
                instances.insert(instance.clone(), name.to_owned());
            }
        }
    }
    for node in &run.composition.nodes {
        instances
            .entry(node.instance_id.clone())
            .or_insert_with(|| node.instance_id.clone());
    }
    let mut result_refs = Vec::new();
    for (node, job) in latest {
        let Some(n) = run.nodes.get_mut(&node) else {
            continue;
        };
        n.job_id = Some(job.clone());
        if let Some(row) = ended.get(job.as_str()) {
            // Ended by an earlier reconciliation to be bound again: still to run.
            if row.payload["rebind"] == true {
                n.job_id = None;
                continue;
            }
            let kept = &row.payload["node_result"];
            match row.payload["to"].as_str() {
                Some("completed") => {
                    n.state = NodeState::Completed;
                    if let Some(v) = kept.get("result") {
                        n.result = Some(v.clone());
                    } else if let Some(r) = kept
                        .get("result_ref")
                        .and_then(|r| serde_json::from_value::<PayloadRef>(r.clone()).ok())
                    {
                        result_refs.push((node.clone(), r));
                    } else if !run.dependents[&node].is_empty() {
                        // Its result is not kept (it could not be written): it runs again
                        // for the nodes bound to it.
                        n.state = NodeState::Pending;
                        n.job_id = None;
                    }
                }
                Some("cancelled") => n.state = NodeState::Cancelled,
                _ => {
                    n.state = NodeState::Failed;
                    n.error = row.error();
                }
            }
            continue;
        }
        match settled.get(&job) {
            // Adopted: it runs here and advances the composition when it ends.
            Some(None) => n.state = NodeState::Running,
            // Its kwargs were not kept: bound again, in a new job.
            Some(Some((_, true))) => n.job_id = None,
            Some(Some((error, false))) => {
                n.state = NodeState::Failed;
                n.error = Some(error.clone());
            }
            // Not the gone host's job (another host took it over): nothing here moves it.
            None => {
                n.state = NodeState::Failed;
                n.error = Some(lost("its member job moved to another host"));
            }
        }
    }
    Resumed {
        run,
        result_refs,
        instances,
    }
}

/// The terminal record of a job of a gone host that is not adopted: failed with `error`.
fn lost_snapshot(
    job: &OpenJob,
    record: Option<&SpecRecord>,
    error: &JobError,
) -> crate::store::JobSnapshot {
    let mut snapshot = crate::store::JobSnapshot {
        id: job.job_id.clone(),
        capability_instance_id: job.submitted.capability_instance_id.clone(),
        status: "failed".into(),
        priority: record.map_or(0, |r| r.priority),
        submitted_at: Some(job.submitted.ts.clone()),
        started_at: None,
        completed_at: Some(crate::store::now_iso()),
        retry_count: job.attempt.saturating_sub(1),
        composition_id: job.submitted.composition_id.clone(),
        node_id: job.submitted.node_id.clone(),
        task_name: record.and_then(|r| r.task.clone()),
        method: record.and_then(|r| r.method.clone()),
        run_id: job.submitted.run_id.clone(),
        actor: job.submitted.actor.clone(),
        error: None,
        extra: serde_json::Map::new(),
    };
    let instance = job
        .submitted
        .capability_instance_id
        .clone()
        .unwrap_or_default();
    snapshot.error = Some(host_view(error, &instance));
    snapshot
}

/// A row about `job`, with the correlation its submission carried.
fn row_of(job: &OpenJob, event_type: &str) -> JournalEvent {
    let mut row = JournalEvent::new(event_type).job(job.job_id.clone());
    let s = &job.submitted;
    row.capability_instance_id
        .clone_from(&s.capability_instance_id);
    row.capability_name.clone_from(&s.capability_name);
    row.composition_id.clone_from(&s.composition_id);
    row.node_id.clone_from(&s.node_id);
    row.run_id.clone_from(&s.run_id);
    row.actor.clone_from(&s.actor);
    row
}

/// The rows and the verdict for one job of a gone host.
fn settle(
    job: &OpenJob,
    lost: &dyn Fn(&str) -> JobError,
    me: &str,
    gone: &str,
    data_dir: &Path,
    defaults: &std::collections::BTreeMap<String, RetryPolicy>,
    dead_compositions: &std::collections::BTreeSet<String>,
) -> (Vec<JournalEvent>, Verdict) {
    let running = job.state.as_deref() == Some("running");
    let record: Option<SpecRecord> = job
        .submitted
        .payload
        .get("spec")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    let spec = record
        .as_ref()
        .ok_or_else(|| JobError::fatal("its journaled spec is unreadable"))
        .and_then(|r| r.to_spec(data_dir).map_err(|e| e.to_job_error()));
    let name = record
        .as_ref()
        .and_then(|r| r.capability_name.clone())
        .or_else(|| job.submitted.capability_name.clone());
    let member = job
        .submitted
        .composition_id
        .as_ref()
        .is_some_and(|c| dead_compositions.contains(c));
    // The outcome if it is not adopted.
    let mut error = if running {
        lost("the job ran")
    } else {
        lost("the job waited")
    };
    let from = if running { "running" } else { "pending" };
    let adopt = match spec {
        Ok(mut spec) if !member => {
            let policy = spec
                .retry
                .clone()
                .or_else(|| name.as_ref().and_then(|n| defaults.get(n).cloned()))
                .unwrap_or_default();
            spec.retry = Some(policy.clone());
            // A waiting job had not started its attempt: it runs here on it. A running one
            // needs its policy's consent for the next.
            (!running || policy.retries(&error, job.attempt)).then_some((spec, policy))
        }
        Ok(_) => None,
        Err(e) => {
            error = JobError::fatal(format!(
                "host lost: host {gone} is gone and its job cannot be rerun: {}",
                e.message
            ));
            None
        }
    };
    let base = |event_type: &str| row_of(job, event_type);
    match adopt {
        Some((spec, policy)) => {
            let attempt = if running {
                job.attempt + 1
            } else {
                job.attempt
            };
            let mut rows = vec![base(event_types::JOB_ADOPTED).payload(json!({
                "host_id": me,
                "from_host": gone,
                "attempt": attempt,
                "was": from,
                "spec": job.submitted.payload.get("spec"),
            }))];
            if running {
                rows.push(base(event_types::STATE_TRANSITION).payload(json!({
                    "from": "running", "to": "pending", "retry": {
                        "attempt": attempt, "of": policy.max_attempts, "delay_ms": 0.0,
                        "error": &error}})));
            }
            let verdict = Verdict::Adopt {
                spec: Box::new(spec),
                name,
                attempt,
                payload_file: record
                    .as_ref()
                    .and_then(|r| r.kwargs_ref.as_ref())
                    .map(|r| r.path.clone()),
            };
            (rows, verdict)
        }
        None => {
            let snapshot = lost_snapshot(job, record.as_ref(), &error);
            let verdict = Verdict::Ended(snapshot.error.clone().unwrap_or(error));
            let row = base(event_types::STATE_TRANSITION).payload(json!({
                "from": from, "to": "failed", "job_snapshot": snapshot, "reconciled_by": me,
            }));
            (vec![row], verdict)
        }
    }
}
