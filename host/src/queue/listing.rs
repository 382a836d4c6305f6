//! The jobs of a data dir as its journal knows them (durable across restarts, processes and
//! hosts): the last state of each, newest first, with filters and a cursor. What `cjm-ctl
//! jobs` prints and `GET /v1/jobs` answers.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::Result;
use crate::store::{JournalStore, LatestJobRows, Liveness, event_types};

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

/// The jobs of `journal` matching `filter`: one page, read through the journal's indexes
/// (the newest row of each job, then the submission rows of the jobs on the page), so a
/// page costs the same in a journal of millions of rows.
pub fn list_jobs(journal: &JournalStore, filter: &JobFilter) -> Result<JobPage> {
    // One more than the page: whether another page follows.
    let mut rows = journal.latest_job_rows(&LatestJobRows {
        status: filter.status.as_deref(),
        run_id: filter.run_id.as_deref(),
        instance_id: filter.instance_id.as_deref(),
        before: filter.before,
        limit: filter.limit.saturating_add(1),
    })?;
    let more = rows.len() > filter.limit;
    rows.truncate(filter.limit);
    let gone = if rows.is_empty() {
        BTreeMap::new()
    } else {
        gone_hosts(journal)?
    };
    let mut jobs: Vec<Value> = Vec::with_capacity(rows.len());
    for e in rows {
        let Some(id) = e.job_id.clone() else { continue };
        let seq = e.seq.unwrap_or(0);
        let state = if e.event_type == event_types::STATE_TRANSITION {
            e.payload["to"].as_str().unwrap_or("").to_owned()
        } else {
            "pending".to_owned()
        };
        let submissions = journal.job_submissions(&id)?;
        // Its owner now: its newest submission or adoption.
        let owner = submissions
            .first()
            .and_then(|s| s.payload["host_id"].as_str());
        // What it was submitted as.
        let submitted = submissions
            .iter()
            .rfind(|s| s.event_type == event_types::JOB_SUBMITTED);
        let terminal = matches!(state.as_str(), "completed" | "failed" | "cancelled");
        // A job left unfinished by a gone host is said so: it ends when a host reconciles
        // it (`cjm-ctl serve`, an embedded host) or `cjm-ctl cancel` ends it.
        let host_gone = (!terminal)
            .then(|| owner.and_then(|h| gone.get(h)))
            .flatten()
            .cloned();
        let snap = e.job_snapshot();
        let spec = submitted.map_or(&Value::Null, |s| &s.payload["spec"]);
        jobs.push(json!({
            "host_gone": host_gone,
            "id": id,
            "instance_id": e.capability_instance_id,
            "status": state,
            "at": e.ts,
            "submitted_at": snap.as_ref().and_then(|s| s.submitted_at.clone())
                .or_else(|| submitted.map(|s| s.ts.clone())),
            "priority": spec["priority"],
            "task_name": spec["task"],
            "method": spec["method"],
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
