//! `cjm-ctl demo`: builds the example capabilities for wasm32-wasip2, loads them into the
//! sandbox from a data dir (precompiled once, cached), splits a bundled text into sentences
//! with `sentence-split` and fans out `text-stats` over every sentence on a pool of instances.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use cjm_host::backend::wasm::{SandboxGrants, WasmBackend, WasmRuntime};
use cjm_host::backend::{Backend, CallControl, CallRequest, NoDiagnostics};
use serde_json::{Value, json};

const DEMO_TEXT: &str = include_str!("../../assets/demo.txt");

/// Options of `cjm-ctl demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The data dir (created if missing).
    #[arg(long, default_value = ".cjm", env = "CJM_DATA_DIR")]
    data_dir: PathBuf,
    /// Use these components instead of building the examples (`sentence-split.wasm`,
    /// `text-stats.wasm` in this dir).
    #[arg(long)]
    components: Option<PathBuf>,
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let components = match args.components {
        Some(dir) => dir,
        None => build_examples()?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(demo(&args.data_dir, &components))
}

/// Builds the example capabilities as wasm components with the cargo that runs us.
fn build_examples() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the ctl crate has a parent dir")?;
    let target_dir = root.join("target").join("wasm-examples");
    println!("building the example capabilities for wasm32-wasip2 ...");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
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

async fn demo(data_dir: &Path, components: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let runtime = WasmRuntime::new(Some(data_dir.join("cache")))?;
    let load = |name: &str, grants: SandboxGrants| -> anyhow::Result<WasmBackend> {
        let path = components.join(format!("{name}.wasm"));
        let t = Instant::now();
        let b = WasmBackend::load(&runtime, &path, grants, Arc::new(NoDiagnostics))?;
        println!(
            "loaded {:<15} {} v{} in {:.1} ms",
            name,
            b.info().name,
            b.info().version,
            ms(t)
        );
        Ok(b)
    };
    let splitter = load("sentence-split", SandboxGrants::default())?;
    let stats = load(
        "text-stats",
        SandboxGrants {
            max_instances: 2,
            ..SandboxGrants::default()
        },
    )?;
    splitter.initialize(json!({"language": "en"})).await?;
    stats
        .initialize(json!({"case_sensitive": false, "top_n": 2}))
        .await?;

    let t = Instant::now();
    let seg = splitter
        .call(
            CallRequest::task(
                "sentence_segmentation",
                "segment_text",
                obj(json!({"text": DEMO_TEXT})),
            ),
            Arc::new(CallControl::new()),
        )
        .await?;
    let spans = seg["data"]["spans"].as_array().cloned().unwrap_or_default();
    println!(
        "\nsentence-split found {} sentences in {:.2} ms",
        spans.len(),
        ms(t)
    );

    let chars: Vec<char> = DEMO_TEXT.chars().collect();
    let sentences: Vec<String> = spans
        .iter()
        .map(|s| {
            let (a, b) = (as_index(&s["start_char"]), as_index(&s["end_char"]));
            chars[a.min(chars.len())..b.min(chars.len())]
                .iter()
                .collect()
        })
        .collect();

    let t = Instant::now();
    let calls = sentences.iter().map(|sentence| {
        let stats = stats.clone();
        let req = CallRequest::task(
            "text_statistics",
            "compute_stats",
            obj(json!({"text": sentence})),
        );
        tokio::spawn(async move { stats.call(req, Arc::new(CallControl::new())).await })
    });
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await??);
    }
    println!(
        "text-stats ran {} calls on a pool of 2 instances in {:.2} ms\n",
        results.len(),
        ms(t)
    );

    let mut total_words = 0;
    for (i, (sentence, r)) in sentences.iter().zip(&results).enumerate() {
        total_words += r["words"].as_u64().unwrap_or(0);
        let short: String = sentence.chars().take(60).collect();
        let ellipsis = if sentence.chars().count() > 60 {
            "..."
        } else {
            ""
        };
        println!(
            "{:>2}. {:>3} words  top {:<28} {short}{ellipsis}",
            i + 1,
            r["words"].as_u64().unwrap_or(0),
            r["top_words"].to_string()
        );
    }
    println!(
        "\n{} sentences, {total_words} words; done in {:.0} ms",
        sentences.len(),
        ms(started)
    );
    Ok(())
}

fn obj(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

fn as_index(v: &Value) -> usize {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
