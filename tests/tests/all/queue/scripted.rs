//! The queue's admission and cancellation over a scripted [`Backend`] in paused tokio time:
//! no process, no component, no wall-clock wait. A call sleeps for the virtual seconds its
//! kwargs ask and honours cancellation as its script says; the backend records the order
//! calls start in and how many run at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use cjm_guest::contract::{CapabilityInfo, Status};
use cjm_host::backend::{Backend, CallControl, CallRequest, CancelState, RuntimeKind};

use super::*;

/// How long a test waits for a job, in virtual time. Paused time runs on to the next timer
/// whenever the runtime idles, also while a blocking thread commits to the journal: a
/// bound near the calls' own durations could fire before a commit it waits for.
const VT: Option<Duration> = Some(Duration::from_secs(86_400));

/// How a scripted call answers a cancel request.
#[derive(Clone, Copy, PartialEq)]
enum OnCancel {
    /// Stops at the cooperative request.
    Stop,
    /// Ignores it; stops only when forced.
    OnlyWhenForced,
}

struct Scripted {
    info: CapabilityInfo,
    on_cancel: OnCancel,
    /// Each call's `tag`, in the order calls started.
    started: parking_lot::Mutex<Vec<String>>,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
}

impl Scripted {
    fn new(name: &str, on_cancel: OnCancel) -> Arc<Self> {
        Arc::new(Scripted {
            info: CapabilityInfo {
                name: name.into(),
                version: "1.0.0".into(),
                description: "a scripted test backend".into(),
                config_schema: json!({"type": "object", "properties": {}}),
                structural_surface: Default::default(),
                tasks: Vec::new(),
                extra: Default::default(),
            },
            on_cancel,
            started: Default::default(),
            running: AtomicUsize::new(0),
            most_at_once: AtomicUsize::new(0),
        })
    }

    fn started(&self) -> Vec<String> {
        self.started.lock().clone()
    }

    /// Waits (virtually) until a call tagged `tag` has started.
    async fn until_started(&self, tag: &str) {
        for _ in 0..360_000 {
            if self.started().iter().any(|t| t == tag) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no call tagged {tag} started: {:?}", self.started());
    }
}

#[async_trait]
impl Backend for Scripted {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Native
    }
    fn info(&self) -> &CapabilityInfo {
        &self.info
    }
    async fn health(&self) -> cjm_host::Result<Value> {
        Ok(json!({"status": "ok"}))
    }
    async fn stats(&self) -> cjm_host::Result<Value> {
        Ok(json!({}))
    }
    async fn initialize(&self, _: Value) -> cjm_host::Result<()> {
        Ok(())
    }
    async fn reconfigure(&self, _: Value, _: Value) -> cjm_host::Result<()> {
        Ok(())
    }
    async fn current_config(&self) -> cjm_host::Result<Value> {
        Ok(json!({}))
    }
    async fn config_options(&self) -> cjm_host::Result<Value> {
        Ok(json!({}))
    }
    async fn call(
        &self,
        request: CallRequest,
        control: Arc<CallControl>,
    ) -> cjm_host::Result<Value> {
        let tag = request.kwargs["tag"].as_str().unwrap_or("").to_owned();
        if request.kwargs.contains_key("out_of_memory") {
            self.started.lock().push(tag);
            return Err(Error::job(
                cjm_guest::JobError::resource("scripted: out of memory").with_retriable(true),
            ));
        }
        let seconds = request.kwargs["seconds"].as_f64().unwrap_or(0.0);
        self.started.lock().push(tag.clone());
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        let work = tokio::time::sleep(Duration::from_secs_f64(seconds));
        let stop = async {
            let mut seen = CancelState::Running;
            loop {
                seen = control.changed_from(seen).await;
                match (self.on_cancel, seen) {
                    (OnCancel::Stop, CancelState::Requested | CancelState::Forced) => return,
                    (OnCancel::OnlyWhenForced, CancelState::Forced) => return,
                    _ => {}
                }
            }
        };
        let outcome = tokio::select! {
            () = work => Ok(json!({"tag": tag})),
            () = stop => Err(Error::Cancelled),
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
    async fn prefetch(&self) -> cjm_host::Result<Status> {
        Ok(Status::new("not_supported"))
    }
    async fn on_enable(&self) -> cjm_host::Result<Status> {
        Ok(Status::new("enabled"))
    }
    async fn on_disable(&self) -> cjm_host::Result<Status> {
        Ok(Status::new("disabled"))
    }
    async fn shutdown(&self) -> cjm_host::Result<()> {
        Ok(())
    }
}

/// A host of `lanes` with `backend` attached as instance `id` (up to `max` calls at once).
async fn scripted_host(dir: &Path, lanes: u32, attach: &[(&str, Arc<Scripted>, usize)]) -> Host {
    let h = Host::builder()
        .data_dir(dir)
        .queue(queue_config(lanes, 300))
        .build()
        .await
        .unwrap();
    for (id, backend, max) in attach {
        let backend: Arc<dyn Backend> = Arc::clone(backend) as _;
        h.manager().attach(id, backend, None, *max).await.unwrap();
    }
    h
}

fn call(instance: &str, tag: &str, seconds: f64) -> JobSpec {
    JobSpec::execute(instance, kwargs(json!({"tag": tag, "seconds": seconds})))
}

#[tokio::test(start_paused = true)]
async fn admission_orders_by_priority_and_holds_each_instance_to_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let a = Scripted::new("a", OnCancel::Stop);
    let b = Scripted::new("b", OnCancel::Stop);
    let h = scripted_host(
        dir.path(),
        3,
        &[("a", Arc::clone(&a), 2), ("b", Arc::clone(&b), 1)],
    )
    .await;
    let q = h.queue();
    // A first call measures each instance (an unprofiled instance runs alone).
    for i in ["a", "b"] {
        let id = q.submit(call(i, "first", 1.0)).await.unwrap();
        assert_eq!(q.wait(&id, VT).await.unwrap().status, JobStatus::Completed);
    }
    // Submitted together (one decision sees them all): a's by priority, FIFO among equals.
    let mut specs = Vec::new();
    for (n, priority) in [0, 0, 5, 0, 9, 0].into_iter().enumerate() {
        specs.push(call("a", &format!("a{n}"), 10.0).priority(priority));
    }
    for n in 0..3 {
        specs.push(call("b", &format!("b{n}"), 10.0));
    }
    let started = tokio::time::Instant::now();
    let ids = q.submit_many(specs).await.unwrap();
    for id in &ids {
        assert_eq!(q.wait(id, VT).await.unwrap().status, JobStatus::Completed);
    }
    // Each instance stayed within its cap, and the lanes were used: six 10 s calls on a
    // cap of 2 take 30 virtual seconds, three on b's cap of 1 as long, side by side (b
    // after a would take 60). Idle waits on the journal may let paused time run on to the
    // host's next timer (its lease heartbeat), hence the margin.
    assert_eq!(a.most_at_once.load(Ordering::SeqCst), 2);
    assert_eq!(b.most_at_once.load(Ordering::SeqCst), 1);
    let took = started.elapsed();
    assert!(
        (Duration::from_secs(30)..Duration::from_secs(60)).contains(&took),
        "{took:?}"
    );
    assert_eq!(
        a.started(),
        ["first", "a4", "a2", "a0", "a1", "a3", "a5"],
        "{:?}",
        a.started()
    );
    assert_eq!(b.started(), ["first", "b0", "b1", "b2"]);
    h.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiting_job_never_reaches_its_backend() {
    let dir = tempfile::tempdir().unwrap();
    let a = Scripted::new("a", OnCancel::Stop);
    let h = scripted_host(dir.path(), 1, &[("a", Arc::clone(&a), 1)]).await;
    let q = h.queue();
    let running = q.submit(call("a", "running", 60.0)).await.unwrap();
    let waiting = q.submit(call("a", "waiting", 1.0)).await.unwrap();
    a.until_started("running").await;
    q.cancel(&waiting).unwrap();
    let job = q.wait(&waiting, VT).await.unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(
        q.wait(&running, VT).await.unwrap().status,
        JobStatus::Completed
    );
    assert_eq!(a.started(), ["running"]);
    // No cancel phases: there was no call to stop.
    assert!(phases(q, &waiting).is_empty(), "{:?}", phases(q, &waiting));
    h.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_running_job_is_cancelled_cooperatively_or_forced_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let polite = Scripted::new("polite", OnCancel::Stop);
    let stubborn = Scripted::new("stubborn", OnCancel::OnlyWhenForced);
    let h = scripted_host(
        dir.path(),
        2,
        &[
            ("polite", Arc::clone(&polite), 1),
            ("stubborn", Arc::clone(&stubborn), 1),
        ],
    )
    .await;
    let q = h.queue();
    for (instance, backend, want) in [
        ("polite", &polite, &["cooperative", "completed"][..]),
        (
            "stubborn",
            &stubborn,
            // Forced; an attached backend is not reloaded (it has no manifest).
            &["cooperative", "force", "completed"][..],
        ),
    ] {
        let id = q.submit(call(instance, "long", 3600.0)).await.unwrap();
        backend.until_started("long").await;
        let asked = tokio::time::Instant::now();
        q.cancel(&id).unwrap();
        let job = q.wait(&id, VT).await.unwrap();
        assert_eq!(job.status, JobStatus::Cancelled, "{instance}");
        assert_eq!(phases(q, &id), want, "{instance}");
        // The stubborn one is forced once the cancel grace (300 ms here) has passed.
        let took = asked.elapsed();
        if instance == "stubborn" {
            assert!(took >= Duration::from_millis(300), "{took:?}");
        }
        assert!(took < Duration::from_secs(60), "{instance}: {took:?}");
    }
    h.shutdown().await.unwrap();
}

/// A backend that ignores its deadline is abandoned once the cancel grace after it has
/// passed.
#[tokio::test(start_paused = true)]
async fn a_job_past_its_timeout_fails_as_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let a = Scripted::new("a", OnCancel::Stop);
    let h = scripted_host(dir.path(), 1, &[("a", Arc::clone(&a), 1)]).await;
    let q = h.queue();
    let started = tokio::time::Instant::now();
    let id = q
        .submit(call("a", "slow", 3600.0).timeout(Duration::from_secs(5)))
        .await
        .unwrap();
    let job = q.wait(&id, VT).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    let error = job.error.unwrap();
    assert_eq!(
        error.category,
        cjm_guest::contract::ErrorCategory::Transient,
        "{error:?}"
    );
    assert_eq!(error.capability_instance_id.as_deref(), Some("a"));
    // The scripted backend ignores its deadline: the manager's backstop ends the call.
    assert!(error.message.contains("time limit"), "{error:?}");
    // (The deadline is a wall-clock instant: paused time that ran on before the job was
    // dispatched shortens it, so only the upper bound is asserted.)
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "{took:?}");
    // Ended by its deadline, not cancelled.
    assert!(phases(q, &id).is_empty(), "{:?}", phases(q, &id));
    h.shutdown().await.unwrap();
}

/// An attached instance has no manifest: a reload is refused, naming why.
#[tokio::test(start_paused = true)]
async fn an_attached_instance_is_not_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let a = Scripted::new("a", OnCancel::Stop);
    let h = scripted_host(dir.path(), 1, &[("a", Arc::clone(&a), 1)]).await;
    let err = h.manager().reload("a").await.unwrap_err().to_string();
    assert!(err.contains("no manifest"), "{err}");
    let again = h
        .manager()
        .attach("a", Arc::clone(&a) as Arc<dyn Backend>, None, 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(again.contains("already loaded"), "{again}");
    h.shutdown().await.unwrap();
}

/// A retriable resource error of an attached backend ends its job with that error: there is
/// no manifest to reload the instance from, so no eviction and no retry.
#[tokio::test(start_paused = true)]
async fn a_resource_error_of_an_attached_backend_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let a = Scripted::new("a", OnCancel::Stop);
    let h = scripted_host(dir.path(), 1, &[("a", Arc::clone(&a), 1)]).await;
    let q = h.queue();
    let spec = JobSpec::execute("a", kwargs(json!({"tag": "oom", "out_of_memory": true})));
    let id = q.submit(spec).await.unwrap();
    let job = q.wait(&id, VT).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    let error = job.error.unwrap();
    assert_eq!(error.category, cjm_guest::contract::ErrorCategory::Resource);
    assert!(error.message.contains("out of memory"), "{error:?}");
    assert_eq!(a.started(), ["oom"]);
    h.shutdown().await.unwrap();
}
