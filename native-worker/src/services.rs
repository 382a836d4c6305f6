//! The host services a capability call sees through `Ctx` in a native worker.
//!
//! [`CallState`] is shared between the running call and the endpoints that must answer while
//! it runs (`/cancel`, `/progress`, `/stats`): atomics and short-held locks, never the
//! capability's own lock. [`CallServices`] is one call's view: it adds the call's job id (for
//! log records) and collects the accounts the call records (for `X-CJM-Accounts`).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use cjm_guest::contract::Progress;
use cjm_guest::{HostServices, LogLevel};
use serde_json::{Map, Value};

use crate::diagnostics::LogSink;

/// State of the current call that other endpoints read or set without waiting for it.
#[derive(Debug)]
pub struct CallState {
    cancel: AtomicBool,
    progress: Mutex<Progress>,
    usage: Mutex<Option<Value>>,
}

impl Default for CallState {
    fn default() -> Self {
        CallState {
            cancel: AtomicBool::new(false),
            // The Python worker's initial answer: `{"progress":0.0,"message":""}`.
            progress: Mutex::new(Progress {
                progress: 0.0,
                message: String::new(),
            }),
            usage: Mutex::new(None),
        }
    }
}

impl CallState {
    /// Asks the running call to stop (seen through `Ctx::cancelled`).
    pub fn request_cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for since the current call started.
    pub fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Clears what a previous call left: the cancel flag, and for a job the reported usage
    /// (as the Python worker does at `/execute` and `/task`). Progress is kept, as the Python
    /// worker keeps it, until the capability reports again.
    pub fn begin_call(&self, job: bool) {
        self.cancel.store(false, Ordering::SeqCst);
        if job {
            *self.usage.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    /// The last progress reported.
    pub fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The usage the last call reported, if any.
    pub fn usage(&self) -> Option<Value> {
        self.usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One call's host services.
pub struct CallServices<'a> {
    state: &'a CallState,
    logs: &'a LogSink,
    job_id: Option<&'a str>,
    accounts: RefCell<Vec<Value>>,
}

impl<'a> CallServices<'a> {
    /// Services for a call attributed to `job_id`.
    pub fn new(state: &'a CallState, logs: &'a LogSink, job_id: Option<&'a str>) -> Self {
        CallServices {
            state,
            logs,
            job_id,
            accounts: RefCell::new(Vec::new()),
        }
    }

    /// Appends an account (the worker's own `task_account` goes after the capability's).
    pub fn push_account(&self, event_type: &str, payload: Value) {
        let mut account = Map::with_capacity(2);
        account.insert("event_type".into(), Value::String(event_type.to_owned()));
        account.insert("payload".into(), payload);
        self.accounts.borrow_mut().push(Value::Object(account));
    }

    /// The accounts recorded so far, in order.
    pub fn take_accounts(&self) -> Vec<Value> {
        self.accounts.take()
    }
}

impl HostServices for CallServices<'_> {
    fn progress(&self, fraction: f64, message: &str) {
        let mut p = self
            .state
            .progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        p.progress = fraction;
        message.clone_into(&mut p.message);
    }

    fn cancelled(&self) -> bool {
        self.state.cancel_requested()
    }

    fn log(&self, level: LogLevel, logger: &str, message: &str) {
        self.logs.log(level, logger, message, self.job_id);
    }

    fn record_account(&self, event_type: &str, payload: &Value) {
        self.push_account(event_type, payload.clone());
    }

    fn report_usage(&self, usage: &Value) {
        *self
            .state
            .usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(usage.clone());
    }
}
