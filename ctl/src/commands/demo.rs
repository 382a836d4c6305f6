//! `cjm-ctl demo`: the main job for a newcomer, on the embedded default (a local data dir,
//! SQLite, no services).
//!
//! 1. builds the example capabilities: `sentence-split` and `text-stats` as wasm components,
//!    `text-stats` also as a native worker (`text-stats-worker`);
//! 2. installs them with the same pipeline as `install-all` (a generated capabilities.yaml);
//! 3. runs one composition through the queue that mixes both kinds: every paragraph of a
//!    bundled text is split into sentences and counted in the wasm sandbox, and a native
//!    worker merges the counts (bound to the upstream results with `OutputRef`s);
//! 4. prints the results, checks the merge against the per-paragraph counts and shows the
//!    journal rows of the composition.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cjm_host::Host;
use cjm_host::install::{self, InstallOptions, Installer};
use cjm_host::queue::{Composition, EventKind, Node, NodeState, OutputRef, Scope};
use cjm_host::store::JournalQuery;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use crate::ctx::{Ctx, runtime};

const DEMO_TEXT: &str = include_str!("../../assets/demo.txt");

/// Options of `cjm-ctl demo`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl demo\n  cargo run --release -p cjm-ctl -- demo\n  cjm-ctl --data-dir /tmp/demo demo --json"
)]
pub struct DemoArgs {
    /// Use the components in this dir (`sentence-split.wasm`, `text-stats.wasm`) instead of
    /// building the examples
    #[arg(long, value_name = "DIR")]
    components: Option<PathBuf>,
    /// Use this `text-stats-worker` binary instead of building it
    #[arg(long, value_name = "FILE")]
    worker: Option<PathBuf>,
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the ctl crate has a parent dir")?
        .to_path_buf())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Builds the example capabilities as wasm components with the cargo that runs us.
fn build_components(ctx: &Ctx) -> anyhow::Result<PathBuf> {
    let root = workspace_root()?;
    let target_dir = root.join("target").join("wasm-examples");
    ctx.out
        .note("building the example capabilities for wasm32-wasip2 ...");
    let status = cargo()
        .current_dir(&root)
        .args(["build", "--release", "--lib", "--target", "wasm32-wasip2"])
        .args(["-p", "text-stats", "-p", "sentence-split", "--target-dir"])
        .arg(&target_dir)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .status()
        .context("cannot run cargo to build the examples")?;
    if !status.success() {
        bail!(
            "building the examples failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`)"
        );
    }
    let out = target_dir.join("wasm32-wasip2").join("release");
    for (from, to) in [
        ("sentence_split.wasm", "sentence-split.wasm"),
        ("text_stats.wasm", "text-stats.wasm"),
    ] {
        std::fs::copy(out.join(from), out.join(to)).with_context(|| format!("copying {from}"))?;
    }
    Ok(out)
}

/// Builds the native `text-stats-worker` (release, the workspace's target dir).
fn build_worker(ctx: &Ctx) -> anyhow::Result<PathBuf> {
    let root = workspace_root()?;
    ctx.out.note("building the native text-stats-worker ...");
    let status = cargo()
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "text-stats",
            "--bin",
            "text-stats-worker",
        ])
        .status()
        .context("cannot run cargo to build the native worker")?;
    if !status.success() {
        bail!("building text-stats-worker failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join("text-stats-worker"))
}

/// The paragraphs of the bundled text.
fn paragraphs() -> Vec<&'static str> {
    DEMO_TEXT
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// Split and count every paragraph in wasm; merge in the native worker.
fn composition(paragraphs: &[&str]) -> Composition {
    let mut nodes = Vec::new();
    let mut merge = Node::new("merge", "text-stats-native").task("text_statistics", "merge_stats");
    for (i, text) in paragraphs.iter().enumerate() {
        nodes.push(Node::new(format!("split-{i}"), "sentence-split").arg("text", json!(text)));
        nodes.push(Node::new(format!("count-{i}"), "text-stats").arg("text", json!(text)));
        merge = merge
            .bind(
                format!("sentences_{i}"),
                OutputRef::whole(format!("split-{i}")),
            )
            .bind(format!("stats_{i}"), OutputRef::whole(format!("count-{i}")));
    }
    nodes.push(merge);
    let mut c = Composition::new(nodes);
    c.run_id = Some(format!("demo-{}", uuid_like()));
    c.actor = Some("cjm-ctl demo".into());
    c
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}")
}

/// Runs the demo.
pub fn run(args: DemoArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let config = ctx.config()?;
    let components = match args.components {
        Some(dir) => dir,
        None => build_components(ctx)?,
    };
    let worker = match args.worker {
        Some(path) => path,
        None => build_worker(ctx)?,
    };
    // The generated capabilities.yaml lives in the data dir: name everything absolutely.
    let absolute = |p: PathBuf, what: &str| {
        std::path::absolute(&p).with_context(|| format!("{what} {}", p.display()))
    };
    let components = absolute(components, "components dir")?;
    let worker = absolute(worker, "worker")?;
    config.ensure_layout()?;
    let started = Instant::now();
    // The same declarative install an operator writes, generated for the examples.
    let caps = config.data_dir.join("demo-capabilities.yaml");
    let yaml = format!(
        "# Written by `cjm-ctl demo`.\ncapabilities:\n  - name: sentence-split\n    kind: wasm\n    component: {split}\n  - name: text-stats\n    kind: wasm\n    component: {stats}\n    sandbox:\n      pool_size: 2\n      max_concurrency: 2\n  - name: text-stats-native\n    kind: native\n    command: [{worker}]\n",
        split = json!(components.join("sentence-split.wasm")),
        stats = json!(components.join("text-stats.wasm")),
        worker = json!(worker),
    );
    std::fs::write(&caps, yaml).with_context(|| format!("writing {}", caps.display()))?;
    let file = install::spec::load(&caps)?;
    let rt = runtime()?;
    rt.block_on(async {
        let installer = Installer::new(config.clone());
        let reports = installer
            .install_all(&file, &InstallOptions::default(), &install::NoProgress)
            .await?;
        for r in &reports {
            ctx.out.info(format!(
                "  {:<18} {:<7} {:<10} {:>7.1} ms",
                r.name,
                r.kind,
                r.status.as_str(),
                r.elapsed.as_secs_f64() * 1000.0
            ));
            if r.status == install::EntryStatus::Failed {
                bail!(
                    "installing {} failed: {}\n{}",
                    r.name,
                    r.message,
                    r.log_tail.clone().unwrap_or_default()
                );
            }
        }
        let host = Host::builder()
            .config(config.clone())
            .load("sentence-split")
            .load("text-stats")
            .load("text-stats-native")
            .build()
            .await?;
        let outcome = run_composition(ctx, &host).await;
        host.shutdown().await?;
        outcome
    })?;
    ctx.out.info(format!(
        "done in {:.2} s (after the build); data dir: {}",
        started.elapsed().as_secs_f64(),
        config.data_dir.display()
    ));
    Ok(())
}

async fn run_composition(ctx: &Ctx, host: &Host) -> anyhow::Result<()> {
    let paragraphs = paragraphs();
    let comp = composition(&paragraphs);
    let total = comp.nodes.len() as u64;
    let q = host.queue();
    let mut events = q.subscribe(Scope::All);
    let t = Instant::now();
    let id = q.submit_composition(comp)?;
    ctx.out.info(format!(
        "composition {id}: {total} nodes ({} paragraphs x split + count in wasm, 1 merge in a native worker)",
        paragraphs.len()
    ));
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if ctx.out.stderr_tty && !ctx.out.quiet && !ctx.out.json {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} nodes {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let wait = q.wait_composition(&id, Some(Duration::from_secs(120)));
    tokio::pin!(wait);
    let run = loop {
        tokio::select! {
            run = &mut wait => break run?,
            Some(e) = events.next() => {
                if e.composition_id.as_deref() == Some(id.as_str())
                    && e.kind == EventKind::StateTransition
                    && e.payload["to"] != "running"
                {
                    bar.inc(1);
                    bar.set_message(format!("{} {}", e.node_id.unwrap_or_default(), e.payload["to"].as_str().unwrap_or("")));
                }
            }
        }
    };
    bar.finish_and_clear();
    let elapsed = t.elapsed();
    if run.status != NodeState::Completed {
        let failed: Vec<String> = run
            .nodes
            .iter()
            .filter(|(_, n)| n.state != NodeState::Completed)
            .map(|(id, n)| {
                format!(
                    "{id}: {} {}",
                    n.state.as_str(),
                    n.error.as_ref().map(|e| e.message.as_str()).unwrap_or("")
                )
            })
            .collect();
        bail!(
            "the composition ended {}: {}",
            run.status.as_str(),
            failed.join("; ")
        );
    }
    let result = |node: &str| run.nodes[node].result.clone().unwrap_or(Value::Null);
    // The merge must agree with the per-paragraph results it was bound to.
    let merged = result("merge");
    let (mut words, mut sentences) = (0, 0);
    let mut table = ctx
        .out
        .table(&["paragraph", "sentences (wasm)", "words (wasm)", "chars"]);
    for i in 0..paragraphs.len() {
        let split = result(&format!("split-{i}"));
        let stats = result(&format!("count-{i}"));
        let n = split["data"]["spans"].as_array().map_or(0, Vec::len);
        sentences += n;
        words += stats["words"].as_u64().unwrap_or(0);
        table.add_row(vec![
            format!("{}", i + 1),
            n.to_string(),
            stats["words"].to_string(),
            stats["chars"].to_string(),
        ]);
    }
    if merged["words"].as_u64() != Some(words)
        || merged["sentences"].as_u64() != Some(sentences as u64)
    {
        bail!("the native merge disagrees with the wasm counts: {merged}");
    }
    let journal = host.manager().journal().query(&JournalQuery {
        composition_id: Some(id.clone()),
        ..JournalQuery::default()
    })?;
    if ctx.out.json {
        ctx.out.json(&json!({
            "composition": id,
            "status": run.status.as_str(),
            "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
            "merged": merged,
            "results": run.results(),
            "journal_rows": journal.len(),
        }));
        return Ok(());
    }
    ctx.out.info(table);
    ctx.out.info(format!(
        "merged in the native worker: {} sentences, {} words, {} chars, top words {}",
        merged["sentences"], merged["words"], merged["chars"], merged["top_words"]
    ));
    ctx.out.info(format!(
        "composition {} in {:.1} ms; {} journal rows, the last ones:",
        run.status.as_str(),
        elapsed.as_secs_f64() * 1000.0,
        journal.len()
    ));
    for e in journal.iter().rev().take(6).rev() {
        let what = match e.event_type.as_str() {
            "state_transition" => format!(
                "{} -> {}",
                e.payload["from"].as_str().unwrap_or(""),
                e.payload["to"].as_str().unwrap_or("")
            ),
            "composition_finished" => e.payload["status"].as_str().unwrap_or("").to_owned(),
            "admission_decided" => {
                format!("lanes {}/{}", e.payload["lanes_in_use"], e.payload["lanes"])
            }
            _ => String::new(),
        };
        ctx.out.info(format!(
            "  #{:<5} {:<22} {:<8} {:<18} {what}",
            e.seq.unwrap_or(0),
            e.event_type,
            e.node_id.as_deref().unwrap_or("-"),
            e.capability_instance_id.as_deref().unwrap_or("-"),
        ));
    }
    Ok(())
}
