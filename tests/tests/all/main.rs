//! Workspace integration tests: one binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod contract;
mod fidelity;
mod manager;
mod native;
mod options;
mod parity;
mod queue;
mod recovery;
mod sandbox;
mod server;
mod wasm;
