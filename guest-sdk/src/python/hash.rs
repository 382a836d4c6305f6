//! Content hashing, byte for byte as cjm-substrate does it.
//!
//! Every hash is a self-describing `"sha256:<hex>"` string. JSON values are hashed over their
//! canonical text, `json.dumps(obj, sort_keys=True, separators=(",", ":"))` encoded as UTF-8
//! ([`super::json::canonical`] writes it), so a config-schema hash written by the Python
//! tools equals the one the host computes, and a config hash a capability derives (its
//! cache directories, for one) equals the host's empirical key.

use std::io::Read;
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The algorithm prefix of every hash string.
pub const SHA256_PREFIX: &str = "sha256:";

/// `"sha256:<hex>"` of `bytes` (Python's `hash_bytes`).
pub fn hash_bytes(bytes: &[u8]) -> String {
    format!("{SHA256_PREFIX}{}", hex::encode(Sha256::digest(bytes)))
}

/// Streams the file at `path` through sha256 (Python's `hash_file`).
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
    }
    Ok(format!("{SHA256_PREFIX}{}", hex::encode(hasher.finalize())))
}

/// Whether `content` hashes to `expected` (`"sha256:<hex>"`; other algorithms never match).
pub fn verify_hash(content: &[u8], expected: &str) -> bool {
    expected.starts_with(SHA256_PREFIX) && hash_bytes(content) == expected
}

/// Whether `s` has the `"sha256:<64 lowercase hex>"` shape.
pub fn is_sha256_hash(s: &str) -> bool {
    s.strip_prefix(SHA256_PREFIX).is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// `"sha256:<hex>"` of the canonical JSON text of `value`.
pub fn canonical_hash(value: &Value) -> String {
    hash_bytes(super::json::canonical(value).as_bytes())
}

/// Python's `hash_dict_canonical(data)`: a value Python finds falsy (`None`, `{}`, `[]`, `""`,
/// `0`, `0.0`, `false`) hashes as `{}`, so a missing schema or config still has a stable hash.
pub fn hash_dict_canonical(value: Option<&Value>) -> String {
    match value {
        Some(v) if python_truthy(v) => canonical_hash(v),
        _ => canonical_hash(&Value::Object(serde_json::Map::new())),
    }
}

/// The hash of an effective config (`compute_config_hash`): the host's empirical key, and
/// what a capability's per-config cache directories are named by.
pub fn config_hash(config: Option<&Value>) -> String {
    hash_dict_canonical(config)
}

/// Python's truthiness of a JSON value (`if not value`): `None`, `False`, zero, and empty
/// strings, lists and dicts are falsy.
pub fn python_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}
