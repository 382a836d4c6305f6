//! Store throughput: journal appends (one transaction each, batched, 8 concurrent writers),
//! a job's four rows as the queue's writer commits them (one job per transaction, and a
//! burst's worth per transaction) and a diagnostics retention pass over a million rows.
//!
//! `cargo bench -p cjm-host --bench stores`. Under `cargo test --benches` every benchmark
//! runs once on small inputs.

// A benchmark that cannot set up has nothing to measure: it stops with the reason.
#![allow(clippy::expect_used)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use cjm_host::store::{
    DiagnosticRecord, DiagnosticsStore, JournalEvent, JournalStore, StreamChunk,
    iso_from_unix_micros,
};
use divan::Bencher;
use divan::counter::ItemsCount;

fn main() {
    divan::main();
}

/// Whether this is a real benchmark run (`cargo bench`) rather than a test run.
fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn event(i: usize) -> JournalEvent {
    let mut e = JournalEvent::state_transition(format!("job-{}", i % 97), "pending", "running");
    e.capability_instance_id = Some("whisper".into());
    e.capability_name = Some("whisper".into());
    e.run_id = Some("run-1".into());
    e
}

fn journal() -> (tempfile::TempDir, Arc<JournalStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = JournalStore::open(&dir.path().join("journal.db")).expect("open journal");
    (dir, Arc::new(store))
}

const SINGLE: usize = 2_000;

/// Appends, each its own transaction (WAL, synchronous=NORMAL).
#[divan::bench(sample_count = 20)]
fn journal_append_one_transaction_each(bencher: Bencher) {
    let (_dir, store) = journal();
    bencher
        .counter(ItemsCount::new(SINGLE))
        .with_inputs(|| (0..SINGLE).map(event).collect::<Vec<_>>())
        .bench_local_values(|events| {
            for e in &events {
                store.append(e).expect("append");
            }
            events
        });
}

const BATCHED: usize = 20_000;
const BATCH: usize = 1_000;

/// Appends in batches of 1,000 per transaction.
#[divan::bench(sample_count = 20)]
fn journal_append_batched(bencher: Bencher) {
    let (_dir, store) = journal();
    bencher
        .counter(ItemsCount::new(BATCHED))
        .with_inputs(|| (0..BATCHED).map(event).collect::<Vec<_>>())
        .bench_local_values(|events| {
            for chunk in events.chunks(BATCH) {
                store.append_batch(chunk).expect("append batch");
            }
            events
        });
}

/// The four rows the queue journals for one no-op job (its submission with the spec, its
/// admission, running, completed with the job's snapshot), as large as the real ones.
fn job_rows(host: &str) -> Vec<JournalEvent> {
    let job = uuid::Uuid::now_v7().to_string();
    let stamp = |mut e: JournalEvent| {
        e.job_id = Some(job.clone());
        e.capability_instance_id = Some("noop".into());
        e.capability_name = Some("noop".into());
        e
    };
    let submitted = stamp(
        JournalEvent::new("job_submitted").payload(serde_json::json!({
        "host_id": host, "attempt": 1, "spec": {
            "instance_id": "noop", "capability_name": "noop", "channel": "execute",
            "kwargs": {}, "envelope": {}, "priority": 0,
            "retry": {"max_attempts": 1, "backoff_seconds": 1.0, "backoff_multiplier": 2.0,
                      "max_backoff_seconds": 60.0, "retry_on": ["transient", "resource"]}}})),
    );
    let admitted = stamp(
        JournalEvent::new("admission_decided").payload(serde_json::json!({
        "lanes_in_use": 1, "lanes": 4, "exclusive": false, "measured": true,
        "gpu_memory_mb": 0.0, "gpu_reserved_mb": 0.0, "memory_mb_peak": 0.0, "pending": 0})),
    );
    let running = stamp(JournalEvent::state_transition(
        job.clone(),
        "pending",
        "running",
    ));
    let mut completed = stamp(JournalEvent::state_transition(
        job.clone(),
        "running",
        "completed",
    ));
    completed.payload["job_snapshot"] = serde_json::json!({
        "id": job, "capability_instance_id": "noop", "status": "completed", "priority": 0,
        "submitted_at": "2026-12-05T03:12:25.586655+00:00",
        "started_at": "2026-12-05T03:12:25.586672+00:00",
        "completed_at": "2026-12-05T03:12:25.586711+00:00", "retry_count": 0,
        "progress": 1.0, "result": {}, "kwargs": {}, "capability_name": "noop"});
    vec![submitted, admitted, running, completed]
}

const JOBS: usize = 500;

/// One job's four rows per transaction, under the host's lease, as the queue's writer
/// commits a job that nothing else shares a transaction with: what a lone job's outcome
/// costs before anyone may be told of it.
#[divan::bench(sample_count = 20)]
fn journal_commit_one_job_each(bencher: Bencher) {
    let (_dir, store) = journal();
    store.register_host("bench", 30.0).expect("register");
    bencher
        .counter(ItemsCount::new(JOBS))
        .with_inputs(|| (0..JOBS).map(|_| job_rows("bench")).collect::<Vec<_>>())
        .bench_local_values(|jobs| {
            for rows in &jobs {
                store.append_batch_as("bench", rows).expect("append");
            }
            jobs
        });
}

/// 1,000 jobs' rows per transaction, as the writer commits a burst: the most jobs per
/// second the journal takes on this disk.
#[divan::bench(sample_count = 20)]
fn journal_commit_jobs_batched(bencher: Bencher) {
    let (_dir, store) = journal();
    store.register_host("bench", 30.0).expect("register");
    bencher
        .counter(ItemsCount::new(10 * JOBS))
        .with_inputs(|| {
            (0..10 * JOBS)
                .flat_map(|_| job_rows("bench"))
                .collect::<Vec<_>>()
        })
        .bench_local_values(|rows| {
            for chunk in rows.chunks(4_000) {
                store.append_batch_as("bench", chunk).expect("append");
            }
            rows
        });
}

const WRITERS: usize = 8;
const PER_WRITER: usize = 500;

fn concurrent(stores: Vec<Arc<JournalStore>>) {
    let handles: Vec<_> = stores
        .into_iter()
        .map(|store| {
            std::thread::spawn(move || {
                for i in 0..PER_WRITER {
                    store.append(&event(i)).expect("append");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread");
    }
}

/// 8 threads appending one transaction each through one shared store (one connection).
#[divan::bench(sample_count = 20)]
fn journal_append_8_writers_shared_store(bencher: Bencher) {
    let (_dir, store) = journal();
    bencher
        .counter(ItemsCount::new(WRITERS * PER_WRITER))
        .bench_local(|| concurrent(vec![Arc::clone(&store); WRITERS]));
}

/// 8 threads appending one transaction each, each with its own connection (as 8 processes
/// would: SQLite's file lock and the busy timeout arbitrate).
#[divan::bench(sample_count = 20)]
fn journal_append_8_writers_own_connections(bencher: Bencher) {
    let (dir, _store) = journal();
    let path = dir.path().join("journal.db");
    let stores: Vec<Arc<JournalStore>> = (0..WRITERS)
        .map(|_| Arc::new(JournalStore::open(&path).expect("open")))
        .collect();
    bencher
        .counter(ItemsCount::new(WRITERS * PER_WRITER))
        .bench_local(|| concurrent(stores.clone()));
}

/// A diagnostics database of `rows` rows (60% records, 40% chunks), half of them 31 to 60
/// days old, half from the last 30 days; built once per run.
fn diagnostics_template() -> &'static (tempfile::TempDir, PathBuf, usize) {
    static TEMPLATE: OnceLock<(tempfile::TempDir, PathBuf, usize)> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let rows = if benching() { 1_000_000 } else { 20_000 };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("diagnostics.db");
        let store = DiagnosticsStore::open(&path).expect("open diagnostics");
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_micros(),
        )
        .expect("micros");
        let span = 60 * 86_400_000_000i64;
        let step = span / i64::try_from(rows).expect("rows");
        let mut records = Vec::new();
        let mut chunks = Vec::new();
        for i in 0..rows {
            let ts = iso_from_unix_micros(now - span + step * i64::try_from(i).expect("i"));
            let session = format!("ws-{}", i % 50);
            if i % 5 < 3 {
                let mut r = DiagnosticRecord::new(
                    "INFO",
                    format!("processed item {i} of the batch in 12.5 ms"),
                );
                r.ts = ts;
                r.job_id = Some(format!("job-{}", i / 1000));
                r.worker_session_id = Some(session);
                r.logger_name = "cjm.capability".into();
                records.push(r);
            } else {
                let mut c = StreamChunk::new(
                    Some(&session),
                    "stdout",
                    format!("100%|##########| {i}/{rows} [00:01<00:00]"),
                );
                c.ts = ts;
                chunks.push(c);
            }
            if records.len() + chunks.len() >= 20_000 {
                store.append_batch(&records, &chunks).expect("fill");
                records.clear();
                chunks.clear();
            }
        }
        store.append_batch(&records, &chunks).expect("fill");
        drop(store);
        // One file, no WAL beside it: copies of it are complete databases.
        let conn = rusqlite::Connection::open(&path).expect("reopen");
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint");
        drop(conn);
        (dir, path, rows)
    })
}

/// One retention pass: age (30 days, deleting half), then a size budget of half of what
/// remains, in batches.
#[divan::bench(sample_count = 3, sample_size = 1)]
fn diagnostics_retention_pass_1m_rows(bencher: Bencher) {
    let (_dir, template, rows) = diagnostics_template();
    let used = DiagnosticsStore::open(template)
        .expect("open")
        .used_bytes()
        .expect("size");
    bencher
        .counter(ItemsCount::new(*rows))
        .with_inputs(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("diagnostics.db");
            std::fs::copy(template, &path).expect("copy template");
            let store = DiagnosticsStore::open(&path).expect("open copy");
            (dir, store)
        })
        .bench_local_values(|(dir, store)| {
            let budget_mb = used as f64 / 4.0 / 1024.0 / 1024.0;
            let out = store
                .apply_retention(Some(30.0), Some(budget_mb))
                .expect("retention");
            assert!(out.records_deleted > 0 && out.chunks_deleted > 0);
            (dir, store, out)
        });
}
