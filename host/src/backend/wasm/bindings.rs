//! Host bindings generated from `wit/` (world `cjm:capability/capability`). Nothing
//! hand-written here.
#![allow(missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "capability",
});
