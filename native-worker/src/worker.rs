//! [`Worker`]: one capability instance and everything the endpoints share about it.
//!
//! Calls into the capability are serialized by one mutex and run on tokio's blocking pool, so
//! a long call never stalls the runtime and the endpoints that must answer during it
//! (`/cancel`, `/progress`, `/health`, `/stats`) never touch that mutex. A panic inside a call
//! is caught and reported as the call's failure; the capability stays served.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use cjm_guest::contract::CapabilityInfo;
use cjm_guest::{Capability, Ctx, DynCapability, Envelope, Hosted};
use serde_json::Value;

use crate::diagnostics::LogSink;
use crate::error::{Error, Result};
use crate::services::{CallServices, CallState};
use crate::stats::StatsProbe;

/// A served capability. Cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.inner.name)
            .field("version", &self.inner.version)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    name: String,
    version: String,
    capability: Mutex<Box<dyn DynCapability>>,
    info: OnceLock<CapabilityInfo>,
    pub(crate) call: CallState,
    pub(crate) logs: LogSink,
    pub(crate) stats: StatsProbe,
}

/// What starting a capability call resets.
#[derive(Clone, Copy)]
enum Begin {
    /// A job: the cancel flag and the reported usage.
    Job,
    /// A lifecycle call: the cancel flag.
    Lifecycle,
    /// A read: nothing.
    Query,
}

/// What a capability call produced, with the accounts it recorded.
pub(crate) struct Outcome<R> {
    pub(crate) value: R,
    pub(crate) accounts: Vec<Value>,
}

/// The capability and the services of one call, as a call closure sees them.
pub(crate) struct CallScope<'a> {
    /// The capability.
    pub(crate) capability: &'a mut dyn DynCapability,
    /// The call's context.
    pub(crate) cx: &'a Ctx<'a>,
    /// The call's services (to append the worker's own accounts).
    pub(crate) services: &'a CallServices<'a>,
    info: &'a OnceLock<CapabilityInfo>,
}

impl CallScope<'_> {
    /// The capability's info, computed once.
    pub(crate) fn info(&self) -> &CapabilityInfo {
        self.info.get_or_init(|| self.capability.info())
    }
}

impl Worker {
    /// Serves capability `C` (not initialized until `POST /initialize`), logging to `logs`.
    pub fn new<C: Capability>(logs: LogSink) -> Worker {
        Worker::from_dyn(C::NAME, C::VERSION, Box::new(Hosted::<C>::new()), logs)
    }

    /// Serves an already erased capability named `name` at `version`.
    pub fn from_dyn(
        name: &str,
        version: &str,
        capability: Box<dyn DynCapability>,
        logs: LogSink,
    ) -> Worker {
        Worker {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                version: version.to_owned(),
                capability: Mutex::new(capability),
                info: OnceLock::new(),
                call: CallState::default(),
                logs,
                stats: StatsProbe::new(),
            }),
        }
    }

    /// The capability name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The capability version.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// The log sink.
    pub fn logs(&self) -> &LogSink {
        &self.inner.logs
    }

    /// Asks the running call, if any, to stop.
    pub fn cancel(&self) {
        self.inner.call.request_cancel();
    }

    pub(crate) fn shared(&self) -> &Inner {
        &self.inner
    }

    /// Runs a job call (`execute`, `task`, a stream) on the capability on the blocking pool,
    /// after every earlier call. The cancel flag and the reported usage are reset once the
    /// capability is ours; records logged during the call carry `envelope`'s job id.
    pub(crate) async fn call<R, F>(&self, envelope: Envelope, f: F) -> Result<Outcome<R>>
    where
        R: Send + 'static,
        F: FnOnce(&mut CallScope<'_>) -> R + Send + 'static,
    {
        self.run(Begin::Job, envelope, f).await
    }

    /// Runs a lifecycle call (`initialize`, `prefetch`, hooks): like [`Worker::call`], but
    /// the usage of the last job stays readable on `/stats`.
    pub(crate) async fn lifecycle<R, F>(&self, f: F) -> Result<Outcome<R>>
    where
        R: Send + 'static,
        F: FnOnce(&mut CallScope<'_>) -> R + Send + 'static,
    {
        self.run(Begin::Lifecycle, Envelope::default(), f).await
    }

    /// Reads from the capability (config, options, info) without starting a call: the
    /// cancel flag of a call waiting behind it is left alone.
    pub(crate) async fn query<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut CallScope<'_>) -> R + Send + 'static,
    {
        Ok(self.run(Begin::Query, Envelope::default(), f).await?.value)
    }

    /// The capability's info if it was computed already (then no lock is taken).
    pub(crate) fn cached_info(&self) -> Option<&CapabilityInfo> {
        self.inner.info.get()
    }

    async fn run<R, F>(&self, begin: Begin, envelope: Envelope, f: F) -> Result<Outcome<R>>
    where
        R: Send + 'static,
        F: FnOnce(&mut CallScope<'_>) -> R + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let work = move || {
            let mut capability = inner
                .capability
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match begin {
                Begin::Job => inner.call.begin_call(true),
                Begin::Lifecycle => inner.call.begin_call(false),
                Begin::Query => {}
            }
            let services = CallServices::new(&inner.call, &inner.logs, envelope.job_id.as_deref());
            let cx = Ctx::new(&services, &envelope);
            let mut scope = CallScope {
                capability: capability.as_mut(),
                cx: &cx,
                services: &services,
                info: &inner.info,
            };
            let value = catch_unwind(AssertUnwindSafe(|| f(&mut scope)))
                .map_err(|payload| Error::Panic(panic_message(payload.as_ref())))?;
            Ok(Outcome {
                value,
                accounts: services.take_accounts(),
            })
        };
        // On the multi-threaded runtime the call runs in place: `block_in_place` hands this
        // thread's scheduler to a fresh one, so /cancel and /progress keep being served,
        // without spawn_blocking's hop to another thread and back on every call.
        use tokio::runtime::{Handle, RuntimeFlavor};
        if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
            return tokio::task::block_in_place(work);
        }
        tokio::task::spawn_blocking(work)
            .await
            .map_err(Error::Aborted)?
    }

    /// Calls the capability's `cleanup` at shutdown, unless a call still holds it after
    /// `wait` (then the process exits without it). Blocking.
    pub(crate) fn cleanup_at_exit(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        let mut capability = loop {
            match self.inner.capability.try_lock() {
                Ok(guard) => break guard,
                Err(TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TryLockError::WouldBlock) => {
                    eprintln!("[cjm-native-worker] a call is still running: cleanup skipped");
                    return;
                }
            }
        };
        match catch_unwind(AssertUnwindSafe(|| capability.cleanup())) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("[cjm-native-worker] cleanup at shutdown failed: {e}"),
            Err(p) => eprintln!(
                "[cjm-native-worker] cleanup at shutdown panicked: {}",
                panic_message(p.as_ref())
            ),
        }
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
