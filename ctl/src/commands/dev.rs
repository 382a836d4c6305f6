//! `cjm-ctl dev`: the author's loop against a running host. It watches the local sources of
//! a `capabilities.yaml`'s entries; when one changes (and has settled), it reinstalls the
//! entry (build, introspect, manifest: the `install-all` pipeline) and reloads its instances
//! in the host serving the data dir (loading one when none is), so the next call runs the
//! new code while the host's queue and other capabilities stay up. A failed build is shown
//! and the last good one keeps serving (a component or a cargo-built worker is copied into
//! the data dir only once it proved to work; a Python package is installed into its live
//! environment, so there a broken edit is what the next load gets).
//!
//! Sources are polled (a stamp of file count, size and newest mtime every `--poll-ms`),
//! which works on every filesystem, bind mounts and network shares included, where inotify
//! events may never arrive.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cjm_host::client::Client;
use cjm_host::install::{self, EntryStatus, InstallOptions, Installer, NoProgress};
use serde_json::{Value, json};

use crate::ctx::{Ctx, hint, runtime};

/// Options of `dev`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    cjm-ctl serve &                                   # the host to reload into\n  \
    cjm-ctl dev                                       # every entry with a local source\n  \
    cjm-ctl dev word-count --capabilities word-count/capabilities.yaml")]
pub struct Args {
    /// The entries to watch [default: every entry whose source is local]
    names: Vec<String>,
    /// The capabilities file [default: cjm.yaml's capabilities_config, else ./capabilities.yaml]
    #[arg(long, value_name = "FILE")]
    capabilities: Option<PathBuf>,
    /// How often sources are checked, in milliseconds
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    poll_ms: u64,
}

struct Watched {
    entry: install::Entry,
    source: PathBuf,
    stamp: Option<String>,
}

/// Runs `dev` until interrupted.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let config = ctx.config()?;
    let file = super::install_all::capabilities_file(
        args.capabilities.as_deref(),
        &config,
        &args.names,
        ctx,
    )?;
    let mut watched: Vec<Watched> = Vec::new();
    for entry in &file.entries {
        if !args.names.is_empty() && !args.names.contains(&entry.name) {
            continue;
        }
        match install::watched_source(entry) {
            Some(source) => watched.push(Watched {
                entry: entry.clone(),
                stamp: install::source_stamp(&source),
                source,
            }),
            None => ctx.out.note(format!(
                "{}: its source is not local (PyPI, PATH): nothing to watch",
                entry.name
            )),
        }
    }
    if watched.is_empty() {
        return Err(hint(
            "no entry with a local source to watch",
            "dev watches cargo workspaces, component and program files, and Python package dirs",
        ));
    }
    let Some(client) = ctx.client()? else {
        return Err(hint(
            format!("no host serves {}", config.data_dir.display()),
            "start `cjm-ctl serve` first (in another terminal): dev reloads into it",
        ));
    };
    config.ensure_layout()?;
    let installer = Installer::new(config);
    let rt = runtime()?;
    rt.block_on(async {
        client
            .health()
            .await
            .map_err(|e| hint(e.to_string(), "is `cjm-ctl serve` still running?"))?;
        for w in &watched {
            ctx.out.note(format!(
                "watching {} for {} ({})",
                w.source.display(),
                w.entry.name,
                w.entry.kind()
            ));
            deploy(&installer, &client, &w.entry, ctx).await;
        }
        let poll = Duration::from_millis(args.poll_ms);
        let watch = async {
            loop {
                tokio::time::sleep(poll).await;
                for w in &mut watched {
                    let now = install::source_stamp(&w.source);
                    if now == w.stamp {
                        continue;
                    }
                    // Let a save (or a checkout) finish before building.
                    let mut settled = now;
                    loop {
                        tokio::time::sleep(poll.min(Duration::from_millis(300))).await;
                        let again = install::source_stamp(&w.source);
                        if again == settled {
                            break;
                        }
                        settled = again;
                    }
                    w.stamp = settled;
                    ctx.out.note(format!("{}: changed", w.entry.name));
                    deploy(&installer, &client, &w.entry, ctx).await;
                }
            }
        };
        tokio::select! {
            () = watch => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

/// Reinstalls `entry` (left alone when nothing changed) and brings the host's instances of
/// it up to date; reports failures and carries on.
async fn deploy(installer: &Installer, client: &Client, entry: &install::Entry, ctx: &Ctx) {
    let started = Instant::now();
    let report = installer
        .install_entry(entry, &InstallOptions::default(), &NoProgress)
        .await;
    if report.status == EntryStatus::Failed {
        ctx.out.warn(format!(
            "{}: install failed: {} (loaded instances keep running the previous version){}",
            entry.name,
            report.message,
            report
                .log_tail
                .as_deref()
                .map(|t| format!("\n{t}"))
                .unwrap_or_default()
        ));
        emit(ctx, &entry.name, "failed", &report.message);
        return;
    }
    match reload(client, &entry.name).await {
        Ok(instances) => {
            let version = report.version.as_deref().unwrap_or("?");
            let what = format!(
                "{} {version} {} in {:.1} s; live in {}",
                entry.name,
                report.status.as_str(),
                started.elapsed().as_secs_f64(),
                instances.join(", ")
            );
            ctx.out.note(&what);
            emit(ctx, &entry.name, "reloaded", &what);
        }
        Err(e) => {
            ctx.out.warn(format!(
                "{}: installed, but the host did not take it: {e}",
                entry.name
            ));
            emit(ctx, &entry.name, "failed", &e.to_string());
        }
    }
}

/// With `--json`, one line per outcome on stdout.
fn emit(ctx: &Ctx, name: &str, status: &str, message: &str) {
    if ctx.out.json {
        println!(
            "{}",
            json!({"name": name, "status": status, "message": message})
        );
    }
}

/// Reloads every instance of capability `name` in the host (loads one when none is);
/// returns their ids.
async fn reload(client: &Client, name: &str) -> anyhow::Result<Vec<String>> {
    let list = client
        .json(reqwest::Method::GET, "/v1/capabilities", None)
        .await?;
    let ids: Vec<String> = list["capabilities"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == name)
        .flat_map(|c| c["instances"].as_array().cloned().unwrap_or_default())
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect();
    if ids.is_empty() {
        let loaded = client
            .json(
                reqwest::Method::POST,
                &format!("/v1/capabilities/{name}/load"),
                Some(&Value::Object(serde_json::Map::new())),
            )
            .await?;
        return Ok(vec![loaded["id"].as_str().unwrap_or(name).to_owned()]);
    }
    for id in &ids {
        client
            .json(
                reqwest::Method::POST,
                &format!("/v1/capabilities/{id}/reload"),
                None,
            )
            .await?;
    }
    Ok(ids)
}
