//! `cjm-ctl regenerate-manifest NAME`: re-introspect from what the manifest records (the
//! component, the command, or the python env and package) and rewrite it, keeping the
//! install time.

use cjm_host::install::{Installer, NoProgress};
use serde_json::json;

use crate::ctx::{Ctx, hint, runtime};

/// Options of `regenerate-manifest`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  cjm-ctl regenerate-manifest text-stats")]
pub struct Args {
    /// The installed capability
    name: String,
}

/// Runs `regenerate-manifest`.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let installer = Installer::new(ctx.config()?);
    ctx.out.note(format!("regenerating {} ...", args.name));
    let path = runtime()?
        .block_on(installer.regenerate(&args.name, &NoProgress))
        .map_err(|e| {
            hint(
                e,
                "see `cjm-ctl list`; reinstall with `cjm-ctl install-all --only NAME --force`",
            )
        })?;
    if ctx.out.json {
        ctx.out.json(&json!({"name": args.name, "manifest": path}));
    } else {
        ctx.out.info(format!("regenerated {}", path.display()));
    }
    Ok(())
}
