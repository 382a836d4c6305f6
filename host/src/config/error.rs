//! A configuration value that is invalid (named with its origin and field), or a `cjm.yaml`
//! that does not parse.

use std::path::PathBuf;

/// What can be wrong with the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
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
}
