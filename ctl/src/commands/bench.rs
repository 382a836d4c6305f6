//! `cjm-ctl bench`: how much the host adds, measured on this machine with the example
//! capabilities (installed as `demo` does) and the journal on, printed as a table of medians.
//! The divan benchmarks under `tests/benches` and `host/benches` are the detailed version.
//! With `--compare-python VENV` it also runs the same workloads through cjm-substrate's own
//! host ([`compare`]) and prints the ratios.

mod compare;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cjm_host::Host;
use cjm_host::backend::CallRequest;
use cjm_host::queue::{Composition, JobSpec, Node, OutputRef};
use serde_json::{Map, Value, json};

use crate::ctx::{Ctx, runtime};
use crate::examples;

/// Options of `cjm-ctl bench`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  cjm-ctl bench\n  cjm-ctl --data-dir /tmp/bench bench --samples 500 --burst 10000\n  cjm-ctl bench --compare-python ~/venvs/cjm-substrate\n  cjm-ctl bench --json"
)]
pub struct Args {
    #[command(flatten)]
    examples: examples::ExampleArgs,
    /// Timed repetitions of each one-at-a-time measurement (the median is shown)
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    samples: u32,
    /// Jobs submitted at once for the throughput rows
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    burst: u32,
    /// Jobs, half wasm and half native, submitted at once for the peak-memory row
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    mixed: u32,
    /// Also run the same call, job, burst and chain workloads through cjm-substrate's own
    /// host from this venv (one with `cjm-substrate` installed) and print the ratios; the
    /// workload in both hosts is cjm-substrate's echo capability run by that venv's Python
    #[arg(long, value_name = "VENV")]
    compare_python: Option<PathBuf>,
}

/// One row of the table.
struct Row {
    what: &'static str,
    value: f64,
    unit: &'static str,
}

fn kwargs(text: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("text".into(), json!(text));
    m
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn micros(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e7).round() / 10.0
}

/// The median of `n` runs of `f`.
async fn time<F, Fut>(n: u32, mut f: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut xs = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        f().await?;
        xs.push(t.elapsed());
    }
    Ok(median(xs))
}

/// Submits `specs` at once and waits for all of them; how long that took.
async fn all_at_once(host: &Host, specs: Vec<JobSpec>) -> anyhow::Result<Duration> {
    let q = host.queue();
    let t = Instant::now();
    let ids = q.submit_many(specs).await?;
    for id in &ids {
        q.wait(id, None).await?;
    }
    Ok(t.elapsed())
}

/// Jobs per second for `n` jobs submitted at once.
async fn burst(host: &Host, instance: &str, n: u32) -> anyhow::Result<f64> {
    let specs = (0..n)
        .map(|_| JobSpec::execute(instance, kwargs("a")))
        .collect();
    Ok(f64::from(n) / all_at_once(host, specs).await?.as_secs_f64())
}

/// This process's resident memory, from `/proc/self/status` (Linux): now and at its
/// peak since [`reset_peak`], in MB.
fn resident_mb() -> Option<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = |key: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((kb("VmRSS:")? / 1024.0, kb("VmHWM:")? / 1024.0))
}

/// Starts a new peak of resident memory (Linux: `5` to `/proc/self/clear_refs`).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The host's resident memory with both capabilities loaded and idle, then its peak while
/// `n` jobs, half wasm and half native, are submitted at once and waited for. None where
/// the kernel does not tell (not Linux).
async fn memory(host: &Host, n: u32) -> anyhow::Result<Option<(f64, f64)>> {
    let Some((idle, _)) = resident_mb() else {
        return Ok(None);
    };
    if !reset_peak() {
        return Ok(None);
    }
    let specs = (0..n)
        .map(|i| {
            let instance = if i % 2 == 0 {
                "text-stats"
            } else {
                "text-stats-native"
            };
            JobSpec::execute(instance, kwargs("a"))
        })
        .collect();
    all_at_once(host, specs).await?;
    Ok(resident_mb().map(|(_, peak)| (idle, peak)))
}

fn megabytes(mb: f64) -> f64 {
    (mb * 10.0).round() / 10.0
}

async fn measure(host: &Host, samples: u32, n: u32, mixed: u32) -> anyhow::Result<Vec<Row>> {
    let q = host.queue();
    let m = host.manager();
    // First runs measure each (instance, config); then admission has profiles.
    for instance in ["text-stats", "text-stats-native"] {
        for _ in 0..5 {
            let id = q.submit(JobSpec::execute(instance, kwargs("a"))).await?;
            q.wait(&id, None).await?;
        }
    }
    let mut rows = Vec::new();
    // First, before the other rows' garbage is about.
    if let Some((idle, peak)) = memory(host, mixed).await? {
        rows.push(Row {
            what: "host memory, both loaded, idle (RSS, one run)",
            value: megabytes(idle),
            unit: "MB",
        });
        rows.push(Row {
            what: "peak host memory, mixed burst (one run)",
            value: megabytes(peak),
            unit: "MB",
        });
    }
    for (instance, kind) in [("text-stats", "wasm"), ("text-stats-native", "native")] {
        let direct = time(samples, || async {
            m.call(instance, CallRequest::execute(kwargs("a"))).await?;
            Ok(())
        })
        .await?;
        let queued = time(samples, || async {
            let id = q.submit(JobSpec::execute(instance, kwargs("a"))).await?;
            q.wait(&id, None).await?;
            Ok(())
        })
        .await?;
        let jobs = if kind == "wasm" { n } else { (n / 5).max(1) };
        let rate = burst(host, instance, jobs).await?;
        let (call, one, many) = match kind {
            "wasm" => (
                "wasm call through the manager",
                "wasm job, submit to done (journaled)",
                "wasm jobs at once",
            ),
            _ => (
                "native call through the manager",
                "native job, submit to done (journaled)",
                "native jobs at once (one worker)",
            ),
        };
        rows.push(Row {
            what: call,
            value: micros(direct),
            unit: "µs",
        });
        rows.push(Row {
            what: one,
            value: micros(queued),
            unit: "µs",
        });
        rows.push(Row {
            what: many,
            value: rate.round(),
            unit: "jobs/s",
        });
    }
    let chain = Composition::new(vec![
        Node::new("a", "text-stats").arg("text", json!("a b")),
        Node::new("b", "text-stats")
            .arg("text", json!("c d"))
            .bind("after", OutputRef::whole("a")),
        Node::new("c", "text-stats-native")
            .arg("text", json!("e f"))
            .bind("after", OutputRef::field("b", "words")),
    ]);
    let composed = time(samples.div_ceil(3), || async {
        let id = q.submit_composition(chain.clone()).await?;
        q.wait_composition(&id, None).await?;
        Ok(())
    })
    .await?;
    rows.push(Row {
        what: "3-node chain (wasm, wasm, native)",
        value: micros(composed),
        unit: "µs",
    });
    Ok(rows)
}

/// Runs `bench`.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<()> {
    let config = ctx.config()?;
    // A venv that cannot run cjm-substrate is refused before anything is measured.
    let python = match &args.compare_python {
        Some(venv) => Some(compare::check(venv, &examples::workspace_root()?)?),
        None => None,
    };
    let caps = examples::prepare(ctx, &args.examples, &config)?;
    let (rows, comparison) = runtime()?.block_on(async {
        examples::install(ctx, &config, &caps).await?;
        let host = examples::host(&config).await?;
        let rows = measure(&host, args.samples, args.burst, args.mixed).await;
        host.shutdown().await?;
        let comparison = match &python {
            Some(python) => {
                ctx.out
                    .note("measuring the same workloads through this host and cjm-substrate's ...");
                let root = examples::workspace_root()?;
                Some(compare::compare(python, &root, args.samples, args.burst).await?)
            }
            None => None,
        };
        anyhow::Ok((rows?, comparison))
    })?;
    if ctx.out.json {
        let rows: Vec<Value> = rows
            .iter()
            .map(|r| json!({"what": r.what, "median": r.value, "unit": r.unit}))
            .collect();
        ctx.out.json(&json!({
            "samples": args.samples,
            "burst": args.burst,
            "mixed": args.mixed,
            "rows": rows,
            "compare_python": comparison.as_ref().map(compare::Comparison::json),
        }));
        return Ok(());
    }
    let mut table = ctx.out.table(&["measurement", "median", "unit"]);
    for r in &rows {
        table.add_row(vec![
            r.what.to_owned(),
            r.value.to_string(),
            r.unit.to_owned(),
        ]);
    }
    ctx.out.info(table);
    ctx.out.info(format!(
        "{} samples per one-at-a-time row, {} jobs per burst, {} in the mixed one; data dir {}",
        args.samples,
        args.burst,
        args.mixed,
        config.data_dir.display()
    ));
    if let Some(c) = comparison {
        let version = format!("cjm-substrate {}", c.substrate_version());
        let mut table = ctx.out.table(&[
            "echo capability (Python worker)",
            "cjm",
            &version,
            "unit",
            "cjm is",
        ]);
        for r in c.rows() {
            table.add_row(vec![
                r.what.to_owned(),
                r.ours.to_string(),
                r.theirs.map_or_else(|| "-".to_owned(), |t| t.to_string()),
                r.unit.to_owned(),
                r.times_faster
                    .map_or_else(|| "-".to_owned(), compare::verdict),
            ]);
        }
        ctx.out.info(table);
    }
    Ok(())
}
