#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Support for the workspace integration tests and benchmarks: the paths of the wasm
//! fixtures built by `build.rs`, and small helpers to load them.

pub mod probe;

/// Paths of the wasm components built by `build.rs` (test guests and examples).
pub mod fixtures {
    include!(concat!(env!("OUT_DIR"), "/gen.rs"));
}

use std::path::Path;
use std::sync::{Arc, Mutex};

use cjm_host::backend::wasm::{SandboxGrants, WasmBackend, WasmRuntime};
use cjm_host::backend::{DiagnosticRecord, DiagnosticsSink};

/// A diagnostics sink that keeps what it is given, for assertions on what a guest logged or
/// printed.
#[derive(Debug, Default)]
pub struct CollectingSink {
    /// Log records, in order.
    pub records: Mutex<Vec<DiagnosticRecord>>,
    /// `(session, stream, line)` chunks, in order.
    pub chunks: Mutex<Vec<(String, String, String)>>,
}

impl DiagnosticsSink for CollectingSink {
    fn record(&self, record: DiagnosticRecord) {
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
pub async fn load(
    rt: &WasmRuntime,
    path: &str,
    grants: SandboxGrants,
) -> (WasmBackend, Arc<CollectingSink>) {
    let sink = Arc::new(CollectingSink::default());
    let backend = WasmBackend::load(rt, Path::new(path), grants, sink.clone())
        .await
        .unwrap();
    (backend, sink)
}

/// A JSON object literal as kwargs.
pub fn kwargs(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        other => panic!("kwargs must be an object, got {other}"),
    }
}

/// The repository root.
pub fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The pinned cjm-substrate release the Python interop tests run against.
pub const CJM_SUBSTRATE: &str = "cjm-substrate==0.0.74";

/// A Python interpreter with `cjm-substrate` installed, created once and cached under
/// `target/py-venv` (uv when present, else `python3 -m venv` + pip). The package declares
/// Python >= 3.12 but runs on 3.11: `--ignore-requires-python`.
pub fn python_with_substrate() -> std::path::PathBuf {
    static PYTHON: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| venv("py-venv", &["--ignore-requires-python", CJM_SUBSTRATE]))
        .clone()
}

/// The pinned release of the official MCP Python SDK the MCP tests drive the host with.
pub const MCP: &str = "mcp==1.30.0";

/// A Python interpreter with the MCP SDK ([`MCP`]), cached under `target/py-mcp-venv`.
pub fn python_with_mcp() -> std::path::PathBuf {
    static PYTHON: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| venv("py-mcp-venv", &[MCP])).clone()
}

/// `target/<name>`: a virtualenv with `pip install <args>` done once (a marker file records
/// it); its interpreter.
fn venv(name: &str, pip_args: &[&str]) -> std::path::PathBuf {
    let venv = repo_root().join("target").join(name);
    let python = venv.join("bin").join("python");
    let ready = venv.join(".cjm-ready");
    let wanted: Vec<&str> = pip_args
        .iter()
        .copied()
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = wanted.join(" ");
    if std::fs::read_to_string(&ready).is_ok_and(|r| r == wanted) {
        return python;
    }
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let _ = std::fs::remove_dir_all(&venv);
    run(std::process::Command::new(base_python())
        .args(["-m", "venv"])
        .arg(&venv));
    run(std::process::Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(pip_args));
    std::fs::write(&ready, wanted).unwrap();
    python
}

/// The interpreter to build the venv from: a Python >= 3.12 when the machine has one (the
/// cjm-substrate worker writes its log records into the diagnostics database only from 3.12 on,
/// where `sqlite3.Connection.setconfig` exists), else `python3`.
fn base_python() -> std::path::PathBuf {
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    let mut candidates: Vec<std::path::PathBuf> = ["python3.13", "python3.12"]
        .iter()
        .filter_map(|name| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|dir| dir.join(name))
                .find(|p| p.is_file() && !p.to_string_lossy().contains("shims"))
        })
        .collect();
    if let Ok(entries) = std::fs::read_dir(home.join(".pyenv/versions")) {
        let mut versions: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|v| v.starts_with("3.12") || v.starts_with("3.13"))
            .collect();
        versions.sort();
        candidates.extend(
            versions
                .iter()
                .rev()
                .map(|v| home.join(".pyenv/versions").join(v).join("bin/python3")),
        );
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| "python3".into())
}

/// The echo capability written for the real cjm-substrate worker (its source dir, to put on
/// `PYTHONPATH`).
pub fn echo_capability_dir() -> std::path::PathBuf {
    repo_root().join("host/tests/fixtures/python/capability/cjm-capability-echo")
}

/// Writes a v2.0 capability manifest `name` with `install` into `data_dir/manifests`.
pub fn write_manifest(data_dir: &Path, name: &str, install: serde_json::Value) {
    let dir = data_dir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let doc = serde_json::json!({
        "format_version": "2.0",
        "install": install,
        "code": {"name": name, "version": "0.1.0", "description": "test manifest"},
        "drift_tracking": {},
        "overrides": {}
    });
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&doc).unwrap(),
    )
    .unwrap();
}

/// The `install` block of a wasm capability: the component at `path` with its sha256 and
/// `sandbox` grants.
pub fn wasm_install(path: &str, sandbox: serde_json::Value) -> serde_json::Value {
    use std::fmt::Write as _;
    let bytes = std::fs::read(path).unwrap();
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
    let hex = digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    serde_json::json!({"runtime": "wasm", "wasm": {"component": path, "sha256": format!("sha256:{hex}"), "sandbox": sandbox}})
}

/// The `install` block of a native worker started as `command`.
pub fn native_install(command: &[&str]) -> serde_json::Value {
    serde_json::json!({"runtime": "native", "native": {"command": command}})
}

/// Waits until the call under `control` has reported progress: it is running in the
/// capability (not queued, not starting its worker). What a test waits for before it
/// cancels or kills, instead of a fixed sleep.
pub async fn until_progress(control: &cjm_host::backend::CallControl) {
    for _ in 0..4000 {
        if !control.progress().message.is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the call reported no progress in 20 s");
}
