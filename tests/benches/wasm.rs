//! Wasm backend benchmarks: a warm no-op call (blocking and through the async trait), a
//! `segment_text` over 10 KB of English, a load from the precompile cache, and a fresh
//! instantiation. `cargo bench -p cjm-tests --bench wasm`
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;

use cjm_host::backend::wasm::{SandboxGrants, WasmBackend, WasmRuntime};
use cjm_host::backend::{Backend, CallControl, CallRequest, NoDiagnostics};
use cjm_tests::{fixtures, kwargs};
use divan::Bencher;
use serde_json::json;

fn main() {
    divan::main();
}

struct Fixture {
    rt: WasmRuntime,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new(Some(dir.path().join("cache"))).unwrap();
    Fixture { rt, _dir: dir }
}

fn ready(f: &Fixture, path: &str) -> WasmBackend {
    let b = WasmBackend::load(
        &f.rt,
        Path::new(path),
        SandboxGrants::default(),
        Arc::new(NoDiagnostics),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(b.initialize(json!({}))).unwrap();
    b
}

/// A warm no-op `execute`, JSON in and out, on the calling thread.
#[divan::bench]
fn noop_execute_warm(bencher: Bencher) {
    let f = fixture();
    let b = ready(&f, fixtures::NOOP);
    let req = CallRequest::execute(kwargs(json!({"x": 1})));
    bencher.bench_local(|| b.call_blocking(&req, Arc::new(CallControl::new())).unwrap());
}

/// The same call through the async `Backend` trait (a hop to a blocking thread).
#[divan::bench]
fn noop_execute_warm_async(bencher: Bencher) {
    let f = fixture();
    let b = ready(&f, fixtures::NOOP);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let req = CallRequest::execute(kwargs(json!({"x": 1})));
    bencher.bench_local(|| {
        rt.block_on(b.call(req.clone(), Arc::new(CallControl::new())))
            .unwrap()
    });
}

/// `segment_text` over 10 KB of English prose.
#[divan::bench]
fn segment_text_10kb(bencher: Bencher) {
    let f = fixture();
    let b = ready(&f, fixtures::SENTENCE_SPLIT);
    let para = "Dr. Smith arrived at 5 p.m. on a Tuesday. The committee, which had waited for hours, \
                was not amused! Was the delay avoidable? Nobody could say for certain. ";
    let mut text = String::new();
    while text.len() < 10 * 1024 {
        text.push_str(para);
    }
    let req = CallRequest::task(
        "sentence_segmentation",
        "segment_text",
        kwargs(json!({"text": text})),
    );
    bencher.bench_local(|| b.call_blocking(&req, Arc::new(CallControl::new())).unwrap());
}

/// Loading a component whose precompiled form is in the cache: read, deserialize, link,
/// check the world (what a host restart pays per capability).
#[divan::bench(args = ["noop", "sentence-split"])]
fn load_precompiled(bencher: Bencher, which: &str) {
    let f = fixture();
    let path = if which == "noop" {
        fixtures::NOOP
    } else {
        fixtures::SENTENCE_SPLIT
    };
    f.rt.load(Path::new(path)).unwrap();
    bencher.bench_local(|| {
        f.rt.forget_loaded();
        f.rt.load(Path::new(path)).unwrap()
    });
}

/// A fresh instance from the cached `InstancePre`: a new store, instantiation, `initialize`.
#[divan::bench]
fn fresh_instantiation(bencher: Bencher) {
    let f = fixture();
    let b = ready(&f, fixtures::NOOP);
    bencher.bench_local(|| b.instantiate_fresh().unwrap());
}
