//! The diagnostics store against real databases, with Python-style writers beside it.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::*;
use crate::store::iso_from_unix_micros;

fn open() -> (tempfile::TempDir, Arc<DiagnosticsStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = DiagnosticsStore::open(&dir.path().join("diagnostics.db")).unwrap();
    (dir, Arc::new(store))
}

#[test]
fn the_schema_is_the_python_workers_and_its_inserts_land() {
    let (_dir, store) = open();
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    let columns = |table: &str| -> Vec<(String, String, bool, Option<String>)> {
        let mut stmt = conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .unwrap();
        stmt.query_map([], |r| {
            Ok((r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? != 0, r.get(4)?))
        })
        .unwrap()
        .map(std::result::Result::unwrap)
        .collect()
    };
    let s = |v: &str| v.to_owned();
    assert_eq!(
        columns("records"),
        [
            (s("seq"), s("INTEGER"), false, None),
            (s("ts"), s("TEXT"), true, None),
            (s("worker_session_id"), s("TEXT"), false, None),
            (s("job_id"), s("TEXT"), false, None),
            (s("level"), s("TEXT"), true, Some(s("'INFO'"))),
            (s("logger_name"), s("TEXT"), true, Some(s("''"))),
            (s("message"), s("TEXT"), true, None),
            (s("exc_text"), s("TEXT"), false, None),
        ]
    );
    assert_eq!(
        columns("stream_chunks"),
        [
            (s("seq"), s("INTEGER"), false, None),
            (s("ts"), s("TEXT"), true, None),
            (s("worker_session_id"), s("TEXT"), false, None),
            (s("stream"), s("TEXT"), true, Some(s("'stdout'"))),
            (s("content"), s("TEXT"), true, None),
        ]
    );
    // A Python worker's handler, through its own connection.
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute(
        "INSERT INTO records (ts, worker_session_id, job_id, level, logger_name, message, exc_text) VALUES (?,?,?,?,?,?,?)",
        params!["2026-05-01T10:00:00.5+00:00", "ws", "job-1", "WARNING", "cjm.worker", "low memory", None::<String>],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO records (ts, message) VALUES ('2026-05-01T10:00:01+00:00', 'defaults')",
        [],
    )
    .unwrap();
    let rows = store.query_records(&RecordQuery::default()).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].level.as_str(), rows[0].job_id.as_deref()),
        ("WARNING", Some("job-1"))
    );
    assert_eq!(
        (rows[1].level.as_str(), rows[1].logger_name.as_str()),
        ("INFO", "")
    );
}

#[test]
fn queries_filter_by_job_session_and_level_with_cursors() {
    let (_dir, store) = open();
    let mut records = Vec::new();
    for i in 0..20 {
        let mut r =
            DiagnosticRecord::new(if i % 3 == 0 { "ERROR" } else { "INFO" }, format!("m{i}"));
        r.job_id = Some(format!("job-{}", i % 2));
        r.worker_session_id = Some(format!("ws-{}", i / 10));
        r.exc_text = (i == 3).then(|| "Traceback ...".to_owned());
        records.push(r);
    }
    let chunks: Vec<StreamChunk> = (0..6)
        .map(|i| {
            StreamChunk::new(
                Some(if i < 3 { "a" } else { "b" }),
                "stderr",
                format!("line {i}"),
            )
        })
        .collect();
    store.append_batch(&records, &chunks).unwrap();
    let q = RecordQuery {
        job_id: Some("job-1".into()),
        level: Some("ERROR".into()),
        ..RecordQuery::default()
    };
    assert_eq!(
        store
            .query_records(&q)
            .unwrap()
            .iter()
            .map(|r| r.message.as_str())
            .collect::<Vec<_>>(),
        ["m3", "m9", "m15"]
    );
    assert_eq!(
        store.query_records(&q).unwrap()[0].exc_text.as_deref(),
        Some("Traceback ...")
    );
    let q = RecordQuery {
        worker_session_id: Some("ws-1".into()),
        after_seq: Some(14),
        limit: Some(3),
        ..RecordQuery::default()
    };
    assert_eq!(
        store
            .query_records(&q)
            .unwrap()
            .iter()
            .map(|r| r.seq.unwrap())
            .collect::<Vec<_>>(),
        [15, 16, 17]
    );
    let newest = store
        .query_records(&RecordQuery {
            limit: Some(1),
            descending: true,
            ..RecordQuery::default()
        })
        .unwrap();
    assert_eq!(newest[0].message, "m19");
    let q = ChunkQuery {
        worker_session_id: Some("b".into()),
        after_seq: Some(4),
        ..ChunkQuery::default()
    };
    assert_eq!(
        store
            .query_chunks(&q)
            .unwrap()
            .iter()
            .map(|c| c.content.as_str())
            .collect::<Vec<_>>(),
        ["line 4", "line 5"]
    );
    assert_eq!(store.counts().unwrap(), (20, 6));
    assert_eq!(
        store
            .append_record(&DiagnosticRecord::new("DEBUG", "x"))
            .unwrap(),
        21
    );
    assert_eq!(
        store
            .append_chunk(&StreamChunk::new(None, "stdout", "y"))
            .unwrap(),
        7
    );
}

/// Records and chunks `days_ago` days old, `n` of each.
fn aged(n: usize, days_ago: i64) -> (Vec<DiagnosticRecord>, Vec<StreamChunk>) {
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap();
    let ts = |i: usize| {
        iso_from_unix_micros(now - days_ago * 86_400_000_000 + i64::try_from(i).unwrap())
    };
    let records = (0..n)
        .map(|i| DiagnosticRecord {
            ts: ts(i),
            ..DiagnosticRecord::new("INFO", format!("{days_ago}d {i} {}", "x".repeat(100)))
        })
        .collect();
    let chunks = (0..n)
        .map(|i| StreamChunk {
            ts: ts(i),
            ..StreamChunk::new(
                Some("ws"),
                "stdout",
                format!("{days_ago}d {i} {}", "y".repeat(100)),
            )
        })
        .collect();
    (records, chunks)
}

#[test]
fn retention_deletes_by_age_then_by_size_oldest_first() {
    let (_dir, store) = open();
    for days in [90, 40, 1] {
        let (r, c) = aged(6000, days);
        store.append_batch(&r, &c).unwrap();
    }
    let out = store.apply_retention(Some(30.0), None).unwrap();
    assert_eq!((out.records_deleted, out.chunks_deleted), (12_000, 12_000));
    assert!(out.batches >= 6, "deleted in batches: {out:?}");
    assert_eq!(store.counts().unwrap(), (6000, 6000));
    assert!(
        store
            .query_records(&RecordQuery::default())
            .unwrap()
            .iter()
            .all(|r| r.message.starts_with("1d"))
    );

    let before = store.used_bytes().unwrap();
    let budget_mb = before as f64 / 2.0 / 1024.0 / 1024.0;
    let out = store.apply_retention(None, Some(budget_mb)).unwrap();
    assert!(store.used_bytes().unwrap() as f64 <= budget_mb * 1024.0 * 1024.0);
    assert!(out.records_deleted > 0 && out.chunks_deleted > 0, "{out:?}");
    // What is left is the newest of both tables.
    let (r, c) = store.counts().unwrap();
    assert!(r > 0 && c > 0);
    let oldest_left = store
        .query_records(&RecordQuery {
            limit: Some(1),
            ..RecordQuery::default()
        })
        .unwrap();
    assert_eq!(
        oldest_left[0].seq.unwrap(),
        18_000 - i64::try_from(r).unwrap() + 1
    );

    // A budget below the empty database empties it and stops.
    store.apply_retention(None, Some(0.0)).unwrap();
    assert_eq!(store.counts().unwrap(), (0, 0));
}

#[test]
fn retention_is_safe_against_concurrent_writers() {
    let (dir, store) = open();
    let (r, c) = aged(20_000, 60);
    store.append_batch(&r, &c).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            // Each writer has its own connection, as a Python worker would.
            let other = DiagnosticsStore::open(&dir.path().join("diagnostics.db")).unwrap();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut written = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut rec = DiagnosticRecord::new("INFO", format!("live {w} {written}"));
                    rec.worker_session_id = Some(format!("live-{w}"));
                    other.append_record(&rec).unwrap();
                    written += 1;
                }
                written
            })
        })
        .collect();
    // Retention starts once every writer has written.
    let live_sessions = || -> i64 {
        let sql = "SELECT COUNT(DISTINCT worker_session_id) FROM records WHERE worker_session_id LIKE 'live-%'";
        store
            .db
            .with(|c| c.query_row(sql, [], |r| r.get(0)))
            .unwrap()
    };
    while live_sessions() < 3 {
        std::thread::yield_now();
    }
    let out = store.apply_retention(Some(30.0), None).unwrap();
    stop.store(true, Ordering::Relaxed);
    let written: u64 = writers.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!((out.records_deleted, out.chunks_deleted), (20_000, 20_000));
    assert!(written > 0);
    assert_eq!(
        store.counts().unwrap(),
        (written, 0),
        "every live row survived"
    );
}

#[test]
fn sweeps_run_at_most_once_per_interval() {
    let (_dir, store) = open();
    let (r, c) = aged(10, 50);
    store.append_batch(&r, &c).unwrap();
    let hour = Duration::from_secs(3600);
    let first = store.maybe_sweep(hour, Some(30.0), None).unwrap().unwrap();
    assert_eq!(first.records_deleted, 10);
    assert_eq!(store.maybe_sweep(hour, Some(30.0), None).unwrap(), None);
    assert!(
        store
            .maybe_sweep(Duration::ZERO, None, None)
            .unwrap()
            .is_some()
    );
}

#[test]
fn the_sink_writes_behind_and_flushes() {
    let (_dir, store) = open();
    let writer = store.writer().unwrap();
    for i in 0..1000 {
        writer.record(DiagnosticRecord {
            worker_session_id: Some("pool-1".into()),
            job_id: Some(format!("job-{}", i % 10)),
            logger_name: "guest".into(),
            ..DiagnosticRecord::new("INFO", format!("message {i}"))
        });
        writer.chunk("pool-1", "stderr", &format!("line {i}"));
    }
    writer.flush().unwrap();
    assert_eq!(store.counts().unwrap(), (1000, 1000));
    let job3 = store
        .query_records(&RecordQuery {
            job_id: Some("job-3".into()),
            ..RecordQuery::default()
        })
        .unwrap();
    assert_eq!(job3.len(), 100);
    assert_eq!(job3[0].message, "message 3");
    assert_eq!((writer.dropped(), writer.failed()), (0, 0));
    // Dropping the writer commits what is still queued.
    writer.chunk("pool-1", "stdout", "last words");
    drop(writer);
    assert_eq!(store.counts().unwrap(), (1000, 1001));
}

#[test]
fn a_full_sink_drops_instead_of_blocking() {
    let (_dir, store) = open();
    // Another connection holds the write lock: the writer thread waits on it.
    let blocker = rusqlite::Connection::open(store.path()).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let writer = DiagnosticsWriter::spawn(Arc::clone(&store), 4).unwrap();
    for i in 0..100 {
        writer.chunk("ws", "stdout", &format!("{i}"));
    }
    // A blocking sink would have queued all 100 and dropped none; the writer thread can hold
    // a few in its batch, the bounded channel 4 more: the rest must have been dropped.
    assert!(writer.dropped() >= 50, "dropped {}", writer.dropped());
    blocker.execute_batch("COMMIT").unwrap();
    writer.flush().unwrap();
    let (_, chunks) = store.counts().unwrap();
    assert_eq!(chunks + writer.dropped() + writer.failed(), 100);
}
