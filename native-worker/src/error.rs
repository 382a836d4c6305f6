//! The worker's own failures (bad command line, unusable socket, a panicking capability, ...).
//!
//! A capability's failures are not here: they are [`cjm_guest::JobError`] data and cross the
//! wire as `{"_job_error": ...}` bodies. This enum covers what goes wrong around them, and
//! maps to an HTTP answer at the edge ([`IntoResponse`]) with internals kept out of 5xx bodies.

use std::io;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Why the worker could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command line is wrong (the process exits with status 2, as argparse does).
    #[error("{0}")]
    Usage(String),
    /// The inherited `--fd` is not a listening TCP socket.
    #[error("file descriptor {fd} is not a usable listening tcp socket")]
    Listener {
        /// The descriptor passed with `--fd`.
        fd: i32,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// `--port` could not be bound on 127.0.0.1.
    #[error("cannot bind 127.0.0.1:{port}")]
    Bind {
        /// The port asked for.
        port: u16,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The async runtime, a signal handler or the server loop failed.
    #[error("cannot run the server")]
    Server(#[source] io::Error),
    /// `--ppid` could not be watched.
    #[error("cannot watch parent process {ppid}")]
    Watchdog {
        /// The parent pid.
        ppid: u32,
        /// What the system said.
        #[source]
        source: nix::Error,
    },
    /// The request body is not a JSON object (the Python worker answers a bare 500 too).
    #[error("the request body is not a json object")]
    BadBody,
    /// A response could not be serialized.
    #[error("cannot encode the response")]
    Encode(#[source] serde_json::Error),
    /// The capability panicked outside of a call that reports it as a job error.
    #[error("the capability panicked: {0}")]
    Panic(String),
    /// The blocking task running a capability call was lost (the runtime is shutting down).
    #[error("the capability call was aborted")]
    Aborted(#[source] tokio::task::JoinError),
    /// Process statistics could not be read.
    #[error("cannot read process statistics: {0}")]
    Stats(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit status this error ends the worker with.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            // As Starlette answers an unhandled exception: plain text, no detail.
            Error::BadBody | Error::Encode(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "Internal Server Error",
            )
                .into_response(),
            other => crate::server::detail(StatusCode::INTERNAL_SERVER_ERROR, &other.to_string()),
        }
    }
}

/// `error` and its chain of causes on one line (`a: b: c`), for stderr.
pub fn report(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
