//! `CallControl`: the side channel of one call.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use cjm_guest::contract::Progress;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Notify;

/// Where a call is on the cancellation path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CancelState {
    /// Nobody asked the call to stop.
    Running,
    /// Cooperative cancellation asked: the capability sees it through its cancellation check.
    Requested,
    /// Forced: the wasm instance is trapped at its next epoch tick, the native worker killed.
    Forced,
}

/// An auditable event a capability reported during a call (`X-CJM-Accounts` of a worker, or
/// `record-account` of a wasm guest). The host journals each with `worker_reported = true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// The event type.
    pub event_type: String,
    /// Its payload.
    #[serde(default)]
    pub payload: Value,
}

type ProgressListener = Box<dyn Fn(&Progress) + Send + Sync>;

/// Cancellation, deadline, progress, accounts and usage of one call, shared by the caller and
/// the backend serving it.
pub struct CallControl {
    state: AtomicU8,
    changed: Notify,
    deadline: Option<Instant>,
    progress: Mutex<Progress>,
    listener: Option<ProgressListener>,
    accounts: Mutex<Vec<Account>>,
    usage: Mutex<Map<String, Value>>,
    short: AtomicBool,
}

impl std::fmt::Debug for CallControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallControl")
            .field("state", &self.state())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Default for CallControl {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these small locks leaves plain data behind: keep going.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CallControl {
    /// A control with no deadline.
    pub fn new() -> Self {
        CallControl {
            state: AtomicU8::new(0),
            changed: Notify::new(),
            deadline: None,
            progress: Mutex::new(Progress::default()),
            listener: None,
            accounts: Mutex::new(Vec::new()),
            usage: Mutex::new(Map::new()),
            short: AtomicBool::new(false),
        }
    }

    /// The same control with a wall-clock deadline `timeout` from now.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.deadline = Some(Instant::now() + timeout);
        self
    }

    /// The same control with a listener called on every progress report.
    pub fn with_progress_listener(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.listener = Some(Box::new(f));
        self
    }

    /// Asks the call to stop cooperatively.
    pub fn request_cancel(&self) {
        self.raise(CancelState::Requested);
    }

    /// Stops the call by force.
    pub fn force_cancel(&self) {
        self.raise(CancelState::Forced);
    }

    fn raise(&self, to: CancelState) {
        let code = match to {
            CancelState::Running => 0,
            CancelState::Requested => 1,
            CancelState::Forced => 2,
        };
        self.state.fetch_max(code, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Where the call is on the cancellation path.
    pub fn state(&self) -> CancelState {
        match self.state.load(Ordering::SeqCst) {
            0 => CancelState::Running,
            1 => CancelState::Requested,
            _ => CancelState::Forced,
        }
    }

    /// Whether any cancellation was asked.
    pub fn cancel_requested(&self) -> bool {
        self.state() != CancelState::Running
    }

    /// Whether the call was forced to stop.
    pub fn forced(&self) -> bool {
        self.state() == CancelState::Forced
    }

    /// Waits until the cancellation state changes from `seen`.
    pub async fn changed_from(&self, seen: CancelState) -> CancelState {
        loop {
            let notified = self.changed.notified();
            let now = self.state();
            if now != seen {
                return now;
            }
            notified.await;
        }
    }

    /// Tells the backend whether earlier calls of this kind took microseconds (an in-process
    /// backend then runs the call on the calling thread instead of handing it over).
    pub fn set_expected_short(&self, short: bool) {
        self.short.store(short, Ordering::Relaxed);
    }

    /// Whether the call is expected to take microseconds.
    pub fn expected_short(&self) -> bool {
        self.short.load(Ordering::Relaxed)
    }

    /// The wall-clock deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Records progress and tells the listener.
    pub fn set_progress(&self, progress: Progress) {
        if let Some(listener) = &self.listener {
            listener(&progress);
        }
        *lock(&self.progress) = progress;
    }

    /// The last progress reported.
    pub fn progress(&self) -> Progress {
        lock(&self.progress).clone()
    }

    /// Records an account.
    pub fn push_account(&self, account: Account) {
        lock(&self.accounts).push(account);
    }

    /// The accounts reported so far, leaving none behind.
    pub fn take_accounts(&self) -> Vec<Account> {
        std::mem::take(&mut *lock(&self.accounts))
    }

    /// Adds reported usage: numbers are summed per key, anything else replaces.
    pub fn add_usage(&self, usage: &Map<String, Value>) {
        let mut total = lock(&self.usage);
        for (key, value) in usage {
            let sum = match (total.get(key).and_then(Value::as_f64), value.as_f64()) {
                (Some(a), Some(b)) if value.is_i64() && total[key].is_i64() => {
                    Value::from(a as i64 + b as i64)
                }
                (Some(a), Some(b)) => Value::from(a + b),
                _ => value.clone(),
            };
            total.insert(key.clone(), sum);
        }
    }

    /// The usage reported so far.
    pub fn usage(&self) -> Map<String, Value> {
        lock(&self.usage).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cancellation_only_escalates() {
        let c = CallControl::new();
        assert_eq!(c.state(), CancelState::Running);
        c.force_cancel();
        c.request_cancel();
        assert_eq!(c.state(), CancelState::Forced);
    }

    #[test]
    fn usage_sums_numbers_per_key() {
        let c = CallControl::new();
        c.add_usage(json!({"tokens": 3, "usd": 0.5}).as_object().unwrap());
        c.add_usage(
            json!({"tokens": 4, "usd": 0.25, "model": "m"})
                .as_object()
                .unwrap(),
        );
        assert_eq!(
            Value::Object(c.usage()),
            json!({"tokens": 7, "usd": 0.75, "model": "m"})
        );
    }
}
