//! `cjm-ctl remove NAME`: the capability's manifest, installed component, adapter manifests,
//! install record and environment, after a confirmation.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use cjm_host::install::Installer;
use serde_json::json;

use crate::ctx::{Ctx, hint};

/// Options of `remove`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl remove text-stats\n  cjm-ctl remove text-stats -y   # no question asked (needed without a terminal)"
)]
pub struct Args {
    /// The capability
    name: String,
    /// Do not ask for confirmation
    #[arg(short = 'y', long = "yes")]
    yes: bool,
}

/// Runs `remove`.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let installer = Installer::new(ctx.config()?);
    let plan = installer
        .removal_plan(&args.name)
        .map_err(|e| hint(e, "see what is installed with `cjm-ctl list`"))?;
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(hint(
                format!("refusing to remove '{}' without confirmation", args.name),
                "stdin is not a terminal: pass -y to confirm",
            ));
        }
        eprintln!("remove '{}'? this deletes:", args.name);
        for p in &plan {
            eprintln!("  {}", p.display());
        }
        eprint!("proceed? [y/N] ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            return Err(anyhow::anyhow!("not removed"));
        }
    }
    let removed = installer.remove(&args.name)?;
    if ctx.out.json {
        ctx.out
            .json(&json!({"name": args.name, "removed": removed}));
    } else {
        for p in &removed {
            ctx.out.info(format!("removed {}", p.display()));
        }
        ctx.out.info(format!("'{}' removed", args.name));
    }
    Ok(())
}
