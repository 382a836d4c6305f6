//! `cjm-native-worker`: serves a capability written against the `cjm-guest` trait as a native
//! subprocess worker over the HTTP/JSON worker contract (`CONTRACT.md`), wire compatible
//! with the Python cjm-substrate worker: a host cannot tell the two apart except by
//! `"runtime": "native"` in `/health`.
//!
//! A worker binary is one line:
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     cjm_native_worker::serve::<my_capability::MyCapability>()
//! }
//! ```
//!
//! The host spawns it with `--fd N` (a listening socket it bound on 127.0.0.1:0) and
//! `--ppid PID`, polls `GET /health`, then drives the lifecycle and calls over HTTP.
//!
//! Architecture, one module per concept:
//! - [`runtime`]: the process: command line, socket, watchdog, a single-threaded tokio
//!   runtime, orderly shutdown ([`serve`], [`run`]).
//! - [`args`]: the command line (`--fd`, `--port`, `--ppid`, `--log-level`).
//! - [`cache_paths`]: per-(input content, action, config) cache directories for what a
//!   capability derives from its inputs, as cjm-substrate's `utils/cache_paths`.
//! - [`server`]: the endpoints, as an axum [`Router`](axum::Router) ([`router`]); testable with
//!   `tower::ServiceExt::oneshot`, no socket needed.
//! - [`worker`]: the served capability behind one mutex; calls run on the blocking pool, so
//!   `/cancel`, `/progress`, `/health` and `/stats` answer while a call runs.
//! - `services`: the `Ctx` services of a call (cancel flag, progress, usage, accounts, logs).
//! - [`diagnostics`]: capability log records to stderr and the host's diagnostics database.
//! - `stats`: CPU and memory of the worker's process subtree (`/stats`).
//! - `watchdog`: exit when the host dies (`PR_SET_PDEATHSIG` and a 250 ms poll).
//! - `listener`: adopting the inherited socket.
//! - the Python worker's exact JSON shapes (all eleven `JobError` keys, Python float repr,
//!   `json.dumps` separators and escapes) live in `cjm_guest::python` (`job_error`, `wire`),
//!   shared with the host's server.
//! - [`error`]: this crate's failures.

pub mod args;
pub mod cache_paths;
pub mod diagnostics;
pub mod error;
mod listener;
pub mod runtime;
pub mod server;
mod services;
mod stats;
mod watchdog;
pub mod worker;

pub use args::{Listen, WorkerArgs};
pub use cjm_guest::python::job_error::wire_job_error;
pub use cjm_guest::{Capability, DynCapability, Hosted};
pub use diagnostics::{LogConfig, LogSink};
pub use error::{Error, Result};
pub use runtime::{run, serve};
pub use server::router;
pub use worker::Worker;
