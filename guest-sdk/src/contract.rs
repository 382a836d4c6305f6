//! The contract types every side of cjm shares: the host, the wasm guest SDK and the native
//! worker. Plain serde data, no wasm or HTTP code, so the host can depend on it without
//! pulling anything else in.
//!
//! The JSON shapes are those of the cjm-substrate worker contract (`CONTRACT.md`): a field
//! that the Python worker omits when empty is omitted here too, unknown fields are kept.

mod diagnostics;
mod envelope;
mod error;
mod surface;
mod wire;

pub use diagnostics::DIAGNOSTICS_SCHEMA;
pub use envelope::{Control, Envelope};
pub use error::{CallError, ErrorCategory, JobError, ResourceShortfall};
pub use surface::{CapabilityInfo, MethodSurface, StructuralSurface};
pub use wire::{ExecuteRequest, Progress, Status, TaskRequest, WIRE_KEY, wire};
