//! Every host option that changes behaviour, shown to change it: each test runs the same
//! thing with the option at its default and set, and checks the difference (the unknown-key
//! refusal of a config file is in `cjm_host::config`'s own tests).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cjm_host::Host;
use cjm_host::backend::CallRequest;
use cjm_host::config::{HostConfig, QueueConfig, SubstrateConfig};
use cjm_host::manager::CapabilityManager;
use cjm_host::queue::{JobQueue, JobSpec};
use cjm_host::store::{
    DiagnosticRecord, DiagnosticsStore, JournalQuery, StreamChunk, iso_from_system_time,
};
use cjm_tests::{fixtures, kwargs, native_install, wasm_install, write_manifest};
use serde_json::{Value, json};

const T: Option<Duration> = Some(Duration::from_secs(60));

fn probe(action: &str, extra: Value) -> serde_json::Map<String, Value> {
    let mut k = kwargs(extra);
    k.insert("action".into(), json!(action));
    k
}

fn probe_manifest(dir: &Path) {
    write_manifest(
        dir,
        "probe",
        native_install(&[env!("CARGO_BIN_EXE_probe_worker")]),
    );
}

/// Edits the manifest of `name` in place.
fn edit_manifest(dir: &Path, name: &str, edit: impl FnOnce(&mut Value)) {
    let path = dir.join(format!("manifests/{name}.json"));
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut doc);
    std::fs::write(&path, doc.to_string()).unwrap();
}

fn manager(dir: &Path, substrate: SubstrateConfig, queue: QueueConfig) -> CapabilityManager {
    let config = HostConfig::builder()
        .data_dir(dir)
        .substrate(substrate)
        .queue(queue)
        .build()
        .unwrap();
    CapabilityManager::open(config).unwrap()
}

fn seq_of(q: &JobQueue, job: &str, to: &str) -> i64 {
    q.manager()
        .journal()
        .query(&JournalQuery::job(job))
        .unwrap()
        .iter()
        .find(|e| e.event_type == "state_transition" && e.payload["to"] == to)
        .and_then(|e| e.seq)
        .unwrap_or_else(|| panic!("no transition of {job} to {to}"))
}

/// `substrate.drift_detection`: a manifest whose recorded schema hash no longer matches
/// the live capability is flagged, unless detection is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_detection_off_flags_no_drift() {
    let dir = tempfile::tempdir().unwrap();
    write_manifest(
        dir.path(),
        "text-stats",
        wasm_install(fixtures::TEXT_STATS, json!({})),
    );
    edit_manifest(dir.path(), "text-stats", |doc| {
        doc["drift_tracking"]["config_schema_hash"] = json!(format!("sha256:{}", "0".repeat(64)));
    });
    for (detect, flagged) in [(true, true), (false, false)] {
        let substrate = SubstrateConfig {
            drift_detection: detect,
            ..SubstrateConfig::default()
        };
        let m = manager(dir.path(), substrate, QueueConfig::default());
        let i = m.load("text-stats", None, None).await.unwrap();
        assert_eq!(
            i.drift().config_schema,
            flagged,
            "drift_detection: {detect}"
        );
        m.shutdown().await.unwrap();
    }
}

/// `substrate.empirical_tracking`: every call leaves a sample in the empirical store, and
/// the instance a profile; with tracking off neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empirical_tracking_off_records_no_sample() {
    for tracking in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        probe_manifest(dir.path());
        let substrate = SubstrateConfig {
            empirical_tracking: tracking,
            ..SubstrateConfig::default()
        };
        let m = manager(dir.path(), substrate, QueueConfig::default());
        let i = m.load("probe", None, Some("p")).await.unwrap();
        for _ in 0..2 {
            m.call(
                "p",
                CallRequest::execute(probe("echo", json!({"text": "x"}))),
            )
            .await
            .unwrap();
        }
        m.flush_samples().unwrap();
        let records = m.empirical().list_records(Some("probe")).unwrap();
        assert_eq!(records.len(), usize::from(tracking), "tracking: {tracking}");
        assert_eq!(i.profile().is_some(), tracking);
        assert_eq!(i.peaks().is_some(), tracking);
        m.shutdown().await.unwrap();
    }
}

/// `queue.default_instance_concurrency`: a native worker takes one call at a time unless
/// the host raises it; then a second job of the same instance starts before the first ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_instance_concurrency_lets_a_native_worker_take_calls_at_once() {
    for concurrency in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        probe_manifest(dir.path());
        let queue = QueueConfig {
            default_instance_concurrency: concurrency,
            progress_poll_interval: Duration::from_millis(50),
            ..QueueConfig::default()
        };
        let h = Host::builder()
            .data_dir(dir.path())
            .queue(queue)
            .load_with("probe", None, Some("p".into()))
            .build()
            .await
            .unwrap();
        assert_eq!(
            h.manager().instance("p").unwrap().max_concurrency(),
            concurrency as usize
        );
        let q = h.queue();
        // The first run is measured alone; the next two run side by side when allowed.
        let first = q
            .submit(JobSpec::execute("p", probe("echo", json!({"text": "x"}))))
            .await
            .unwrap();
        q.wait(&first, T).await.unwrap();
        let slow = || probe("slow", json!({"steps": 6}));
        let a = q.submit(JobSpec::execute("p", slow())).await.unwrap();
        let b = q.submit(JobSpec::execute("p", slow())).await.unwrap();
        q.wait(&a, T).await.unwrap();
        q.wait(&b, T).await.unwrap();
        let overlapped = seq_of(q, &b, "running") < seq_of(q, &a, "completed");
        assert_eq!(overlapped, concurrency > 1, "concurrency {concurrency}");
        h.shutdown().await.unwrap();
    }
}

/// `pool_size` (sandbox grant): that many initialized instances are ready after load, so
/// the first concurrent calls pay no instantiation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_keeps_instances_ready() {
    let dir = tempfile::tempdir().unwrap();
    write_manifest(
        dir.path(),
        "noop-1",
        wasm_install(fixtures::NOOP, json!({"max_concurrency": 4})),
    );
    write_manifest(
        dir.path(),
        "noop-3",
        wasm_install(
            fixtures::NOOP,
            json!({"max_concurrency": 4, "pool_size": 3}),
        ),
    );
    let m = manager(
        dir.path(),
        SubstrateConfig::default(),
        QueueConfig::default(),
    );
    for (name, ready) in [("noop-1", 1), ("noop-3", 3)] {
        let i = m.load(name, None, None).await.unwrap();
        let stats = i.backend().stats().await.unwrap();
        assert_eq!(stats["instances_idle"], ready, "{name}: {stats}");
        assert_eq!(stats["instances_created"], ready, "{name}: {stats}");
        // A configuration change rebuilds the ready set for the new configuration.
        m.update_config(i.id(), json!({})).await.unwrap();
        let stats = i.backend().stats().await.unwrap();
        assert_eq!(
            stats["instances_idle"], ready,
            "{name} after a change: {stats}"
        );
    }
    m.shutdown().await.unwrap();
}

/// The persisted per-instance `worker_env` overrides: an override beats the manifest's
/// default (the worker is respawned with it); a secret or undeclared name is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_env_overrides_beat_the_default_and_never_name_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    probe_manifest(dir.path());
    edit_manifest(dir.path(), "probe", |doc| {
        doc["code"]["worker_env"] = json!([
            {"name": "GREETING", "default": "hello"},
            {"name": "API_KEY", "secret": true}
        ]);
    });
    let m = manager(
        dir.path(),
        SubstrateConfig::default(),
        QueueConfig::default(),
    );
    // Staged before the instance is first loaded.
    m.set_worker_env(
        "probe-2",
        BTreeMap::from([("GREETING".into(), "staged".into())]),
    )
    .await
    .unwrap();
    m.load("probe", None, Some("p")).await.unwrap();
    m.load("probe", None, Some("probe-2")).await.unwrap();
    let greeting = |id: &'static str| {
        let m = m.clone();
        async move {
            m.call(
                id,
                CallRequest::execute(probe("env", json!({"name": "GREETING"}))),
            )
            .await
            .unwrap()["value"]
                .clone()
        }
    };
    assert_eq!(greeting("p").await, "hello");
    assert_eq!(greeting("probe-2").await, "staged");
    m.set_worker_env("p", BTreeMap::from([("GREETING".into(), "bonjour".into())]))
        .await
        .unwrap();
    assert_eq!(
        greeting("p").await,
        "bonjour",
        "respawned with the override"
    );
    for (key, why) in [
        ("API_KEY", "is a secret"),
        ("NOPE", "not in its worker_env contract"),
    ] {
        let e = m
            .set_worker_env("p", BTreeMap::from([(key.into(), "x".into())]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains(why), "{key}: {e}");
    }
    // Survives a restart of the host: the override is the instance's, in the config store.
    m.shutdown().await.unwrap();
    let m = manager(
        dir.path(),
        SubstrateConfig::default(),
        QueueConfig::default(),
    );
    m.load("probe", None, Some("p")).await.unwrap();
    let value = m
        .call(
            "p",
            CallRequest::execute(probe("env", json!({"name": "GREETING"}))),
        )
        .await
        .unwrap();
    assert_eq!(value["value"], "bonjour");
    m.shutdown().await.unwrap();
}

fn old_record(days: u64) -> DiagnosticRecord {
    let at = std::time::SystemTime::now() - Duration::from_secs(days * 86_400);
    DiagnosticRecord {
        ts: iso_from_system_time(at),
        ..DiagnosticRecord::new("INFO", format!("{days} days old"))
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `substrate.diagnostics_retention_days`, `diagnostics_retention_max_mb` and
/// `diagnostics_sweep_interval_hours`: a host sweeps old diagnostics when it starts and
/// again on a timer, at most once per interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostics_retention_runs_at_start_and_on_a_timer() {
    let dir = tempfile::tempdir().unwrap();
    let config = |interval: Duration| {
        let substrate = SubstrateConfig {
            diagnostics_retention_days: Some(30.0),
            diagnostics_sweep_interval: interval,
            ..SubstrateConfig::default()
        };
        HostConfig::builder()
            .data_dir(dir.path())
            .substrate(substrate)
            .build()
            .unwrap()
    };
    let store =
        DiagnosticsStore::open(&config(Duration::from_secs(1)).diagnostics_db_path()).unwrap();
    let count = || store.counts().unwrap().0;
    store
        .append_batch(&[old_record(40), old_record(1)], &[] as &[StreamChunk])
        .unwrap();
    // A day-long interval: swept at start, not again within the interval.
    let m = CapabilityManager::open(config(Duration::from_secs(24 * 3600))).unwrap();
    until("the start-up sweep", || count() == 1).await;
    store
        .append_batch(&[old_record(50)], &[] as &[StreamChunk])
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(count(), 2, "no second sweep within the interval");
    m.shutdown().await.unwrap();
    drop(m);
    // A short interval: the timer sweeps again while the host runs.
    let m = CapabilityManager::open(config(Duration::from_millis(200))).unwrap();
    until("a sweep once the interval passed", || count() == 1).await;
    store
        .append_batch(&[old_record(60)], &[] as &[StreamChunk])
        .unwrap();
    until("the timer's next sweep", || count() == 1).await;
    m.shutdown().await.unwrap();
}

/// `substrate.diagnostics_retention_max_mb`: with no age limit, a host's sweep deletes the
/// oldest records (in batches of `RETENTION_BATCH`) until the store fits its size budget;
/// the newest stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostics_retention_max_mb_bounds_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let budget_mb = 1.0;
    let config = HostConfig::builder()
        .data_dir(dir.path())
        .substrate(SubstrateConfig {
            diagnostics_retention_days: None,
            diagnostics_retention_max_mb: Some(budget_mb),
            ..SubstrateConfig::default()
        })
        .build()
        .unwrap();
    let store = DiagnosticsStore::open(&config.diagnostics_db_path()).unwrap();
    let n = 3 * cjm_host::store::diagnostics::RETENTION_BATCH;
    let records: Vec<DiagnosticRecord> = (0..n)
        .map(|i| DiagnosticRecord::new("INFO", format!("{i:05} {}", "x".repeat(200))))
        .collect();
    store.append_batch(&records, &[] as &[StreamChunk]).unwrap();
    let budget = (budget_mb * 1024.0 * 1024.0) as u64;
    assert!(store.used_bytes().unwrap() > 2 * budget);
    let m = CapabilityManager::open(config).unwrap();
    until("the store within its size budget", || {
        store.used_bytes().unwrap() <= budget
    })
    .await;
    let (kept, _) = store.counts().unwrap();
    assert!(kept > 0 && kept < n as u64, "{kept} records kept");
    let newest = store
        .query_records(&cjm_host::store::RecordQuery {
            limit: Some(1),
            descending: true,
            ..Default::default()
        })
        .unwrap();
    let last = format!("{:05} ", n - 1);
    assert!(
        newest[0].message.starts_with(&last),
        "{}",
        newest[0].message
    );
    m.shutdown().await.unwrap();
}

/// `models_dir` and `log_level`: a worker gets them as `CJM_MODELS_DIR` and `CJM_LOG_LEVEL`
/// (unset models dir: no variable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_dir_and_log_level_reach_the_worker() {
    use cjm_host::config::LogLevel;
    let dir = tempfile::tempdir().unwrap();
    probe_manifest(dir.path());
    let env_of = |m: CapabilityManager, name: &'static str| async move {
        m.call(
            "probe",
            CallRequest::execute(probe("env", json!({"name": name}))),
        )
        .await
        .unwrap()["value"]
            .clone()
    };
    let plain =
        CapabilityManager::open(HostConfig::builder().data_dir(dir.path()).build().unwrap())
            .unwrap();
    plain.load("probe", None, Some("probe")).await.unwrap();
    assert_eq!(env_of(plain.clone(), "CJM_MODELS_DIR").await, Value::Null);
    assert_eq!(env_of(plain.clone(), "CJM_LOG_LEVEL").await, "INFO");
    plain.shutdown().await.unwrap();
    let models = dir.path().join("weights");
    let set = CapabilityManager::open(
        HostConfig::builder()
            .data_dir(dir.path())
            .models_dir(&models)
            .log_level(LogLevel::Debug)
            .build()
            .unwrap(),
    )
    .unwrap();
    set.load("probe", None, Some("probe")).await.unwrap();
    assert_eq!(
        env_of(set.clone(), "CJM_MODELS_DIR").await,
        models.display().to_string()
    );
    assert_eq!(env_of(set.clone(), "CJM_LOG_LEVEL").await, "DEBUG");
    set.shutdown().await.unwrap();
}

/// `queue.max_history`: that many finished jobs stay in memory (the journal keeps them all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_history_bounds_the_finished_jobs_kept_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    write_manifest(dir.path(), "noop", wasm_install(fixtures::NOOP, json!({})));
    let queue = QueueConfig {
        max_history: 3,
        ..QueueConfig::default()
    };
    let h = Host::builder()
        .data_dir(dir.path())
        .queue(queue)
        .load("noop")
        .build()
        .await
        .unwrap();
    let q = h.queue();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = q
            .submit(JobSpec::execute("noop", kwargs(json!({}))))
            .await
            .unwrap();
        q.wait(&id, T).await.unwrap();
        ids.push(id);
    }
    let kept: Vec<String> = q.history(None).into_iter().map(|j| j.id).collect();
    assert_eq!(kept, ids[2..].iter().rev().cloned().collect::<Vec<_>>());
    assert!(q.get(&ids[0]).is_none(), "the oldest left memory");
    assert_eq!(
        q.history_from_journal(None).unwrap().len(),
        5,
        "the journal keeps all"
    );
    h.shutdown().await.unwrap();
}

/// `queue.progress_poll_interval_seconds`: a running native call's progress is polled that
/// often; polled every second, a job that ends within one reports none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_poll_interval_sets_how_often_progress_is_polled() {
    use cjm_host::queue::{EventKind, Scope};
    let mut seen = Vec::new();
    for every in [Duration::from_millis(50), Duration::from_secs(5)] {
        let dir = tempfile::tempdir().unwrap();
        probe_manifest(dir.path());
        let queue = QueueConfig {
            progress_poll_interval: every,
            ..QueueConfig::default()
        };
        let h = Host::builder()
            .data_dir(dir.path())
            .queue(queue)
            .load("probe")
            .build()
            .await
            .unwrap();
        let q = h.queue();
        let mut events = q.subscribe(Scope::All);
        let id = q
            .submit(JobSpec::execute(
                "probe",
                probe("slow", json!({"steps": 16})),
            ))
            .await
            .unwrap();
        let mut progress = 0;
        while let Some(e) = events.next().await {
            if e.job_id.as_deref() != Some(id.as_str()) {
                continue;
            }
            progress += usize::from(e.kind == EventKind::ProgressChanged);
            if e.kind == EventKind::StateTransition && e.payload["to"] == "completed" {
                break;
            }
        }
        seen.push(progress);
        h.shutdown().await.unwrap();
    }
    assert!(seen[0] >= 3, "polled every 50 ms: {seen:?}");
    assert_eq!(seen[1], 0, "polled every 5 s: {seen:?}");
}
