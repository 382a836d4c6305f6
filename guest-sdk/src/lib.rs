//! `cjm-guest`: write a cjm capability once.
//!
//! An author implements [`Capability`] — a serde + schemars config struct, `execute`, and task
//! methods registered with their parameter names or typed arguments ([`Tasks::typed`]: a
//! serde + schemars struct the host validates calls against) — and then either
//! - exports it as a WebAssembly component with [`export_capability!`] (built for
//!   `wasm32-wasip2`; the host runs it sandboxed), or
//! - serves it as a native subprocess worker with `cjm-native-worker`.
//!
//! Modules:
//! - [`contract`]: the types every side shares (JobError, envelope, capability info,
//!   structural surface, request bodies). No wasm or HTTP code: the host depends on it too.
//! - [`capability`]: the trait, the task registry, keyword-argument helpers.
//! - [`context`]: host services a call can use (progress, cancellation, logs, accounts).
//! - [`hosted`]: the JSON-in/JSON-out [`DynCapability`] both exports serve.
//! - [`python`]: JSON and timestamps exactly as Python writes them.
//! - `wasm` (wasm32 only): bindings generated from `wit/` and the export glue.
//!
//! ```
//! use cjm_guest::{Capability, CallResult, Ctx, JobError, Kwargs, Tasks, arg};
//! use serde_json::{Value, json};
//!
//! #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, Default, Clone)]
//! #[serde(default, deny_unknown_fields)]
//! struct Config { upper: bool }
//!
//! struct Shout { upper: bool }
//!
//! /// The arguments of `shout`: their JSON Schema goes into the manifest.
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! struct ShoutArgs { text: String }
//!
//! impl Capability for Shout {
//!     type Config = Config;
//!     const NAME: &'static str = "shout";
//!     const VERSION: &'static str = "0.1.0";
//!     fn initialize(c: &Config, _: &Ctx<'_>) -> Result<Self, JobError> {
//!         Ok(Shout { upper: c.upper })
//!     }
//!     fn execute(&mut self, _: &Ctx<'_>, _: Vec<Value>, kw: Kwargs) -> CallResult {
//!         let text: String = arg(&kw, "text")?;
//!         Ok(json!(if self.upper { text.to_uppercase() } else { text }))
//!     }
//!     fn tasks(t: &mut Tasks<Self>) {
//!         t.typed::<ShoutArgs>("shouting", "shout", |me, _, kw| {
//!             let ShoutArgs { text } = cjm_guest::args(&kw)?;
//!             Ok(json!(if me.upper { text.to_uppercase() } else { text }))
//!         });
//!     }
//! }
//! cjm_guest::export_capability!(Shout);
//! ```

pub mod capability;
pub mod context;
pub mod contract;
pub mod hosted;
pub mod python;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use capability::{CallResult, Capability, Handler, Kwargs, Tasks, arg, args, opt_arg};
pub use context::{Ctx, HostServices, LogLevel, NullServices};
pub use contract::{CallError, CapabilityInfo, Envelope, ErrorCategory, JobError, Status, wire};
pub use hosted::{DynCapability, Hosted};
// Re-exported so capability crates need no direct dependency to derive their config.
pub use schemars;
pub use serde_json;

/// Exports a [`Capability`] as the component's `guest` interface. Outside wasm32 this expands
/// to nothing, so the same crate also builds natively (for a native worker or tests).
#[cfg(not(target_arch = "wasm32"))]
#[macro_export]
macro_rules! export_capability {
    ($cap:ty) => {};
}
