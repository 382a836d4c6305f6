//! `cjm-ctl jobs`: jobs of a data dir, from the journal (durable across restarts and
//! processes): the last state of each, or every row of one job.

use cjm_host::store::JournalQuery;
use serde_json::Value;

use crate::ctx::{Ctx, hint};

/// Options of `jobs`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl jobs\n  cjm-ctl jobs --status failed -n 50\n  cjm-ctl jobs --run-id nightly-7\n  cjm-ctl jobs --job 01a2...  (every journal row of one job)"
)]
pub struct Args {
    /// At most this many jobs, newest first
    #[arg(short = 'n', long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    limit: u16,
    /// Only jobs in this state (pending, running, completed, failed, cancelled)
    #[arg(long, value_parser = ["pending", "running", "completed", "failed", "cancelled"])]
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
    if args.job.is_none()
        && let Some(client) = ctx.client()?
    {
        let mut query = format!("limit={}", args.limit);
        if let Some(s) = &args.status {
            query.push_str(&format!("&status={s}"));
        }
        if let Some(r) = &args.run_id {
            query.push_str(&format!("&run_id={r}"));
        }
        let page = crate::ctx::runtime()?.block_on(client.jobs(&query))?;
        let jobs = page["jobs"].as_array().cloned().unwrap_or_default();
        return show(ctx, jobs);
    }
    let records = ctx.records()?;
    if !records.has_journal() {
        return Err(hint(
            format!(
                "no journal at {}",
                records.config().journal_db_path().display()
            ),
            "jobs are recorded once something ran here (`cjm-ctl submit`, `cjm-ctl demo`)",
        ));
    }
    if let Some(job) = args.job {
        let job = records.resolve_job(&job)?;
        let rows = records.journal(&JournalQuery::job(job.clone()))?;
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
    let jobs = records
        .jobs(&cjm_host::queue::JobFilter {
            status: args.status,
            run_id: args.run_id,
            limit: usize::from(args.limit),
            ..Default::default()
        })?
        .jobs;
    show(ctx, jobs)
}

fn show(ctx: &Ctx, jobs: Vec<Value>) -> anyhow::Result<()> {
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
