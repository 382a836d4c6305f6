//! `cjm-ctl cancel JOB`: asks the host running a job (any process on the same data dir) to
//! cancel it, through the journal: the host's queue follows `cancel_requested` rows and runs
//! its cancel state machine (cooperative, then forced, then reload). A job whose host is gone
//! (crashed, killed) is ended here with its terminal `cancelled` row.

use cjm_host::records::CancelOutcome;
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
    let records = ctx.records()?;
    args.job = records.resolve_job(&args.job)?;
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
    match records.cancel(&args.job, "cjm-ctl", "cjm-ctl cancel")? {
        CancelOutcome::Unknown => Err(hint(
            format!("no job '{}' in the journal", args.job),
            "list jobs with `cjm-ctl jobs`",
        )),
        CancelOutcome::Finished(status) if status.is_empty() => {
            Err(anyhow::anyhow!("job {} already finished", args.job))
        }
        CancelOutcome::Finished(status) => Err(anyhow::anyhow!(
            "job {} already finished ({status})",
            args.job
        )),
        // A job whose host is gone has nobody to stop it: it was ended here, once.
        CancelOutcome::Ended { host, why } => {
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
            Ok(())
        }
        CancelOutcome::Requested => {
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
    }
}
