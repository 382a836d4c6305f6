//! Store throughput: journal appends (one transaction each, batched, 8 concurrent writers)
//! and a diagnostics retention pass over a million rows.
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
