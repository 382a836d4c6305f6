//! Manifest loading, writing and discovery against real files: the Python fixtures, and every
//! kind of bad input.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::*;
use crate::contract::MethodSurface;
use crate::manifest::ManifestError;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python/manifests")
}

fn fixture_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![fixtures_dir()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn python_written_manifests_load_and_round_trip_byte_for_byte() {
    let files = fixture_files();
    assert!(
        files.len() >= 4,
        "expected the Python fixture manifests, found {files:?}"
    );
    let (mut caps, mut adapters) = (0, 0);
    for path in files {
        let text = fs::read_to_string(&path).unwrap();
        let original: Value = serde_json::from_str(&text).unwrap();
        let written = match load(&path).unwrap_or_else(|e| panic!("{e}")) {
            Manifest::Capability(m) => {
                caps += 1;
                // The drift witnesses Python wrote are the hashes we compute.
                let mut recomputed = (*m).clone();
                recomputed.refresh_drift_hashes();
                assert_eq!(
                    recomputed.drift_tracking,
                    m.drift_tracking,
                    "{}",
                    path.display()
                );
                assert!(!m.config_schema_drifted(m.code.config_schema.as_ref()));
                assert_eq!(m.runtime(), RuntimeKind::Python);
                assert!(m.code.surface().is_some_and(|s| !s.methods.is_empty()));
                capability_to_string(&m)
            }
            Manifest::Adapter(m) => {
                adapters += 1;
                assert!(!m.protocol_members.methods.is_empty());
                adapter_to_string(&m)
            }
        };
        let again: Value = serde_json::from_str(&written).unwrap();
        assert_eq!(again, original, "fields changed in {}", path.display());
        assert_eq!(written, text, "bytes changed in {}", path.display());
    }
    assert!(caps >= 2 && adapters >= 2);
}

#[test]
fn unknown_keys_at_open_levels_survive_a_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.json");
    let doc = json!({
        "format_version": "2.0",
        "install": {"python_path": "/p", "new_install_key": [1, 2]},
        "code": {"name": "x", "version": "1", "description": "d", "module": "m", "class": "C",
            "resources": {"requires_gpu": true, "min_vram": 3}, "future": {"a": 1}},
        "drift_tracking": {"config_schema_hash": null, "structural_surface_hash": null, "extra_hash": "h"},
        "overrides": {"anything": {"goes": true}},
        "top_level_future": 0.0,
    });
    fs::write(&path, serde_json::to_string(&doc).unwrap()).unwrap();
    let m = load_capability(&path).unwrap();
    assert_eq!(m.install.extra["new_install_key"], json!([1, 2]));
    write_capability(&path, &m).unwrap();
    let back: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    for (section, key) in [
        ("install", "new_install_key"),
        ("code", "future"),
        ("drift_tracking", "extra_hash"),
    ] {
        assert_eq!(back[section][key], doc[section][key]);
    }
    assert_eq!(back["code"]["resources"]["min_vram"], 3);
    assert_eq!(back["top_level_future"].to_string(), "0.0");
    assert_eq!(back["overrides"], doc["overrides"]);
}

fn wasm_manifest() -> CapabilityManifest {
    let mut m = CapabilityManifest::new("text-stats", "0.1.0", RuntimeKind::Wasm);
    m.code.description = "counts words".into();
    m.code.config_schema = Some(
        json!({"type": "object", "properties": {"lower": {"type": "boolean", "default": false}}}),
    );
    m.code.set_surface(&crate::contract::StructuralSurface {
        methods: vec![MethodSurface::from_params("count", &["text"])],
        properties: vec!["name".into()],
        attributes: vec![],
    });
    m.install.wasm = Some(WasmInstall {
        component: "text-stats.wasm".into(),
        sha256: hash::hash_bytes(b"component"),
        sandbox: Sandbox {
            preopens: vec![Preopen {
                host: "${CJM_CAPABILITY_DATA_DIR}".into(),
                guest: "/data".into(),
                mode: DirAccess::ReadWrite,
            }],
            env: vec!["LANG".into()],
            memory_limit_mb: Some(64),
            time_limit_seconds: Some(2.5),
            network: NetworkGrant::None,
            pool_size: 2,
            max_concurrency: 4,
            ..Sandbox::default()
        },
    });
    m.refresh_drift_hashes();
    m
}

#[test]
fn wasm_and_native_manifests_write_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let m = wasm_manifest();
    let path = dir.path().join(capability_file_name(m.name()));
    write_capability(&path, &m).unwrap();
    let back = load_capability(&path).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.runtime(), RuntimeKind::Wasm);
    let loaded = Loaded {
        path: path.clone(),
        manifest: back,
    };
    let wasm = loaded.manifest.install.wasm.as_ref().unwrap();
    assert_eq!(
        wasm.component_path(loaded.dir()),
        dir.path().join("text-stats.wasm")
    );
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"runtime\": \"wasm\""), "{text}");
    assert!(text.contains("\"mode\": \"rw\""));

    let mut native = CapabilityManifest::new("rs-tool", "1.0.0", RuntimeKind::Native);
    native.install.native = Some(NativeInstall {
        command: vec!["/opt/rs-tool/bin/worker".into(), "--quiet".into()],
    });
    let npath = dir.path().join("rs-tool.json");
    write_capability(&npath, &native).unwrap();
    assert_eq!(
        load_capability(&npath)
            .unwrap()
            .install
            .native
            .unwrap()
            .command[1],
        "--quiet"
    );
    // A python manifest written by us has no runtime key: Python's reader sees its own format.
    let py = CapabilityManifest::new("p", "1", RuntimeKind::Python);
    assert!(!capability_to_string(&py).contains("runtime"));
}

#[test]
fn adapter_manifests_write_under_the_python_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = AdapterManifest::new("echo", "pkg.adapter", "EchoAdapter");
    a.protocol_members
        .methods
        .push(MethodSurface::from_params("echo_text", &["text", "times"]));
    let path = dir.path().join(adapter_file_name(&a));
    assert!(path.ends_with("adapter-echo-EchoAdapter.json"));
    write_adapter(&path, &a).unwrap();
    assert_eq!(load_adapter(&path).unwrap(), a);
    assert!(matches!(
        load_capability(&path),
        Err(Error::Manifest(ManifestError::InvalidManifest { .. }))
    ));
}

/// Asserts the error names the file, the field and what was expected.
fn assert_names(err: &Error, path: &Path, field: &str, expectation: &str) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "no file in: {msg}"
    );
    assert!(msg.contains(field), "no field {field:?} in: {msg}");
    assert!(msg.contains(expectation), "no {expectation:?} in: {msg}");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn valid_python() -> Value {
    json!({
        "format_version": "2.0",
        "install": {"python_path": "/env/bin/python", "conda_env": "e"},
        "code": {"name": "good", "version": "1.0", "description": "d", "module": "m", "class": "C"},
        "drift_tracking": {}, "overrides": {},
    })
}

#[test]
fn bad_inputs_name_file_field_and_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let mut doc = valid_python();
    doc["code"].as_object_mut().unwrap().remove("version");
    let p = write(d, "missing.json", &doc.to_string());
    let e = load(&p).unwrap_err();
    assert!(matches!(
        e,
        Error::Manifest(ManifestError::InvalidManifest { .. })
    ));
    assert_names(&e, &p, "code.version", "required field is missing");

    let mut doc = valid_python();
    doc["install"]["env_vars"] = json!(["A=1"]);
    let p = write(d, "wrong-type.json", &doc.to_string());
    assert_names(
        &load(&p).unwrap_err(),
        &p,
        "install.env_vars",
        "expected an object of strings, found an array",
    );

    let mut doc = wasm_manifest().to_value();
    doc["install"]["wasm"]["sandbox"]["allow_everything"] = json!(true);
    let p = write(d, "stray.json", &doc.to_string());
    assert_names(
        &load(&p).unwrap_err(),
        &p,
        "install.wasm.sandbox.allow_everything",
        "unknown field; expected only preopens",
    );

    let p = write(
        d,
        "invalid.json",
        "{\"format_version\": \"2.0\",\n \"install\": {,}}",
    );
    let e = load(&p).unwrap_err();
    assert!(matches!(e, Error::Json { .. }));
    assert_names(
        &e,
        &p,
        "line 2 column 14",
        "expected a JSON object): key must be a string",
    );

    let p = write(d, "empty.json", "");
    assert_names(
        &load(&p).unwrap_err(),
        &p,
        "<root>",
        "expected a JSON object, found an empty file",
    );
    let p = write(d, "array.json", "[]");
    assert_names(
        &load(&p).unwrap_err(),
        &p,
        "<root>",
        "expected a JSON object, found an array",
    );

    let p = d.join("x.json");
    fs::create_dir(&p).unwrap();
    let e = load(&p).unwrap_err();
    assert!(matches!(
        e,
        Error::NotAFile {
            found: "a directory",
            ..
        }
    ));
    assert_names(
        &e,
        &p,
        "x.json",
        "expected a regular file, found a directory",
    );

    let mut doc = valid_python();
    doc["format_version"] = json!("1.0");
    let p = write(d, "v1.json", &doc.to_string());
    assert_names(
        &load(&p).unwrap_err(),
        &p,
        "format_version \"1.0\"",
        "expected \"2.0\"",
    );
    doc.as_object_mut().unwrap().remove("format_version");
    let p = write(d, "nover.json", &doc.to_string());
    assert!(
        matches!(load(&p), Err(Error::Manifest(ManifestError::UnsupportedManifestVersion { found, .. })) if found == "(missing)")
    );

    let p = write(d, "unit.json", r#"{"unit": "plugin"}"#);
    assert_names(&load(&p).unwrap_err(), &p, "unit", "expected \"adapter\"");

    let p = d.join("latin1.json");
    fs::write(&p, b"{\"a\": \"\xe9\"}").unwrap();
    assert_names(
        &load(&p).unwrap_err(),
        &p,
        "<root>",
        "expected UTF-8 JSON text",
    );
}

/// Tests run as root here, and root reads a chmod-000 file regardless (CAP_DAC_OVERRIDE), so
/// "unreadable" is made in ways that hold for root too: a dangling symlink and a symlink
/// loop fail to open, and a FIFO is refused before opening (opening one would block).
#[test]
fn unreadable_files_are_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let p = d.join("dangling.json");
    std::os::unix::fs::symlink(d.join("nowhere.json"), &p).unwrap();
    let e = load(&p).unwrap_err();
    assert!(
        matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{e}"
    );
    assert_names(&e, &p, "dangling.json", "No such file");

    let p = d.join("loop.json");
    std::os::unix::fs::symlink(&p, &p).unwrap();
    assert!(matches!(load(&p), Err(Error::Io { .. })));

    let p = d.join("fifo.json");
    let status = std::process::Command::new("mkfifo")
        .arg(&p)
        .status()
        .unwrap();
    assert!(status.success());
    let e = load(&p).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NotAFile {
                found: "a FIFO",
                ..
            }
        ),
        "{e}"
    );

    // Where the tests do not run as root, a chmod-000 file is unreadable too.
    let p = write(d, "closed.json", &valid_python().to_string());
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o000)).unwrap();
    let readable_anyway = fs::read(&p).is_ok();
    match load(&p) {
        Ok(_) => assert!(
            readable_anyway,
            "a chmod-000 file loaded although it cannot be read"
        ),
        Err(e) => assert!(
            matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied),
            "{e}"
        ),
    }
}

#[test]
fn discovery_routes_by_unit_and_one_bad_file_never_stops_the_rest() {
    let local = tempfile::tempdir().unwrap();
    let global = tempfile::tempdir().unwrap();
    for path in fixture_files()
        .into_iter()
        .filter(|p| p.parent() == Some(fixtures_dir().as_path()))
    {
        fs::copy(&path, global.path().join(path.file_name().unwrap())).unwrap();
    }
    // The local path shadows the global copy of one capability.
    let mut echo: Value = serde_json::from_str(
        &fs::read_to_string(fixtures_dir().join("cjm-capability-echo.json")).unwrap(),
    )
    .unwrap();
    echo["install"]["python_path"] = json!("/local/python");
    write(local.path(), "echo-local.json", &echo.to_string());
    write(local.path(), "aaa-empty.json", "");
    write(local.path(), "broken.json", "{");
    write(local.path(), "notes.txt", "not a manifest");
    fs::create_dir(local.path().join("dir.json")).unwrap();
    std::os::unix::fs::symlink(
        local.path().join("gone"),
        local.path().join("dangling.json"),
    )
    .unwrap();
    let _ = std::process::Command::new("mkfifo")
        .arg(local.path().join("fifo.json"))
        .status();

    let found = discover(&[
        local.path().to_path_buf(),
        global.path().to_path_buf(),
        PathBuf::from("/no/such/dir"),
    ]);
    let names: Vec<&str> = found
        .capabilities
        .iter()
        .map(|c| c.manifest.name())
        .collect();
    assert_eq!(names, ["cjm-capability-echo", "cjm-capability-pysbd"]);
    assert_eq!(
        found
            .capability("cjm-capability-echo")
            .unwrap()
            .manifest
            .install
            .python_path,
        "/local/python"
    );
    assert_eq!(
        found.shadowed,
        [global.path().join("cjm-capability-echo.json")]
    );
    assert_eq!(found.adapters.len(), 2);
    assert_eq!(found.adapters_for("sentence_segmentation").count(), 1);
    assert_eq!(found.errors.len(), 5, "{:#?}", found.errors);
    for e in &found.errors {
        assert!(
            e.to_string().contains(&local.path().display().to_string()),
            "{e}"
        );
    }
}
