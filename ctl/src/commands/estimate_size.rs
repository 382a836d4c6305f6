//! `cjm-ctl estimate-size`: what installing a capabilities.yaml's entries would download and
//! take on disk, before installing them (nothing is installed).

use std::path::PathBuf;

use cjm_host::install::{self, Installer};
use serde_json::json;

use crate::ctx::{Ctx, hint, runtime};

/// Options of `estimate-size`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    cjm-ctl estimate-size\n  \
    cjm-ctl estimate-size --capabilities caps.yaml --only my-tool --verbose\n\n\
    Python entries are resolved by pip for the interpreter their environment would get\n\
    (nothing is installed); wheels are measured through HTTP range requests, not downloaded.")]
pub struct Args {
    /// The capabilities file [default: cjm.yaml's capabilities_config, else ./capabilities.yaml]
    #[arg(long, value_name = "FILE")]
    capabilities: Option<PathBuf>,
    /// Only this entry (repeatable)
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// Every Python distribution, not only the totals
    #[arg(long, short)]
    verbose: bool,
    /// The cjm-substrate pip spec for python entries that do not name one
    #[arg(long, value_name = "SPEC")]
    substrate_source: Option<String>,
}

/// `12.3 MB`.
fn size(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..=999 => format!("{bytes} B"),
        1_000..=999_999 => format!("{:.1} kB", b / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}

/// Runs `estimate-size`.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let config = ctx.config()?;
    let file = super::install_all::capabilities_file(
        args.capabilities.as_deref(),
        &config,
        &args.only,
        ctx,
    )?;
    config.ensure_layout()?;
    let installer = Installer::new(config);
    let rt = runtime()?;
    let mut estimates = Vec::new();
    let mut failures = Vec::new();
    for entry in &file.entries {
        if !args.only.is_empty() && !args.only.contains(&entry.name) {
            continue;
        }
        ctx.out
            .note(format!("estimating {} ({})", entry.name, entry.kind()));
        match rt.block_on(installer.estimate(entry, args.substrate_source.as_deref())) {
            Ok(e) => estimates.push(e),
            Err(e) => failures.push((entry.name.clone(), e.to_string())),
        }
    }
    let download: u64 = estimates.iter().map(|e| e.download).sum();
    let installed: u64 = estimates.iter().map(|e| e.installed).sum();
    let complete = failures.is_empty() && estimates.iter().all(|e| e.complete);
    if ctx.out.json {
        ctx.out.json(&json!({
            "entries": estimates,
            "failed": failures.iter().map(|(n, e)| json!({"name": n, "error": e})).collect::<Vec<_>>(),
            "download": download,
            "installed": installed,
            "complete": complete,
        }));
    } else {
        let mut t = ctx.out.table(&[
            "name",
            "kind",
            "download",
            "on disk",
            "packages",
            "not counted",
        ]);
        for e in &estimates {
            t.add_row(vec![
                e.name.clone(),
                e.kind.clone(),
                size(e.download),
                size(e.installed),
                if e.packages.is_empty() {
                    "-".to_owned()
                } else {
                    e.packages.len().to_string()
                },
                e.notes.join("; "),
            ]);
        }
        for (name, error) in &failures {
            t.add_row(vec![
                name.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                error.clone(),
            ]);
        }
        ctx.out.info(t);
        if args.verbose {
            print_packages(&estimates, ctx);
        }
        ctx.out.info(format!(
            "total: {} to download, {} on disk{}",
            size(download),
            size(installed),
            if complete {
                ""
            } else {
                " (at least: see what is not counted)"
            }
        ));
    }
    if !failures.is_empty() {
        return Err(hint(
            format!(
                "{} of {} entries could not be estimated",
                failures.len(),
                failures.len() + estimates.len()
            ),
            format!(
                "see logs/install/<name>.estimate.log in {}",
                installer.config().data_dir.display()
            ),
        ));
    }
    Ok(())
}

/// Every entry's packages, one table each (`--verbose`).
fn print_packages(estimates: &[install::estimate::SizeEstimate], ctx: &Ctx) {
    for e in estimates.iter().filter(|e| !e.packages.is_empty()) {
        let mut t = ctx
            .out
            .table(&["package", "version", "kind", "download", "on disk"]);
        for p in &e.packages {
            let shown = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), size);
            t.add_row(vec![
                p.name.clone(),
                p.version.clone(),
                p.kind.clone(),
                shown(p.download),
                shown(p.installed),
            ]);
        }
        ctx.out.info(format!(
            "{} (Python {}):\n{t}",
            e.name,
            e.python.as_deref().unwrap_or("?")
        ));
    }
}
