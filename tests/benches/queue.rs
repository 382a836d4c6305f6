//! Job queue benchmarks, journal on (every job writes its admission and state rows):
//! - `throughput_wasm_noop` / `throughput_native`: a burst of jobs submitted at once, to done;
//!   `throughput_wasm_noop_per_call` the wasm one under `isolation: per_call` (a fresh
//!   instance for every job);
//! - `one_at_a_time_wasm_noop`: submit, then wait for done (journaled), one job at a time;
//!   `untraced` as a host runs with no trace exporter (its spans disabled at their callsites),
//!   `traced` with the host's spans built by an OpenTelemetry layer (not exported);
//! - `one_at_a_time_for_outcome`: the same through `submit_for_outcome` (what `/execute`
//!   over HTTP and an MCP tool call use: the submission committed with the outcome);
//! - `chain_3_nodes`: a 3-node composition of wasm no-ops, submit to finished;
//! - `admission_with_parked_jobs`: a no-op submitted and awaited while 0 or 10,000 jobs wait
//!   on a busy instance (skip-ahead must not scan them);
//! - `submit_parked`: one more job parked behind a busy instance (allocations = memory per
//!   pending job, from divan's allocation profiler).
//!
//! `cargo bench -p cjm-tests --bench queue`
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use cjm_host::Host;
use cjm_host::backend::CallRequest;
use cjm_host::config::QueueConfig;
use cjm_host::queue::{Composition, JobSpec, Node, OutputRef};
use cjm_tests::{fixtures, kwargs, native_install, wasm_install, write_manifest};
use divan::counter::ItemsCount;
use divan::{AllocProfiler, Bencher};
use serde_json::json;

/// `cjm-ctl`'s allocator, counted.
#[global_allocator]
static ALLOC: AllocProfiler<mimalloc::MiMalloc> = AllocProfiler::new(mimalloc::MiMalloc);

fn main() {
    divan::main();
}

/// A runtime whose threads use `dispatch` as their `tracing` subscriber (none: no subscriber).
fn rt_with(dispatch: Option<tracing::Dispatch>) -> tokio::runtime::Runtime {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(2).enable_all();
    if let Some(d) = dispatch {
        b.on_thread_start(move || {
            std::mem::forget(tracing::dispatcher::set_default(&d));
        });
    }
    b.build().unwrap()
}

/// What `cjm-ctl serve` installs when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, with a provider
/// that exports nowhere: every span of the host is built and ended.
fn traced() -> tracing::Dispatch {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("bench"))
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(cjm_host::trace::TARGET, tracing::Level::TRACE),
        );
    tracing::Dispatch::new(tracing_subscriber::registry().with(layer))
}

struct Env {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    host: Host,
}

/// A host with `noop` (wasm, pool of 4), `noop-isolated` (the same, `isolation: per_call`),
/// `native` (the Rust text-stats worker) and `probe`
/// (a native worker used to park jobs), each run once so admission has profiles.
fn env() -> Env {
    env_with(None)
}

fn env_with(dispatch: Option<tracing::Dispatch>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_manifest(
        d,
        "noop",
        wasm_install(
            fixtures::NOOP,
            json!({"max_concurrency": 4, "pool_size": 4}),
        ),
    );
    write_manifest(
        d,
        "noop-isolated",
        wasm_install(
            fixtures::NOOP,
            json!({"max_concurrency": 4, "pool_size": 4, "isolation": "per_call"}),
        ),
    );
    write_manifest(
        d,
        "native",
        native_install(&[env!("CARGO_BIN_EXE_parity_worker")]),
    );
    write_manifest(
        d,
        "probe",
        native_install(&[env!("CARGO_BIN_EXE_probe_worker")]),
    );
    let rt = rt_with(dispatch);
    let host = rt.block_on(async {
        let host = Host::builder()
            .data_dir(d)
            .queue(QueueConfig {
                max_concurrent_lanes: 8,
                max_history: 20_000,
                ..QueueConfig::default()
            })
            .load("noop")
            .load("noop-isolated")
            .load("native")
            .load("probe")
            .build()
            .await
            .unwrap();
        for (id, kw) in [
            ("noop", json!({})),
            ("noop-isolated", json!({})),
            ("native", json!({"text": "a b"})),
            ("probe", json!({})),
        ] {
            let j = host
                .queue()
                .submit(JobSpec::execute(id, kwargs(kw)))
                .await
                .unwrap();
            host.queue().wait(&j, None).await.unwrap();
        }
        host
    });
    Env {
        _dir: dir,
        rt,
        host,
    }
}

/// One no-op job, submitted and waited for.
async fn noop_job(q: &cjm_host::queue::JobQueue) {
    let id = q
        .submit(JobSpec::execute("noop", kwargs(json!({}))))
        .await
        .unwrap();
    q.wait(&id, None).await.unwrap();
}

fn burst(bencher: Bencher, instance: &str, n: usize, kw: serde_json::Value) {
    let e = env();
    let q = e.host.queue().clone();
    bencher.counter(ItemsCount::new(n)).bench_local(|| {
        e.rt.block_on(async {
            // One submission of the whole burst: its rows are committed together.
            let ids = q
                .submit_many(
                    (0..n)
                        .map(|_| JobSpec::execute(instance, kwargs(kw.clone())))
                        .collect(),
                )
                .await
                .unwrap();
            for id in &ids {
                q.wait(id, None).await.unwrap();
            }
        })
    });
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn throughput_wasm_noop(bencher: Bencher) {
    burst(bencher, "noop", 10_000, json!({}));
}

/// The same burst on a capability with `isolation: per_call`: a fresh instance per job.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn throughput_wasm_noop_per_call(bencher: Bencher) {
    burst(bencher, "noop-isolated", 10_000, json!({}));
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn throughput_native(bencher: Bencher) {
    burst(bencher, "native", 2_000, json!({"text": "a b"}));
}

#[divan::bench(args = ["untraced", "traced"], sample_count = 100, sample_size = 20)]
fn one_at_a_time_wasm_noop(bencher: Bencher, tracing: &str) {
    let dispatch = (tracing == "traced").then(traced);
    let e = env_with(dispatch.clone());
    let q = e.host.queue().clone();
    let none = tracing::Dispatch::none();
    let here = dispatch.as_ref().unwrap_or(&none);
    bencher.bench_local(|| tracing::dispatcher::with_default(here, || e.rt.block_on(noop_job(&q))));
}

/// A warm no-op call through the manager, no queue and no journal (what an embedder's
/// `manager().call` costs over the backend's own, measured by `--bench wasm`).
#[divan::bench(sample_count = 100, sample_size = 100)]
fn manager_call_wasm_noop(bencher: Bencher) {
    let e = env();
    let m = e.host.manager().clone();
    bencher.bench_local(|| {
        e.rt.block_on(m.call("noop", CallRequest::execute(kwargs(json!({})))))
            .unwrap()
    });
}

#[divan::bench(sample_count = 100, sample_size = 20)]
fn one_at_a_time_for_outcome(bencher: Bencher) {
    let e = env();
    let q = e.host.queue().clone();
    bencher.bench_local(|| {
        e.rt.block_on(async {
            let id = q
                .submit_for_outcome(JobSpec::execute("noop", kwargs(json!({}))))
                .await
                .unwrap();
            q.wait(&id, None).await.unwrap();
        })
    });
}

#[divan::bench(sample_count = 100, sample_size = 10)]
fn chain_3_nodes(bencher: Bencher) {
    let e = env();
    let q = e.host.queue().clone();
    let comp = Composition::new(vec![
        Node::new("a", "noop"),
        Node::new("b", "noop").bind("x", OutputRef::whole("a")),
        Node::new("c", "noop").bind("x", OutputRef::whole("b")),
    ]);
    bencher.bench_local(|| {
        e.rt.block_on(async {
            let id = q.submit_composition(comp.clone()).await.unwrap();
            q.wait_composition(&id, None).await.unwrap();
        })
    });
}

/// Parks `n` jobs behind a probe job that sleeps: they stay pending for the whole bench.
fn park(e: &Env, n: usize) {
    let q = e.host.queue();
    e.rt.block_on(async {
        let busy = q
            .submit(JobSpec::execute(
                "probe",
                kwargs(json!({"action": "sleep", "seconds": 3600})),
            ))
            .await
            .unwrap();
        while q.get(&busy).unwrap().started_at.is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        q.submit_many(
            (0..n)
                .map(|_| JobSpec::execute("probe", kwargs(json!({"action": "echo"}))))
                .collect(),
        )
        .await
        .unwrap();
    });
}

#[divan::bench(args = [0, 10_000], sample_count = 100, sample_size = 20)]
fn admission_with_parked_jobs(bencher: Bencher, parked: usize) {
    let e = env();
    park(&e, parked);
    let q = e.host.queue().clone();
    assert_eq!(q.stats().pending, parked);
    bencher.bench_local(|| e.rt.block_on(noop_job(&q)));
    e.host.queue().close();
}

#[divan::bench(sample_count = 10, sample_size = 1000)]
fn submit_parked(bencher: Bencher) {
    let e = env();
    park(&e, 0);
    let q = e.host.queue().clone();
    bencher.bench_local(|| {
        e.rt.block_on(q.submit(JobSpec::execute(
            "probe",
            kwargs(json!({"action": "echo", "text": "a"})),
        )))
        .unwrap()
    });
    e.host.queue().close();
}
