use serde_json::json;

use super::*;

#[derive(serde::Deserialize)]
struct Vector {
    name: String,
    value: Value,
    canonical: String,
    sha256: String,
    hash_dict_canonical: String,
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/python")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn python_vectors_hash_identically() {
    let vectors: Vec<Vector> = serde_json::from_str(&fixture("hash_vectors.json")).unwrap();
    assert!(vectors.len() > 50, "fixture looks truncated");
    for v in &vectors {
        assert_eq!(
            canonical_json(&v.value),
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
fn python_vectors_hash_identically_from_text() {
    for file in ["hash_vectors.json", "hash_vectors_bigint.json"] {
        let raw: Value = serde_json::from_str(&fixture(file)).unwrap();
        let text = fixture(file);
        // Re-read every vector's value from the raw fixture text so big integers stay exact.
        let values = raw_values(&text);
        let vectors = raw.as_array().unwrap();
        assert_eq!(values.len(), vectors.len());
        for (v, value_text) in vectors.iter().zip(values) {
            let name = v["name"].as_str().unwrap();
            assert_eq!(
                canonical_json_text(&value_text).unwrap(),
                v["canonical"].as_str().unwrap(),
                "canonical text of {name} ({file})"
            );
            assert_eq!(
                canonical_hash_text(&value_text).unwrap(),
                v["sha256"].as_str().unwrap()
            );
        }
    }
}

/// The raw text of each `"value": ...` member of the fixture's array, found with the
/// text canonicalizer's own scanner over the fixture (one object per vector).
fn raw_values(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("\"value\": ") {
        let start = i + "\"value\": ".len();
        let mut parser = TextParser {
            bytes: rest.as_bytes(),
            text: rest,
            pos: start,
        };
        parser.value(0).unwrap();
        out.push(rest[start..parser.pos].to_owned());
        rest = &rest[parser.pos..];
    }
    out
}

#[test]
fn text_path_keeps_python_semantics() {
    assert_eq!(canonical_json_text("-0").unwrap(), "0");
    assert_eq!(canonical_json_text("-0.0").unwrap(), "-0.0");
    assert_eq!(
        canonical_json_text(r#"{"a":1,"a":2}"#).unwrap(),
        r#"{"a":2}"#
    );
    assert_eq!(
        canonical_json_text("[NaN, Infinity, -Infinity, 1E400]").unwrap(),
        "[NaN,Infinity,-Infinity,Infinity]"
    );
    assert_eq!(
        canonical_json_text(r#""\ud83d\ude00\/""#).unwrap(),
        r#""\ud83d\ude00/""#
    );
    for bad in [
        "",
        "{",
        "[1,]",
        "01",
        r#""\ud800""#,
        "1 2",
        "\"a\nb\"",
        "tru",
    ] {
        let err = canonical_json_text(bad).unwrap_err();
        assert!(
            matches!(err, Error::InvalidJsonText { .. }),
            "{bad:?} gave {err}"
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
    assert_eq!(hash_dict_canonical(None), empty);
    assert_ne!(hash_dict_canonical(Some(&json!(1))), empty);
}

#[test]
fn hash_file_streams_and_matches_hash_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    assert_eq!(hash_file(&path).unwrap(), hash_bytes(&data));
    assert!(verify_hash(&data, &hash_bytes(&data)));
    assert!(!verify_hash(b"other", &hash_bytes(&data)));
    assert!(is_sha256_hash(&hash_bytes(b"")));
    assert!(matches!(
        hash_file(&dir.path().join("missing")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn stat_cache_serves_hits_and_notices_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = StatCache::new(dir.path().join("input_hash_cache.db"));
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "one").unwrap();
    assert_eq!(cache.hash(&input, false).unwrap(), hash_bytes(b"one"));
    // A hit is served from the table: poison the row and see it come back.
    let conn = Connection::open(cache.path()).unwrap();
    conn.execute(
        "UPDATE input_hash_cache SET content_hash = 'sha256:cached'",
        [],
    )
    .unwrap();
    assert_eq!(cache.hash(&input, false).unwrap(), "sha256:cached");
    assert_eq!(cache.hash(&input, true).unwrap(), hash_bytes(b"one"));
    // A new size (and mtime) misses.
    std::fs::write(&input, "two!").unwrap();
    assert_eq!(cache.hash(&input, false).unwrap(), hash_bytes(b"two!"));
    // A broken cache database falls back to direct hashing.
    let broken = StatCache::new(dir.path().join("not-a-dir/\0bad"));
    assert_eq!(broken.hash(&input, false).unwrap(), hash_bytes(b"two!"));
}

#[test]
fn cache_dir_is_deterministic_per_input_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("My Talk: part 1.mp3");
    std::fs::write(&input, "audio").unwrap();
    let base = dir.path().join("data/whisper");
    let opts = CacheDirOptions::default();
    let a = cache_dir_for_config(
        &base,
        &input,
        "transcribe",
        &json!({"model": "base"}),
        &opts,
    )
    .unwrap();
    let input_hex = &hash_bytes(b"audio")[7..13];
    let config_hex = &canonical_hash(&json!({"model": "base"}))[7..19];
    assert_eq!(
        a,
        base.join("transcribe/My Talk_ part 1")
            .join(format!("{input_hex}_{config_hex}"))
    );
    assert!(a.is_dir());
    let again = cache_dir_for_config(
        &base,
        &input,
        "transcribe",
        &json!({"model": "base"}),
        &opts,
    )
    .unwrap();
    assert_eq!(a, again);
    let other = cache_dir_for_config(
        &base,
        &input,
        "transcribe",
        &json!({"model": "large"}),
        &opts,
    )
    .unwrap();
    assert_ne!(a, other);
    let url = CacheDirOptions {
        hash_input_content: false,
        create: false,
        ..CacheDirOptions::default()
    };
    let u = cache_dir_for_config(
        &base,
        Path::new("https://x.org/a/clip.wav"),
        "t",
        &json!({}),
        &url,
    )
    .unwrap();
    assert!(u.starts_with(base.join("t/clip")));
    assert!(!u.exists());
}

#[test]
fn stems_are_sanitized_like_python() {
    assert_eq!(
        sanitize_stem(Path::new("/a/b/report.final.pdf")),
        "report.final"
    );
    assert_eq!(sanitize_stem(Path::new(".bashrc")), "bashrc");
    assert_eq!(sanitize_stem(Path::new("")), "_");
    assert_eq!(sanitize_stem(Path::new("...")), "_");
    assert_eq!(sanitize_stem(Path::new("a|b?.txt")), "a_b_");
    assert_eq!(sanitize_stem(Path::new("dir/")), "dir");
    assert_eq!(sanitize_stem(Path::new(&"x".repeat(300))).len(), 100);
}
