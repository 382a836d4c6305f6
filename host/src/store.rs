//! The durable stores: SQLite files under the data dir, and the secrets file.
//!
//! | store | file | class |
//! |---|---|---|
//! | [`ConfigStore`] | `capability_configs.db` | per-instance config, enabled flag, worker-env overrides |
//! | [`EmpiricalStore`] | `empirical_resources.db` | Welford aggregates per (instance, config hash) |
//! | [`JournalStore`] | `journal.db` | precious: append-only, never deleted, failures loud |
//! | [`DiagnosticsStore`] | `diagnostics.db` | disposable: log records and stream chunks, retention |
//! | [`SecretStore`] | `secrets/secrets.json` | 0600 JSON, atomic writes, values never shown |
//!
//! File names and table schemas are cjm-substrate's, so a Python host and Python workers
//! share them (Python workers write diagnostics records directly).
//!
//! Every database is opened the same way: one connection behind a mutex (the API is
//! synchronous; async callers use `spawn_blocking`), WAL journal, `synchronous=NORMAL`, a
//! 10 s busy timeout for other connections and processes, `prepare_cached` statements, and
//! migrations keyed by `PRAGMA user_version` (a database made by the Python tools has
//! version 0 and is adopted by the first migration, which only creates what is missing).
//!
//! Durability: WAL with `synchronous=NORMAL` syncs at checkpoints, not at every commit. A
//! committed transaction survives the *process* being killed (the WAL is in the OS page
//! cache); an OS crash or power loss may lose the last commits before the latest sync, never
//! corrupt the file. That is the trade cjm-substrate made for its journal too: an append
//! costs microseconds instead of an fsync's milliseconds.
//!
//! A file that is not a SQLite database, or is corrupt, is reported as
//! [`StoreError::CorruptDatabase`] and left in place, never replaced.

pub mod config_store;
pub mod diagnostics;
pub mod empirical;
mod error;
pub mod journal;
pub mod secrets;

use parking_lot::{Mutex, MutexGuard};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};

pub use config_store::{CapabilityConfigRecord, ConfigStore};
pub use diagnostics::{
    ChunkQuery, DiagnosticRecord, DiagnosticsSink, DiagnosticsStore, DiagnosticsWriter,
    NoDiagnostics, RecordQuery, RetentionOutcome, StreamChunk,
};
pub use empirical::{BufferedSample, EmpiricalRecord, EmpiricalStore, Peaks, ResourceSample};
pub use error::StoreError;
pub use journal::{
    HostRecord, JobSnapshot, JournalEvent, JournalQuery, JournalStore, LatestJobRows, Leftovers,
    Liveness, OpenComposition, OpenJob, OrphanCancel, event_types, hostname,
};
pub use secrets::{SecretStore, SecretValue};

use crate::error::{Error, Result};

/// How long a connection waits for another writer's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// One schema step: runs inside the migration's transaction.
pub(crate) type Migration = fn(&Transaction<'_>) -> rusqlite::Result<()>;

/// A SQLite database of one store: a connection behind a mutex.
#[derive(Debug)]
pub(crate) struct Db {
    conn: Mutex<Connection>,
    /// A read-only connection for long reads ([`Db::read`]), opened on first use: a read
    /// that scans (a listing filtered on a rare state) never holds the writer's lock.
    reader: std::sync::OnceLock<Mutex<Connection>>,
    path: PathBuf,
    store: &'static str,
}

impl Db {
    /// Opens (creating when missing) the database at `path` and brings its schema to the
    /// last of `migrations` (migration `i` makes `user_version` `i + 1`).
    pub(crate) fn open(path: &Path, store: &'static str, migrations: &[Migration]) -> Result<Db> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        if let Ok(meta) = std::fs::metadata(path)
            && !meta.is_file()
        {
            return Err(Error::not_a_file(path, &meta));
        }
        let sqlite = |source| sqlite_error(store, path, source);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).map_err(sqlite)?;
        // Private to the user (SQLite gives its -wal and -shm files the same mode).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(path, e))?;
        }
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
        // Reading the header (and the schema) first: a file that is not a database fails
        // here, before anything could write to it.
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sqlite)?;
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .map_err(sqlite)?;
        // A file whose pages are damaged further in opens fine and would take writes on top
        // of the damage: it is refused here, left as it is, named in the error. (About 0.2 s
        // for a 200 MB journal on the development machine.)
        let check: String = conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(sqlite)?;
        if check != "ok" {
            return Err(sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(format!("integrity check failed: {check}")),
            )));
        }
        let latest = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
        if version > latest {
            return Err(Error::Store(StoreError::SchemaTooNew {
                store,
                path: path.to_owned(),
                found: version,
                supported: latest,
            }));
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(sqlite)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(store, path = %path.display(), mode, "database is not in WAL mode");
        }
        // 4 MiB of page cache per connection (the default is 2 MiB). Appends touch the
        // rightmost pages of the table and its indexes (ids are time-ordered), which stay
        // cached; older pages are re-read from the OS page cache when a query needs them. A
        // larger cache only grows the host's resident memory with its stores.
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA cache_size=-4096")
            .map_err(sqlite)?;
        if version < latest {
            migrate(&mut conn, migrations).map_err(sqlite)?;
        }
        Ok(Db {
            conn: Mutex::new(conn),
            reader: std::sync::OnceLock::new(),
            path: path.to_owned(),
            store,
        })
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, locked. A panic of an earlier holder does not make the store
    /// unusable: SQLite rolled back whatever that holder left open.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock()
    }

    /// Runs `f` on the locked connection, mapping its error.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut conn = self.lock();
        f(&mut conn).map_err(|e| self.error(e))
    }

    /// Runs the read `f` on the store's read-only connection (WAL: it sees every committed
    /// write and blocks none), or on the main one if it cannot be opened.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let reader = match self.reader.get() {
            Some(reader) => Some(reader),
            None => match self.open_reader() {
                Ok(conn) => Some(self.reader.get_or_init(|| Mutex::new(conn))),
                Err(e) => {
                    tracing::debug!(store = self.store, error = %e, "no read-only connection; reading on the main one");
                    None
                }
            },
        };
        match reader {
            Some(reader) => f(&mut reader.lock()).map_err(|e| self.error(e)),
            None => self.with(f),
        }
    }

    fn open_reader(&self) -> rusqlite::Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Half the writer's cache: what a scan reads again comes from the OS page cache.
        conn.execute_batch("PRAGMA cache_size=-2048")?;
        Ok(conn)
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction (the write lock taken up front, so a
    /// read-modify-write never fails half way on a lock upgrade).
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// This store's error for a SQLite failure.
    pub(crate) fn error(&self, source: rusqlite::Error) -> Error {
        sqlite_error(self.store, &self.path, source)
    }
}

fn migrate(conn: &mut Connection, migrations: &[Migration]) -> rusqlite::Result<()> {
    for (i, step) in migrations.iter().enumerate() {
        let target = i64::try_from(i + 1).unwrap_or(i64::MAX);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have migrated while this one waited for the lock.
        let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current < target {
            step(&tx)?;
            tx.execute_batch(&format!("PRAGMA user_version = {target}"))?;
        }
        tx.commit()?;
    }
    Ok(())
}

/// Maps a SQLite error: corruption and non-database files become
/// [`StoreError::CorruptDatabase`], the rest [`StoreError::Sqlite`](StoreError::Sqlite).
pub(crate) fn sqlite_error(store: &'static str, path: &Path, source: rusqlite::Error) -> Error {
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            Error::Store(StoreError::CorruptDatabase {
                store,
                path: path.to_owned(),
                source,
            })
        }
        _ => Error::Store(StoreError::Sqlite { store, source }),
    }
}

// Timestamps are written once for the host and the native worker alike.
pub use cjm_guest::python::time::{iso_from_system_time, iso_from_unix_micros, now_iso, unix_now};

#[cfg(test)]
mod tests {
    use super::*;

    /// The stores are shared across threads (and `spawn_blocking`) behind `Arc`.
    #[test]
    fn stores_and_errors_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<JournalStore>();
        send_sync::<DiagnosticsStore>();
        send_sync::<DiagnosticsWriter>();
        send_sync::<ConfigStore>();
        send_sync::<EmpiricalStore>();
        send_sync::<SecretStore>();
        send_sync::<Error>();
    }

    #[test]
    fn iso_timestamps_match_python_isoformat() {
        assert_eq!(iso_from_unix_micros(0), "1970-01-01T00:00:00.000000+00:00");
        // datetime.fromtimestamp(1779796840.183479, timezone.utc).isoformat()
        assert_eq!(
            iso_from_unix_micros(1_779_796_840_183_479),
            "2026-05-26T12:00:40.183479+00:00"
        );
        assert_eq!(
            iso_from_unix_micros(951_782_400_000_000),
            "2000-02-29T00:00:00.000000+00:00"
        );
        assert_eq!(iso_from_unix_micros(-1), "1969-12-31T23:59:59.999999+00:00");
        assert!(now_iso().as_str() > "2026-01-01");
    }

    #[test]
    fn a_database_damaged_in_the_middle_is_refused_at_open_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        {
            let db = Db::open(&path, "journal", &[]).unwrap();
            db.with(|c| {
                c.execute_batch(
                    "PRAGMA journal_mode=DELETE; CREATE TABLE t (x TEXT); CREATE INDEX tx ON t(x);",
                )?;
                for i in 0..2000 {
                    c.execute(
                        "INSERT INTO t VALUES (?1)",
                        [format!("row {i} {}", "x".repeat(200))],
                    )?;
                }
                Ok(())
            })
            .unwrap();
        }
        // Scribble over a page in the middle: the header and schema still read fine.
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        for b in &mut bytes[middle..middle + 2048] {
            *b = 0x5a;
        }
        std::fs::write(&path, &bytes).unwrap();
        refused_and_left_alone(&path, &bytes);
    }

    /// Opening the damaged journal at `path` is refused, naming it, and leaves `bytes` as
    /// they are; the error's message.
    fn refused_and_left_alone(path: &Path, bytes: &[u8]) -> String {
        let err = Db::open(path, "journal", &[]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Store(StoreError::CorruptDatabase {
                    store: "journal",
                    ..
                })
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert_eq!(
            std::fs::read(path).unwrap(),
            bytes,
            "the file must not be touched"
        );
        msg
    }

    #[test]
    fn a_non_database_file_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        let junk = b"this is not a database, but somebody's data".repeat(200);
        std::fs::write(&path, &junk).unwrap();
        let msg = refused_and_left_alone(&path, &junk);
        assert!(msg.contains("left untouched"), "{msg}");
    }

    #[test]
    fn a_damaged_database_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t (a TEXT); CREATE INDEX i ON t(a); BEGIN").unwrap();
            for i in 0..2000 {
                conn.execute(
                    "INSERT INTO t VALUES (?1)",
                    [format!("row {i} {}", "x".repeat(50))],
                )
                .unwrap();
            }
            conn.execute_batch("COMMIT").unwrap();
        }
        // Scribble over the schema page (page 1 after its 100-byte header).
        let mut bytes = std::fs::read(&path).unwrap();
        for b in &mut bytes[100..4096] {
            *b = 0xA5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = Db::open(&path, "empirical", &[]).unwrap_err();
        assert!(
            matches!(err, Error::Store(StoreError::CorruptDatabase { .. })),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn migrations_run_once_and_newer_schemas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let steps: &[Migration] = &[
            |tx| tx.execute_batch("CREATE TABLE a (x INTEGER)"),
            |tx| tx.execute_batch("ALTER TABLE a ADD COLUMN y INTEGER"),
        ];
        let db = Db::open(&path, "test", steps).unwrap();
        assert_eq!(
            db.with(|c| c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)))
                .unwrap(),
            2
        );
        let mode: String = db
            .with(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(db);
        Db::open(&path, "test", steps).unwrap();
        let err = Db::open(&path, "test", &steps[..1]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Store(StoreError::SchemaTooNew {
                    found: 2,
                    supported: 1,
                    ..
                })
            ),
            "{err}"
        );
        let dirpath = dir.path().join("d.db");
        std::fs::create_dir(&dirpath).unwrap();
        assert!(matches!(
            Db::open(&dirpath, "test", steps),
            Err(Error::NotAFile { .. })
        ));
    }
}
