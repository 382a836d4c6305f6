//! `cjm-ctl retention`: the diagnostics retention policy applied now (the journal is never
//! touched).

use serde_json::json;

use crate::ctx::Ctx;

/// Options of `retention`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl retention                  # cjm.yaml's substrate policy\n  cjm-ctl retention --max-age-days 7\n  cjm-ctl retention --max-total-mb 50"
)]
pub struct Args {
    /// Delete diagnostics rows older than this [default: substrate.diagnostics_retention_days]
    #[arg(long, value_name = "DAYS")]
    max_age_days: Option<f64>,
    /// Delete the oldest rows until the database uses at most this [default:
    /// substrate.diagnostics_retention_max_mb]
    #[arg(long, value_name = "MB")]
    max_total_mb: Option<f64>,
}

/// Runs `retention`.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let config = ctx.config()?;
    let days = args
        .max_age_days
        .or(config.substrate.diagnostics_retention_days)
        .filter(|d| *d > 0.0);
    let mb = args
        .max_total_mb
        .or(config.substrate.diagnostics_retention_max_mb);
    if days.is_none() && mb.is_none() {
        ctx.out.info("retention is disabled (no age and no size budget); pass --max-age-days or --max-total-mb");
        if ctx.out.json {
            ctx.out
                .json(&json!({"records_deleted": 0, "chunks_deleted": 0, "disabled": true}));
        }
        return Ok(());
    }
    let records = ctx.records()?;
    let Some(out) = records.apply_retention(days, mb)? else {
        ctx.out.info(format!(
            "no diagnostics store at {}; nothing to do",
            config.diagnostics_db_path().display()
        ));
        if ctx.out.json {
            ctx.out
                .json(&json!({"records_deleted": 0, "chunks_deleted": 0}));
        }
        return Ok(());
    };
    let (before, after) = (out.used_bytes_before, out.used_bytes_after);
    let out = out.deleted;
    if ctx.out.json {
        ctx.out.json(&json!({
            "records_deleted": out.records_deleted,
            "chunks_deleted": out.chunks_deleted,
            "max_age_days": days,
            "max_total_mb": mb,
            "used_bytes_before": before,
            "used_bytes_after": after,
        }));
    } else {
        ctx.out.info(format!(
            "diagnostics retention: deleted {} record(s) and {} chunk(s) ({:.2} MB used, was {:.2} MB); the journal is untouched",
            out.records_deleted,
            out.chunks_deleted,
            after as f64 / 1048576.0,
            before as f64 / 1048576.0
        ));
    }
    Ok(())
}
