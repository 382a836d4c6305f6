//! The sandbox: what a wasm capability may touch. Everything is denied unless a grant in the
//! capability's manifest says otherwise — no preopened dirs, no environment, no sockets, no
//! inherited stdio; linear memory and tables capped; each call under a wall-clock deadline.

use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use super::emit::LogBudget;
use crate::backend::DiagnosticsSink;
use crate::backend::wasm::SandboxError;
use crate::error::{Error, Result};

/// One host directory made visible to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it (for example `/data`).
    pub guest: String,
    /// Whether the guest may create, write and delete; read-only otherwise.
    #[serde(default)]
    pub writable: bool,
}

/// What a wasm capability is granted. The default grants nothing but a bounded amount of
/// memory and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxGrants {
    /// Preopened directories.
    pub dirs: Vec<DirGrant>,
    /// Names of host environment variables passed through (their values are read at
    /// instantiation; unset names are skipped).
    pub env: Vec<String>,
    /// Granted secrets, set in the guest's environment (never serialized; `Debug` shows
    /// `***`).
    #[serde(skip)]
    pub secrets: Vec<(String, crate::store::SecretValue)>,
    /// Whether the guest's stdout and stderr are captured into the diagnostics store
    /// (otherwise they are discarded).
    pub capture_stdio: bool,
    /// Linear memory cap per instance, in MiB.
    pub memory_limit_mb: u64,
    /// Wall-clock limit per call, in seconds.
    pub time_limit_secs: f64,
    /// How many instances may serve calls at once (the per-instance concurrency cap).
    pub max_instances: u32,
    /// How many initialized instances are kept ready (at most `max_instances`).
    pub pool_size: u32,
    /// Whether an instance serves many calls or exactly one.
    pub isolation: crate::manifest::Isolation,
    /// The largest result (JSON text) a call may return, in bytes; past it the call fails
    /// with a typed `resource` error.
    pub max_result_bytes: u64,
    /// The largest progress or log message kept, in bytes; longer ones are cut.
    pub max_message_bytes: u32,
    /// Log records (and captured output lines) stored per second per instance; the rest
    /// are dropped and counted.
    pub log_records_per_second: u32,
}

impl Default for SandboxGrants {
    /// The grants of an empty `sandbox` block: computation only, output captured (the one
    /// set of defaults, the manifest's).
    fn default() -> Self {
        SandboxGrants::of(&crate::manifest::Sandbox::default(), Vec::new())
    }
}

impl SandboxGrants {
    /// The grants a manifest's `sandbox` block declares, with `${...}` placeholders in host
    /// paths expanded by `lookup` (for example `${CAPABILITY_DATA_DIR}`). Unset limits
    /// take the defaults. A network grant is refused: wasm capabilities get no sockets.
    pub fn from_manifest(
        sandbox: &crate::manifest::Sandbox,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        use crate::manifest::{DirAccess, NetworkGrant};
        if sandbox.network != NetworkGrant::None {
            return Err(Error::Sandbox(SandboxError::InvalidGrant(
                "network access is not granted to wasm capabilities".into(),
            )));
        }
        let dirs = sandbox
            .preopens
            .iter()
            .map(|p| {
                let host = crate::manifest::runtime::expand_placeholders(&p.host, &lookup)
                    .ok_or_else(|| {
                        Error::Sandbox(SandboxError::InvalidGrant(format!(
                            "preopen {}: unknown placeholder",
                            p.host
                        )))
                    })?;
                Ok(DirGrant {
                    host: host.into(),
                    guest: p.guest.clone(),
                    writable: p.mode == DirAccess::ReadWrite,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let grants = SandboxGrants::of(sandbox, dirs);
        grants.validate()?;
        Ok(grants)
    }

    /// The block's grants over the host's defaults, with its preopens resolved to `dirs`.
    fn of(sandbox: &crate::manifest::Sandbox, dirs: Vec<DirGrant>) -> Self {
        let max_instances = sandbox.max_concurrency.max(1);
        SandboxGrants {
            dirs,
            env: sandbox.env.clone(),
            secrets: Vec::new(),
            capture_stdio: sandbox.capture_output,
            memory_limit_mb: sandbox.memory_limit_mb.unwrap_or(256),
            time_limit_secs: sandbox.time_limit_seconds.unwrap_or(60.0),
            max_instances,
            pool_size: sandbox.pool_size.clamp(1, max_instances),
            isolation: sandbox.isolation,
            max_result_bytes: sandbox.max_result_bytes.unwrap_or(64 * 1024 * 1024),
            max_message_bytes: sandbox.max_message_bytes.unwrap_or(16 * 1024),
            log_records_per_second: sandbox.log_records_per_second.unwrap_or(100),
        }
    }

    /// Checks the grants: directories exist, limits are positive.
    pub fn validate(&self) -> Result<()> {
        for dir in &self.dirs {
            if !dir.host.is_dir() {
                return Err(Error::Sandbox(SandboxError::InvalidGrant(format!(
                    "preopened dir {} does not exist or is not a directory",
                    dir.host.display()
                ))));
            }
            if dir.guest.is_empty() {
                return Err(Error::Sandbox(SandboxError::InvalidGrant(format!(
                    "preopened dir {} has an empty guest path",
                    dir.host.display()
                ))));
            }
        }
        if self.memory_limit_mb == 0 {
            return Err(Error::Sandbox(SandboxError::InvalidGrant(
                "memory_limit_mb must be positive".into(),
            )));
        }
        if !(self.time_limit_secs.is_finite() && self.time_limit_secs > 0.0) {
            return Err(Error::Sandbox(SandboxError::InvalidGrant(
                "time_limit_secs must be a positive number".into(),
            )));
        }
        if self.max_instances == 0 {
            return Err(Error::Sandbox(SandboxError::InvalidGrant(
                "max_instances must be at least 1".into(),
            )));
        }
        for (name, value) in [
            ("max_result_bytes", self.max_result_bytes),
            ("max_message_bytes", u64::from(self.max_message_bytes)),
            (
                "log_records_per_second",
                u64::from(self.log_records_per_second),
            ),
        ] {
            if value == 0 {
                return Err(Error::Sandbox(SandboxError::InvalidGrant(format!(
                    "{name} must be positive"
                ))));
            }
        }
        Ok(())
    }

    /// The memory cap in bytes.
    pub fn memory_limit_bytes(&self) -> usize {
        usize::try_from(self.memory_limit_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }

    /// Builds the WASI context of one instance from the grants. Network is never granted:
    /// TCP, UDP and name lookup stay disabled and every socket address is refused.
    /// Returns the capture streams too: the instance flushes an unterminated last line at
    /// the end of each call.
    pub(crate) fn wasi_ctx(
        &self,
        capture: Option<Capture>,
    ) -> Result<(WasiCtx, Vec<CaptureStream>)> {
        let mut b = WasiCtxBuilder::new();
        let mut streams = Vec::new();
        for dir in &self.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            b.preopened_dir(&dir.host, &dir.guest, perms).map_err(|e| {
                Error::Sandbox(SandboxError::InvalidGrant(format!(
                    "cannot preopen {}: {e:#}",
                    dir.host.display()
                )))
            })?;
        }
        for name in &self.env {
            if let Ok(value) = std::env::var(name) {
                b.env(name, value);
            }
        }
        for (name, value) in &self.secrets {
            b.env(name, value.expose());
        }
        if let Some(capture) = capture {
            let (out, err) = (capture.stream("stdout"), capture.stream("stderr"));
            b.stdout(out.clone());
            b.stderr(err.clone());
            streams = vec![out, err];
        }
        b.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        Ok((b.build(), streams))
    }
}

/// What a store's limiter caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limited {
    /// Linear memory, in bytes.
    Memory,
    /// Table elements.
    Table,
}

/// Why the limiter refused to grow memory or a table, for the typed error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LimitDenied {
    pub(crate) what: Limited,
    pub(crate) desired: usize,
    pub(crate) limit: usize,
}

impl std::fmt::Display for LimitDenied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, unit) = match self.what {
            Limited::Memory => ("memory", " bytes"),
            Limited::Table => ("table", " elements"),
        };
        write!(
            f,
            "{what} limit exceeded: wanted {}{unit}, limit {}{unit}",
            self.desired, self.limit
        )
    }
}

impl std::error::Error for LimitDenied {}

/// Caps linear memory and tables of one store; growth past a cap traps with
/// [`LimitDenied`] so the host can tell a guest that outgrew its own
/// limits from other traps.
pub(crate) struct Limits {
    pub(crate) memory: usize,
    pub(crate) table_elements: usize,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        grow(Limited::Memory, desired, self.memory)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        grow(Limited::Table, desired, self.table_elements)
    }
}

/// Allows growth to `desired` within `limit`; past it, the typed trap.
fn grow(what: Limited, desired: usize, limit: usize) -> wasmtime::Result<bool> {
    if desired > limit {
        return Err(LimitDenied {
            what,
            desired,
            limit,
        }
        .into());
    }
    Ok(true)
}

/// Captures a guest's stdout/stderr line by line into the diagnostics store, attributed to
/// the instance pool's session. Carriage-return progress frames collapse to the last frame.
/// Lines share the instance's log budget with its log records.
#[derive(Clone)]
pub(crate) struct Capture {
    pub(crate) session: Arc<str>,
    pub(crate) sink: Arc<dyn DiagnosticsSink>,
    pub(crate) budget: Arc<Mutex<LogBudget>>,
}

impl Capture {
    fn stream(&self, name: &'static str) -> CaptureStream {
        CaptureStream {
            capture: self.clone(),
            name,
            pending: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

/// Keeps at most this much of an unterminated line; a guest printing without newlines must
/// not grow host memory without bound.
const MAX_LINE: usize = 64 * 1024;

#[derive(Clone)]
pub(crate) struct CaptureStream {
    capture: Capture,
    name: &'static str,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl CaptureStream {
    fn push(&self, bytes: &[u8]) {
        let mut pending = self.pending.lock();
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut *pending);
                self.emit(&line);
            } else if pending.len() < MAX_LINE {
                pending.push(b);
            }
        }
    }

    /// Emits an unterminated last line (a guest's `print!` without a newline).
    pub(crate) fn flush_line(&self) {
        let line = std::mem::take(&mut *self.pending.lock());
        if !line.is_empty() {
            self.emit(&line);
        }
    }

    fn emit(&self, line: &[u8]) {
        if !self.capture.budget.lock().admit() {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        let frame = text.rsplit('\r').next().unwrap_or(text);
        self.capture
            .sink
            .chunk(&self.capture.session, self.name, frame);
    }
}

impl IsTerminal for CaptureStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CaptureStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CaptureStream {
    async fn ready(&mut self) {}
}

impl OutputStream for CaptureStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE)
    }
}

impl tokio::io::AsyncWrite for CaptureStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_sandbox_maps_onto_grants() {
        let dir = tempfile::tempdir().unwrap();
        let raw = serde_json::json!({
            "preopens": [{"host": "${CAPABILITY_DATA_DIR}", "guest": "/data", "mode": "rw"}],
            "env": ["LANG"], "memory_limit_mb": 64, "max_concurrency": 3
        });
        let sandbox: crate::manifest::Sandbox = serde_json::from_value(raw).unwrap();
        let data = dir.path().display().to_string();
        let grants = SandboxGrants::from_manifest(&sandbox, |name| {
            (name == "CAPABILITY_DATA_DIR").then(|| data.clone())
        })
        .unwrap();
        assert_eq!(grants.dirs[0].host, dir.path());
        assert!(grants.dirs[0].writable);
        assert_eq!((grants.memory_limit_mb, grants.max_instances), (64, 3));
        assert_eq!(
            grants.time_limit_secs,
            SandboxGrants::default().time_limit_secs
        );

        let net: crate::manifest::Sandbox =
            serde_json::from_value(serde_json::json!({"network": "any"})).unwrap();
        assert!(SandboxGrants::from_manifest(&net, |_| None).is_err());
    }

    #[test]
    fn grants_are_validated() {
        assert!(SandboxGrants::default().validate().is_ok());
        let bad = SandboxGrants {
            dirs: vec![DirGrant {
                host: "/definitely/not/here".into(),
                guest: "/data".into(),
                writable: false,
            }],
            ..SandboxGrants::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("/definitely/not/here")
        );
        let zero = SandboxGrants {
            max_instances: 0,
            ..SandboxGrants::default()
        };
        assert!(zero.validate().is_err());
    }
}
