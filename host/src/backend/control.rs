//! `CallControl`: the side channel of one call.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
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

/// The listener hears progress at most this often per call (20 a second); the latest value
/// always wins and the last one is delivered when the call ends. A capability reporting
/// progress a million times costs the host a million stores of one value, not a million
/// events to every subscriber.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Default)]
struct ProgressState {
    current: Progress,
    /// When the listener last heard a value.
    told_at: Option<Instant>,
    /// A value the listener has not heard yet.
    untold: bool,
}

/// Cancellation, deadline, progress, accounts and usage of one call, shared by the caller and
/// the backend serving it.
pub struct CallControl {
    state: AtomicU8,
    changed: Notify,
    deadline: Option<Instant>,
    progress: Mutex<ProgressState>,
    listener: Option<ProgressListener>,
    /// Every account of the call, and how many of them were taken already.
    accounts: Mutex<(Vec<Account>, usize)>,
    usage: Mutex<Map<String, Value>>,
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

impl CallControl {
    /// A control with no deadline.
    pub fn new() -> Self {
        CallControl {
            state: AtomicU8::new(0),
            changed: Notify::new(),
            deadline: None,
            progress: Mutex::new(ProgressState::default()),
            listener: None,
            accounts: Mutex::new((Vec::new(), 0)),
            usage: Mutex::new(Map::new()),
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

    /// Waits until the call is forced to stop (never returns otherwise).
    pub async fn forced_wait(&self) {
        let mut seen = self.state();
        while seen != CancelState::Forced {
            seen = self.changed_from(seen).await;
        }
    }

    /// The wall-clock deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Records progress; the listener hears it unless it heard a value less than
    /// [`PROGRESS_INTERVAL`] ago (then [`flush_progress`](Self::flush_progress) tells it).
    pub fn set_progress(&self, progress: Progress) {
        let tell = {
            let mut st = self.progress.lock();
            st.current = progress;
            let due = self.listener.is_some()
                && st
                    .told_at
                    .is_none_or(|at| at.elapsed() >= PROGRESS_INTERVAL);
            st.untold = !due;
            if due {
                st.told_at = Some(Instant::now());
            }
            due.then(|| st.current.clone())
        };
        if let (Some(p), Some(listener)) = (tell, &self.listener) {
            listener(&p);
        }
    }

    /// Tells the listener the latest value it has not heard (the end of a call).
    pub fn flush_progress(&self) {
        let tell = {
            let mut st = self.progress.lock();
            std::mem::take(&mut st.untold).then(|| st.current.clone())
        };
        if let (Some(p), Some(listener)) = (tell, &self.listener) {
            listener(&p);
        }
    }

    /// The last progress reported.
    pub fn progress(&self) -> Progress {
        self.progress.lock().current.clone()
    }

    /// Records an account.
    pub fn push_account(&self, account: Account) {
        self.accounts.lock().0.push(account);
    }

    /// The accounts reported since the last take (the manager journals each once).
    pub fn take_accounts(&self) -> Vec<Account> {
        let mut acc = self.accounts.lock();
        let (all, taken) = &mut *acc;
        let new = all[*taken..].to_vec();
        *taken = all.len();
        new
    }

    /// Every account the call reported (a job keeps them).
    pub fn accounts(&self) -> Vec<Account> {
        self.accounts.lock().0.clone()
    }

    /// Adds reported usage: numbers are summed per key, anything else replaces.
    pub fn add_usage(&self, usage: &Map<String, Value>) {
        let mut total = self.usage.lock();
        for (key, value) in usage {
            let before = total.get(key);
            let ints = before.and_then(Value::as_i64).zip(value.as_i64());
            let floats = before.and_then(Value::as_f64).zip(value.as_f64());
            let sum = match (ints, floats) {
                (Some((a, b)), _) => a
                    .checked_add(b)
                    .map_or_else(|| Value::from(a as f64 + b as f64), Value::from),
                (None, Some((a, b))) => Value::from(a + b),
                _ => value.clone(),
            };
            total.insert(key.clone(), sum);
        }
    }

    /// The usage reported so far.
    pub fn usage(&self) -> Map<String, Value> {
        self.usage.lock().clone()
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
    fn progress_is_coalesced_and_the_last_value_is_told() {
        use std::sync::Arc;
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = Arc::clone(&heard);
        let c = CallControl::new().with_progress_listener(move |p| {
            h.lock().push(p.progress);
        });
        for i in 0..100_000 {
            c.set_progress(Progress {
                progress: f64::from(i) / 100_000.0,
                message: String::new(),
            });
        }
        c.flush_progress();
        c.flush_progress();
        let heard = heard.lock().clone();
        assert!(heard.len() < 100, "{} events", heard.len());
        assert_eq!(heard.first(), Some(&0.0));
        assert_eq!(heard.last(), Some(&0.99999));
        assert_eq!(c.progress().progress, 0.99999);
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
