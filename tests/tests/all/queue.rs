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

mod cancel;
mod compositions;
mod journal;
mod scripted;

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
