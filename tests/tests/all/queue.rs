//! The job queue over both kinds: results, admission rules, the cancel state machine on wasm
//! and native, events and subscribers, a wedged journal, restart with history, compositions
//! and bad input. Ordering is asserted on journal `seq`s (the order the queue wrote its
//! decisions), never on wall-clock timings.

use std::path::Path;
use std::time::Duration;

use cjm_host::config::QueueConfig;
use cjm_host::queue::{
    Composition, EventKind, JobQueue, JobSpec, JobStatus, Node, NodeState, OutputRef, QueueError,
    ResourceSource, ResourceView, Scope,
};
use cjm_host::store::{JournalEvent, JournalQuery, ResourceSample};
use cjm_host::{Error, Host};
use cjm_tests::{fixtures, kwargs, native_install, wasm_install, write_manifest};
use serde_json::{Value, json};

const T: Option<Duration> = Some(Duration::from_secs(60));

/// A data dir with wasm (noop, hostile, text-stats, sentence-split) and native (text-stats,
/// probe) capabilities.
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_manifest(
        d,
        "noop",
        wasm_install(fixtures::NOOP, json!({"max_concurrency": 4})),
    );
    write_manifest(d, "hostile", wasm_install(fixtures::HOSTILE, json!({})));
    write_manifest(
        d,
        "text-stats",
        wasm_install(fixtures::TEXT_STATS, json!({})),
    );
    write_manifest(
        d,
        "sentence-split",
        wasm_install(fixtures::SENTENCE_SPLIT, json!({})),
    );
    write_manifest(
        d,
        "text-stats-native",
        native_install(&[env!("CARGO_BIN_EXE_parity_worker")]),
    );
    write_manifest(
        d,
        "probe",
        native_install(&[env!("CARGO_BIN_EXE_probe_worker")]),
    );
    dir
}

fn queue_config(lanes: u32, cancel_ms: u64) -> QueueConfig {
    QueueConfig {
        max_concurrent_lanes: lanes,
        cancel_timeout: Duration::from_millis(cancel_ms),
        progress_poll_interval: Duration::from_millis(50),
        resource_snapshot_cadence_polls: 2,
        ..QueueConfig::default()
    }
}

async fn host(dir: &Path, lanes: u32, load: &[(&str, &str)]) -> Host {
    let mut b = Host::builder()
        .data_dir(dir)
        .queue(queue_config(lanes, 300));
    for (name, id) in load {
        b = b.load_with(*name, None, Some((*id).to_owned()));
    }
    b.build().await.unwrap()
}

fn rows(q: &JobQueue, job: &str) -> Vec<JournalEvent> {
    q.manager()
        .journal()
        .query(&JournalQuery::job(job))
        .unwrap()
}

/// The `seq` of the job's transition into `to`.
fn seq_of(q: &JobQueue, job: &str, to: &str) -> i64 {
    rows(q, job)
        .iter()
        .find(|e| e.event_type == "state_transition" && e.payload["to"] == to)
        .and_then(|e| e.seq)
        .unwrap_or_else(|| panic!("no transition of {job} to {to}: {:#?}", rows(q, job)))
}

fn phases(q: &JobQueue, job: &str) -> Vec<String> {
    rows(q, job)
        .iter()
        .filter(|e| e.event_type == "cancel_phase_changed")
        .map(|e| e.payload["to"].as_str().unwrap().to_owned())
        .collect()
}

fn admission(q: &JobQueue, job: &str) -> Value {
    rows(q, job)
        .into_iter()
        .find(|e| e.event_type == "admission_decided")
        .unwrap()
        .payload
}

fn probe(action: &str, extra: Value) -> serde_json::Map<String, Value> {
    let mut k = kwargs(extra);
    k.insert("action".into(), json!(action));
    k
}

fn queue_error(r: Result<impl std::fmt::Debug, Error>) -> QueueError {
    match r {
        Err(Error::Queue(e)) => e,
        other => panic!("expected a queue error, got {other:?}"),
    }
}

/// Waits for the job to be running (its running transition published).
async fn until_running(q: &JobQueue, job: &str) {
    for _ in 0..2000 {
        if q.get(job).is_some_and(|j| j.status == JobStatus::Running) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{job} never ran");
}

/// Waits until the capability reported progress for the job: its call is executing.
async fn until_started(q: &JobQueue, job: &str) {
    for _ in 0..2000 {
        if q.get(job).is_some_and(|j| !j.status_message.is_empty()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{job} never reported progress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_on_both_kinds_and_history_survives_a_restart() {
    let dir = data_dir();
    let text = "The cat sat on the mat. The cat ran away!";
    let (a, b, t) = {
        let h = host(
            dir.path(),
            4,
            &[
                ("text-stats", "ts"),
                ("text-stats-native", "tsn"),
                ("probe", "p"),
            ],
        )
        .await;
        let q = h.queue();
        let direct = h
            .manager()
            .binding("ts")
            .unwrap()
            .execute(kwargs(json!({"text": text})))
            .await
            .unwrap();
        let a = q
            .submit(
                JobSpec::execute("ts", kwargs(json!({"text": text})))
                    .run_id("run-1")
                    .actor("tester"),
            )
            .await
            .unwrap();
        let b = q
            .submit(JobSpec::execute("tsn", kwargs(json!({"text": text}))))
            .await
            .unwrap();
        let t = q
            .submit(JobSpec::task(
                "p",
                "echo",
                "echo",
                kwargs(json!({"text": "hi", "times": 2})),
            ))
            .await
            .unwrap();
        let (ja, jb, jt) = (
            q.wait(&a, T).await.unwrap(),
            q.wait(&b, T).await.unwrap(),
            q.wait(&t, T).await.unwrap(),
        );
        assert_eq!(ja.status, JobStatus::Completed);
        assert_eq!(
            ja.result.as_ref(),
            Some(&direct),
            "a queued job returns what a direct call does"
        );
        assert_eq!(
            jb.result.as_ref(),
            Some(&direct),
            "wasm and native give the same result"
        );
        assert_eq!(jt.status, JobStatus::Completed, "{:?}", jt.error);
        assert_eq!(jt.task_name.as_deref(), Some("echo"));
        assert_eq!(q.stats().completed, 3);
        // Every journal row of the job carries its correlation tags.
        let types: Vec<String> = rows(q, &a).iter().map(|e| e.event_type.clone()).collect();
        assert_eq!(
            types,
            [
                "job_submitted",
                "admission_decided",
                "state_transition",
                "state_transition"
            ]
        );
        assert!(
            rows(q, &a)
                .iter()
                .all(|e| e.run_id.as_deref() == Some("run-1")
                    && e.actor.as_deref() == Some("tester"))
        );
        h.shutdown().await.unwrap();
        (a, b, t)
    };
    // A new host on the same data dir: the durable history comes back from the journal.
    let h = host(dir.path(), 4, &[]).await;
    let q = h.queue();
    let history = q.history_from_journal(None).unwrap();
    let ids: Vec<&str> = history.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, [t.as_str(), b.as_str(), a.as_str()], "newest first");
    assert!(
        history
            .iter()
            .all(|j| j.status == JobStatus::Completed && j.started_at.is_some())
    );
    assert_eq!(history[2].run_id.as_deref(), Some("run-1"));
    let old = q.wait(&a, T).await.unwrap();
    assert_eq!(
        (old.status, old.result),
        (JobStatus::Completed, None),
        "a record: no result"
    );
    assert!(
        q.history(None).is_empty(),
        "the in-memory history starts empty"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_rules() {
    let dir = data_dir();
    let h = host(dir.path(), 4, &[("probe", "p1"), ("probe", "p2")]).await;
    let q = h.queue();
    let slow = |steps: u32| probe("slow", json!({"steps": steps}));

    // 1. Unprofiled (instance, config) runs alone: p2's first job waits for p1's.
    let a = q.submit(JobSpec::execute("p1", slow(4))).await.unwrap();
    let b = q.submit(JobSpec::execute("p2", slow(4))).await.unwrap();
    q.wait(&b, T).await.unwrap();
    assert!(
        seq_of(q, &b, "running") > seq_of(q, &a, "completed"),
        "first runs are exclusive"
    );
    assert_eq!(admission(q, &a)["exclusive"], true);
    assert_eq!(admission(q, &b)["measured"], false);

    // 2. Profiled jobs on different instances share lanes.
    let a = q.submit(JobSpec::execute("p1", slow(6))).await.unwrap();
    let b = q.submit(JobSpec::execute("p2", slow(1))).await.unwrap();
    q.wait(&a, T).await.unwrap();
    assert!(
        seq_of(q, &b, "running") < seq_of(q, &a, "completed"),
        "they overlap"
    );
    assert_eq!(admission(q, &a)["exclusive"], false);

    // 3. The per-instance cap (1 for a native worker): jobs on one instance never overlap.
    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push(q.submit(JobSpec::execute("p1", slow(1))).await.unwrap());
    }
    for j in &jobs {
        q.wait(j, T).await.unwrap();
    }
    for w in jobs.windows(2) {
        assert!(seq_of(q, &w[1], "running") > seq_of(q, &w[0], "completed"));
    }

    // 4. Priority, FIFO within a priority, skip-ahead past a blocked head, reorder.
    let busy = q.submit(JobSpec::execute("p1", slow(8))).await.unwrap();
    until_running(q, &busy).await;
    let low = q.submit(JobSpec::execute("p1", slow(1))).await.unwrap();
    let low2 = q.submit(JobSpec::execute("p1", slow(1))).await.unwrap();
    let high = q
        .submit(JobSpec::execute("p1", slow(1)).priority(10))
        .await
        .unwrap();
    let late = q.submit(JobSpec::execute("p1", slow(1))).await.unwrap();
    q.reorder(&late, 5).unwrap();
    let pending: Vec<String> = q.pending().into_iter().map(|j| j.id).collect();
    assert_eq!(
        pending,
        [high.clone(), late.clone(), low.clone(), low2.clone()]
    );
    let other = q.submit(JobSpec::execute("p2", slow(1))).await.unwrap();
    q.wait(&other, T).await.unwrap();
    q.wait(&busy, T).await.unwrap();
    assert!(
        seq_of(q, &other, "completed") < seq_of(q, &busy, "completed"),
        "skip-ahead: a blocked head does not stall p2"
    );
    q.wait(&low2, T).await.unwrap();
    let order: Vec<i64> = [&high, &late, &low, &low2]
        .iter()
        .map(|j| seq_of(q, j, "running"))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_bound_the_running_set() {
    let dir = data_dir();
    let h = host(dir.path(), 1, &[("probe", "p1"), ("probe", "p2")]).await;
    let q = h.queue();
    for i in ["p1", "p2"] {
        let j = q
            .submit(JobSpec::execute(i, probe("echo", json!({}))))
            .await
            .unwrap();
        q.wait(&j, T).await.unwrap();
    }
    // Both profiled, different instances: only the single lane keeps them apart.
    let a = q
        .submit(JobSpec::execute("p1", probe("slow", json!({"steps": 4}))))
        .await
        .unwrap();
    let b = q
        .submit(JobSpec::execute("p2", probe("slow", json!({"steps": 1}))))
        .await
        .unwrap();
    q.wait(&b, T).await.unwrap();
    assert!(seq_of(q, &b, "running") > seq_of(q, &a, "completed"));
    assert_eq!(admission(q, &b)["lanes"], 1);
    assert_eq!(admission(q, &b)["exclusive"], false);
    h.shutdown().await.unwrap();
}

/// A fixed view of free resources: GPU admission tested on a machine without a GPU.
struct Fixed(ResourceView);

impl ResourceSource for Fixed {
    fn view(&self) -> ResourceView {
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_ledger_and_memory_admission() {
    let dir = data_dir();
    // Measure once to learn each instance's config hash, then record real samples with the
    // peaks admission will read (as if earlier runs had used a GPU).
    let peaks = [
        ("g1", 4000.0, 10.0),
        ("g2", 4000.0, 10.0),
        ("cpu", 0.0, 10.0),
        ("huge", 0.0, 1e9),
    ];
    {
        let h = host(dir.path(), 4, &[]).await;
        for (id, gpu, ram) in peaks {
            let i = h.manager().load("probe", None, Some(id)).await.unwrap();
            let sample = ResourceSample::new(1.0, ram, gpu, 0.1, true);
            h.manager()
                .empirical()
                .record_sample(id, "probe", &i.config_hash(), &sample)
                .unwrap();
        }
        h.shutdown().await.unwrap();
    }
    let view = ResourceView {
        memory_available_mb: Some(16000.0),
        gpu_total_mb: Some(8000.0),
        gpu_free_mb: Some(8000.0),
    };
    let mut b = Host::builder()
        .data_dir(dir.path())
        .queue(queue_config(4, 300))
        .resources(Box::new(Fixed(view)));
    for (id, ..) in peaks {
        b = b.load_with("probe", None, Some(id.to_owned()));
    }
    let h = b.build().await.unwrap();
    let q = h.queue();
    let slow = || probe("slow", json!({"steps": 6}));
    let g1 = q.submit(JobSpec::execute("g1", slow())).await.unwrap();
    let g2 = q.submit(JobSpec::execute("g2", slow())).await.unwrap();
    let huge = q.submit(JobSpec::execute("huge", slow())).await.unwrap();
    let cpu = q.submit(JobSpec::execute("cpu", slow())).await.unwrap();
    q.wait(&g2, T).await.unwrap();
    q.wait(&cpu, T).await.unwrap();
    // 4000 + 4000 MB > 90% of 8000 MB: g2 waits for g1; the CPU job does not.
    assert!(seq_of(q, &g2, "running") > seq_of(q, &g1, "completed"));
    assert!(seq_of(q, &cpu, "running") < seq_of(q, &g1, "completed"));
    let adm = admission(q, &g1);
    assert_eq!(
        (
            adm["gpu_memory_mb"].as_f64(),
            adm["gpu_reserved_mb"].as_f64()
        ),
        (Some(4000.0), Some(4000.0))
    );
    // A RAM peak above what is available waits while anything else runs, then runs alone
    // (nothing else could free the memory it needs).
    let j = q.wait(&huge, T).await.unwrap();
    assert_eq!(j.status, JobStatus::Completed);
    for other in [&g1, &g2, &cpu] {
        assert!(seq_of(q, &huge, "running") > seq_of(q, other, "completed"));
    }
    assert_eq!(admission(q, &huge)["exclusive"], true);
    // A job pending behind a busy instance is cancelled cleanly and never starts.
    let busy = q.submit(JobSpec::execute("cpu", slow())).await.unwrap();
    until_running(q, &busy).await;
    let queued = q.submit(JobSpec::execute("cpu", slow())).await.unwrap();
    q.cancel(&queued).unwrap();
    let j = q.wait(&queued, T).await.unwrap();
    assert_eq!((j.status, j.started_at), (JobStatus::Cancelled, None));
    assert!(
        rows(q, &queued)
            .iter()
            .all(|e| e.payload["to"] != "running"),
        "a cancelled pending job never starts"
    );
    q.wait(&busy, T).await.unwrap();
    h.shutdown().await.unwrap();

    // Without GPU telemetry a GPU-profiled job runs alone.
    let h = Host::builder()
        .data_dir(dir.path())
        .queue(queue_config(4, 300))
        .resources(Box::new(Fixed(ResourceView::default())))
        .load_with("probe", None, Some("g1".into()))
        .load_with("probe", None, Some("cpu".into()))
        .build()
        .await
        .unwrap();
    let q = h.queue();
    let g = q.submit(JobSpec::execute("g1", slow())).await.unwrap();
    let c = q.submit(JobSpec::execute("cpu", slow())).await.unwrap();
    q.wait(&c, T).await.unwrap();
    assert_eq!(admission(q, &g)["exclusive"], true);
    assert!(seq_of(q, &c, "running") > seq_of(q, &g, "completed"));
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_paths_on_wasm_and_native() {
    let dir = data_dir();
    let h = host(dir.path(), 4, &[("hostile", "h"), ("probe", "p")]).await;
    let q = h.queue();
    let attack = |a: &str| kwargs(json!({"attack": a}));
    // (wasm, kwargs, phases): a guest that never checks is trapped by the epoch and replaced;
    // one that checks stops cooperatively. Native: a worker sleeping without checking is
    // killed and respawned; one that checks answers /cancel.
    let cases: Vec<(&str, serde_json::Map<String, Value>, &[&str])> = vec![
        (
            "h",
            attack("loop_forever"),
            &["cooperative", "force", "reloading", "completed"],
        ),
        (
            "h",
            attack("loop_cooperative"),
            &["cooperative", "completed"],
        ),
        (
            "p",
            probe("sleep", json!({"seconds": 60})),
            &["cooperative", "force", "reloading", "completed"],
        ),
        (
            "p",
            probe("slow", json!({"steps": 1000})),
            &["cooperative", "completed"],
        ),
    ];
    for (instance, kw, want) in cases {
        let id = q.submit(JobSpec::execute(instance, kw)).await.unwrap();
        until_started(q, &id).await;
        q.cancel(&id).unwrap();
        // Idempotent while it stops; a typed error once it has stopped.
        match q.cancel(&id) {
            Ok(()) | Err(Error::Queue(QueueError::Finished { .. })) => {}
            Err(e) => panic!("{e}"),
        }
        let job = q.wait(&id, T).await.unwrap();
        assert_eq!(
            job.status,
            JobStatus::Cancelled,
            "{instance}: {:?}",
            job.error
        );
        assert_eq!(phases(q, &id), want, "{instance}");
        // The instance (or its replacement) serves the next call.
        let next = match instance {
            "h" => attack("ok"),
            _ => probe("echo", json!({"text": "again"})),
        };
        let ok = q.submit(JobSpec::execute(instance, next)).await.unwrap();
        assert_eq!(q.wait(&ok, T).await.unwrap().status, JobStatus::Completed);
    }
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_fails_the_job_on_both_kinds() {
    let dir = data_dir();
    let h = host(dir.path(), 4, &[("hostile", "h"), ("probe", "p")]).await;
    let q = h.queue();
    let cases = [
        ("h", kwargs(json!({"attack": "loop_forever"}))),
        ("p", probe("sleep", json!({"seconds": 60}))),
    ];
    for (instance, kw) in cases {
        let id = q
            .submit(JobSpec::execute(instance, kw).timeout(Duration::from_millis(300)))
            .await
            .unwrap();
        let job = q.wait(&id, T).await.unwrap();
        assert_eq!(job.status, JobStatus::Failed, "{instance}");
        let err = job.error.unwrap();
        assert_eq!(
            err.category,
            cjm_guest::contract::ErrorCategory::Transient,
            "{instance}: {}",
            err.message
        );
        assert_eq!(err.capability_instance_id.as_deref(), Some(instance));
        let next = match instance {
            "h" => kwargs(json!({"attack": "ok"})),
            _ => probe("echo", json!({})),
        };
        let ok = q.submit(JobSpec::execute(instance, next)).await.unwrap();
        assert_eq!(q.wait(&ok, T).await.unwrap().status, JobStatus::Completed);
    }
    h.shutdown().await.unwrap();
}

/// A hung native worker (SIGSTOP during a call) answers nothing, not even `/progress` or
/// `/cancel`: the job's timeout and a cancel still end the job (the backend kills the
/// worker), and the next call gets a fresh worker. The bounds asserted are loose (the hang
/// used to last 300 s); the measured times are printed and noted with the benchmarks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_native_worker_ends_at_the_timeout_or_a_cancel() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let dir = data_dir();
    let h = host(dir.path(), 4, &[("probe", "p")]).await;
    let q = h.queue();
    for how in ["timeout", "cancel"] {
        let warm = q
            .submit(JobSpec::execute("p", probe("echo", json!({}))))
            .await
            .unwrap();
        assert_eq!(q.wait(&warm, T).await.unwrap().status, JobStatus::Completed);
        let pid = h.manager().instance("p").unwrap().backend().pid().unwrap();
        let mut spec = JobSpec::execute("p", probe("sleep", json!({"seconds": 60})));
        if how == "timeout" {
            spec = spec.timeout(Duration::from_secs(2));
        }
        let started = std::time::Instant::now();
        let id = q.submit(spec).await.unwrap();
        until_started(q, &id).await;
        kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
        let cancelled_at = std::time::Instant::now();
        if how == "cancel" {
            q.cancel(&id).unwrap();
        }
        let job = q.wait(&id, T).await.unwrap();
        let (took, since_cancel) = (started.elapsed(), cancelled_at.elapsed());
        eprintln!("{how}: ended after {took:?} ({since_cancel:?} after the SIGSTOP)");
        match how {
            "timeout" => {
                assert_eq!(job.status, JobStatus::Failed);
                let err = job.error.unwrap();
                assert_eq!(
                    err.category,
                    cjm_guest::contract::ErrorCategory::Transient,
                    "{}",
                    err.message
                );
                assert!(took < Duration::from_secs(30), "{took:?}");
            }
            _ => {
                assert_eq!(job.status, JobStatus::Cancelled, "{:?}", job.error);
                assert!(since_cancel < Duration::from_secs(30), "{since_cancel:?}");
            }
        }
        let ok = q
            .submit(JobSpec::execute(
                "p",
                probe("echo", json!({"text": "again"})),
            ))
            .await
            .unwrap();
        assert_eq!(q.wait(&ok, T).await.unwrap().status, JobStatus::Completed);
        let fresh = h.manager().instance("p").unwrap().backend().pid().unwrap();
        assert_ne!(fresh, pid, "{how}: a fresh worker serves the next call");
    }
    h.shutdown().await.unwrap();
}

/// Retry policies: a job's own, or its capability's default; only retriable errors of the
/// listed categories; every attempt journaled; a job cancelled while it waits for its retry
/// never runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_are_retried_by_their_policy() {
    use cjm_host::queue::RetryPolicy;
    let dir = data_dir();
    let mut defaults = std::collections::BTreeMap::new();
    defaults.insert(
        "probe".to_owned(),
        RetryPolicy::attempts(2).backoff(Duration::from_millis(20)),
    );
    let h = Host::builder()
        .data_dir(dir.path())
        .queue(QueueConfig {
            retry_defaults: defaults,
            ..queue_config(4, 300)
        })
        .load_with("probe", None, Some("p".to_owned()))
        .build()
        .await
        .unwrap();
    let q = h.queue();
    let fail = |kind: &str| probe("fail", json!({"kind": kind}));
    let retries = |id: &str| -> Vec<Value> {
        rows(q, id)
            .into_iter()
            .filter(|r| r.payload.get("retry").is_some())
            .map(|r| r.payload["retry"]["attempt"].clone())
            .collect()
    };

    // Its own policy: three attempts, each retry journaled.
    let own = RetryPolicy::attempts(3).backoff(Duration::from_millis(20));
    let id = q
        .submit(JobSpec::execute("p", fail("transient")).retry(own.clone()))
        .await
        .unwrap();
    let job = q.wait(&id, T).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.retry_count, 2);
    assert_eq!(retries(&id), [json!(2), json!(3)]);

    // A fatal error is not retried.
    let id = q
        .submit(JobSpec::execute("p", fail("fatal")).retry(own))
        .await
        .unwrap();
    let job = q.wait(&id, T).await.unwrap();
    assert_eq!((job.status, job.retry_count), (JobStatus::Failed, 0));

    // The capability's default applies to a job without a policy.
    let id = q
        .submit(JobSpec::execute("p", fail("transient")))
        .await
        .unwrap();
    let job = q.wait(&id, T).await.unwrap();
    assert_eq!(job.retry_count, 1);
    assert_eq!(retries(&id), [json!(2)]);

    // Cancelled while waiting for its retry: it never runs again.
    let slow = RetryPolicy::attempts(5).backoff(Duration::from_secs(30));
    let id = q
        .submit(JobSpec::execute("p", fail("transient")).retry(slow))
        .await
        .unwrap();
    for _ in 0..2000 {
        if q.get(&id).is_some_and(|j| j.retry_count == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(q.get(&id).unwrap().status, JobStatus::Pending);
    q.cancel(&id).unwrap();
    let job = q.wait(&id, T).await.unwrap();
    assert_eq!((job.status, job.retry_count), (JobStatus::Cancelled, 1));
    h.shutdown().await.unwrap();
}

/// Input that used to kill the host or grow it without bound is refused with typed errors:
/// kwargs nested 10,000 deep (at submit and on a direct call), and waiting jobs past the
/// queue's byte budget; the queue keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_kwargs_and_a_full_queue_are_typed_refusals() {
    let dir = data_dir();
    let h = Host::builder()
        .data_dir(dir.path())
        .queue(QueueConfig {
            max_concurrent_lanes: 1,
            max_pending_bytes: 64 * 1024,
            cancel_timeout: Duration::from_millis(300),
            ..QueueConfig::default()
        })
        .load_with("probe", None, Some("p".to_owned()))
        .build()
        .await
        .unwrap();
    let q = h.queue();
    let deep = || {
        // Built by hand: `json!` would deep-copy (recursively) at every level.
        let mut v = json!("bottom");
        for _ in 0..10_000 {
            v = Value::Object(serde_json::Map::from_iter([("d".to_owned(), v)]));
        }
        serde_json::Map::from_iter([("nested".to_owned(), v)])
    };
    match q.submit(JobSpec::execute("p", deep())).await {
        Err(Error::Job(e)) => {
            assert_eq!(e.category, cjm_guest::contract::ErrorCategory::UserInput);
            assert_eq!(e.fields_invalid, Some(vec!["nested".to_owned()]));
        }
        other => panic!("{other:?}"),
    }
    let direct = h
        .manager()
        .call("p", cjm_host::backend::CallRequest::execute(deep()))
        .await;
    assert!(matches!(direct, Err(Error::Job(_))), "{direct:?}");

    // One job runs (lane 1), the rest wait: 1 KiB each against a 64 KiB budget.
    let busy = q
        .submit(JobSpec::execute(
            "p",
            probe("sleep", json!({"seconds": 60})),
        ))
        .await
        .unwrap();
    until_started(q, &busy).await;
    let filler = "x".repeat(1024);
    let mut waiting = Vec::new();
    let full = loop {
        match q
            .submit(JobSpec::execute(
                "p",
                probe("echo", json!({"text": filler})),
            ))
            .await
        {
            Ok(id) => waiting.push(id),
            Err(e) => break e,
        }
        assert!(waiting.len() < 1000, "never full");
    };
    assert!(
        matches!(full, Error::Queue(QueueError::Full { .. })),
        "{full}"
    );
    assert_eq!(
        full.to_job_error().category,
        cjm_guest::contract::ErrorCategory::Resource
    );
    assert!((50..70).contains(&waiting.len()), "{}", waiting.len());
    q.cancel(&busy).unwrap();
    for id in &waiting {
        assert_eq!(q.wait(id, T).await.unwrap().status, JobStatus::Completed);
    }
    // Drained: the budget is free again.
    let again = q
        .submit(JobSpec::execute(
            "p",
            probe("echo", json!({"text": filler})),
        ))
        .await
        .unwrap();
    assert_eq!(
        q.wait(&again, T).await.unwrap().status,
        JobStatus::Completed
    );
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_journal_first_bounded_subscribers_and_progress() {
    let dir = data_dir();
    let h = host(dir.path(), 4, &[("noop", "n"), ("probe", "p")]).await;
    let q = h.queue();
    let mut all = q.subscribe(Scope::All);
    let slow_reader = q.subscribe(Scope::All);
    let id = q
        .submit(JobSpec::execute("p", probe("slow", json!({"steps": 8}))))
        .await
        .unwrap();
    let mut job_events = Vec::new();
    while let Some(e) = all.next().await {
        if e.job_id.as_deref() == Some(id.as_str()) {
            let end = e.kind == EventKind::StateTransition && e.payload["to"] == "completed";
            job_events.push(e);
            if end {
                break;
            }
        }
    }
    let kinds: Vec<EventKind> = job_events
        .iter()
        .map(|e| e.kind)
        .filter(|k| k.journaled())
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::JobSubmitted,
            EventKind::AdmissionDecided,
            EventKind::StateTransition,
            EventKind::StateTransition
        ]
    );
    // Journal-class events reach subscribers with the seq of the row already written.
    let journal = rows(q, &id);
    for e in job_events.iter().filter(|e| e.kind.journaled()) {
        let seq = e.seq.expect("journaled before fan-out");
        assert!(
            journal
                .iter()
                .any(|r| r.seq == Some(seq) && r.event_type == e.kind.as_str())
        );
    }
    // Progress polled from the native worker and snapshots of its processes are live only.
    assert!(
        job_events
            .iter()
            .any(|e| e.kind == EventKind::ProgressChanged && e.seq.is_none())
    );
    let snapshot = job_events
        .iter()
        .find(|e| e.kind == EventKind::ResourceSnapshot)
        .expect("a resource snapshot");
    assert!(
        snapshot.payload["memory_rss_mb"].as_f64().unwrap() > 0.0,
        "{:?}",
        snapshot.payload
    );
    assert!(
        journal
            .iter()
            .all(|r| r.event_type != "progress_changed" && r.event_type != "resource_snapshot")
    );

    // A subscriber that never reads loses events, counted; the queue does not wait for it.
    let ids = q
        .submit_many(
            (0..600)
                .map(|_| JobSpec::execute("n", kwargs(json!({}))))
                .collect(),
        )
        .await
        .unwrap();
    for i in &ids {
        assert_eq!(q.wait(i, T).await.unwrap().status, JobStatus::Completed);
    }
    assert!(
        slow_reader.dropped() > 0,
        "dropped {}",
        slow_reader.dropped()
    );
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_journal_append_wedges_the_queue_until_a_write_goes_through() {
    let dir = data_dir();
    let h = host(dir.path(), 4, &[("noop", "n")]).await;
    let q = h.queue();
    let ok = q
        .submit(JobSpec::execute("n", kwargs(json!({}))))
        .await
        .unwrap();
    q.wait(&ok, T).await.unwrap();
    assert_eq!(q.wedged(), None);
    // Break the journal under the queue (another connection drops its table).
    let path = h.manager().host_config().journal_db_path();
    let other = rusqlite::Connection::open(&path).unwrap();
    let schema: Vec<String> = other
        .prepare("SELECT sql FROM sqlite_master WHERE tbl_name = 'journal' AND sql IS NOT NULL")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    other.execute_batch("DROP TABLE journal").unwrap();
    // Its submission row cannot be written: its id is not returned (it waits for the row).
    let submitting = tokio::spawn({
        let q = q.clone();
        async move { q.submit(JobSpec::execute("n", kwargs(json!({})))).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !submitting.is_finished(),
        "an id was returned without its row"
    );
    for _ in 0..200 {
        if q.wedged().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(q.wedged().unwrap().contains("journal"), "{:?}", q.wedged());
    let refused = queue_error(q.submit(JobSpec::execute("n", kwargs(json!({})))).await);
    assert!(matches!(refused, QueueError::Wedged(_)));
    assert!(refused.to_string().contains("refused"), "{refused}");
    let refused = queue_error(
        q.submit_composition(Composition::new(vec![Node::new("a", "n")]))
            .await,
    );
    assert!(matches!(refused, QueueError::Wedged(_)));
    assert_eq!(
        q.stats().running,
        0,
        "admitted work still finished, no lane leaks"
    );

    // The journal is repaired: the writer's next probe goes through, the queue un-wedges by
    // itself, and the job is reported done with its row.
    for sql in &schema {
        other.execute_batch(sql).unwrap();
    }
    let lost = submitting.await.unwrap().unwrap();
    let job = q.wait(&lost, T).await.unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert!(rows(q, &lost).iter().any(|r| r.is_terminal_transition()));
    assert_eq!(q.wedged(), None);
    serves(q, "n").await;
}

/// The queue runs a no-op job on instance `id` to completion.
async fn serves(q: &JobQueue, id: &str) {
    let again = q
        .submit(JobSpec::execute(id, kwargs(json!({}))))
        .await
        .unwrap();
    assert_eq!(
        q.wait(&again, T).await.unwrap().status,
        JobStatus::Completed
    );
}

/// Another connection holds the journal's write lock for 5 s: no job is reported done
/// before its row is written, and the queue serves on by itself afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_held_by_another_connection_delays_but_never_lies() {
    let dir = data_dir();
    let h = host(dir.path(), 4, &[("noop", "n")]).await;
    let q = h.queue();
    let path = h.manager().host_config().journal_db_path();
    let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = {
        let released = std::sync::Arc::clone(&released);
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch("BEGIN IMMEDIATE").unwrap();
            locked_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_secs(5));
            released.store(true, std::sync::atomic::Ordering::SeqCst);
            c.execute_batch("COMMIT").unwrap();
        })
    };
    locked_rx.recv().unwrap();
    // A submission returns once its row is written: not before the lock is released.
    let ids = q
        .submit_many(
            (0..20)
                .map(|_| JobSpec::execute("n", kwargs(json!({}))))
                .collect(),
        )
        .await
        .unwrap();
    assert!(
        released.load(std::sync::atomic::Ordering::SeqCst),
        "a submission returned while its row could not be written"
    );
    for id in &ids {
        let job = q.wait(id, T).await.unwrap();
        assert_eq!(job.status, JobStatus::Completed);
        assert!(
            released.load(std::sync::atomic::Ordering::SeqCst),
            "reported done while its row could not be written"
        );
        assert!(rows(q, id).iter().any(|r| r.is_terminal_transition()));
    }
    holder.join().unwrap();
    assert_eq!(q.wedged(), None);
    serves(q, "n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_mixing_wasm_and_native_matches_one_by_one_calls() {
    let dir = data_dir();
    let h = host(
        dir.path(),
        4,
        &[
            ("text-stats", "ts"),
            ("text-stats-native", "tsn"),
            ("sentence-split", "split"),
            ("probe", "p"),
        ],
    )
    .await;
    let q = h.queue();
    let text = "Dr. Smith arrived. The cat sat on the mat! Was it late?";
    let comp = Composition::new(vec![
        Node::new("echo", "p")
            .arg("action", json!("echo"))
            .arg("text", json!(text)),
        Node::new("stats_wasm", "ts").bind("text", OutputRef::field("echo", "text")),
        Node::new("stats_native", "tsn").bind("text", OutputRef::field("echo", "text")),
        Node::new("split", "split").bind("text", OutputRef::field("echo", "text")),
        Node::new("words", "tsn")
            .bind("text", OutputRef::field("echo", "text"))
            .arg("case_sensitive", json!(true)),
    ]);
    let mut events = q.subscribe(Scope::All);
    let id = q.submit_composition(comp).await.unwrap();
    // Subscribed right after submit: the composition's rows wait for the group commit.
    let mut scoped = q.subscribe(Scope::Composition(id.clone()));
    let run = q.wait_composition(&id, T).await.unwrap();
    assert_eq!(run.status, NodeState::Completed);
    let m = h.manager();
    let stats = m
        .binding("ts")
        .unwrap()
        .execute(kwargs(json!({"text": text})))
        .await
        .unwrap();
    let split = m
        .binding("split")
        .unwrap()
        .execute(kwargs(json!({"text": text})))
        .await
        .unwrap();
    let words = m
        .binding("tsn")
        .unwrap()
        .execute(kwargs(json!({"text": text, "case_sensitive": true})))
        .await
        .unwrap();
    let result = |n: &str| run.nodes[n].result.clone().unwrap();
    assert_eq!(result("stats_wasm"), stats);
    assert_eq!(result("stats_native"), stats);
    assert_eq!(result("split"), split);
    assert_eq!(result("words"), words);
    // Member jobs carry the composition; it advanced once, then finished, all journaled.
    let journal = m
        .journal()
        .query(&JournalQuery {
            composition_id: Some(id.clone()),
            ..JournalQuery::default()
        })
        .unwrap();
    let count = |t: &str| journal.iter().filter(|e| e.event_type == t).count();
    assert_eq!(count("composition_advanced"), 1);
    assert_eq!(count("composition_finished"), 1);
    assert_eq!(count("state_transition"), 10);
    let mut seen = Vec::new();
    while let Some(e) = events.try_next() {
        if e.composition_id.as_deref() == Some(id.as_str()) && e.job_id.is_none() {
            seen.push(e.kind);
        }
    }
    assert_eq!(
        seen,
        [
            EventKind::CompositionSubmitted,
            EventKind::CompositionAdvanced,
            EventKind::CompositionFinished
        ]
    );
    // The composition's own stream: its members' journaled events and its own, nothing
    // else, every one from the moment it subscribed (the submission returned after its
    // first rows were committed).
    let mut mine = Vec::new();
    let mut seqs = Vec::new();
    while let Some(e) = scoped.try_next() {
        assert_eq!(e.composition_id.as_deref(), Some(id.as_str()));
        if e.kind.journaled() {
            mine.push(e.kind);
            seqs.push(e.seq.unwrap());
        }
    }
    let expected: Vec<i64> = journal
        .iter()
        .filter_map(|e| e.seq)
        .filter(|s| *s >= seqs[0])
        .collect();
    assert_eq!(seqs, expected, "{mine:?}");
    assert_eq!(mine.last(), Some(&EventKind::CompositionFinished));
    assert_eq!(scoped.dropped(), 0);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composition_rules() {
    let dir = data_dir();
    let h = host(
        dir.path(),
        4,
        &[
            ("probe", "p"),
            ("probe", "q"),
            ("text-stats", "ts"),
            ("noop", "n"),
        ],
    )
    .await;
    let q = h.queue();
    // Profile both probe instances so members are admitted side by side.
    for i in ["p", "q"] {
        let j = q
            .submit(JobSpec::execute(i, probe("echo", json!({}))))
            .await
            .unwrap();
        q.wait(&j, T).await.unwrap();
    }
    let echo = |id: &str, inst: &str| {
        Node::new(id, inst)
            .arg("action", json!("echo"))
            .arg("text", json!("some words here"))
    };
    let fail = |id: &str| Node::new(id, "q").arg("action", json!("fail"));
    let busy = || async {
        q.submit(JobSpec::execute("p", probe("slow", json!({"steps": 6}))))
            .await
            .unwrap()
    };

    let state = |run: &cjm_host::queue::CompositionRun, n: &str| run.nodes[n].state;
    use NodeState::*;

    // A binding to a missing field fails its node loudly; its dependents skip.
    let id = q
        .submit_composition(Composition::new(vec![
            echo("a", "p"),
            Node::new("b", "ts").bind("text", OutputRef::field("a", "nope")),
            Node::new("c", "ts").bind("text", OutputRef::whole("b")),
        ]))
        .await
        .unwrap();
    let run = q.wait_composition(&id, T).await.unwrap();
    assert_eq!(
        (
            run.status,
            state(&run, "a"),
            state(&run, "b"),
            state(&run, "c")
        ),
        (Failed, Completed, Failed, Skipped)
    );
    let err = run.nodes["b"].error.as_ref().unwrap();
    assert!(
        err.message.contains("has no field 'nope'") && err.message.contains("binding"),
        "{}",
        err.message
    );
    assert!(
        run.nodes["c"].job_id.is_none(),
        "skipped nodes never get a job"
    );

    // Fail-fast: a failure cancels independent pending members (x, y wait behind a busy
    // instance), dependents skip, the composition is failed, not cancelled.
    let b = busy().await;
    until_running(q, &b).await;
    let comp = Composition::new(vec![
        fail("f"),
        echo("x", "p"),
        echo("y", "p"),
        Node::new("z", "ts").bind("text", OutputRef::field("f", "text")),
    ]);
    let run = q
        .wait_composition(&q.submit_composition(comp.clone()).await.unwrap(), T)
        .await
        .unwrap();
    assert_eq!(
        (
            run.status,
            state(&run, "f"),
            state(&run, "x"),
            state(&run, "y"),
            state(&run, "z")
        ),
        (Failed, Failed, Cancelled, Cancelled, Skipped)
    );
    q.wait(&b, T).await.unwrap();

    // Best-effort: independent members still run; the composition completes.
    let run = q
        .wait_composition(&q.submit_composition(comp.best_effort()).await.unwrap(), T)
        .await
        .unwrap();
    assert_eq!(
        (
            run.status,
            state(&run, "f"),
            state(&run, "x"),
            state(&run, "y"),
            state(&run, "z")
        ),
        (Completed, Failed, Completed, Completed, Skipped)
    );

    // Cancelled as a unit: the pending member and the node without a job are cancelled.
    let b = busy().await;
    until_running(q, &b).await;
    let comp = Composition::new(vec![
        echo("x", "p"),
        Node::new("y", "ts").bind("text", OutputRef::field("x", "text")),
    ]);
    let id = q.submit_composition(comp.clone()).await.unwrap();
    q.cancel_composition(&id).unwrap();
    let run = q.wait_composition(&id, T).await.unwrap();
    assert_eq!(
        (run.status, state(&run, "x"), state(&run, "y")),
        (Cancelled, Cancelled, Cancelled)
    );
    assert!(run.cancel_requested);
    assert!(matches!(
        queue_error(q.cancel_composition(&id)),
        QueueError::Finished { .. }
    ));

    // A member cancelled directly (no failure) lands the composition cancelled.
    let id = q.submit_composition(comp).await.unwrap();
    let member = q.composition(&id).unwrap().nodes["x"]
        .job_id
        .clone()
        .unwrap();
    q.cancel(&member).unwrap();
    let run = q.wait_composition(&id, T).await.unwrap();
    assert_eq!(
        (run.status, state(&run, "x"), state(&run, "y")),
        (Cancelled, Cancelled, Skipped)
    );
    assert!(!run.cancel_requested);
    q.wait(&b, T).await.unwrap();

    // An empty composition completes at submit.
    let run = q
        .wait_composition(
            &q.submit_composition(Composition::new(vec![]))
                .await
                .unwrap(),
            T,
        )
        .await
        .unwrap();
    assert_eq!(run.status, Completed);

    // Validation at submit, every problem listed; nothing is enqueued.
    h.manager().set_enabled("n", false).await.unwrap();
    let bad: Vec<(Composition, &str)> = vec![
        (
            Composition::new(vec![
                Node::new("a", "ts").bind("t", OutputRef::whole("b")),
                Node::new("b", "ts").bind("t", OutputRef::whole("a")),
            ]),
            "dependency cycle: ",
        ),
        (
            Composition::new(vec![Node::new("a", "ts"), Node::new("a", "ts")]),
            "duplicate node id 'a'",
        ),
        (
            Composition::new(vec![
                Node::new("a", "ts").bind("t", OutputRef::whole("ghost")),
            ]),
            "unknown node 'ghost'",
        ),
        (
            Composition::new(vec![Node::new("a", "nowhere")]),
            "node 'a': no loaded capability instance 'nowhere'",
        ),
        (
            Composition::new(vec![Node::new("a", "n")]),
            "node 'a': capability instance 'n' is disabled",
        ),
    ];
    let before = q.stats();
    for (comp, want) in bad {
        let e = queue_error(q.submit_composition(comp).await);
        assert!(matches!(e, QueueError::InvalidComposition(_)));
        assert!(e.to_string().contains(want), "{e} / {want}");
    }
    assert_eq!(q.stats(), before);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_typed_and_the_queue_is_unharmed() {
    let dir = data_dir();
    let h = host(dir.path(), 4, &[("noop", "n"), ("probe", "p")]).await;
    let q = h.queue();
    let e = q
        .submit(JobSpec::execute("nowhere", kwargs(json!({}))))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no loaded capability instance 'nowhere'"),
        "{e}"
    );
    h.manager().set_enabled("p", false).await.unwrap();
    let e = q
        .submit(JobSpec::execute("p", kwargs(json!({}))))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("disabled"), "{e}");
    h.manager().set_enabled("p", true).await.unwrap();
    assert_eq!(
        queue_error(q.cancel("no-such-job")),
        QueueError::UnknownJob("no-such-job".into())
    );
    let done = q
        .submit(JobSpec::execute("n", kwargs(json!({}))))
        .await
        .unwrap();
    q.wait(&done, T).await.unwrap();
    assert!(
        matches!(queue_error(q.cancel(&done)), QueueError::Finished { status, .. } if status == "completed")
    );
    assert!(matches!(
        queue_error(q.reorder(&done, 3)),
        QueueError::NotPending { .. }
    ));
    assert!(matches!(
        queue_error(q.wait("no-such-job", T).await),
        QueueError::UnknownJob(_)
    ));
    let slow = q
        .submit(JobSpec::execute(
            "p",
            probe("sleep", json!({"seconds": 0.5})),
        ))
        .await
        .unwrap();
    assert!(matches!(
        queue_error(q.wait(&slow, Some(Duration::from_millis(1))).await),
        QueueError::Timeout(..)
    ));
    // A failing job is a typed failure stamped with its instance.
    let failed = q
        .submit(JobSpec::execute(
            "p",
            probe("fail", json!({"kind": "input"})),
        ))
        .await
        .unwrap();
    let job = q.wait(&failed, T).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    let err = job.error.unwrap();
    assert_eq!(
        (err.message.as_str(), err.capability_instance_id.as_deref()),
        ("bad text", Some("p"))
    );
    // Still serving.
    let ok = q
        .submit(JobSpec::execute("n", kwargs(json!({}))))
        .await
        .unwrap();
    assert_eq!(q.wait(&ok, T).await.unwrap().status, JobStatus::Completed);
    let s = q.stats();
    assert_eq!((s.pending, s.running, s.failed), (0, 0, 1));
    h.shutdown().await.unwrap();
    assert!(matches!(
        queue_error(q.submit(JobSpec::execute("n", kwargs(json!({})))).await),
        QueueError::Closed
    ));
}
