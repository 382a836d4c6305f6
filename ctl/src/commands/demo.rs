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

use std::time::{Duration, Instant};

use anyhow::bail;
use cjm_host::Host;
use cjm_host::queue::{Composition, Node, NodeState, OutputRef, Scope};
use cjm_host::store::JournalQuery;
use serde_json::{Value, json};

use crate::ctx::{Ctx, runtime};
use crate::{examples, follow};

const DEMO_TEXT: &str = include_str!("../../assets/demo.txt");

/// Options of `cjm-ctl demo`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl demo\n  cargo run -p cjm-ctl -- demo\n  cjm-ctl --data-dir /tmp/demo demo --json"
)]
pub struct DemoArgs {
    #[command(flatten)]
    examples: examples::ExampleArgs,
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
    let caps = examples::prepare(ctx, &args.examples, &config)?;
    let started = Instant::now();
    let rt = runtime()?;
    rt.block_on(async {
        examples::install(ctx, &config, &caps).await?;
        let host = examples::host(&config).await?;
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
    let events = q.subscribe(Scope::All);
    let t = Instant::now();
    let id = q.submit_composition(comp).await?;
    ctx.out.info(format!(
        "composition {id}: {total} nodes ({} paragraphs x split + count in wasm, 1 merge in a native worker)",
        paragraphs.len()
    ));
    let run =
        follow::composition(ctx, q, events, &id, total, Some(Duration::from_secs(120))).await?;
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
