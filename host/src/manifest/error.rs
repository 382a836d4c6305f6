//! A manifest that does not validate (every problem listed, each with its field) or has a
//! format this host does not read.

use std::path::PathBuf;

/// What can be wrong with a manifest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
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
}
