//! The diagnostics store: disposable narrative. Worker log records (`records`) and the raw
//! stdout/stderr lines the host pumps (`stream_chunks`), with retention.
//!
//! The schema is exactly the Python worker's (`CONTRACT.md`): Python workers open this file
//! (`CJM_DIAGNOSTICS_DB`) and insert their records themselves, so there are many writers
//! (WAL, busy timeout). Unlike the journal, a failing diagnostics write never fails the work
//! being logged: [`DiagnosticsWriter`], the host's [`DiagnosticsSink`], buffers in a channel
//! and a background thread commits in batches; when the buffer is full, lines are dropped
//! and counted rather than the caller blocked.
//!
//! Retention runs by age, then by size budget, in batches of [`RETENTION_BATCH`] rows per
//! transaction so concurrent writers wait at most one batch; a host runs it when it starts
//! and on a timer ([`DiagnosticsStore::maintain`]), at most once per sweep interval.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use rusqlite::types::Value as SqlValue;
use rusqlite::{OptionalExtension, Row, params};

use super::{Db, Migration, iso_from_system_time, now_iso};
use crate::error::{Error, Result};
use crate::store::StoreError;

/// Where backends write what capabilities log and print: the diagnostics store, or nowhere.
/// Implementations must not block the caller for long (buffer and write behind).
pub trait DiagnosticsSink: Send + Sync {
    /// Stores a log record.
    fn record(&self, record: DiagnosticRecord);
    /// Stores one line of a capability's stdout or stderr (`stream` is `stdout` / `stderr`).
    fn chunk(&self, worker_session_id: &str, stream: &str, content: &str);
    /// Masks `values` in log records a worker of `worker_session_id` wrote into the store by
    /// itself (a Python worker writes its own). Sinks that only hold what they were given
    /// have nothing to do.
    fn scrub(&self, worker_session_id: &str, values: &[String]) {
        let _ = (worker_session_id, values);
    }
}

/// A sink that drops everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDiagnostics;

impl DiagnosticsSink for NoDiagnostics {
    fn record(&self, _: DiagnosticRecord) {}
    fn chunk(&self, _: &str, _: &str, _: &str) {}
}

/// Rows deleted per retention transaction.
pub const RETENTION_BATCH: usize = 5000;

/// One structured log record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiagnosticRecord {
    /// Store-assigned cursor.
    pub seq: Option<i64>,
    /// When it was logged (ISO-8601 UTC).
    pub ts: String,
    /// The worker session.
    pub worker_session_id: Option<String>,
    /// The job (stamped from the call envelope).
    pub job_id: Option<String>,
    /// `DEBUG` .. `CRITICAL`.
    pub level: String,
    /// Logger name.
    pub logger_name: String,
    /// The message.
    pub message: String,
    /// Formatted exception, if any.
    pub exc_text: Option<String>,
}

impl DiagnosticRecord {
    /// A record stamped now.
    pub fn new(level: impl Into<String>, message: impl Into<String>) -> Self {
        DiagnosticRecord {
            seq: None,
            ts: now_iso(),
            worker_session_id: None,
            job_id: None,
            level: level.into(),
            logger_name: String::new(),
            message: message.into(),
            exc_text: None,
        }
    }
}

/// One raw stdout/stderr line, attributed to the worker session only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamChunk {
    /// Store-assigned cursor.
    pub seq: Option<i64>,
    /// When it was captured (ISO-8601 UTC).
    pub ts: String,
    /// The worker session.
    pub worker_session_id: Option<String>,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line (carriage-return progress frames collapsed to the last).
    pub content: String,
}

impl StreamChunk {
    /// A chunk captured now.
    pub fn new(worker_session_id: Option<&str>, stream: &str, content: impl Into<String>) -> Self {
        StreamChunk {
            seq: None,
            ts: now_iso(),
            worker_session_id: worker_session_id.map(str::to_owned),
            stream: stream.to_owned(),
            content: content.into(),
        }
    }
}

/// A read of log records; filters AND-combined, rows in `seq` order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordQuery {
    /// Exactly this job.
    pub job_id: Option<String>,
    /// This worker session.
    pub worker_session_id: Option<String>,
    /// This level.
    pub level: Option<String>,
    /// Rows after this cursor.
    pub after_seq: Option<i64>,
    /// At most this many.
    pub limit: Option<u64>,
    /// Newest first.
    pub descending: bool,
}

/// A read of stream chunks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkQuery {
    /// This worker session.
    pub worker_session_id: Option<String>,
    /// Rows after this cursor.
    pub after_seq: Option<i64>,
    /// At most this many.
    pub limit: Option<u64>,
    /// Newest first.
    pub descending: bool,
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Log records deleted.
    pub records_deleted: u64,
    /// Stream chunks deleted.
    pub chunks_deleted: u64,
    /// Transactions it took.
    pub batches: u64,
}

/// The schema is the contract's: Python workers write into the same file.
const SCHEMA_V1: &str = cjm_guest::contract::DIAGNOSTICS_SCHEMA;

const MIGRATIONS: &[Migration] = &[|tx| tx.execute_batch(SCHEMA_V1)];

const INSERT_RECORD: &str = "INSERT INTO records (ts, worker_session_id, job_id, level, logger_name, message, exc_text) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const INSERT_CHUNK: &str =
    "INSERT INTO stream_chunks (ts, worker_session_id, stream, content) VALUES (?1, ?2, ?3, ?4)";

/// The diagnostics store.
#[derive(Debug)]
pub struct DiagnosticsStore {
    db: Db,
}

impl DiagnosticsStore {
    /// Opens (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<DiagnosticsStore> {
        Ok(DiagnosticsStore {
            db: Db::open(path, "diagnostics", MIGRATIONS)?,
        })
    }

    /// The database file (what workers get as `CJM_DIAGNOSTICS_DB`).
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// Stores one record; its `seq`.
    pub fn append_record(&self, r: &DiagnosticRecord) -> Result<i64> {
        self.db.with(|conn| {
            insert_record(&mut conn.prepare_cached(INSERT_RECORD)?, r)?;
            Ok(conn.last_insert_rowid())
        })
    }

    /// Stores one stream chunk; its `seq`.
    pub fn append_chunk(&self, c: &StreamChunk) -> Result<i64> {
        self.db.with(|conn| {
            insert_chunk(&mut conn.prepare_cached(INSERT_CHUNK)?, c)?;
            Ok(conn.last_insert_rowid())
        })
    }

    /// Stores records and chunks in one transaction.
    pub fn append_batch(&self, records: &[DiagnosticRecord], chunks: &[StreamChunk]) -> Result<()> {
        if records.is_empty() && chunks.is_empty() {
            return Ok(());
        }
        self.db.write(|tx| {
            let mut stmt = tx.prepare_cached(INSERT_RECORD)?;
            for r in records {
                insert_record(&mut stmt, r)?;
            }
            let mut stmt = tx.prepare_cached(INSERT_CHUNK)?;
            for c in chunks {
                insert_chunk(&mut stmt, c)?;
            }
            Ok(())
        })
    }

    /// Replaces `values` by `***` in the log records of one worker session (records a
    /// Python worker wrote into this database itself, so the host could not mask them on the
    /// way in).
    pub fn scrub(&self, worker_session_id: &str, values: &[String]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        // Freed cell content is zeroed from now on, so the old rows leave no bytes behind.
        self.db
            .with(|conn| conn.pragma_update(None, "secure_delete", true))?;
        self.db.write(|tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE records SET message = replace(message, ?2, '***'), \
                 exc_text = replace(exc_text, ?2, '***') \
                 WHERE worker_session_id = ?1 \
                 AND (instr(message, ?2) > 0 OR instr(coalesce(exc_text, ''), ?2) > 0)",
            )?;
            for v in values {
                stmt.execute(rusqlite::params![worker_session_id, v])?;
            }
            Ok(())
        })?;
        // The rows' old versions live on in the WAL and in freed page space: overwrite
        // freed content and fold the WAL back (best effort: a worker still reading keeps
        // the WAL until its next scrub, at the latest when it stops).
        self.db.with(|conn| {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        })
    }

    /// Log records matching `q`.
    pub fn query_records(&self, q: &RecordQuery) -> Result<Vec<DiagnosticRecord>> {
        let mut clauses = Vec::new();
        let mut args = Vec::new();
        for (clause, value) in [
            ("job_id = ?", &q.job_id),
            ("worker_session_id = ?", &q.worker_session_id),
            ("level = ?", &q.level),
        ] {
            if let Some(v) = value {
                clauses.push(clause);
                args.push(SqlValue::Text(v.clone()));
            }
        }
        let sql = select_sql(
            "SELECT seq, ts, worker_session_id, job_id, level, logger_name, message, exc_text FROM records",
            clauses,
            &mut args,
            q.after_seq,
            q.limit,
            q.descending,
        );
        self.select(&sql, &args, row_to_record)
    }

    /// Stream chunks matching `q`.
    pub fn query_chunks(&self, q: &ChunkQuery) -> Result<Vec<StreamChunk>> {
        let mut clauses = Vec::new();
        let mut args = Vec::new();
        if let Some(s) = &q.worker_session_id {
            clauses.push("worker_session_id = ?");
            args.push(SqlValue::Text(s.clone()));
        }
        let sql = select_sql(
            "SELECT seq, ts, worker_session_id, stream, content FROM stream_chunks",
            clauses,
            &mut args,
            q.after_seq,
            q.limit,
            q.descending,
        );
        self.select(&sql, &args, row_to_chunk)
    }

    /// The rows `sql` selects with `args`, each read by `read`.
    fn select<T>(
        &self,
        sql: &str,
        args: &[SqlValue],
        read: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        self.db.with(|conn| {
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), read)?;
            rows.collect()
        })
    }

    /// Rows in (`records`, `stream_chunks`).
    pub fn counts(&self) -> Result<(u64, u64)> {
        self.db.with(|conn| {
            let r: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM records")?
                .query_row([], |r| r.get(0))?;
            let c: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM stream_chunks")?
                .query_row([], |r| r.get(0))?;
            Ok((u64::try_from(r).unwrap_or(0), u64::try_from(c).unwrap_or(0)))
        })
    }

    /// Bytes of the database in use (pages not on the free list): what the size budget
    /// measures.
    pub fn used_bytes(&self) -> Result<u64> {
        self.db.with(used_bytes)
    }

    /// Deletes rows older than `max_age_days`, then the oldest rows of both tables
    /// (interleaved by time) until the database uses at most `max_total_mb`. Each batch is
    /// its own transaction, so concurrent writers wait at most one batch.
    pub fn apply_retention(
        &self,
        max_age_days: Option<f64>,
        max_total_mb: Option<f64>,
    ) -> Result<RetentionOutcome> {
        let mut out = RetentionOutcome::default();
        if let Some(days) = max_age_days.filter(|d| d.is_finite() && *d > 0.0) {
            let age = Duration::try_from_secs_f64(days * 86_400.0).unwrap_or(Duration::MAX);
            let cutoff = iso_from_system_time(
                SystemTime::now()
                    .checked_sub(age)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            );
            for (table, counter) in [("records", 0), ("stream_chunks", 1)] {
                let sql = format!(
                    "DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table} WHERE ts < ?1 ORDER BY ts LIMIT {RETENTION_BATCH})"
                );
                loop {
                    let n = self
                        .db
                        .write(|tx| tx.prepare_cached(&sql)?.execute([&cutoff]))?;
                    out.batches += 1;
                    let n = n as u64;
                    if counter == 0 {
                        out.records_deleted += n;
                    } else {
                        out.chunks_deleted += n;
                    }
                    if n < RETENTION_BATCH as u64 {
                        break;
                    }
                }
            }
        }
        if let Some(mb) = max_total_mb.filter(|m| m.is_finite() && *m >= 0.0) {
            let budget = (mb * 1024.0 * 1024.0) as u64;
            loop {
                let used = self.used_bytes()?;
                if used <= budget {
                    break;
                }
                // As many of the oldest rows as the excess takes at their mean size (a
                // little more, so it converges), at most a batch: not a whole batch past
                // the budget.
                let (records, chunks) = self.counts()?;
                let rows = (records + chunks).max(1);
                let mean = (used / rows).max(1);
                let batch = ((used - budget) / mean + 1 + rows / 100)
                    .clamp(1, RETENTION_BATCH as u64) as usize;
                let (r, c) = self.db.write(|tx| delete_oldest_batch(tx, batch))?;
                out.batches += 1;
                out.records_deleted += r;
                out.chunks_deleted += c;
                if r == 0 && c == 0 {
                    break; // nothing left: the budget is below the empty database
                }
            }
        }
        Ok(out)
    }

    /// The store's maintenance step, at most once per `interval` (the time of the last sweep
    /// is kept in the `meta` table, shared with Python hosts): retention, then a WAL
    /// checkpoint. A WAL grown past 64 MiB makes it due early. `None` when not due.
    pub fn maybe_sweep(
        &self,
        interval: Duration,
        max_age_days: Option<f64>,
        max_total_mb: Option<f64>,
    ) -> Result<Option<RetentionOutcome>> {
        let last: Option<String> = self.db.with(|conn| {
            conn.prepare_cached("SELECT value FROM meta WHERE key = 'last_sweep'")?
                .query_row([], |r| r.get(0))
                .optional()
        })?;
        let wal =
            std::fs::metadata(format!("{}-wal", self.path().display())).map_or(0, |m| m.len());
        let due_after = iso_from_system_time(
            SystemTime::now()
                .checked_sub(interval)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        let due = last.is_none_or(|l| l <= due_after) || wal > 64 * 1024 * 1024;
        if !due {
            return Ok(None);
        }
        let out = self.apply_retention(max_age_days, max_total_mb)?;
        self.db.with(|conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_sweep', ?1)",
            )?
            .execute([now_iso()])?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        })?;
        Ok(Some(out))
    }

    /// Keeps the store maintained while it lives (the task holds no strong reference):
    /// [`maybe_sweep`](Self::maybe_sweep) at once, then again at every `interval` (checked
    /// at least hourly, so a WAL grown past its bound is noticed), on a blocking thread, since
    /// a sweep deletes in batches and may take seconds. cjm-substrate sweeps when a host
    /// starts; a service runs for weeks, so the host also sweeps on this timer. A failed
    /// sweep is logged: diagnostics are disposable, the work goes on.
    pub fn maintain(
        store: &Arc<Self>,
        interval: Duration,
        max_age_days: Option<f64>,
        max_total_mb: Option<f64>,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(store);
        let every = interval.clamp(Duration::from_millis(100), Duration::from_secs(3600));
        tokio::spawn(async move {
            loop {
                let Some(store) = weak.upgrade() else { return };
                let swept = tokio::task::spawn_blocking(move || {
                    store.maybe_sweep(interval, max_age_days, max_total_mb)
                })
                .await;
                match swept {
                    Ok(Ok(Some(out))) => tracing::info!(
                        records = out.records_deleted,
                        chunks = out.chunks_deleted,
                        "diagnostics maintenance: retention and WAL checkpoint done"
                    ),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "diagnostics maintenance failed"),
                    Err(e) => tracing::warn!(error = %e, "diagnostics maintenance panicked"),
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    /// A write-behind sink over this store (see [`DiagnosticsWriter`]).
    pub fn writer(self: &Arc<Self>) -> Result<DiagnosticsWriter> {
        DiagnosticsWriter::spawn(Arc::clone(self), WRITER_CAPACITY)
    }
}

fn used_bytes(conn: &mut rusqlite::Connection) -> rusqlite::Result<u64> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(u64::try_from((pages - free) * size).unwrap_or(0))
}

/// Deletes the globally oldest rows: up to `batch` from each table, none newer than the
/// batch-th oldest timestamp of either table, so the two tables shrink in time order.
fn delete_oldest_batch(
    tx: &rusqlite::Transaction<'_>,
    batch: usize,
) -> rusqlite::Result<(u64, u64)> {
    let nth = |table: &str| -> rusqlite::Result<Option<String>> {
        tx.prepare_cached(&format!(
            "SELECT ts FROM {table} ORDER BY ts LIMIT 1 OFFSET ?1"
        ))?
        .query_row([batch.saturating_sub(1)], |r| r.get(0))
        .optional()
    };
    let cutoff = match (nth("records")?, nth("stream_chunks")?) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut deleted = [0u64; 2];
    for (i, table) in ["records", "stream_chunks"].into_iter().enumerate() {
        let n = match &cutoff {
            Some(c) => tx
                .prepare_cached(&format!(
                    "DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table} WHERE ts <= ?1 ORDER BY ts LIMIT ?2)"
                ))?
                .execute(rusqlite::params![c, batch])?,
            // Fewer rows than a batch in both tables: take them all.
            None => tx.prepare_cached(&format!("DELETE FROM {table}"))?.execute([])?,
        };
        deleted[i] = n as u64;
    }
    Ok((deleted[0], deleted[1]))
}

fn select_sql(
    base: &str,
    mut clauses: Vec<&str>,
    args: &mut Vec<SqlValue>,
    after: Option<i64>,
    limit: Option<u64>,
    descending: bool,
) -> String {
    if let Some(after) = after {
        clauses.push("seq > ?");
        args.push(SqlValue::Integer(after));
    }
    let mut sql = base.to_owned();
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    sql.push_str(if descending {
        " ORDER BY seq DESC"
    } else {
        " ORDER BY seq ASC"
    });
    if let Some(limit) = limit {
        sql.push_str(" LIMIT ?");
        args.push(SqlValue::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
    }
    sql
}

fn insert_record(
    stmt: &mut rusqlite::CachedStatement<'_>,
    r: &DiagnosticRecord,
) -> rusqlite::Result<usize> {
    stmt.execute(params![
        r.ts,
        r.worker_session_id,
        r.job_id,
        r.level,
        r.logger_name,
        r.message,
        r.exc_text
    ])
}

fn insert_chunk(
    stmt: &mut rusqlite::CachedStatement<'_>,
    c: &StreamChunk,
) -> rusqlite::Result<usize> {
    stmt.execute(params![c.ts, c.worker_session_id, c.stream, c.content])
}

fn row_to_record(row: &Row<'_>) -> rusqlite::Result<DiagnosticRecord> {
    Ok(DiagnosticRecord {
        seq: Some(row.get(0)?),
        ts: row.get(1)?,
        worker_session_id: row.get(2)?,
        job_id: row.get(3)?,
        level: row.get(4)?,
        logger_name: row.get(5)?,
        message: row.get(6)?,
        exc_text: row.get(7)?,
    })
}

fn row_to_chunk(row: &Row<'_>) -> rusqlite::Result<StreamChunk> {
    Ok(StreamChunk {
        seq: Some(row.get(0)?),
        ts: row.get(1)?,
        worker_session_id: row.get(2)?,
        stream: row.get(3)?,
        content: row.get(4)?,
    })
}

// ---------------------------------------------------------------------------------------------
// The write-behind sink.

/// Messages buffered before the writer starts dropping.
pub const WRITER_CAPACITY: usize = 65_536;

/// Most rows one writer transaction takes.
const WRITER_BATCH: usize = 4096;

/// Boxed: the bounded channel allocates and initialises all its [`WRITER_CAPACITY`] slots up
/// front, so a slot holds a pointer (1.5 MB in all), not a record (12.6 MB).
enum Msg {
    Record(Box<DiagnosticRecord>),
    Chunk(Box<StreamChunk>),
    Scrub(Box<(String, Vec<String>)>),
    Flush(SyncSender<()>),
}

/// The host's [`DiagnosticsSink`]: callers hand a record or a line to a bounded channel and
/// return at once; a background thread commits whatever has queued up, one transaction per
/// batch. A full channel drops the item (counted in [`DiagnosticsWriter::dropped`]) instead
/// of blocking the caller; a failing write is logged and its batch dropped. Dropping the
/// writer flushes what is queued and stops the thread.
#[derive(Debug)]
pub struct DiagnosticsWriter {
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl DiagnosticsWriter {
    /// A writer over `store` buffering at most `capacity` items.
    pub fn spawn(store: Arc<DiagnosticsStore>, capacity: usize) -> Result<DiagnosticsWriter> {
        let (tx, rx) = sync_channel(capacity.max(1));
        let failed = Arc::new(AtomicU64::new(0));
        let thread_failed = Arc::clone(&failed);
        let thread = std::thread::Builder::new()
            .name("cjm-diagnostics".to_owned())
            .spawn(move || writer_loop(&store, &rx, &thread_failed))
            .map_err(|e| Error::io(Path::new("cjm-diagnostics thread"), e))?;
        Ok(DiagnosticsWriter {
            tx: Some(tx),
            thread: Some(thread),
            dropped: Arc::new(AtomicU64::new(0)),
            failed,
        })
    }

    fn send(&self, msg: Msg) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits until everything queued before this call is committed (or failed).
    pub fn flush(&self) -> Result<()> {
        let tx = self
            .tx
            .as_ref()
            .ok_or(Error::Store(StoreError::StoreClosed("diagnostics")))?;
        let (ack_tx, ack_rx) = sync_channel(1);
        tx.send(Msg::Flush(ack_tx))
            .map_err(|_| Error::Store(StoreError::StoreClosed("diagnostics")))?;
        ack_rx
            .recv()
            .map_err(|_| Error::Store(StoreError::StoreClosed("diagnostics")))
    }

    /// Items dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Items lost to failed writes.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

impl DiagnosticsSink for DiagnosticsWriter {
    fn record(&self, record: DiagnosticRecord) {
        self.send(Msg::Record(Box::new(record)));
    }

    fn scrub(&self, worker_session_id: &str, values: &[String]) {
        // Never dropped like a log line when the buffer is full: it waits for room.
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Scrub(Box::new((
                worker_session_id.to_owned(),
                values.to_vec(),
            ))));
        }
    }

    fn chunk(&self, worker_session_id: &str, stream: &str, content: &str) {
        self.send(Msg::Chunk(Box::new(StreamChunk::new(
            Some(worker_session_id),
            stream,
            content,
        ))));
    }
}

impl Drop for DiagnosticsWriter {
    fn drop(&mut self) {
        // Closing the channel ends the loop after it has written what is queued.
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn writer_loop(store: &DiagnosticsStore, rx: &Receiver<Msg>, failed: &AtomicU64) {
    let mut records = Vec::new();
    let mut chunks = Vec::new();
    let mut acks = Vec::new();
    let mut scrubs = Vec::new();
    loop {
        // Block for the first message, then take whatever else is already queued.
        let Ok(first) = rx.recv() else {
            return; // every sender is gone and the queue is drained
        };
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(msg) = next {
            match msg {
                Msg::Record(r) => records.push(*r),
                Msg::Chunk(c) => chunks.push(*c),
                Msg::Scrub(scrub) => scrubs.push(*scrub),
                Msg::Flush(ack) => acks.push(ack),
            }
            taken += 1;
            next = if taken < WRITER_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if let Err(e) = store.append_batch(&records, &chunks) {
            failed.fetch_add((records.len() + chunks.len()) as u64, Ordering::Relaxed);
            tracing::warn!(error = %e, records = records.len(), chunks = chunks.len(), "diagnostics batch dropped");
        }
        records.clear();
        chunks.clear();
        for (session, values) in scrubs.drain(..) {
            if let Err(e) = store.scrub(&session, &values) {
                tracing::warn!(error = %e, "cannot scrub secrets from diagnostics records");
            }
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

#[cfg(test)]
mod tests;
