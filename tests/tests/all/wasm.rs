//! The wasm backend end to end on the example capabilities: info, config, execute, tasks,
//! typed errors, bad component files, the compile cache.

use std::path::Path;
use std::sync::Arc;

use cjm_guest::contract::ErrorCategory;
use cjm_host::Error;
use cjm_host::backend::wasm::{SandboxGrants, WasmBackend, WasmRuntime};
use cjm_host::backend::{Backend, CallControl, CallRequest, NoDiagnostics, RuntimeKind};
use cjm_tests::{fixtures, kwargs, load, runtime};
use serde_json::json;

fn job(e: Error) -> cjm_guest::JobError {
    match e {
        Error::Job(j) => *j,
        other => panic!("expected a job error, got {other:?}"),
    }
}

async fn call(b: &WasmBackend, req: CallRequest) -> Result<serde_json::Value, Error> {
    b.call(req, Arc::new(CallControl::new())).await
}

#[tokio::test(flavor = "multi_thread")]
async fn info_schema_and_surface_come_from_the_guest() {
    let (rt, _dir) = runtime();
    let (b, _) = load(&rt, fixtures::TEXT_STATS, SandboxGrants::default()).await;
    assert_eq!(b.kind(), RuntimeKind::Wasm);
    let info = b.info();
    assert_eq!(info.name, "text-stats");
    assert_eq!(info.version, "0.1.0");
    assert_eq!(info.tasks, ["text_statistics"]);
    let props = &info.config_schema["properties"];
    assert_eq!(props["case_sensitive"]["type"], "boolean");
    assert_eq!(props["top_n"]["default"], 3);
    let m = info.structural_surface.method("compute_stats").unwrap();
    assert_eq!(m.params, ["text", "kwargs"]);
    assert_eq!(m.signature, "(self, text, **kwargs)");
    assert!(
        info.structural_surface
            .method("get_current_config")
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn config_takes_effect_and_reconfigure_changes_results() {
    let (rt, _dir) = runtime();
    let (b, _) = load(&rt, fixtures::TEXT_STATS, SandboxGrants::default()).await;

    let before = call(&b, CallRequest::execute(kwargs(json!({"text": "x"}))))
        .await
        .unwrap_err();
    assert!(job(before).message.contains("not initialized"));

    b.initialize(json!({"case_sensitive": true, "top_n": 1}))
        .await
        .unwrap();
    let text = json!({"text": "The cat saw the dog. THE end"});
    let out = call(&b, CallRequest::execute(kwargs(text.clone())))
        .await
        .unwrap();
    assert_eq!(out["top_words"], json!([["THE", 1]]));
    assert_eq!(out["words"], 7);
    assert_eq!(
        b.current_config().await.unwrap(),
        json!({"case_sensitive": true, "top_n": 1})
    );

    b.reconfigure(
        json!({"case_sensitive": true, "top_n": 1}),
        json!({"case_sensitive": false, "top_n": 2}),
    )
    .await
    .unwrap();
    let out = call(
        &b,
        CallRequest::task("text_statistics", "compute_stats", kwargs(text)),
    )
    .await
    .unwrap();
    assert_eq!(out["top_words"], json!([["the", 3], ["cat", 1]]));

    // Positional args work as the Python `execute(*args)` does.
    let out = call(
        &b,
        CallRequest::execute_with_args(vec![json!("a b")], Default::default()),
    )
    .await
    .unwrap();
    assert_eq!(out["words"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_and_bad_input_are_user_input_errors_naming_the_field() {
    let (rt, _dir) = runtime();
    let (b, _) = load(&rt, fixtures::TEXT_STATS, SandboxGrants::default()).await;
    let e = job(b.initialize(json!({"top_n": "three"})).await.unwrap_err());
    assert_eq!(e.category, ErrorCategory::UserInput);
    assert!(e.message.contains("invalid configuration"), "{}", e.message);
    let e = job(b.initialize(json!({"colour": "red"})).await.unwrap_err());
    assert_eq!(e.fields_invalid.unwrap(), ["colour"]);
    assert_eq!(e.capability_name.as_deref(), Some("text-stats"));

    b.initialize(json!({})).await.unwrap();
    let e = job(
        call(&b, CallRequest::execute(kwargs(json!({"txt": "typo"}))))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.category, ErrorCategory::UserInput);
    assert_eq!(e.fields_invalid.unwrap(), ["text"]);
    let e = job(call(&b, CallRequest::execute(kwargs(json!({"text": 42}))))
        .await
        .unwrap_err());
    assert_eq!(e.fields_invalid.unwrap(), ["text"]);
    // The failed calls left the instance serving.
    assert_eq!(
        call(&b, CallRequest::execute(kwargs(json!({"text": "ok"}))))
            .await
            .unwrap()["words"],
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sentence_split_answers_in_the_pysbd_wire_shape() {
    let (rt, _dir) = runtime();
    let (b, _) = load(&rt, fixtures::SENTENCE_SPLIT, SandboxGrants::default()).await;
    b.initialize(json!({})).await.unwrap();
    let text = "  Héllo wörld. Dr. Smith arrived at 5 p.m. today!  Is it done? ";
    let out = call(
        &b,
        CallRequest::task(
            "sentence_segmentation",
            "segment_text",
            kwargs(json!({"text": text})),
        ),
    )
    .await
    .unwrap();
    let spans = out["data"]["spans"].as_array().unwrap().clone();
    assert_eq!(out["__wire__"], "sentence_segmentation.result");
    assert_eq!(
        out["data"]["metadata"],
        json!({"sentence_count": spans.len(), "language": "en"})
    );
    let chars: Vec<char> = text.chars().collect();
    let sentences: Vec<String> = spans
        .iter()
        .map(|s| {
            assert_eq!(
                s.as_object().unwrap().keys().collect::<Vec<_>>(),
                ["start_char", "end_char"]
            );
            let (a, b) = (
                s["start_char"].as_u64().unwrap() as usize,
                s["end_char"].as_u64().unwrap() as usize,
            );
            chars[a..b].iter().collect()
        })
        .collect();
    assert_eq!(
        sentences,
        [
            "Héllo wörld.",
            "Dr. Smith arrived at 5 p.m. today!",
            "Is it done?"
        ]
    );
    assert_eq!(spans[0], json!({"start_char": 2, "end_char": 14}));

    let missing = call(
        &b,
        CallRequest::task("sentence_segmentation", "segment_txt", Default::default()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(missing, Error::NotFound(ref m) if m.contains("segment_txt")),
        "{missing:?}"
    );
    let surface = &b.info().structural_surface;
    assert_eq!(
        surface.method("segment_text").unwrap().params,
        ["text", "kwargs"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_component_files_are_clear_errors_naming_the_file() {
    let (rt, dir) = runtime();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let noop = std::fs::read(fixtures::NOOP).unwrap();
    let cases = [
        (
            write("text.wasm", b"this is not wasm at all"),
            "not a WebAssembly file",
        ),
        (write("empty.wasm", b""), "empty"),
        (
            write("core.wasm", b"\0asm\x01\0\0\0"),
            "core wasm module, not a component",
        ),
        (
            write("truncated.wasm", &noop[..noop.len() / 2]),
            "not a valid wasm component",
        ),
        (
            fixtures::NOT_A_CAPABILITY.into(),
            "does not implement the cjm:capability world",
        ),
        (dir.path().join("missing.wasm"), "No such file"),
    ];
    for (path, expected) in cases {
        let e = WasmBackend::load(
            &rt,
            &path,
            SandboxGrants::default(),
            Arc::new(NoDiagnostics),
        )
        .await
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(expected), "{path:?}: {msg}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn precompiled_components_are_cached_by_sha_and_engine() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let rt = WasmRuntime::new(Some(cache.clone())).unwrap();
    let component = rt.load(Path::new(fixtures::NOOP)).unwrap();
    let cached = rt.cache_path(component.sha256()).unwrap();
    assert!(cached.is_file());
    assert!(
        cached
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(component.sha256())
    );

    // A second host on the same cache dir loads the precompiled form; a corrupt cache entry
    // is replaced by a fresh compilation, never fatal.
    let rt2 = WasmRuntime::new(Some(cache)).unwrap();
    assert_eq!(
        rt2.load(Path::new(fixtures::NOOP)).unwrap().sha256(),
        component.sha256()
    );
    std::fs::write(&cached, b"garbage").unwrap();
    rt2.forget_loaded();
    let (b, _) = load(&rt2, fixtures::NOOP, SandboxGrants::default()).await;
    b.initialize(json!({})).await.unwrap();
    assert_eq!(
        call(&b, CallRequest::execute(Default::default()))
            .await
            .unwrap(),
        json!({})
    );
    assert_ne!(std::fs::read(&cached).unwrap(), b"garbage");

    // The source's hash is remembered by size and mtime; a replaced file is hashed again.
    let copy = dir.path().join("copy.wasm");
    std::fs::copy(fixtures::NOOP, &copy).unwrap();
    assert_eq!(rt2.load(&copy).unwrap().sha256(), component.sha256());
    rt2.forget_loaded();
    assert_eq!(rt2.load(&copy).unwrap().sha256(), component.sha256());
    std::fs::copy(fixtures::TEXT_STATS, &copy).unwrap();
    assert_ne!(rt2.load(&copy).unwrap().sha256(), component.sha256());
}
