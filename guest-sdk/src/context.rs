//! The services a host offers a running capability: progress, cancellation, logging, accounts
//! and usage. A wasm guest reaches them through the component's imports; a native worker
//! provides them in-process; tests use [`NullServices`].

use serde_json::Value;

use crate::contract::{CallError, Envelope};

/// Severity of a log record, named as Python's logging levels are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Detail for debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that did not stop the work.
    Warning,
    /// A failure.
    Error,
    /// A failure that stops the capability.
    Critical,
}

impl LogLevel {
    /// The Python level name (`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`).
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warning => "WARNING",
            LogLevel::Error => "ERROR",
            LogLevel::Critical => "CRITICAL",
        }
    }
}

/// What the host provides to a call in progress.
pub trait HostServices {
    /// Progress of the current call: 0..1, or -1 when unknown.
    fn progress(&self, fraction: f64, message: &str);
    /// Whether the host asked the current call to stop.
    fn cancelled(&self) -> bool;
    /// A structured log record.
    fn log(&self, level: LogLevel, logger: &str, message: &str);
    /// An auditable account (for example one paid API call).
    fn record_account(&self, event_type: &str, payload: &Value);
    /// Unit-agnostic usage of the current call (`{"tokens": 120}`).
    fn report_usage(&self, usage: &Value);
}

/// Services that drop everything: for calls outside a host (tests, introspection).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullServices;

impl HostServices for NullServices {
    fn progress(&self, _: f64, _: &str) {}
    fn cancelled(&self) -> bool {
        false
    }
    fn log(&self, _: LogLevel, _: &str, _: &str) {}
    fn record_account(&self, _: &str, _: &Value) {}
    fn report_usage(&self, _: &Value) {}
}

/// The context of one call: host services plus the call's envelope.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    services: &'a dyn HostServices,
    envelope: &'a Envelope,
}

impl<'a> Ctx<'a> {
    /// A context over `services` for the call described by `envelope`.
    pub fn new(services: &'a dyn HostServices, envelope: &'a Envelope) -> Self {
        Ctx { services, envelope }
    }

    /// The call's envelope (job id, run id, control flags).
    pub fn envelope(&self) -> &Envelope {
        self.envelope
    }

    /// Whether the boolean control flag `name` is set (for example `force`).
    pub fn flag(&self, name: &str) -> bool {
        self.envelope.flag(name)
    }

    /// Reports progress: `fraction` in 0..1, or -1 when unknown.
    pub fn progress(&self, fraction: f64, message: &str) {
        self.services.progress(fraction, message);
    }

    /// Whether the host asked this call to stop.
    pub fn cancelled(&self) -> bool {
        self.services.cancelled()
    }

    /// Returns `Err(CallError::Cancelled)` when the host asked this call to stop; use with `?`
    /// inside long loops.
    pub fn check_cancel(&self) -> Result<(), CallError> {
        if self.cancelled() {
            Err(CallError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Logs at `level` under the capability's logger.
    pub fn log(&self, level: LogLevel, message: &str) {
        self.services.log(level, "capability", message);
    }

    /// Logs at INFO.
    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message);
    }

    /// Logs at WARNING.
    pub fn warn(&self, message: &str) {
        self.log(LogLevel::Warning, message);
    }

    /// Records an account for the journal.
    pub fn record_account(&self, event_type: &str, payload: &Value) {
        self.services.record_account(event_type, payload);
    }

    /// Reports usage of this call.
    pub fn report_usage(&self, usage: &Value) {
        self.services.report_usage(usage);
    }
}
