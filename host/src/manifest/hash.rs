//! The manifest's hashes, byte for byte as cjm-substrate computes them: the content hashes
//! live in [`cjm_guest::python::hash`] (shared with capability authors, whose per-config
//! cache directories use the same config hash); this module adds the drift witnesses and a
//! file hash whose error names the path.

use std::path::Path;

use serde_json::Value;

pub use cjm_guest::python::hash::{
    SHA256_PREFIX, canonical_hash, config_hash, hash_bytes, hash_dict_canonical, is_sha256_hash,
    verify_hash,
};

use crate::error::{Error, Result};

/// The drift witness of a config schema (`compute_config_schema_hash`; `None` hashes as `{}`).
pub fn config_schema_hash(schema: Option<&Value>) -> String {
    hash_dict_canonical(schema)
}

/// The drift witness of a structural surface (`compute_structural_surface_hash`).
pub fn structural_surface_hash(surface: Option<&Value>) -> String {
    hash_dict_canonical(surface)
}

/// Streams `path` through sha256 (Python's `hash_file`); an unreadable file is an error
/// naming it.
pub fn hash_file(path: &Path) -> Result<String> {
    cjm_guest::python::hash::hash_file(path).map_err(|e| Error::io(path, e))
}
