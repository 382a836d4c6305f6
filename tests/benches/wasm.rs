//! Wasm backend benchmarks: a warm no-op call (on a current-thread and a multi-threaded
//! runtime), a warm call reading one granted file, a `segment_text` over 10 KB of English, a
//! load from the precompile cache, a fresh instantiation from the engine's instance pool and
//! mapped on demand (and without `initialize`), a no-op call under `isolation: per_call` (a
//! fresh instance each), and the engine's own floor for a call without this host.
//! `cargo bench -p cjm-tests --bench wasm`
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;

use cjm_host::backend::wasm::{Allocation, DirGrant, SandboxGrants, WasmBackend, WasmRuntime};
use cjm_host::backend::{Backend, CallControl, CallRequest, NoDiagnostics};
use cjm_tests::{fixtures, kwargs};
use divan::Bencher;
use serde_json::json;

fn main() {
    divan::main();
}

struct Fixture {
    rt: WasmRuntime,
    tokio: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    fixture_with(Allocation::for_machine())
}

fn allocation_of(arg: &str) -> Allocation {
    match arg {
        "pooled" => Allocation::for_machine(),
        _ => Allocation::OnDemand,
    }
}

fn fixture_with(allocation: Allocation) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::with_allocation(Some(dir.path().join("cache")), allocation).unwrap();
    assert_eq!(
        rt.allocation(),
        allocation,
        "the pool could not be reserved"
    );
    // What a caller on a current-thread runtime pays; the multi-threaded case is measured
    // separately below.
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Fixture {
        rt,
        tokio,
        _dir: dir,
    }
}

fn ready_with(f: &Fixture, path: &str, grants: SandboxGrants) -> WasmBackend {
    f.tokio.block_on(async {
        let b = WasmBackend::load(&f.rt, Path::new(path), grants, Arc::new(NoDiagnostics))
            .await
            .unwrap();
        b.initialize(json!({})).await.unwrap();
        b
    })
}

fn ready(f: &Fixture, path: &str) -> WasmBackend {
    ready_with(f, path, SandboxGrants::default())
}

fn call(f: &Fixture, b: &WasmBackend, req: &CallRequest) -> serde_json::Value {
    f.tokio
        .block_on(b.call(req.clone(), Arc::new(CallControl::new())))
        .unwrap()
}

/// A warm no-op `execute`, JSON in and out, through the async `Backend` trait on a
/// current-thread runtime; the engine with its instance pool, and without.
#[divan::bench(args = ["pooled", "on_demand"])]
fn noop_execute_warm(bencher: Bencher, allocation: &str) {
    let f = fixture_with(allocation_of(allocation));
    let b = ready(&f, fixtures::NOOP);
    let req = CallRequest::execute(kwargs(json!({"x": 1})));
    bencher.bench_local(|| call(&f, &b, &req));
}

/// The same call from outside a 2-worker multi-threaded runtime (`block_on` hands the future
/// to it and waits).
#[divan::bench]
fn noop_execute_warm_multi_thread(bencher: Bencher) {
    let f = fixture();
    let b = ready(&f, fixtures::NOOP);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let req = CallRequest::execute(kwargs(json!({"x": 1})));
    bencher.bench_local(|| {
        rt.block_on(b.call(req.clone(), Arc::new(CallControl::new())))
            .unwrap()
    });
}

/// A warm call that reads one small file from a read-only granted dir (a WASI filesystem
/// host call: open, read, close).
#[divan::bench]
fn granted_file_read_warm(bencher: Bencher) {
    let f = fixture();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("hello.txt"), "hello from the host").unwrap();
    let grants = SandboxGrants {
        dirs: vec![DirGrant {
            host: data.path().into(),
            guest: "/data".into(),
            writable: false,
        }],
        ..SandboxGrants::default()
    };
    let b = ready_with(&f, fixtures::HOSTILE, grants);
    let req = CallRequest::execute(kwargs(
        json!({"attack": "read_file", "path": "/data/hello.txt"}),
    ));
    assert_eq!(call(&f, &b, &req), "hello from the host");
    bencher.bench_local(|| call(&f, &b, &req));
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
    bencher.bench_local(|| call(&f, &b, &req));
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

/// A fresh instance from the cached `InstancePre`: a new store, instantiation, `initialize`,
/// dropping it; its memory from the engine's pool (`pooled`) or mapped for it (`on_demand`).
#[divan::bench(args = ["pooled", "on_demand"])]
fn fresh_instantiation(bencher: Bencher, allocation: &str) {
    let f = fixture_with(allocation_of(allocation));
    let b = ready(&f, fixtures::NOOP);
    bencher.bench_local(|| f.tokio.block_on(b.instantiate_fresh()).unwrap());
}

/// The same without `initialize`: the engine's instantiation and teardown alone (a new store
/// with this host's WASI context and limits, the component instantiated from the pool,
/// dropped).
#[divan::bench]
fn fresh_instantiation_bare(bencher: Bencher) {
    let f = fixture();
    let b = ready(&f, fixtures::NOOP);
    bencher.bench_local(|| f.tokio.block_on(b.instantiate_bare()).unwrap());
}

/// The engine's floor for a call, without this host: a minimal component (no WASI, no JSON)
/// on this host's engine, its exports called synchronously and through `call_async` (a
/// fiber per call, which a deadline on a guest blocked in a host call needs): `nop` takes
/// and returns nothing; `echo` takes an 8-byte string and returns it, copied in and out of
/// the guest's memory as a JSON argument and answer are.
#[divan::bench(args = ["nop_sync", "nop_async", "echo_sync", "echo_async"])]
fn engine_floor_call(bencher: Bencher, how: &str) {
    use wasmtime::component::{Component, Linker};
    let f = fixture();
    let engine = f.rt.engine();
    let component = Component::new(engine, wat::parse_str(FLOOR_COMPONENT).unwrap()).unwrap();
    let mut store = wasmtime::Store::new(engine, ());
    // The engine counts epochs for deadlines; this store never reaches its own.
    store.set_epoch_deadline(1 << 40);
    let instance = Linker::new(engine)
        .instantiate(&mut store, &component)
        .unwrap();
    let nop = instance
        .get_typed_func::<(), ()>(&mut store, "nop")
        .unwrap();
    let echo = instance
        .get_typed_func::<(&str,), (String,)>(&mut store, "echo")
        .unwrap();
    let arg = r#"{"x": 1}"#;
    match how {
        "nop_sync" => bencher.bench_local(|| nop.call(&mut store, ()).unwrap()),
        "nop_async" => {
            bencher.bench_local(|| f.tokio.block_on(nop.call_async(&mut store, ())).unwrap())
        }
        "echo_sync" => bencher.bench_local(|| echo.call(&mut store, (arg,)).unwrap()),
        _ => bencher.bench_local(|| {
            f.tokio
                .block_on(echo.call_async(&mut store, (arg,)))
                .unwrap()
        }),
    }
}

/// `nop: func()` and `echo: func(s: string) -> string`: a bump allocator that always
/// answers offset 64, and `echo` hands back the string it was given.
const FLOOR_COMPONENT: &str = r#"
(component
  (core module $m
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 64))
    (func (export "nop"))
    (func (export "echo") (param $ptr i32) (param $len i32) (result i32)
      (i32.store (i32.const 0) (local.get $ptr))
      (i32.store (i32.const 4) (local.get $len))
      (i32.const 0)))
  (core instance $i (instantiate $m))
  (func (export "nop") (canon lift (core func $i "nop")))
  (func (export "echo") (param "s" string) (result string)
    (canon lift (core func $i "echo") (memory (core memory $i "memory"))
      (realloc (core func $i "realloc")))))
"#;

/// A no-op `execute` under `isolation: per_call`: a fresh configured instance for the call,
/// dropped after it (compare `noop_execute_warm`, which reuses one).
#[divan::bench]
fn noop_execute_per_call(bencher: Bencher) {
    let f = fixture();
    let b = ready_with(
        &f,
        fixtures::NOOP,
        SandboxGrants {
            isolation: cjm_host::manifest::Isolation::PerCall,
            ..SandboxGrants::default()
        },
    );
    let req = CallRequest::execute(kwargs(json!({"x": 1})));
    bencher.bench_local(|| call(&f, &b, &req));
}
