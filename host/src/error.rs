//! The host's error type.
//!
//! `Error` is what the host's API returns: a Rust error with its causes kept as sources. The
//! domain taxonomy a *call* fails with (user_input / transient / resource / fatal, or
//! cancelled) is data carried by [`JobError`] inside [`Error::Job`], not a hierarchy of
//! variants; [`Error::to_job_error`] gives every error that shape for the wire and the journal.

use std::path::PathBuf;

use cjm_guest::contract::JobError;

/// Result with the host's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A capability call failed with a typed job error.
    #[error("{0}")]
    Job(Box<JobError>),

    /// A call was cancelled (its own outcome, not a failure).
    #[error("cancelled")]
    Cancelled,

    /// The task or method does not exist on the capability.
    #[error("not found: {0}")]
    NotFound(String),

    /// This host's lease on the data dir was taken over by another host (it was found gone:
    /// suspended or cut off past its lease): it may no longer write job outcomes.
    #[error("host {host_id} lost its lease on the data dir: host {by} reconciled its jobs")]
    LeaseLost {
        /// This host.
        host_id: String,
        /// The host that reconciled it.
        by: String,
    },

    /// A file could not be read or written.
    #[error("{path}: {source}", path = path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// A wasm component could not be loaded: not wasm, a core module, truncated, or it does
    /// not implement the `cjm:capability` world.
    #[error("{path}: {reason}", path = path.display())]
    InvalidComponent {
        /// The component file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// The engine's error.
        #[source]
        source: Option<wasmtime::Error>,
    },

    /// The wasm engine failed outside a guest call (configuration, caching, linking).
    #[error("wasm engine: {0:#}")]
    Engine(#[source] wasmtime::Error),

    /// A sandbox grant in a manifest is invalid (for example a preopened dir that is missing).
    #[error("invalid sandbox grant: {0}")]
    InvalidGrant(String),

    /// JSON that should have parsed did not.
    #[error("invalid JSON in {what}: {source}")]
    Json {
        /// What was being parsed.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },

    /// A `capabilities.yaml` is invalid; every problem is listed.
    #[error(
        "{path}: invalid capabilities file: {problems}",
        path = path.display(),
        problems = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    InvalidCapabilitiesFile {
        /// The file.
        path: PathBuf,
        /// Every problem (never empty).
        problems: Vec<crate::install::SpecProblem>,
    },

    /// An install step ran a program that failed; its output is in the entry's log.
    #[error("{step} failed ({status})")]
    InstallCommand {
        /// What was being done (`creating the environment`).
        step: String,
        /// The program and its arguments, as run.
        program: String,
        /// How it ended (`exit status 1`, `killed by signal 9`).
        status: String,
    },

    /// A program an install step needs is not installed.
    #[error("{tool} not found: {hint}")]
    ToolMissing {
        /// The program.
        tool: String,
        /// How to get it.
        hint: String,
    },

    /// A capability could not be installed for a reason of its own (a name that does not
    /// match, a missing package path, introspection that found no capability).
    #[error("{0}")]
    InstallFailed(String),

    /// The job queue refused an operation.
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),

    /// A SQLite store failed.
    #[error("{store} store: {source}")]
    Sqlite {
        /// Which store (`journal`, `diagnostics`, ...).
        store: &'static str,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    // Variants of the manifest, config and store modules follow.
    /// A manifest failed validation. Every problem found is listed, each with the JSON path of
    /// its field and what was expected there.
    #[error(
        "{path}: invalid manifest: {problems}",
        path = path.display(),
        problems = crate::manifest::ManifestProblem::join(problems)
    )]
    InvalidManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong, field by field (never empty).
        problems: Vec<crate::manifest::ManifestProblem>,
    },

    /// A manifest declares a `format_version` this host does not read.
    #[error(
        "{path}: unsupported manifest format_version {found}, expected \"2.0\"",
        path = path.display()
    )]
    UnsupportedManifestVersion {
        /// The manifest file.
        path: PathBuf,
        /// The value found, as JSON (`"1.0"`, `null` when missing).
        found: String,
    },

    /// A path that should name a regular file names something else (a directory, a FIFO, a
    /// socket, a device).
    #[error("{path}: expected a regular file, found {found}", path = path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is (`a directory`, `a FIFO`, ...).
        found: &'static str,
    },

    /// Text that should be JSON is not (the exact canonical-JSON path, which reads raw text).
    #[error("invalid JSON at byte {offset}: {reason}")]
    InvalidJsonText {
        /// Byte offset of the problem.
        offset: usize,
        /// What was expected there.
        reason: String,
    },

    /// A configuration value is invalid.
    #[error("{origin}: {field}: {message}")]
    InvalidConfig {
        /// Where the value came from (`cjm.yaml at <path>`, `environment variable CJM_X`,
        /// `command line`, `builder`).
        origin: String,
        /// The field (`substrate.prefetch_stall_threshold_seconds`).
        field: String,
        /// What was expected and what was found.
        message: String,
    },

    /// A YAML configuration file could not be parsed into the configuration's shape.
    #[error("{path}: {source}", path = path.display())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's error (it names the line, column and field); boxed, it is large.
        #[source]
        source: Box<serde_saphyr::Error>,
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

impl Error {
    /// A typed job error.
    pub fn job(e: JobError) -> Self {
        Error::Job(Box::new(e))
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The error as a [`JobError`], for the wire and the journal. Cancellation is not a
    /// failure and has no job error: callers check [`Error::is_cancelled`] first.
    pub fn to_job_error(&self) -> JobError {
        match self {
            Error::Job(e) => (**e).clone(),
            // As cjm-substrate's host ends a job whose task or method the worker does not
            // have (its 404): fatal, with the worker's answer in the message.
            Error::NotFound(what) => {
                let body = serde_json::json!({ "detail": what }).to_string();
                JobError::fatal(format!("Execute failed: {body}"))
                    .with_repr(format!("RuntimeError('Execute failed: {body}')"))
            }
            Error::Queue(crate::queue::QueueError::Wedged(_)) => JobError::fatal(self.to_string()),
            Error::Queue(crate::queue::QueueError::Full { .. }) => {
                JobError::resource(self.to_string())
            }
            Error::Queue(_) => JobError::user_input(self.to_string()),
            Error::InvalidComponent { .. } | Error::InvalidGrant(_) | Error::Json { .. } => {
                JobError::user_input(self.to_string())
            }
            other => JobError::fatal(other.to_string()),
        }
    }

    /// Whether this is the cancelled outcome.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Cancelled)
    }

    /// Whether this is a store held by another connection (SQLite busy or locked past the
    /// busy timeout): it clears by itself, unlike a full disk or a corrupt file.
    pub fn is_transient_lock(&self) -> bool {
        match self {
            Error::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            _ => false,
        }
    }
}

impl From<JobError> for Error {
    fn from(e: JobError) -> Self {
        Error::job(e)
    }
}

impl From<cjm_guest::contract::CallError> for Error {
    fn from(e: cjm_guest::contract::CallError) -> Self {
        use cjm_guest::contract::CallError;
        match e {
            CallError::Failed(e) => Error::job(e),
            CallError::Cancelled => Error::Cancelled,
            CallError::NotFound(what) => Error::NotFound(what),
        }
    }
}
