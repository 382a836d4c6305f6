//! `cjm-native-worker`: serves a capability written against the `cjm-guest` trait as a native
//! subprocess worker over the HTTP/JSON worker contract (`CONTRACT.md`).
//!
//! This crate is a skeleton until the native-worker issue lands: it re-exports the trait the
//! server will serve so capability crates can already depend on it.

pub use cjm_guest::{Capability, DynCapability, Hosted};
