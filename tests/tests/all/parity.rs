//! The same capability as a wasm component and as a Rust native worker: a client of the
//! `Backend` trait cannot tell them apart.

use std::sync::Arc;

use cjm_guest::contract::ErrorCategory;
use cjm_host::Error;
use cjm_host::backend::native::{NativeBackend, WorkerSpec};
use cjm_host::backend::wasm::SandboxGrants;
use cjm_host::backend::{Backend, CallControl, CallRequest, NoDiagnostics, NoEvents, RuntimeKind};
use cjm_tests::{fixtures, kwargs, load, runtime};
use serde_json::{Value, json};

async fn both() -> (Vec<Arc<dyn Backend>>, tempfile::TempDir) {
    let (rt, dir) = runtime();
    let (wasm, _) = load(&rt, fixtures::TEXT_STATS, SandboxGrants::default()).await;
    let spec =
        WorkerSpec::native("text-stats", &[env!("CARGO_BIN_EXE_parity_worker").into()]).unwrap();
    let native = NativeBackend::start(
        spec,
        RuntimeKind::Native,
        Arc::new(NoDiagnostics),
        Arc::new(NoEvents),
    )
    .await
    .unwrap();
    (vec![Arc::new(wasm), Arc::new(native)], dir)
}

async fn call(b: &Arc<dyn Backend>, req: CallRequest) -> Result<Value, Error> {
    b.call(req, Arc::new(CallControl::new())).await
}

#[tokio::test(flavor = "multi_thread")]
async fn wasm_and_native_text_stats_behave_the_same() {
    let (backends, _dir) = both().await;
    let mut seen = Vec::new();
    for b in &backends {
        let info = b.info();
        assert_eq!(
            (info.name.as_str(), info.version.as_str()),
            ("text-stats", "0.1.0"),
            "{:?}",
            b.kind()
        );
        assert_eq!(
            info.structural_surface
                .method("compute_stats")
                .unwrap()
                .params,
            ["text", "kwargs"]
        );

        let bad = b.initialize(json!({"top_n": "many"})).await.unwrap_err();
        let Error::Job(bad) = bad else {
            panic!("{bad:?}")
        };
        assert_eq!(bad.category, ErrorCategory::UserInput, "{:?}", b.kind());

        b.initialize(json!({"case_sensitive": true, "top_n": 2}))
            .await
            .unwrap();
        let text = json!({"text": "The cat saw the dog. THE end"});
        let exec = call(b, CallRequest::execute(kwargs(text.clone())))
            .await
            .unwrap();
        let task = call(
            b,
            CallRequest::task("text_statistics", "compute_stats", kwargs(text)),
        )
        .await
        .unwrap();
        let Err(Error::Job(missing)) =
            call(b, CallRequest::execute(kwargs(json!({"txt": 1})))).await
        else {
            panic!("missing text must fail")
        };
        assert_eq!(
            missing.fields_invalid.as_deref(),
            Some(&["text".to_owned()][..])
        );
        let unknown = call(
            b,
            CallRequest::task("text_statistics", "nope", Default::default()),
        )
        .await;
        assert!(matches!(unknown, Err(Error::NotFound(_))), "{unknown:?}");
        assert_eq!(
            b.current_config().await.unwrap(),
            json!({"case_sensitive": true, "top_n": 2})
        );
        seen.push((exec, task, b.info().config_schema.clone()));
        b.shutdown().await.unwrap();
    }
    assert_eq!(seen[0], seen[1], "wasm and native answers differ");
    assert_eq!(seen[0].0["top_words"], json!([["THE", 1], ["The", 1]]));
}
