//! The example capabilities, built and installed the way an operator would: `sentence-split`
//! and `text-stats` as wasm components, `text-stats` also as a native worker, from a
//! generated capabilities.yaml through the `install-all` pipeline. Shared by `demo` and
//! `bench`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use cjm_host::Host;
use cjm_host::config::HostConfig;
use cjm_host::install::{self, InstallOptions, Installer};
use serde_json::json;

use crate::ctx::Ctx;

/// Where the examples come from.
#[derive(Debug, Clone, clap::Args)]
pub struct ExampleArgs {
    /// Use the components in this dir (`sentence-split.wasm`, `text-stats.wasm`) instead of
    /// building the examples
    #[arg(long, value_name = "DIR")]
    pub components: Option<PathBuf>,
    /// Use this `text-stats-worker` binary instead of building it
    #[arg(long, value_name = "FILE")]
    pub worker: Option<PathBuf>,
}

/// The checkout the examples (and `bench`'s comparison assets) come from.
pub fn workspace_root() -> anyhow::Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the ctl crate has a parent dir")?
        .to_path_buf())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Builds the example capabilities as wasm components with the cargo that runs us.
pub fn build_components(ctx: &Ctx) -> anyhow::Result<PathBuf> {
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

/// Builds the native `text-stats-worker` in the workspace's target dir, in the profile this
/// cjm-ctl was built with: a debug `cargo run -p cjm-ctl -- demo` reuses what the debug
/// build (and `cargo test`) compiled, a release one (benchmarks) gets a release worker.
pub fn build_worker(ctx: &Ctx) -> anyhow::Result<PathBuf> {
    let root = workspace_root()?;
    let release = !cfg!(debug_assertions);
    ctx.out.note("building the native text-stats-worker ...");
    let mut cmd = cargo();
    cmd.current_dir(&root).arg("build");
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .args(["-p", "text-stats", "--bin", "text-stats-worker"])
        .status()
        .context("cannot run cargo to build the native worker")?;
    if !status.success() {
        bail!("building text-stats-worker failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let profile = if release { "release" } else { "debug" };
    Ok(target.join(profile).join("text-stats-worker"))
}

/// Builds what is not given and writes the capabilities.yaml installing the examples into
/// the data dir; returns its path.
pub fn prepare(ctx: &Ctx, args: &ExampleArgs, config: &HostConfig) -> anyhow::Result<PathBuf> {
    let components = match &args.components {
        Some(dir) => dir.clone(),
        None => build_components(ctx)?,
    };
    let worker = match &args.worker {
        Some(path) => path.clone(),
        None => build_worker(ctx)?,
    };
    // The generated capabilities.yaml lives in the data dir: name everything absolutely.
    let absolute = |p: PathBuf, what: &str| {
        std::path::absolute(&p).with_context(|| format!("{what} {}", p.display()))
    };
    let components = absolute(components, "components dir")?;
    let worker = absolute(worker, "worker")?;
    config.ensure_layout()?;
    let caps = config.data_dir.join("examples-capabilities.yaml");
    let yaml = format!(
        "# Written by `cjm-ctl` (demo, bench).\ncapabilities:\n  - name: sentence-split\n    kind: wasm\n    component: {split}\n  - name: text-stats\n    kind: wasm\n    component: {stats}\n    sandbox:\n      pool_size: 2\n      max_concurrency: 2\n  - name: text-stats-native\n    kind: native\n    command: [{worker}]\n",
        split = json!(components.join("sentence-split.wasm")),
        stats = json!(components.join("text-stats.wasm")),
        worker = json!(worker),
    );
    std::fs::write(&caps, yaml).with_context(|| format!("writing {}", caps.display()))?;
    Ok(caps)
}

/// Installs the examples (unchanged ones are skipped), a line per entry.
pub async fn install(ctx: &Ctx, config: &HostConfig, caps: &Path) -> anyhow::Result<()> {
    let file = install::spec::load(caps)?;
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
    Ok(())
}

/// A host with the three examples loaded (instance ids = capability names).
pub async fn host(config: &HostConfig) -> anyhow::Result<Host> {
    Ok(Host::builder()
        .config(config.clone())
        .load("sentence-split")
        .load("text-stats")
        .load("text-stats-native")
        .build()
        .await?)
}
