//! The wasm sandbox's errors outside a guest call: a component that is not one, an invalid
//! grant, the engine.

use std::path::PathBuf;

/// What can go wrong in the sandbox outside a guest call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
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
}
