//! The one contract: every loaded capability instance, wasm or native, is reached through the
//! object-safe [`Backend`] trait, held as `Arc<dyn Backend>`.
//!
//! A call carries a [`CallControl`], the call's side channel both ways: the caller asks for
//! cooperative or forced cancellation and sets a deadline through it; the backend reports
//! progress, accounts and usage into it. The wasm backend answers from the component's
//! exports ([`wasm`]); the native backend is an HTTP client of a worker subprocess.

pub mod control;
pub mod launch;
pub mod mask;
pub mod native;
pub mod wasm;

use std::sync::Arc;

use async_trait::async_trait;
use cjm_guest::contract::{CapabilityInfo, Envelope, JobError, Status};
use serde_json::{Map, Value};

/// How a capability runs (its manifest's `install.runtime`).
pub use crate::manifest::RuntimeKind;
/// Where what capabilities log and print goes (the diagnostics store's write-behind sink).
pub use crate::store::{DiagnosticRecord, DiagnosticsSink, NoDiagnostics};
pub use control::{Account, CallControl, CancelState};

use crate::error::Result;

/// The chunks of a streamed call, in order; the stream ends after an `Err` item or when
/// the capability is done.
pub type CallStream = tokio::sync::mpsc::Receiver<Result<Value>>;

/// Which entry point a call goes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// `execute(*args, **kwargs)`.
    Execute {
        /// Positional arguments.
        args: Vec<Value>,
    },
    /// `task(task, method, **kwargs)`, the typed task channel adapters use.
    Task {
        /// The task (for example `sentence_segmentation`).
        task: String,
        /// The protocol method (for example `segment_text`).
        method: String,
    },
}

/// One call to a capability.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRequest {
    /// The entry point.
    pub target: Target,
    /// Keyword arguments, key order kept.
    pub kwargs: Map<String, Value>,
    /// Correlation data and control flags.
    pub envelope: Envelope,
}

impl CallRequest {
    /// `execute` with keyword arguments.
    pub fn execute(kwargs: Map<String, Value>) -> Self {
        CallRequest {
            target: Target::Execute { args: Vec::new() },
            kwargs,
            envelope: Envelope::default(),
        }
    }

    /// `execute` with positional and keyword arguments.
    pub fn execute_with_args(args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        CallRequest {
            target: Target::Execute { args },
            kwargs,
            envelope: Envelope::default(),
        }
    }

    /// A task method call.
    pub fn task(
        task: impl Into<String>,
        method: impl Into<String>,
        kwargs: Map<String, Value>,
    ) -> Self {
        CallRequest {
            target: Target::Task {
                task: task.into(),
                method: method.into(),
            },
            kwargs,
            envelope: Envelope::default(),
        }
    }

    /// The same request with `envelope`.
    pub fn with_envelope(mut self, envelope: Envelope) -> Self {
        self.envelope = envelope;
        self
    }

    /// Takes the request apart without recursion: how a request refused by
    /// [`check_bounds`](Self::check_bounds) is dropped.
    pub fn drop_flat(self) {
        let args = match self.target {
            Target::Execute { args } => args,
            Target::Task { .. } => Vec::new(),
        };
        crate::bounds::drop_flat(self.kwargs.into_iter().map(|(_, v)| v).chain(args));
    }

    /// Refuses kwargs or positional args nesting deeper than
    /// [`MAX_JSON_DEPTH`](crate::bounds::MAX_JSON_DEPTH) (a typed `user_input` error).
    pub fn check_bounds(&self) -> std::result::Result<(), JobError> {
        for (key, value) in &self.kwargs {
            crate::bounds::check_depth(key, value).map_err(|_| depth_error("kwargs", key))?;
        }
        if let Target::Execute { args } = &self.target {
            for value in args {
                crate::bounds::check_depth("args", value)
                    .map_err(|_| depth_error("args", "args"))?;
            }
        }
        Ok(())
    }

    /// The approximate size of its kwargs and args as JSON text.
    pub fn approx_bytes(&self) -> usize {
        let kwargs: usize = self
            .kwargs
            .iter()
            .map(|(k, v)| k.len() + 4 + crate::bounds::size_of(v))
            .sum();
        let args: usize = match &self.target {
            Target::Execute { args } => args.iter().map(crate::bounds::size_of).sum(),
            Target::Task { .. } => 0,
        };
        kwargs + args
    }
}

fn depth_error(what: &str, field: &str) -> JobError {
    JobError::user_input(format!(
        "{what} nest deeper than {} levels (at '{field}')",
        crate::bounds::MAX_JSON_DEPTH
    ))
    .with_fields([field])
}

/// What a backend can do now, as far as the host knows without asking its capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// It takes calls (a wasm pool; a live, initialized worker).
    Ready,
    /// No live worker: one is spawned (or respawned after a death) by the next call.
    Starting,
    /// Its worker died too often: nothing is spawned until it is reloaded (the reason).
    CrashLooping(String),
}

/// A loaded capability instance of either kind. Every method may be called concurrently; a
/// backend serialises what its capability cannot do at once.
#[async_trait]
pub trait Backend: Send + Sync {
    /// How it runs.
    fn kind(&self) -> RuntimeKind;

    /// Identity, config schema and structural surface, as read at load.
    fn info(&self) -> &CapabilityInfo;

    /// The pid of the process serving the capability, when it has one of its own (a native
    /// worker); telemetry measures that process and its descendants.
    fn pid(&self) -> Option<u32> {
        None
    }

    /// Whether it can take a call now, without asking it (cheap: the dashboard and the API
    /// show it for every instance).
    fn condition(&self) -> Condition {
        Condition::Ready
    }

    /// Liveness answer (`{"status": "running", ...}`).
    async fn health(&self) -> Result<Value>;

    /// Resource use of the instance (`{"pid", "cpu_percent", "memory_rss_mb", ...}`).
    async fn stats(&self) -> Result<Value>;

    /// Applies the effective configuration. Always called once after load, before any call.
    async fn initialize(&self, config: Value) -> Result<()>;

    /// Moves from `old` to `new` configuration.
    async fn reconfigure(&self, old: Value, new: Value) -> Result<()>;

    /// The configuration in force.
    async fn current_config(&self) -> Result<Value>;

    /// Live options per config field.
    async fn config_options(&self) -> Result<Value>;

    /// Runs one call under `control`. A cancelled call ends in [`crate::Error::Cancelled`].
    async fn call(&self, request: CallRequest, control: Arc<CallControl>) -> Result<Value>;

    /// Runs one call as a stream of chunks (`execute_stream` of the worker contract). A
    /// failure ends the stream with an `Err` item. Backends without streaming answer with
    /// the whole result as one chunk.
    async fn call_stream(
        &self,
        request: CallRequest,
        control: Arc<CallControl>,
    ) -> Result<CallStream> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx.send(self.call(request, control).await).await;
        Ok(rx)
    }

    /// Fetches what the capability needs ahead of time.
    async fn prefetch(&self) -> Result<Status>;

    /// Enable hook.
    async fn on_enable(&self) -> Result<Status>;

    /// Disable hook.
    async fn on_disable(&self) -> Result<Status>;

    /// Releases the instance: `cleanup`, then the worker or instance pool goes away. Calls
    /// after shutdown fail.
    async fn shutdown(&self) -> Result<()>;
}

/// Lifecycle events of workers (spawned, ready, died, stopped, killed), for the journal.
pub trait WorkerEvents: Send + Sync {
    /// One event of the worker session `worker_session_id`.
    fn event(&self, event_type: &str, worker_session_id: &str, payload: Value);
}

/// Drops worker events.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl WorkerEvents for NoEvents {
    fn event(&self, _: &str, _: &str, _: Value) {}
}
