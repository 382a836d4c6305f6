//! The install pipeline's error type.
//!
//! Kept beside the pipeline rather than in the crate's `Error` so the pipeline can grow
//! without touching the host's error taxonomy; host errors pass through as
//! [`InstallError::Host`].

use std::path::PathBuf;

use super::spec::SpecProblem;

/// Result with an [`InstallError`].
pub type Result<T, E = InstallError> = std::result::Result<T, E>;

/// What can go wrong while installing a capability.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// The `capabilities.yaml` is invalid; every problem is listed.
    #[error(
        "{path}: invalid capabilities file: {problems}",
        path = path.display(),
        problems = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    InvalidSpec {
        /// The file.
        path: PathBuf,
        /// Every problem (never empty).
        problems: Vec<SpecProblem>,
    },

    /// A step ran a program that failed; its output is in the entry's log.
    #[error("{step} failed ({status})")]
    Command {
        /// What was being done (`creating the environment`).
        step: String,
        /// The program and its arguments, as run.
        program: String,
        /// How it ended (`exit status 1`, `killed by signal 9`).
        status: String,
    },

    /// A program the step needs is not installed.
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
    Failed(String),

    /// The host failed (loading a component, starting a worker, writing a manifest).
    #[error(transparent)]
    Host(#[from] crate::Error),
}

impl InstallError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        InstallError::Host(crate::Error::io(path, source))
    }
}
