//! `cjm-ctl jobs`: jobs of a data dir, from the journal (durable across restarts and
//! processes): the last state of each, or every row of one job.

use std::collections::BTreeMap;

use cjm_host::store::{JournalQuery, JournalStore, Liveness};
use serde_json::{Value, json};

use crate::ctx::{Ctx, hint};

/// Options of `jobs`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl jobs\n  cjm-ctl jobs --status failed -n 50\n  cjm-ctl jobs --run-id nightly-7\n  cjm-ctl jobs --job 01a2...  (every journal row of one job)"
)]
pub struct Args {
    /// At most this many jobs, newest first
    #[arg(short = 'n', long, default_value_t = 20)]
    limit: usize,
    /// Only jobs in this state (pending, running, completed, failed, cancelled)
    #[arg(long)]
    status: Option<String>,
    /// Only jobs of this run
    #[arg(long)]
    run_id: Option<String>,
    /// Show every journal row of this job
    #[arg(long, value_name = "JOB")]
    job: Option<String>,
}

/// Runs `jobs`.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let config = ctx.config()?;
    let path = config.journal_db_path();
    if !path.is_file() {
        return Err(hint(
            format!("no journal at {}", path.display()),
            "jobs are recorded once something ran here (`cjm-ctl submit`, `cjm-ctl demo`)",
        ));
    }
    let journal = JournalStore::open(&path)?;
    if let Some(job) = args.job {
        let rows = journal.query(&JournalQuery::job(job.clone()))?;
        if rows.is_empty() {
            return Err(hint(
                format!("no job '{job}' in the journal"),
                "list recent jobs with `cjm-ctl jobs`",
            ));
        }
        if ctx.out.json {
            ctx.out.json(&serde_json::to_value(&rows)?);
            return Ok(());
        }
        for e in rows {
            ctx.out.info(format!(
                "#{:<6} {} {:<22} {}",
                e.seq.unwrap_or(0),
                e.ts,
                e.event_type,
                e.payload
            ));
        }
        return Ok(());
    }
    let mut rows = Vec::new();
    for kind in ["state_transition", "job_submitted", "job_adopted"] {
        rows.extend(journal.query(&JournalQuery {
            event_type: Some(kind.into()),
            run_id: args.run_id.clone(),
            descending: true,
            ..JournalQuery::default()
        })?);
    }
    rows.sort_by_key(|e| std::cmp::Reverse(e.seq));
    // Who owns each job now (its latest submission or adoption row), and whether that
    // host is still there.
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for e in &rows {
        if e.event_type != "state_transition"
            && let (Some(id), Some(host)) = (&e.job_id, e.payload["host_id"].as_str())
        {
            owners.entry(id.clone()).or_insert_with(|| host.to_owned());
        }
    }
    let now = cjm_host::store::unix_now();
    let here = cjm_host::store::hostname();
    let gone: BTreeMap<String, String> = journal
        .hosts()?
        .into_iter()
        .filter_map(|h| match h.liveness(now, &here) {
            Liveness::Gone(why) => Some((h.host_id, why)),
            Liveness::Alive => None,
        })
        .collect();
    // The newest transition of each job is its state; a job with none yet waits.
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    let mut jobs: Vec<Value> = Vec::new();
    for e in rows {
        let Some(id) = e.job_id.clone() else { continue };
        if seen.insert(id.clone(), ()).is_some() {
            continue;
        }
        let state = if e.event_type == "state_transition" {
            e.payload["to"].as_str().unwrap_or("").to_owned()
        } else {
            "pending".to_owned()
        };
        if args.status.as_deref().is_some_and(|s| s != state) {
            continue;
        }
        let terminal = matches!(state.as_str(), "completed" | "failed" | "cancelled");
        // A job left unfinished by a gone host is said so: it ends when a host reconciles
        // it (`cjm-ctl serve`, an embedded host) or `cjm-ctl cancel` ends it.
        let host_gone = (!terminal)
            .then(|| owners.get(&id).and_then(|h| gone.get(h)))
            .flatten()
            .cloned();
        let snap = e.job_snapshot();
        jobs.push(json!({
            "host_gone": host_gone,
            "id": id,
            "instance_id": e.capability_instance_id,
            "status": state,
            "at": e.ts,
            "submitted_at": snap.as_ref().and_then(|s| s.submitted_at.clone()),
            "started_at": snap.as_ref().and_then(|s| s.started_at.clone()),
            "completed_at": snap.as_ref().and_then(|s| s.completed_at.clone()),
            "run_id": e.run_id,
            "composition_id": e.composition_id,
            "node_id": e.node_id,
            "error": snap.and_then(|s| s.error).map(|e| format!("[{}] {}", e.category, e.message)),
        }));
        if jobs.len() >= args.limit {
            break;
        }
    }
    if ctx.out.json {
        ctx.out.json(&Value::Array(jobs));
        return Ok(());
    }
    if jobs.is_empty() {
        ctx.out.info("no jobs");
        return Ok(());
    }
    let mut table = ctx.out.table(&["job", "instance", "status", "at", "error"]);
    for j in &jobs {
        let s = |k: &str| j[k].as_str().unwrap_or("").to_owned();
        let status = match j["host_gone"].as_str() {
            Some(_) => format!("{} (host gone)", s("status")),
            None => s("status"),
        };
        let error = match j["host_gone"].as_str() {
            Some(why) => format!("its host is gone ({why}): awaiting recovery"),
            None => s("error"),
        };
        table.add_row(vec![s("id"), s("instance_id"), status, s("at"), error]);
    }
    ctx.out.info(table);
    Ok(())
}
