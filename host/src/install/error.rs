//! The install pipeline reports through the crate's [`Error`](crate::Error) (variants
//! `InvalidCapabilitiesFile`, `InstallCommand`, `ToolMissing`, `InstallFailed`); host
//! failures (loading a component, starting a worker, writing a manifest) pass through as
//! they are.

pub use crate::error::{Error as InstallError, Result};
