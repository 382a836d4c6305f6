//! `cjm-ctl install-all`: every entry of a capabilities.yaml installed (or left alone when
//! its inputs did not change), a progress bar per entry, a summary table at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cjm_host::install::{
    self, EntryReport, EntryStatus, InstallError, InstallOptions, Installer, Progress,
};
use comfy_table::Color;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::ctx::{Ctx, hint, runtime};

/// Options of `install-all`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl install-all\n  cjm-ctl install-all --capabilities caps.yaml --only text-stats --force\n\nEntry kinds: wasm (component: or cargo:), python (package:), native (command:).\nRun `cjm-ctl validate capabilities.yaml` to check the file alone."
)]
pub struct Args {
    /// The capabilities file [default: cjm.yaml's capabilities_config, else ./capabilities.yaml]
    #[arg(long, value_name = "FILE")]
    capabilities: Option<PathBuf>,
    /// Reinstall even when nothing changed (python environments are recreated)
    #[arg(long)]
    force: bool,
    /// Only this entry (repeatable)
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// The cjm-substrate pip spec for python entries that do not name one
    #[arg(long, value_name = "SPEC")]
    substrate_source: Option<String>,
    /// Without uv on PATH, install it once into the data dir (`tools/uv`, from PyPI): Python
    /// environments then build several times faster
    #[arg(long)]
    install_uv: bool,
}

/// Prints the problems of an invalid capabilities file, one per line, and returns the error.
pub fn spec_error(e: InstallError, ctx: &Ctx) -> anyhow::Error {
    match e {
        InstallError::InvalidCapabilitiesFile { path, problems } => {
            if ctx.out.json {
                ctx.out.json(&json!({
                    "path": path,
                    "valid": false,
                    "errors": problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
                }));
            } else {
                for p in &problems {
                    eprintln!("{}: {p}", path.display());
                }
            }
            hint(
                format!(
                    "{}: {} problem(s) in the capabilities file",
                    path.display(),
                    problems.len()
                ),
                "each entry needs a name and, by kind: wasm `component:` or `cargo:`, python `package:`, native `command:`",
            )
        }
        other => anyhow::Error::new(other),
    }
}

/// The capabilities file `given` (default: cjm.yaml's `capabilities_config`), loaded and
/// validated, with every name of `names` checked to be one of its entries: what
/// `install-all`, `dev` and `estimate-size` start from.
pub fn capabilities_file(
    given: Option<&Path>,
    config: &cjm_host::config::HostConfig,
    names: &[String],
    ctx: &Ctx,
) -> anyhow::Result<install::CapabilitiesFile> {
    let path = given.map_or_else(|| config.capabilities_config.clone(), Path::to_path_buf);
    if !path.is_file() {
        return Err(hint(
            format!("capabilities file {} not found", path.display()),
            "pass --capabilities FILE or set capabilities_config in cjm.yaml (`cjm-ctl new NAME` writes one)",
        ));
    }
    let file = install::spec::load(&path).map_err(|e| spec_error(e, ctx))?;
    for name in names {
        if file.entry(name).is_none() {
            let entries: Vec<&str> = file.entries.iter().map(|e| e.name.as_str()).collect();
            return Err(hint(
                format!("no entry named '{name}' in {}", path.display()),
                format!("entries: {}", entries.join(", ")),
            ));
        }
    }
    Ok(file)
}

struct Bars {
    bars: BTreeMap<String, ProgressBar>,
    /// Each entry's current step, shown with the last line its tools wrote.
    steps: parking_lot::Mutex<BTreeMap<String, String>>,
}

impl Bars {
    /// Shows `name`'s step and, after it, `live`: the last line of its install log.
    fn show(&self, name: &str, live: &str) {
        let steps = self.steps.lock();
        if let (Some(b), Some(step)) = (self.bars.get(name), steps.get(name)) {
            if live.is_empty() {
                b.set_message(step.clone());
            } else {
                b.set_message(format!("{step} │ {live}"));
            }
        }
    }
}

impl Progress for Bars {
    fn step(&self, name: &str, step: &str) {
        self.steps.lock().insert(name.to_owned(), step.to_owned());
        self.show(name, "");
    }
}

/// Runs `install-all`.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let config = ctx.config()?;
    let file = capabilities_file(args.capabilities.as_deref(), &config, &args.only, ctx)?;
    let entries: Vec<_> = file
        .entries
        .iter()
        .filter(|e| args.only.is_empty() || args.only.contains(&e.name))
        .collect();
    let options = InstallOptions {
        force: args.force,
        only: args.only.clone(),
        substrate: args.substrate_source.clone(),
    };
    config.ensure_layout()?;
    let installer = Installer::new(config);
    let python_entries = entries
        .iter()
        .any(|e| matches!(e.source, install::Source::Python(_)));
    ensure_uv(&installer, args.install_uv, python_entries, ctx)?;

    let show_bars = ctx.out.stderr_tty && !ctx.out.json && !ctx.out.quiet;
    let (multi, bars) = progress_bars(&entries, show_bars);

    let rt = runtime()?;
    let mut reports: Vec<EntryReport> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        if !show_bars {
            ctx.out.note(format!(
                "[{}/{}] {} ({})",
                i + 1,
                entries.len(),
                entry.name,
                entry.kind()
            ));
        }
        let bar = &bars.bars[&entry.name];
        bar.reset_elapsed();
        bar.enable_steady_tick(Duration::from_millis(120));
        // What pip, uv or cargo print shows live beside the step (it all goes to the log).
        let live = install::attempt_log(installer.config(), &entry.name);
        let report = rt.block_on(async {
            let install = installer.install_entry(entry, &options, &bars);
            tokio::pin!(install);
            loop {
                tokio::select! {
                    report = &mut install => break report,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {
                        if show_bars {
                            bars.show(&entry.name, &install::last_line(&live));
                        }
                    }
                }
            }
        });
        let mark = match report.status {
            EntryStatus::Failed => "✗",
            _ => "✓",
        };
        bar.finish_with_message(format!("{mark} {}", report.status.as_str()));
        reports.push(report);
    }
    drop(bars);
    let _ = multi.clear();
    summary(&reports, ctx);

    let failed = reports
        .iter()
        .filter(|r| r.status == EntryStatus::Failed)
        .count();
    if failed > 0 {
        return Err(hint(
            format!("{failed} of {} entries failed", reports.len()),
            format!(
                "see the log tails above (full logs in {}); fix and re-run: installed entries are skipped",
                install::logs_dir(installer.config()).display()
            ),
        ));
    }
    Ok(())
}

/// uv for Python environments: installed into the data dir with `--install-uv`, else a note
/// when Python entries will be built without it.
fn ensure_uv(
    installer: &Installer,
    install_uv: bool,
    python_entries: bool,
    ctx: &Ctx,
) -> anyhow::Result<()> {
    if install_uv {
        match install::uv_binary(installer.config()) {
            Some(uv) => ctx.out.note(format!("uv: {}", uv.display())),
            None => {
                ctx.out.note("installing uv into the data dir (once)");
                let uv = runtime()?.block_on(installer.install_uv()).map_err(|e| {
                    hint(
                        format!("installing uv failed: {e}"),
                        format!(
                            "see {}",
                            install::logs_dir(installer.config())
                                .join(".uv.log")
                                .display()
                        ),
                    )
                })?;
                ctx.out.note(format!("uv: {}", uv.display()));
            }
        }
    } else if python_entries && install::uv_binary(installer.config()).is_none() {
        ctx.out.note(
            "uv is not on PATH: Python environments are built with venv + pip; `--install-uv` puts uv in the data dir once (several times faster)",
        );
    }
    Ok(())
}

/// A spinner per entry (drawn only when `show`).
fn progress_bars(entries: &[&install::Entry], show: bool) -> (MultiProgress, Bars) {
    let multi = MultiProgress::with_draw_target(if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let width = entries.iter().map(|e| e.name.len()).max().unwrap_or(4);
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} {{prefix:{width}}} {{elapsed:>4}} {{wide_msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bars = Bars {
        bars: entries
            .iter()
            .map(|e| {
                let b = multi.add(ProgressBar::new_spinner());
                b.set_style(style.clone());
                b.set_prefix(e.name.clone());
                b.set_message("waiting");
                (e.name.clone(), b)
            })
            .collect(),
        steps: parking_lot::Mutex::default(),
    };
    (multi, bars)
}

fn summary(reports: &[EntryReport], ctx: &Ctx) {
    if ctx.out.json {
        ctx.out.json(&json!({
            "entries": reports,
            "failed": reports.iter().filter(|r| r.status == EntryStatus::Failed).count(),
        }));
        return;
    }
    // (With --json they are the entries' `warnings`.)
    for r in reports {
        for w in &r.warnings {
            ctx.out.warn(format!("{}: {w}", r.name));
        }
    }
    if ctx.out.quiet {
        for r in reports.iter().filter(|r| r.status == EntryStatus::Failed) {
            eprintln!("{}: {}", r.name, r.message);
        }
        return;
    }
    let mut table = ctx
        .out
        .table(&["name", "kind", "status", "version", "time", "message"]);
    for r in reports {
        let color = match r.status {
            EntryStatus::Installed => Color::Green,
            EntryStatus::Unchanged => Color::DarkGrey,
            EntryStatus::Failed => Color::Red,
        };
        let message = match r.status {
            EntryStatus::Failed => r.message.lines().next().unwrap_or("").to_owned(),
            _ => shorten(&r.message),
        };
        table.add_row(vec![
            comfy_table::Cell::new(&r.name),
            comfy_table::Cell::new(&r.kind),
            ctx.out.cell(r.status.as_str(), color),
            comfy_table::Cell::new(r.version.as_deref().unwrap_or("-")),
            comfy_table::Cell::new(format!("{:.1}s", r.elapsed.as_secs_f64())),
            comfy_table::Cell::new(message),
        ]);
    }
    println!("{table}");
    for r in reports.iter().filter(|r| r.status == EntryStatus::Failed) {
        println!();
        println!("{} failed: {}", r.name, r.message);
        if let Some(tail) = r.log_tail.as_deref().filter(|t| !t.trim().is_empty()) {
            println!("--- last lines of {} ---", r.log.display());
            for line in tail.lines() {
                println!("  | {line}");
            }
        }
    }
}

/// `wrote /long/path/x.json` -> `wrote x.json` (the table stays narrow).
fn shorten(message: &str) -> String {
    message
        .split(' ')
        .map(|w| {
            let p = Path::new(w);
            if p.is_absolute() {
                p.file_name()
                    .map_or_else(|| w.to_owned(), |n| n.to_string_lossy().into_owned())
            } else {
                w.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
