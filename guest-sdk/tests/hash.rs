//! The hashes against vectors the Python tools wrote (`json.dumps` canonical text, sha256,
//! `hash_dict_canonical`).
#![allow(clippy::unwrap_used, missing_docs)]

use cjm_guest::python::hash::*;
use cjm_guest::python::json::canonical;
use serde_json::{Value, json};

#[derive(serde::Deserialize)]
struct Vector {
    name: String,
    value: Value,
    canonical: String,
    sha256: String,
    hash_dict_canonical: String,
}

#[test]
fn python_vectors_hash_identically() {
    let text = include_str!("../../host/tests/fixtures/python/hash_vectors.json");
    let vectors: Vec<Vector> = serde_json::from_str(text).unwrap();
    assert!(vectors.len() > 50, "fixture looks truncated");
    for v in &vectors {
        assert_eq!(
            canonical(&v.value),
            v.canonical,
            "canonical text of {}",
            v.name
        );
        assert_eq!(canonical_hash(&v.value), v.sha256, "sha256 of {}", v.name);
        assert_eq!(
            hash_dict_canonical(Some(&v.value)),
            v.hash_dict_canonical,
            "hash_dict_canonical of {}",
            v.name
        );
    }
}

#[test]
fn falsy_values_hash_as_empty_object() {
    let empty = canonical_hash(&json!({}));
    for v in [
        json!(null),
        json!([]),
        json!(""),
        json!(0),
        json!(0.0),
        json!(false),
    ] {
        assert_eq!(hash_dict_canonical(Some(&v)), empty);
    }
    assert_eq!(config_hash(None), empty);
    assert_ne!(hash_dict_canonical(Some(&json!(1))), empty);
}

#[test]
fn hash_file_streams_and_matches_hash_bytes() {
    let dir = std::env::temp_dir().join(format!("cjm-guest-hash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    assert_eq!(hash_file(&path).unwrap(), hash_bytes(&data));
    assert!(verify_hash(&data, &hash_bytes(&data)));
    assert!(!verify_hash(b"other", &hash_bytes(&data)));
    assert!(is_sha256_hash(&hash_bytes(b"")));
    assert!(hash_file(&dir.join("missing")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
