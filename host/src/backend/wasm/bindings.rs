//! Host bindings generated from `wit/` (world `cjm:capability/capability`). Nothing
//! hand-written here.
//!
//! The exports are `async`: every guest call is a future the host drives (and can drop at a
//! deadline or a forced cancel, also while the guest waits in a WASI host call). The host's
//! own imports are plain functions: none of them blocks.
#![allow(missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "capability",
    exports: { default: async },
});
