//! Where capability log records go: stderr lines (the host pumps the worker's stderr into its
//! diagnostics store) and, when the host set `CJM_DIAGNOSTICS_DB`, rows of that SQLite file's
//! `records` table, stamped with the call's job id and `CJM_WORKER_SESSION_ID`, as the Python
//! worker writes them.
//!
//! Logging never slows or fails the work being logged: rows go through a bounded channel to
//! one writer thread (started at the first record, so an idle worker holds no SQLite
//! connection) that commits in batches; when the channel is full, records are dropped and
//! counted. The schema is created if missing, with the exact DDL of the host and the Python
//! worker (`CREATE TABLE IF NOT EXISTS`), WAL and a busy timeout, because many workers write
//! into one file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use cjm_guest::LogLevel;
use rusqlite::{Connection, params};

use cjm_guest::python::time::{now_asctime, now_isoformat as now_iso};

/// Records buffered for the writer thread before new ones are dropped.
pub const CHANNEL_CAPACITY: usize = 4096;

/// How long a writer waits on a locked database before giving up on a batch.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = cjm_guest::contract::DIAGNOSTICS_SCHEMA;

const INSERT_RECORD: &str = "INSERT INTO records (ts, worker_session_id, job_id, level, \
     logger_name, message, exc_text) VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)";

/// Where records go and which are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// The least severe level kept.
    pub level: LogLevel,
    /// Write each record to stderr as a line.
    pub stderr: bool,
    /// The diagnostics database to insert records into.
    pub database: Option<PathBuf>,
    /// The worker session the records are attributed to.
    pub session_id: Option<String>,
}

impl Default for LogConfig {
    /// INFO and above, to stderr only.
    fn default() -> Self {
        LogConfig {
            level: LogLevel::Info,
            stderr: true,
            database: None,
            session_id: None,
        }
    }
}

impl LogConfig {
    /// The configuration the host's environment asks for: `CJM_LOG_LEVEL` (unless `level`
    /// overrides it), `CJM_DIAGNOSTICS_DB`, `CJM_WORKER_SESSION_ID`.
    pub fn from_env(level: Option<LogLevel>) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let level = level
            .or_else(|| var("CJM_LOG_LEVEL").and_then(|l| crate::args::parse_level(&l).ok()))
            .unwrap_or(LogLevel::Info);
        LogConfig {
            level,
            stderr: true,
            database: var("CJM_DIAGNOSTICS_DB").map(PathBuf::from),
            session_id: var("CJM_WORKER_SESSION_ID"),
        }
    }
}

/// One record on its way to the database.
struct Row {
    ts: String,
    job_id: Option<String>,
    level: LogLevel,
    logger: String,
    message: String,
}

enum Message {
    Record(Row),
    /// Answered once everything sent before it is committed (or given up on).
    Flush(SyncSender<()>),
}

/// The log record sink of a worker.
#[derive(Debug)]
pub struct LogSink {
    config: LogConfig,
    writer: OnceLock<Option<SyncSender<Message>>>,
    dropped: AtomicU64,
}

impl LogSink {
    /// A sink for `config`. Nothing is opened until the first record.
    pub fn new(config: LogConfig) -> Self {
        LogSink {
            config,
            writer: OnceLock::new(),
            dropped: AtomicU64::new(0),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Records dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Logs `message` at `level` under `logger`, attributed to `job_id`.
    pub fn log(&self, level: LogLevel, logger: &str, message: &str, job_id: Option<&str>) {
        if level < self.config.level {
            return;
        }
        if self.config.stderr {
            // `logging.basicConfig`'s format, as the Python worker writes without a database.
            let line = format!("{} [{}] {}\n", now_asctime(), level.as_str(), message);
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
        if let Some(writer) = self.writer() {
            let row = Row {
                ts: now_iso(),
                job_id: job_id.map(str::to_owned),
                level,
                logger: logger.to_owned(),
                message: message.to_owned(),
            };
            match writer.try_send(Message::Record(row)) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Waits up to `timeout` until every record logged so far is committed. Returns whether
    /// that happened in time (true at once when there is no database).
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(Some(writer)) = self.writer.get() else {
            return true;
        };
        let (ack, done) = sync_channel(1);
        if writer.send(Message::Flush(ack)).is_err() {
            return false;
        }
        done.recv_timeout(timeout).is_ok()
    }

    /// The writer thread's channel, started on first use.
    fn writer(&self) -> Option<&SyncSender<Message>> {
        let path = self.config.database.as_ref()?;
        self.writer
            .get_or_init(|| {
                let (tx, rx) = sync_channel(CHANNEL_CAPACITY);
                let session = self.config.session_id.clone();
                let path = path.clone();
                std::thread::Builder::new()
                    .name("cjm-diagnostics".into())
                    .spawn(move || write_loop(&path, session.as_deref(), &rx))
                    .ok()
                    .map(|_| tx)
            })
            .as_ref()
    }
}

/// Opens the database at `path`, creating the schema if missing.
pub fn open_database(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

fn write_loop(path: &Path, session: Option<&str>, rx: &Receiver<Message>) {
    let mut conn = match open_database(path) {
        Ok(conn) => Some(conn),
        Err(e) => {
            eprintln!(
                "[cjm-native-worker] diagnostics database {} unusable, records go to stderr only: {e}",
                path.display()
            );
            None
        }
    };
    let mut warned = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut acks = Vec::new();
        let mut rows = Vec::with_capacity(batch.len());
        for m in batch {
            match m {
                Message::Record(r) => rows.push(r),
                Message::Flush(ack) => acks.push(ack),
            }
        }
        if let Some(c) = conn.as_mut()
            && !rows.is_empty()
            && let Err(e) = insert(c, session, &rows)
            && !warned
        {
            warned = true;
            eprintln!("[cjm-native-worker] cannot write diagnostics records: {e}");
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

fn insert(conn: &mut Connection, session: Option<&str>, rows: &[Row]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(INSERT_RECORD)?;
        for r in rows {
            stmt.execute(params![
                r.ts,
                session,
                r.job_id,
                r.level.as_str(),
                r.logger,
                r.message
            ])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_land_with_job_and_session_and_level_filter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diagnostics.db");
        let sink = LogSink::new(LogConfig {
            level: LogLevel::Info,
            stderr: false,
            database: Some(path.clone()),
            session_id: Some("sess-1".into()),
        });
        sink.log(LogLevel::Debug, "capability", "hidden", Some("job-1"));
        sink.log(LogLevel::Info, "capability", "hello", Some("job-1"));
        sink.log(LogLevel::Error, "capability", "no job", None);
        assert!(sink.flush(Duration::from_secs(10)));
        let conn = open_database(&path).unwrap();
        type Record = (String, Option<String>, Option<String>, String, String);
        let rows: Vec<Record> = conn
            .prepare(
                "SELECT ts, worker_session_id, job_id, level, message FROM records ORDER BY seq",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].1.as_deref(), Some("sess-1"));
        assert_eq!(rows[0].2.as_deref(), Some("job-1"));
        assert_eq!((rows[0].3.as_str(), rows[0].4.as_str()), ("INFO", "hello"));
        assert_eq!((rows[1].2.as_deref(), rows[1].3.as_str()), (None, "ERROR"));
        assert!(rows[0].0.ends_with("+00:00"));
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn without_a_database_nothing_is_opened() {
        let sink = LogSink::new(LogConfig {
            stderr: false,
            ..LogConfig::default()
        });
        sink.log(LogLevel::Critical, "x", "y", None);
        assert!(sink.flush(Duration::from_millis(1)));
        assert!(sink.writer.get().is_none());
    }
}
