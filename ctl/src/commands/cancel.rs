//! `cjm-ctl cancel JOB`: asks the host running a job (any process on the same data dir) to
//! cancel it, through the journal: the host's queue follows `cancel_requested` rows and runs
//! its cancel state machine (cooperative, then forced, then reload). A job whose host is gone
//! (crashed, killed) is ended here with its terminal `cancelled` row.

use cjm_host::queue::CANCEL_REQUESTED;
use cjm_host::store::{JournalEvent, JournalQuery, JournalStore, OrphanCancel};
use serde_json::json;

use crate::ctx::{Ctx, hint};

/// Options of `cancel`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  cjm-ctl cancel 01a21323-a0ea-722d-9126-b66ce14a2e99")]
pub struct Args {
    /// The job id (see `cjm-ctl jobs`)
    job: String,
}

/// Runs `cancel`.
pub fn run(mut args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    args.job = ctx.full_job_id(&args.job)?;
    if let Some(client) = ctx.client()? {
        // The serving host cancels at once, waiting jobs included.
        crate::ctx::runtime()?.block_on(client.cancel(&args.job))?;
        if ctx.out.json {
            ctx.out
                .json(&json!({"job": args.job, "cancel_requested": true}));
        } else {
            ctx.out.info(format!(
                "job {} cancelled by the host at {}",
                args.job,
                client.url()
            ));
        }
        return Ok(());
    }
    let config = ctx.config()?;
    let path = config.journal_db_path();
    let unknown = || {
        hint(
            format!("no job '{}' in the journal", args.job),
            "list jobs with `cjm-ctl jobs`",
        )
    };
    if !path.is_file() {
        return Err(unknown());
    }
    let journal = JournalStore::open(&path)?;
    let rows = journal.query(&JournalQuery::job(args.job.clone()))?;
    if rows.is_empty() {
        return Err(unknown());
    }
    if let Some(done) = rows.iter().rev().find(|e| e.is_terminal_transition()) {
        return Err(anyhow::anyhow!(
            "job {} already finished ({})",
            args.job,
            done.payload["to"].as_str().unwrap_or("")
        ));
    }
    // A job whose host is gone has nobody to stop it: it is ended here, once.
    match journal.cancel_orphan(&args.job, "cjm-ctl cancel")? {
        OrphanCancel::Cancelled { host, why } => {
            if ctx.out.json {
                ctx.out.json(
                    &json!({"job": args.job, "cancelled": true, "host_gone": host, "why": why}),
                );
            } else {
                ctx.out.info(format!(
                    "job {} cancelled: the host that ran it ({host}) is gone ({why})",
                    args.job
                ));
            }
            return Ok(());
        }
        OrphanCancel::Finished => {
            return Err(anyhow::anyhow!("job {} already finished", args.job));
        }
        OrphanCancel::NotOrphan => {}
    }
    let mut e = JournalEvent::new(CANCEL_REQUESTED)
        .job(args.job.clone())
        .payload(json!({"by": "cjm-ctl cancel"}));
    e.capability_instance_id = rows.iter().find_map(|r| r.capability_instance_id.clone());
    e.actor = Some("cjm-ctl".into());
    journal.append(&e)?;
    if ctx.out.json {
        ctx.out
            .json(&json!({"job": args.job, "cancel_requested": true}));
    } else {
        ctx.out.info(format!(
            "cancel requested for job {}; the host running it stops it within a second",
            args.job
        ));
    }
    Ok(())
}
