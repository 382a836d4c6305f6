#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Support for the workspace integration tests and benchmarks: the paths of the wasm
//! fixtures built by `build.rs`, and small helpers to load them.

/// Paths of the wasm components built by `build.rs` (test guests and examples).
pub mod fixtures {
    include!(concat!(env!("OUT_DIR"), "/gen.rs"));
}

use std::path::Path;
use std::sync::{Arc, Mutex};

use cjm_host::backend::wasm::{SandboxGrants, WasmBackend, WasmRuntime};
use cjm_host::backend::{DiagnosticsSink, LogRecord};

/// A diagnostics sink that keeps what it is given, for assertions on what a guest logged or
/// printed.
#[derive(Debug, Default)]
pub struct CollectingSink {
    /// Log records, in order.
    pub records: Mutex<Vec<LogRecord>>,
    /// `(session, stream, line)` chunks, in order.
    pub chunks: Mutex<Vec<(String, String, String)>>,
}

impl DiagnosticsSink for CollectingSink {
    fn record(&self, record: LogRecord) {
        self.records.lock().unwrap().push(record);
    }
    fn chunk(&self, session: &str, stream: &str, content: &str) {
        self.chunks
            .lock()
            .unwrap()
            .push((session.into(), stream.into(), content.into()));
    }
}

/// A runtime compiling into a fresh cache dir (kept alive by the returned guard).
pub fn runtime() -> (WasmRuntime, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new(Some(dir.path().join("cache"))).unwrap();
    (rt, dir)
}

/// Loads `path` under `grants`, logging into a fresh [`CollectingSink`].
pub fn load(
    rt: &WasmRuntime,
    path: &str,
    grants: SandboxGrants,
) -> (WasmBackend, Arc<CollectingSink>) {
    let sink = Arc::new(CollectingSink::default());
    let backend = WasmBackend::load(rt, Path::new(path), grants, sink.clone()).unwrap();
    (backend, sink)
}

/// A JSON object literal as kwargs.
pub fn kwargs(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        other => panic!("kwargs must be an object, got {other}"),
    }
}
