//! The stores' errors: SQLite failures, a database that is corrupt or newer than this host,
//! a secrets file that does not parse, a background writer that stopped.

use std::path::PathBuf;

/// What can go wrong with a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A SQLite store failed.
    #[error("{store} store: {source}")]
    Sqlite {
        /// Which store (`journal`, `diagnostics`, ...).
        store: &'static str,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// A database file is corrupt or not a SQLite database. It is never replaced silently.
    #[error(
        "{store} store: {path} is corrupt or not a SQLite database ({source}); it was left \
         untouched: move it aside or restore it from a backup",
        path = path.display()
    )]
    CorruptDatabase {
        /// Which store.
        store: &'static str,
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A database was written by a newer version of the host (its schema version is unknown).
    #[error(
        "{store} store: {path} has schema version {found}, newer than the {supported} this \
         host knows",
        path = path.display()
    )]
    SchemaTooNew {
        /// Which store.
        store: &'static str,
        /// The database file.
        path: PathBuf,
        /// The version found (`PRAGMA user_version`).
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The secrets file is not valid JSON of the secrets shape. Its contents are never shown
    /// (the error names only the position), and the file is never replaced automatically.
    #[error(
        "secrets file {path}: {what} at line {line} column {column} (contents not shown); it \
         was left untouched: fix or restore it",
        path = path.display()
    )]
    CorruptSecrets {
        /// The secrets file.
        path: PathBuf,
        /// What kind of problem (`invalid JSON`, `unexpected shape`).
        what: &'static str,
        /// Line of the problem.
        line: usize,
        /// Column of the problem.
        column: usize,
    },
    /// A store's background writer has stopped (the host is shutting down or it failed).
    #[error("{0} store: the background writer has stopped")]
    StoreClosed(&'static str),
}
