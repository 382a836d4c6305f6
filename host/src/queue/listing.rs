//! The jobs of a data dir as its journal knows them (durable across restarts, processes and
//! hosts): the last state of each, newest first, with filters and a cursor. What `cjm-ctl
//! jobs` prints and `GET /v1/jobs` answers.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::Result;
use crate::store::{JournalQuery, JournalStore, Liveness, event_types};

/// Which jobs.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs in this state (`pending`, `running`, `completed`, `failed`, `cancelled`).
    pub status: Option<String>,
    /// Only jobs of this run.
    pub run_id: Option<String>,
    /// Only jobs on this instance.
    pub instance_id: Option<String>,
    /// Only jobs whose latest row is before this cursor (the previous page's `next_cursor`).
    pub before: Option<i64>,
    /// At most this many.
    pub limit: usize,
}

/// One page of jobs.
#[derive(Debug, Clone)]
pub struct JobPage {
    /// The jobs, newest first: `id`, `instance_id`, `status`, `at`, timestamps, `priority`,
    /// `task_name` and `method` as submitted, `run_id`,
    /// `composition_id`, `node_id`, `error` (`[category] message`), `host_gone` (why the
    /// owning host of an unfinished job is gone), `cursor`.
    pub jobs: Vec<Value>,
    /// Where the next page starts (`None`: this was the last).
    pub next_cursor: Option<i64>,
}

/// The jobs of `journal` matching `filter`.
pub fn list_jobs(journal: &JournalStore, filter: &JobFilter) -> Result<JobPage> {
    let mut rows = Vec::new();
    for kind in [
        event_types::STATE_TRANSITION,
        event_types::JOB_SUBMITTED,
        event_types::JOB_ADOPTED,
    ] {
        rows.extend(journal.query(&JournalQuery {
            event_type: Some(kind.into()),
            run_id: filter.run_id.clone(),
            capability_instance_id: filter.instance_id.clone(),
            descending: true,
            ..JournalQuery::default()
        })?);
    }
    rows.sort_by_key(|e| std::cmp::Reverse(e.seq));
    let (owners, submitted) = owners_and_submissions(&rows);
    let gone = gone_hosts(journal)?;
    // The newest row of each job gives its state (a job with no transition yet waits) and
    // its place in the listing.
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut jobs: Vec<Value> = Vec::new();
    let mut more = false;
    for e in rows {
        let Some(id) = e.job_id.clone() else { continue };
        if !seen.insert(id.clone()) {
            continue;
        }
        let seq = e.seq.unwrap_or(0);
        if filter.before.is_some_and(|before| seq >= before) {
            continue;
        }
        let state = if e.event_type == event_types::STATE_TRANSITION {
            e.payload["to"].as_str().unwrap_or("").to_owned()
        } else {
            "pending".to_owned()
        };
        if filter.status.as_deref().is_some_and(|s| s != state) {
            continue;
        }
        if jobs.len() >= filter.limit {
            more = true;
            break;
        }
        let terminal = matches!(state.as_str(), "completed" | "failed" | "cancelled");
        // A job left unfinished by a gone host is said so: it ends when a host reconciles
        // it (`cjm-ctl serve`, an embedded host) or `cjm-ctl cancel` ends it.
        let host_gone = (!terminal)
            .then(|| owners.get(&id).and_then(|h| gone.get(h)))
            .flatten()
            .cloned();
        let snap = e.job_snapshot();
        let (submitted_at, priority, task, method) = match submitted.get(&id) {
            Some((ts, priority, task, method)) => (
                Some(ts.clone()),
                priority.clone(),
                task.clone(),
                method.clone(),
            ),
            None => (None, Value::Null, Value::Null, Value::Null),
        };
        jobs.push(json!({
            "host_gone": host_gone,
            "id": id,
            "instance_id": e.capability_instance_id,
            "status": state,
            "at": e.ts,
            "submitted_at": snap.as_ref().and_then(|s| s.submitted_at.clone()).or(submitted_at),
            "priority": priority,
            "task_name": task,
            "method": method,
            "started_at": snap.as_ref().and_then(|s| s.started_at.clone()),
            "completed_at": snap.as_ref().and_then(|s| s.completed_at.clone()),
            "run_id": e.run_id,
            "composition_id": e.composition_id,
            "node_id": e.node_id,
            "error": snap.and_then(|s| s.error).map(|e| format!("[{}] {}", e.category, e.message)),
            "cursor": seq,
        }));
    }
    let next_cursor = more
        .then(|| jobs.last().and_then(|j| j["cursor"].as_i64()))
        .flatten();
    Ok(JobPage { jobs, next_cursor })
}

/// What each job was submitted as (when, at which priority, which task and method), keyed
/// by job.
type Submitted = BTreeMap<String, (String, Value, Value, Value)>;

/// Who owns each job now (its latest submission or adoption row), and what each was
/// submitted as, from rows newest first.
fn owners_and_submissions(
    rows: &[crate::store::JournalEvent],
) -> (BTreeMap<String, String>, Submitted) {
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    // What each job was submitted as: when, at which priority, which task and method.
    let mut submitted: Submitted = BTreeMap::new();
    for e in rows {
        if e.event_type != event_types::STATE_TRANSITION
            && let (Some(id), Some(host)) = (&e.job_id, e.payload["host_id"].as_str())
        {
            owners.entry(id.clone()).or_insert_with(|| host.to_owned());
        }
        if e.event_type == event_types::JOB_SUBMITTED
            && let Some(id) = &e.job_id
        {
            let spec = &e.payload["spec"];
            submitted.insert(
                id.clone(),
                (
                    e.ts.clone(),
                    spec["priority"].clone(),
                    spec["task"].clone(),
                    spec["method"].clone(),
                ),
            );
        }
    }
    (owners, submitted)
}

/// The hosts on the data dir that are gone, each with why.
fn gone_hosts(journal: &JournalStore) -> Result<BTreeMap<String, String>> {
    let now = crate::store::unix_now();
    let here = crate::store::hostname();
    let gone = journal
        .hosts()?
        .into_iter()
        .filter_map(|h| match h.liveness(now, &here) {
            Liveness::Gone(why) => Some((h.host_id, why)),
            Liveness::Alive => None,
        })
        .collect();
    Ok(gone)
}
