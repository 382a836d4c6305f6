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
//! - a composition that was running ends `failed` ("host lost"), and its members with it:
//!   upstream results are not journaled, so its remaining nodes cannot be resumed.
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
    /// Ended with its terminal row.
    Ended,
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
                if inner.config.recover {
                    let queue = JobQueue {
                        inner: Arc::clone(&inner),
                    };
                    drop(inner);
                    if let Err(e) = queue.reconcile().await {
                        tracing::warn!(error = %e, "reconciling gone hosts failed; retrying at the next renewal");
                    }
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
                let mut verdicts = Vec::new();
                let out = manager.journal().reconcile(&host.host_id, &me, |left| {
                    let (rows, v) = decide(left, &host.host_id, &why, &me, &data_dir, &defaults);
                    verdicts = v;
                    rows
                })?;
                Ok::<_, Error>(out.map(|(left, rows)| (left, rows, verdicts, host.host_id)))
            })
            .await
            .map_err(|e| Error::job(JobError::fatal(format!("reconciliation failed: {e}"))))??;
            let Some((left, _rows, verdicts, gone_id)) = claimed else {
                continue;
            };
            tracing::info!(
                host = %gone_id,
                jobs = left.jobs.len(),
                compositions = left.compositions.len(),
                "reconciled a gone host"
            );
            for (job_id, verdict) in verdicts {
                match verdict {
                    Verdict::Ended => ended += 1,
                    Verdict::Adopt {
                        spec,
                        name,
                        attempt,
                        payload_file,
                    } => {
                        adopted += 1;
                        let origin = dispatch::Origin::Adopted {
                            attempt,
                            payload_file,
                        };
                        self.adopt(job_id, *spec, name, origin).await;
                    }
                }
            }
        }
        Ok((adopted, ended))
    }

    /// Puts an adopted job in the queue (loading its instance when this host has not).
    async fn adopt(
        &self,
        id: String,
        spec: JobSpec,
        name: Option<String>,
        origin: dispatch::Origin,
    ) {
        let inner = &self.inner;
        if inner.manager.instance(&spec.instance_id).is_err()
            && let Some(name) = &name
            && let Err(e) = inner
                .manager
                .load(name, None, Some(&spec.instance_id))
                .await
        {
            tracing::warn!(job = %id, capability = %name, error = %e, "an adopted job's capability does not load here; the job fails when admitted");
        }
        let bytes = spec.request.approx_bytes();
        let launches = {
            let mut st = inner.lock();
            if st.closed {
                return;
            }
            inner.enqueue(&mut st, id, spec, name, bytes, origin);
            inner.dispatch(&mut st)
        };
        inner.after(launches);
    }
}

/// The rows that settle what host `gone` left (`why`: how it was found gone), adopted by
/// `me`, and the verdict for each job.
fn decide(
    left: &Leftovers,
    gone: &str,
    why: &str,
    me: &str,
    data_dir: &Path,
    defaults: &std::collections::BTreeMap<String, RetryPolicy>,
) -> (Vec<JournalEvent>, Vec<(String, Verdict)>) {
    let lost = |what: &str| {
        JobError::transient(format!(
            "host lost: host {gone} was gone ({why}) while {what}"
        ))
    };
    let mut rows = Vec::new();
    let mut verdicts = Vec::new();
    let mut dead_compositions = std::collections::BTreeSet::new();
    for c in &left.compositions {
        let Some(id) = c.submitted.composition_id.clone() else {
            continue;
        };
        let mut row = JournalEvent::new(events::COMPOSITION_FINISHED).payload(json!({
            "status": "failed",
            "error": lost("the composition ran"),
            "reconciled_by": me,
        }));
        row.composition_id = Some(id.clone());
        row.run_id.clone_from(&c.submitted.run_id);
        row.actor.clone_from(&c.submitted.actor);
        rows.push(row);
        dead_compositions.insert(id);
    }
    for job in &left.jobs {
        let (job_rows, verdict) =
            settle(job, &lost, me, gone, data_dir, defaults, &dead_compositions);
        rows.extend(job_rows);
        verdicts.push((job.job_id.clone(), verdict));
    }
    (rows, verdicts)
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
    let base = |event_type: &str| {
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
    };
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
            let mut snapshot = crate::store::JobSnapshot {
                id: job.job_id.clone(),
                capability_instance_id: job.submitted.capability_instance_id.clone(),
                status: "failed".into(),
                priority: record.as_ref().map_or(0, |r| r.priority),
                submitted_at: Some(job.submitted.ts.clone()),
                started_at: None,
                completed_at: Some(crate::store::now_iso()),
                retry_count: job.attempt.saturating_sub(1),
                composition_id: job.submitted.composition_id.clone(),
                node_id: job.submitted.node_id.clone(),
                task_name: record.as_ref().and_then(|r| r.task.clone()),
                method: record.as_ref().and_then(|r| r.method.clone()),
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
            snapshot.error = Some(host_view(&error, &instance));
            let row = base(event_types::STATE_TRANSITION).payload(json!({
                "from": from, "to": "failed", "job_snapshot": snapshot, "reconciled_by": me,
            }));
            (vec![row], Verdict::Ended)
        }
    }
}
