//! `cjm-host`: the embeddable capability host.
//!
//! A *capability* is a tool with a declared contract. It runs either as a sandboxed
//! WebAssembly component inside the host or as an isolated native subprocess worker, behind
//! one contract ([`backend::Backend`]).
//!
//! Modules, one concept each:
//! - [`adapter`]: adapter compatibility, manifest against manifest over every kind of capability;
//! - [`bounds`]: bounds on callers' JSON (depth, size) checked at every entry point;
//! - [`backend`]: the one contract as a trait, with the wasm sandbox (`backend::wasm`) and
//!   the native worker supervisor and client (`backend::native`);
//! - [`manifest`]: v2.0 capability and adapter manifests (Python-compatible), canonical
//!   hashing, validation, discovery;
//! - [`config`]: layered configuration (CLI > `CJM_*` env > `cjm.yaml` > defaults) and the
//!   data dir layout;
//! - [`store`]: the SQLite stores (config, empirical, journal, diagnostics) and the secrets
//!   file;
//! - [`manager`]: one manager over both kinds: lifecycle, config validation, calls with
//!   empirical samples, reload-and-retry;
//! - [`queue`]: the job queue: admission over lanes, cancellation, events, compositions;
//! - [`host`]: [`Host::builder`] assembles manager and queue in one call;
//! - [`install`]: the install pipeline behind `cjm-ctl install-all` (wasm, Python, native);
//! - [`trace`]: one trace per job (W3C trace context in, OpenTelemetry spans, OTLP export
//!   with the `otlp` feature);
//! - [`telemetry`]: system CPU/RAM, process-subtree and GPU (NVML) telemetry, the platform string;
//! - [`error`]: the host's error type; the domain taxonomy travels as `JobError` data;
//! - `server` (feature `server`): the host as an HTTP/JSON service under `/v1` (axum), and
//!   `client`, its Rust client.
//!
//! The contract types shared with guests and workers (JobError, envelope, capability info,
//! structural surface) live in `cjm_guest::contract` and are re-exported as [`contract`].

pub mod adapter;
pub mod backend;
pub mod bounds;
#[cfg(feature = "server")]
pub mod client;
pub mod config;
pub mod error;
pub mod host;
pub mod install;
pub mod manager;
pub mod manifest;
pub mod queue;
pub mod reference;
#[cfg(feature = "server")]
pub mod server;
pub mod store;
pub mod telemetry;
pub mod trace;

pub use cjm_guest::contract;
pub use error::{Error, Result};
pub use host::{Host, HostBuilder};
