//! The HTTP service on loopback, a keep-alive client, journal on:
//! - `http_call_wasm_noop`: `POST /v1/capabilities/noop/execute`, one request = submit, run
//!   and answer (a job through the queue, its rows committed);
//! - `http_health`: `GET /v1/health`, what a round trip through the service costs by itself;
//! - `http_call_wasm_noop_direct`: the same call with `?direct=true` (no queue, no journal);
//! - `http_submit_then_wait`: `POST /v1/jobs` then `GET /v1/jobs/{id}/wait`;
//! - `http_jobs_per_second`: 8 and 32 clients calling at once (2,000 calls in all);
//! - `sse_follows_burst`: one event stream following a 10,000-job burst to its last row;
//! - `sse_100_subscribers`: 100 streams each following a 1,000-job burst.
//!
//! `cargo bench -p cjm-tests --bench server`
#![allow(clippy::unwrap_used, missing_docs)]

use cjm_host::Host;
use cjm_host::client::Client;
use cjm_host::config::QueueConfig;
use cjm_host::server::{Server, ServerConfig};
use cjm_tests::{fixtures, wasm_install, write_manifest};
use divan::Bencher;
use divan::counter::ItemsCount;
use serde_json::{Value, json};

/// The allocator `cjm-ctl serve` runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

/// The host serves on its own runtime; the clients run on another, with one thread, as
/// a separate client process would: the host's threads run only the host.
struct Env {
    _dir: tempfile::TempDir,
    _server: tokio::runtime::Runtime,
    rt: tokio::runtime::Runtime,
    host: Host,
    client: Client,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    write_manifest(
        dir.path(),
        "noop",
        wasm_install(
            fixtures::NOOP,
            json!({"max_concurrency": 4, "pool_size": 4}),
        ),
    );
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (host, url) = server.block_on(async {
        let host = Host::builder()
            .data_dir(dir.path())
            .queue(QueueConfig {
                max_concurrent_lanes: 8,
                max_history: 20_000,
                ..QueueConfig::default()
            })
            .load("noop")
            .build()
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = Server::new(host.clone(), ServerConfig::default());
        tokio::spawn(server.serve(listener, std::future::pending()));
        (host, url)
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = Client::new(url, None);
    // One run first: the instance has its profile, the connection is open.
    rt.block_on(call(&client));
    Env {
        _dir: dir,
        _server: server,
        rt,
        host,
        client,
    }
}

/// `method path` with `body`, answered 200.
async fn ok(client: &Client, method: reqwest::Method, path: &str, body: Option<&Value>) {
    let a = client.send(method, path, body).await.unwrap();
    assert_eq!(a.status, 200, "{path}");
}

/// The no-op through the queue.
async fn call(client: &Client) {
    let body = json!({"kwargs": {}});
    ok(
        client,
        reqwest::Method::POST,
        "/v1/capabilities/noop/execute",
        Some(&body),
    )
    .await;
}

#[divan::bench(sample_count = 100, sample_size = 20)]
fn http_call_wasm_noop(bencher: Bencher) {
    let e = env();
    bencher.bench_local(|| e.rt.block_on(call(&e.client)));
}

#[divan::bench(sample_count = 100, sample_size = 20)]
fn http_health(bencher: Bencher) {
    let e = env();
    bencher.bench_local(|| {
        e.rt.block_on(ok(&e.client, reqwest::Method::GET, "/v1/health", None))
    });
}

#[divan::bench(sample_count = 100, sample_size = 20)]
fn http_call_wasm_noop_direct(bencher: Bencher) {
    let e = env();
    let body = json!({"kwargs": {}});
    bencher.bench_local(|| {
        e.rt.block_on(ok(
            &e.client,
            reqwest::Method::POST,
            "/v1/capabilities/noop/execute?direct=true",
            Some(&body),
        ))
    });
}

#[divan::bench(sample_count = 100, sample_size = 20)]
fn http_submit_then_wait(bencher: Bencher) {
    let e = env();
    bencher.bench_local(|| {
        e.rt.block_on(async {
            let id = e
                .client
                .submit(&json!({"capability": "noop", "kwargs": {}}))
                .await
                .unwrap();
            let job = e
                .client
                .wait(&id, std::time::Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!(job["status"], "completed");
        })
    });
}

#[divan::bench(args = [8, 32], sample_count = 10, sample_size = 1)]
fn http_jobs_per_second(bencher: Bencher, clients: usize) {
    const JOBS: usize = 2_000;
    let each = JOBS / clients;
    let e = env();
    bencher
        .counter(ItemsCount::new(clients * each))
        .bench_local(|| {
            e.rt.block_on(async {
                let mut tasks = Vec::new();
                for _ in 0..clients {
                    let client = Client::new(e.client.url().to_owned(), None);
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..each {
                            call(&client).await;
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            })
        });
}

/// Submits `n` jobs in one batch request; their ids.
async fn burst(client: &Client, n: usize) -> Vec<String> {
    let jobs: Vec<Value> = (0..n)
        .map(|_| json!({"capability": "noop", "kwargs": {}}))
        .collect();
    let answer = client
        .json(reqwest::Method::POST, "/v1/jobs", Some(&Value::Array(jobs)))
        .await
        .unwrap();
    serde_json::from_value(answer["job_ids"].clone()).unwrap()
}

/// Reads `stream` until it has seen `n` terminal transitions.
async fn follow(mut stream: cjm_host::client::EventStream, n: usize) {
    let mut ended = 0;
    while ended < n {
        let e = stream.next().await.unwrap().unwrap();
        // Only the rows that count are parsed: the client's cost stays out of the figure.
        if e.event == "state_transition" && e.data.contains(r#""to":"completed""#) {
            ended += 1;
        }
    }
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn sse_follows_burst(bencher: Bencher) {
    const N: usize = 10_000;
    let e = env();
    bencher.counter(ItemsCount::new(N)).bench_local(|| {
        e.rt.block_on(async {
            let stream = e.client.events("", None).await.unwrap();
            burst(&e.client, N).await;
            follow(stream, N).await;
        })
    });
    drop(e.host);
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn sse_100_subscribers(bencher: Bencher) {
    const N: usize = 1_000;
    let e = env();
    bencher.counter(ItemsCount::new(N)).bench_local(|| {
        e.rt.block_on(async {
            let mut followers = Vec::new();
            for _ in 0..100 {
                let client = Client::new(e.client.url().to_owned(), None);
                let stream = client.events("", None).await.unwrap();
                followers.push(tokio::spawn(follow(stream, N)));
            }
            burst(&e.client, N).await;
            for f in followers {
                f.await.unwrap();
            }
        })
    });
}
