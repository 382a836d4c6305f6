//! `cjm-ctl bench --compare-python VENV`: the same workloads through this host and through
//! cjm-substrate's own host (its `CapabilityManager` and `JobQueue`, run by
//! `assets/bench/compare_python.py` with the venv's interpreter), on the same capability (the
//! echo capability written for cjm-substrate's worker, from the same venv), in the same run,
//! with the ratios: what a user migrating sees on their machine.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cjm_host::Host;
use cjm_host::backend::CallRequest;
use cjm_host::queue::{Composition, JobSpec, Node, OutputRef};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{median, micros, time};

const ECHO: &str = "cjm-capability-echo";
const ADAPTER: &str = "adapter-echo-EchoTaskAdapter.json";

/// One host's figures: each a median but the burst rate and the load time.
#[derive(Debug, Deserialize)]
pub struct Figures {
    load_ms: f64,
    call_us: f64,
    job_us: f64,
    burst_jobs_per_s: f64,
    chain_us: Option<f64>,
    #[serde(default)]
    substrate_version: Option<String>,
}

/// Both hosts' figures, this one's first.
pub struct Comparison {
    ours: Figures,
    theirs: Figures,
}

fn echo(text: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("action".into(), json!("echo"));
    m.insert("text".into(), json!(text));
    m
}

/// The venv's interpreter, checked to import `cjm_substrate`, once the checkout's files the
/// comparison runs (the script, the echo capability and its manifests) are found: all
/// refused before anything is measured.
pub fn check(venv: &Path, root: &Path) -> anyhow::Result<PathBuf> {
    for needed in [script(root), echo_source(root), fixtures(root)] {
        if !needed.exists() {
            bail!(
                "{} is missing: --compare-python runs from a checkout of cjm",
                needed.display()
            );
        }
    }
    let python = venv.join("bin").join("python");
    if !python.is_file() {
        bail!(
            "{} is not a virtual environment (no bin/python); pass the venv cjm-substrate is installed in",
            venv.display()
        );
    }
    let ok = std::process::Command::new(&python)
        .args(["-c", "import cjm_substrate"])
        .stderr(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !ok.success() {
        bail!(
            "{} cannot import cjm_substrate: install it into that venv (`pip install cjm-substrate`)",
            python.display()
        );
    }
    Ok(python)
}

/// A data dir holding the echo capability's manifest as cjm-substrate writes it, pointed at
/// `python` and the capability's source, with its task adapter's manifest.
fn echo_data_dir(root: &Path, python: &Path) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("cjm-bench-echo-")
        .tempdir()?;
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let fixtures = fixtures(root);
    let path = fixtures.join(format!("{ECHO}.json"));
    let mut m: Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
    )?;
    m["install"]["python_path"] = json!(python);
    m["install"]["env_vars"] = json!({"PYTHONPATH": echo_source(root)});
    std::fs::write(
        manifests.join(format!("{ECHO}.json")),
        serde_json::to_vec_pretty(&m)?,
    )?;
    std::fs::copy(fixtures.join(ADAPTER), manifests.join(ADAPTER))?;
    Ok(dir)
}

fn fixtures(root: &Path) -> PathBuf {
    root.join("host/tests/fixtures/python/manifests")
}

fn echo_source(root: &Path) -> PathBuf {
    root.join("host/tests/fixtures/python/capability/cjm-capability-echo")
}

/// The workloads of `compare_python.py`, through this host.
async fn ours(data: &Path, samples: u32, burst: u32) -> anyhow::Result<Figures> {
    let host = Host::builder().data_dir(data).build().await?;
    // What the script times: the manager's load (spawn, ready, drift checks, initialize).
    let started = Instant::now();
    host.manager().load(ECHO, None, Some(ECHO)).await?;
    let load = started.elapsed();
    let figures = measure(&host, samples, burst).await;
    host.shutdown().await?;
    let (call, job, rate, chain) = figures?;
    Ok(Figures {
        load_ms: (load.as_secs_f64() * 1e4).round() / 10.0,
        call_us: micros(call),
        job_us: micros(job),
        burst_jobs_per_s: rate.round(),
        chain_us: Some(micros(chain)),
        substrate_version: None,
    })
}

async fn measure(
    host: &Host,
    samples: u32,
    burst: u32,
) -> anyhow::Result<(Duration, Duration, f64, Duration)> {
    let (q, m) = (host.queue(), host.manager());
    for _ in 0..5 {
        let id = q.submit(JobSpec::execute(ECHO, echo("a"))).await?;
        q.wait(&id, None).await?;
    }
    m.call(ECHO, CallRequest::execute(echo("a"))).await?;
    let call = time(samples, || async {
        m.call(ECHO, CallRequest::execute(echo("a"))).await?;
        Ok(())
    })
    .await?;
    let job = time(samples, || async {
        let id = q.submit(JobSpec::execute(ECHO, echo("a"))).await?;
        q.wait(&id, None).await?;
        Ok(())
    })
    .await?;
    // As the script does: submitted one by one, then all waited for.
    let t = Instant::now();
    let mut ids = Vec::with_capacity(burst as usize);
    for _ in 0..burst {
        ids.push(q.submit(JobSpec::execute(ECHO, echo("a"))).await?);
    }
    for id in &ids {
        q.wait(id, None).await?;
    }
    let rate = f64::from(burst) / t.elapsed().as_secs_f64();
    let chain = Composition::new(vec![
        Node::new("a", ECHO)
            .arg("action", json!("echo"))
            .arg("text", json!("a b")),
        Node::new("b", ECHO)
            .arg("action", json!("echo"))
            .bind("text", OutputRef::field("a", "text")),
        Node::new("c", ECHO)
            .arg("action", json!("echo"))
            .bind("text", OutputRef::field("b", "text")),
    ]);
    let mut xs = Vec::new();
    for _ in 0..(samples / 3).max(1) {
        let t = Instant::now();
        let id = q.submit_composition(chain.clone()).await?;
        q.wait_composition(&id, None).await?;
        xs.push(t.elapsed());
    }
    Ok((call, job, rate, median(xs)))
}

/// How long cjm-substrate's host may take for all its workloads.
const THEIRS_LIMIT: Duration = Duration::from_secs(1800);

fn script(root: &Path) -> PathBuf {
    root.join("ctl/assets/bench/compare_python.py")
}

/// The same workloads through cjm-substrate's host, by its own script in the venv.
async fn theirs(python: &Path, root: &Path, samples: u32, burst: u32) -> anyhow::Result<Figures> {
    let script = script(root);
    let mut command = tokio::process::Command::new(python);
    command
        .arg(&script)
        .args([
            "--samples",
            &samples.to_string(),
            "--burst",
            &burst.to_string(),
        ])
        .arg("--echo-dir")
        .arg(echo_source(root))
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    let out = tokio::time::timeout(THEIRS_LIMIT, command.output())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "cjm-substrate's host did not finish within {} s",
                THEIRS_LIMIT.as_secs()
            )
        })?
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "cjm-substrate's host could not be measured ({}; its error is above)",
            out.status
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{} printed no result: {}",
            script.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Measures both hosts: this one first, then cjm-substrate's (never at once: they would
/// share the cores).
pub async fn compare(
    python: &Path,
    root: &Path,
    samples: u32,
    burst: u32,
) -> anyhow::Result<Comparison> {
    let data = echo_data_dir(root, python)?;
    let ours = ours(data.path(), samples, burst).await?;
    let theirs = theirs(python, root, samples, burst).await?;
    Ok(Comparison { ours, theirs })
}

/// One workload's figures in both hosts.
pub struct Compared {
    pub what: &'static str,
    pub ours: f64,
    pub theirs: Option<f64>,
    pub unit: &'static str,
    /// How many times faster this host is: its rate over theirs, or their time over its own.
    pub times_faster: Option<f64>,
}

impl Compared {
    /// A time (lower is better).
    fn time(what: &'static str, unit: &'static str, ours: f64, theirs: Option<f64>) -> Self {
        Compared {
            what,
            ours,
            theirs,
            unit,
            times_faster: theirs.and_then(|t| ratio(t, ours)),
        }
    }
}

impl Comparison {
    /// The workloads, in the order the table shows them.
    pub fn rows(&self) -> Vec<Compared> {
        let (a, b) = (&self.ours, &self.theirs);
        vec![
            Compared::time(
                "load: spawn, ready, initialize",
                "ms",
                a.load_ms,
                Some(b.load_ms),
            ),
            Compared::time("call through the manager", "µs", a.call_us, Some(b.call_us)),
            Compared::time(
                "job, submit to done (journaled)",
                "µs",
                a.job_us,
                Some(b.job_us),
            ),
            Compared {
                what: "jobs submitted one by one, then awaited",
                ours: a.burst_jobs_per_s,
                theirs: Some(b.burst_jobs_per_s),
                unit: "jobs/s",
                times_faster: ratio(a.burst_jobs_per_s, b.burst_jobs_per_s),
            },
            Compared::time(
                "3-node chain, submit to finished",
                "µs",
                a.chain_us.unwrap_or(f64::NAN),
                b.chain_us,
            ),
        ]
    }

    /// The cjm-substrate version measured.
    pub fn substrate_version(&self) -> &str {
        self.theirs.substrate_version.as_deref().unwrap_or("?")
    }

    /// Both hosts' figures as JSON.
    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows()
            .into_iter()
            .map(|r| {
                json!({"what": r.what, "cjm": r.ours, "cjm_substrate": r.theirs, "unit": r.unit, "times_faster": r.times_faster})
            })
            .collect();
        json!({"cjm_substrate_version": self.substrate_version(), "rows": rows})
    }
}

/// How this host compares, from how many times better it is: "2.4x faster", "1.3x slower".
pub fn verdict(times: f64) -> String {
    if (0.95..=1.05).contains(&times) {
        "about the same".to_owned()
    } else if times > 1.0 {
        format!("{times:.1}x faster")
    } else {
        format!("{:.1}x slower", 1.0 / times)
    }
}

/// `n / d` to two decimals, when both are positive.
fn ratio(n: f64, d: f64) -> Option<f64> {
    (n > 0.0 && d > 0.0).then(|| (n / d * 100.0).round() / 100.0)
}
