//! The install pipeline's errors: an invalid capabilities file (every problem listed), a
//! program that failed or is missing, a capability that cannot be installed for a reason of
//! its own; a host failure met on the way (loading a component, starting a worker, writing a
//! manifest) passes through as the host's [`Error`](crate::Error). The crate's error wraps
//! this one ([`crate::Error::Install`]), and gives a host failure back unwrapped.

use std::path::PathBuf;

/// Result with the install pipeline's error.
pub type Result<T, E = InstallError> = std::result::Result<T, E>;

/// What can go wrong installing a capability.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
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
        problems: Vec<super::SpecProblem>,
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

    /// A host failure on the way (loading a component, starting a worker, writing a file).
    #[error(transparent)]
    Host(Box<crate::Error>),
}

impl From<crate::Error> for InstallError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Install(e) => *e,
            other => InstallError::Host(Box::new(other)),
        }
    }
}

impl From<InstallError> for crate::Error {
    fn from(e: InstallError) -> Self {
        match e {
            InstallError::Host(e) => *e,
            other => crate::Error::Install(Box::new(other)),
        }
    }
}
