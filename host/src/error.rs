//! The host's error type.
//!
//! `Error` is what the host's API returns: a Rust error with its causes kept as sources. The
//! domain taxonomy a *call* fails with (user_input / transient / resource / fatal, or
//! cancelled) is data carried by [`JobError`] inside [`Error::Job`], not a hierarchy of
//! variants; [`Error::to_job_error`] gives every error that shape for the wire and the journal.

use std::path::PathBuf;

use crate::backend::wasm::SandboxError;
use crate::store::StoreError;
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

    /// JSON that should have parsed did not.
    #[error("invalid JSON in {what}: {source}")]
    Json {
        /// What was being parsed.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },

    /// An install failed (`cjm-ctl install-all`, the install pipeline).
    #[error(transparent)]
    Install(Box<crate::install::InstallError>),

    /// A store failed (see [`StoreError`]).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),

    /// A manifest is invalid (see [`ManifestError`](crate::manifest::ManifestError)).
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),

    /// The configuration is invalid (see [`ConfigError`](crate::config::ConfigError)).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),

    /// The wasm sandbox failed outside a guest call (see
    /// [`SandboxError`]).
    #[error(transparent)]
    Sandbox(#[from] crate::backend::wasm::SandboxError),

    /// The job queue refused an operation.
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),

    /// A path that should name a regular file names something else (a directory, a FIFO, a
    /// socket, a device).
    #[error("{path}: expected a regular file, found {found}", path = path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is (`a directory`, `a FIFO`, ...).
        found: &'static str,
    },
}

impl Error {
    /// A typed job error.
    pub fn job(e: JobError) -> Self {
        Error::Job(Box::new(e))
    }

    /// `path` names something other than a regular file (`meta` is its metadata): a
    /// directory, a FIFO, a socket, a device.
    pub fn not_a_file(path: impl Into<PathBuf>, meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        let found = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_block_device() || t.is_char_device() {
            "a device"
        } else {
            "not a regular file"
        };
        Error::NotAFile {
            path: path.into(),
            found,
        }
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
            Error::Sandbox(
                SandboxError::InvalidComponent { .. } | SandboxError::InvalidGrant(_),
            )
            | Error::Json { .. } => JobError::user_input(self.to_string()),
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
            Error::Store(StoreError::Sqlite { source, .. }) => matches!(
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
