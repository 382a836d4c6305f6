//! Native backend benchmarks against the real cjm-substrate Python worker: spawn to ready, and
//! a near-no-op call through the host next to the same HTTP request sent bare (the host's own
//! overhead is the difference). `cargo bench -p cjm-tests --bench native`
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use cjm_host::backend::native::{NativeBackend, WorkerSpec};
use cjm_host::backend::{Backend, CallControl, CallRequest, NoDiagnostics, NoEvents, RuntimeKind};
use cjm_tests::{echo_capability_dir, kwargs, python_with_substrate};
use divan::Bencher;
use serde_json::json;

fn main() {
    divan::main();
}

fn spec() -> WorkerSpec {
    WorkerSpec::python(
        "cjm-capability-echo",
        python_with_substrate(),
        "cjm_capability_echo.capability",
        "EchoCapability",
        &[],
    )
    .env("PYTHONPATH", echo_capability_dir().display().to_string())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn start() -> NativeBackend {
    NativeBackend::start(
        spec(),
        RuntimeKind::Python,
        Arc::new(NoDiagnostics),
        Arc::new(NoEvents),
    )
    .await
    .unwrap()
}

/// Spawn of the Python worker to its first 200 on `/health`, plus introspection.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn python_spawn_to_ready(bencher: Bencher) {
    let rt = rt();
    bencher.bench_local(|| {
        rt.block_on(async {
            let b = start().await;
            b.shutdown().await.unwrap();
        })
    });
}

/// `execute(action="echo", text="")` through the host: envelope, accounts, progress watch,
/// typed answer.
#[divan::bench(sample_count = 200)]
fn python_call_through_host(bencher: Bencher) {
    let rt = rt();
    let b = rt.block_on(async {
        let b = start().await;
        b.initialize(json!({})).await.unwrap();
        b
    });
    let req = CallRequest::execute(kwargs(json!({"action": "echo", "text": ""})));
    bencher.bench_local(|| {
        rt.block_on(b.call(req.clone(), Arc::new(CallControl::new())))
            .unwrap()
    });
    rt.block_on(b.shutdown()).unwrap();
}

/// The same request sent bare with a keep-alive client, the floor the host adds to.
#[divan::bench(sample_count = 200)]
fn python_call_bare_http(bencher: Bencher) {
    let rt = rt();
    let b = rt.block_on(async {
        let b = start().await;
        b.initialize(json!({})).await.unwrap();
        b
    });
    let base = b.endpoint().unwrap();
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let body = json!({"args": [], "kwargs": {"action": "echo", "text": ""}}).to_string();
    bencher.bench_local(|| {
        rt.block_on(async {
            let r = http
                .post(format!("{base}/execute"))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            r.bytes().await.unwrap()
        })
    });
    rt.block_on(b.shutdown()).unwrap();
}

fn rust_spec() -> WorkerSpec {
    WorkerSpec::native("text-stats", &[env!("CARGO_BIN_EXE_parity_worker").into()]).unwrap()
}

/// Spawn of a Rust worker (cjm-native-worker) to ready, plus introspection.
#[divan::bench(sample_count = 20, sample_size = 1)]
fn rust_spawn_to_ready(bencher: Bencher) {
    let rt = rt();
    bencher.bench_local(|| {
        rt.block_on(async {
            let b = NativeBackend::start(
                rust_spec(),
                RuntimeKind::Native,
                Arc::new(NoDiagnostics),
                Arc::new(NoEvents),
            )
            .await
            .unwrap();
            b.shutdown().await.unwrap();
        })
    });
}

/// A tiny `execute` on a Rust worker through the host.
#[divan::bench(sample_count = 500)]
fn rust_call_through_host(bencher: Bencher) {
    let rt = rt();
    let b = rt.block_on(async {
        let b = NativeBackend::start(
            rust_spec(),
            RuntimeKind::Native,
            Arc::new(NoDiagnostics),
            Arc::new(NoEvents),
        )
        .await
        .unwrap();
        b.initialize(json!({})).await.unwrap();
        b
    });
    let req = CallRequest::execute(kwargs(json!({"text": ""})));
    bencher.bench_local(|| {
        rt.block_on(b.call(req.clone(), Arc::new(CallControl::new())))
            .unwrap()
    });
    rt.block_on(b.shutdown()).unwrap();
}
