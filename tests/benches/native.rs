//! Native backend benchmarks: spawn to ready and a small call through the host, for the real
//! cjm-substrate Python worker and for a Rust worker built on cjm-native-worker; and the
//! calls sent bare over keep-alive HTTP (the host's own overhead is the difference); and a
//! bare one-byte round trip over a Unix socket, this machine's floor for any of them.
//! `cargo bench -p cjm-tests --bench native`
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use cjm_host::backend::native::{NativeBackend, WorkerSpec};
use cjm_host::backend::{Backend, CallControl, CallRequest, NoDiagnostics, NoEvents, RuntimeKind};
use cjm_tests::{echo_capability_dir, kwargs, python_with_substrate};
use divan::Bencher;
use serde_json::{Value, json};

fn main() {
    divan::main();
}

fn python() -> (WorkerSpec, RuntimeKind) {
    let spec = WorkerSpec::python(
        "cjm-capability-echo",
        python_with_substrate(),
        "cjm_capability_echo.capability",
        "EchoCapability",
        &[],
    )
    .env("PYTHONPATH", echo_capability_dir().display().to_string());
    (spec, RuntimeKind::Python)
}

fn rust() -> (WorkerSpec, RuntimeKind) {
    let spec =
        WorkerSpec::native("text-stats", &[env!("CARGO_BIN_EXE_parity_worker").into()]).unwrap();
    (spec, RuntimeKind::Native)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn start((spec, kind): (WorkerSpec, RuntimeKind)) -> NativeBackend {
    NativeBackend::start(spec, kind, Arc::new(NoDiagnostics), Arc::new(NoEvents))
        .await
        .unwrap()
}

/// A started and initialized worker.
fn ready(rt: &tokio::runtime::Runtime, worker: (WorkerSpec, RuntimeKind)) -> NativeBackend {
    rt.block_on(async {
        let b = start(worker).await;
        b.initialize(json!({})).await.unwrap();
        b
    })
}

/// A started worker, shut down when dropped: divan drops a sample's outputs after timing it,
/// so the spawn-to-ready rows do not include stopping the worker.
struct Started<'r>(&'r tokio::runtime::Runtime, NativeBackend);

impl Drop for Started<'_> {
    fn drop(&mut self) {
        self.0.block_on(self.1.shutdown()).unwrap();
    }
}

fn spawn_to_ready(bencher: Bencher, worker: fn() -> (WorkerSpec, RuntimeKind)) {
    let rt = rt();
    bencher.bench_local(|| Started(&rt, rt.block_on(start(worker()))));
}

fn call_through_host(bencher: Bencher, worker: (WorkerSpec, RuntimeKind), kw: Value) {
    let rt = rt();
    let b = ready(&rt, worker);
    let req = CallRequest::execute(kwargs(kw));
    bencher.bench_local(|| {
        rt.block_on(b.call(req.clone(), Arc::new(CallControl::new())))
            .unwrap()
    });
    rt.block_on(b.shutdown()).unwrap();
}

/// Spawn of the Python worker to its first 200 on `/health`, plus introspection.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn python_spawn_to_ready(bencher: Bencher) {
    spawn_to_ready(bencher, python);
}

/// Spawn of a Rust worker (cjm-native-worker) to ready, plus introspection.
#[divan::bench(sample_count = 20, sample_size = 1)]
fn rust_spawn_to_ready(bencher: Bencher) {
    spawn_to_ready(bencher, rust);
}

/// `execute(action="echo", text="")` through the host: envelope, accounts, progress watch,
/// typed answer.
#[divan::bench(sample_count = 300)]
fn python_call_through_host(bencher: Bencher) {
    call_through_host(bencher, python(), json!({"action": "echo", "text": ""}));
}

/// A tiny `execute` on a Rust worker through the host.
#[divan::bench(sample_count = 300)]
fn rust_call_through_host(bencher: Bencher) {
    call_through_host(bencher, rust(), json!({"text": ""}));
}

/// The machine's floor for any round trip to another process: one byte written to a Unix
/// socket and read back, echoed by a thread blocked on the other end (the wake-up of a
/// sleeping thread on another CPU, both ways: no HTTP, no JSON, no runtime).
#[divan::bench(sample_count = 300, sample_size = 100)]
fn socket_round_trip_floor(bencher: Bencher) {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let (mut here, mut there) = UnixStream::pair().unwrap();
    let echo = std::thread::spawn(move || {
        let mut b = [0u8; 1];
        while there.read_exact(&mut b).is_ok() {
            if there.write_all(&b).is_err() {
                break;
            }
        }
    });
    let mut b = [0u8; 1];
    bencher.bench_local(|| {
        here.write_all(b"x").unwrap();
        here.read_exact(&mut b).unwrap();
    });
    drop(here);
    echo.join().unwrap();
}

/// The same calls sent bare with a keep-alive client: the floor the host adds to.
#[divan::bench(args = ["python", "rust"], sample_count = 300)]
fn call_bare_http(bencher: Bencher, which: &str) {
    let rt = rt();
    let (worker, kw) = match which {
        "python" => (python(), json!({"action": "echo", "text": ""})),
        _ => (rust(), json!({"text": ""})),
    };
    let b = ready(&rt, worker);
    // The worker's private channel, its Unix socket.
    let socket = b.endpoint().unwrap();
    let http = reqwest::Client::builder()
        .unix_socket(socket)
        .build()
        .unwrap();
    let base = "http://worker";
    let body = json!({"args": [], "kwargs": kw}).to_string();
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
