//! Bindings generated from `wit/` for the guest side. Nothing hand-written here.
#![allow(missing_docs, unsafe_code, clippy::all)]

wit_bindgen::generate!({
    path: "../wit",
    world: "capability",
    pub_export_macro: true,
    default_bindings_module: "cjm_guest::wasm::bindings",
    export_macro_name: "export_guest",
});
