//! What the queue refuses.

use std::time::Duration;

use super::JobStatus;

/// A queue operation that could not be done. The queue itself is unharmed by any of them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// No such job (in memory or in the journal).
    #[error("no job '{0}'")]
    UnknownJob(String),
    /// No such composition.
    #[error("no composition '{0}'")]
    UnknownComposition(String),
    /// The job or composition already finished.
    #[error("'{id}' already finished ({status})")]
    Finished {
        /// The job or composition.
        id: String,
        /// How it finished.
        status: String,
    },
    /// Only pending jobs can be reordered.
    #[error("job '{id}' is {status}: only a pending job can be reordered")]
    NotPending {
        /// The job.
        id: String,
        /// Where it is.
        status: JobStatus,
    },
    /// A composition failed validation; every problem is listed.
    #[error("invalid composition: {}", .0.join("; "))]
    InvalidComposition(Vec<String>),
    /// A journal append failed earlier: new work is refused rather than run unrecorded.
    #[error(
        "the queue is wedged: a journal append failed ({0}); new submissions are refused until the host is restarted on a working journal"
    )]
    Wedged(String),
    /// A wait ran out.
    #[error("timed out after {0:?} waiting for '{1}'")]
    Timeout(Duration, String),
    /// The queue was shut down.
    #[error("the queue is shut down")]
    Closed,
    /// Waiting jobs already hold as many bytes of kwargs as the queue keeps.
    #[error(
        "the queue is full: waiting jobs hold {pending_bytes} bytes of kwargs, this job adds {bytes}, the limit is {limit} (queue.max_pending_bytes); retry when jobs have started"
    )]
    Full {
        /// Held by waiting jobs now.
        pending_bytes: usize,
        /// This job's kwargs.
        bytes: usize,
        /// `queue.max_pending_bytes`.
        limit: usize,
    },
}
