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

async fn wasm_backend() -> (Arc<dyn Backend>, tempfile::TempDir) {
    let (rt, dir) = runtime();
    let (wasm, _) = load(&rt, fixtures::TEXT_STATS, SandboxGrants::default()).await;
    (Arc::new(wasm), dir)
}

async fn native_backend() -> (Arc<dyn Backend>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
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
    (Arc::new(native), dir)
}

async fn both() -> (Vec<Arc<dyn Backend>>, Vec<tempfile::TempDir>) {
    let (wasm, a) = wasm_backend().await;
    let (native, b) = native_backend().await;
    (vec![wasm, native], vec![a, b])
}

async fn call(b: &Arc<dyn Backend>, req: CallRequest) -> Result<Value, Error> {
    b.call(req, Arc::new(CallControl::new())).await
}

/// One contract case, run on each kind as its own test (`<case>::wasm`, `<case>::native`):
/// the body gets the backend `b`, initialized with `{"case_sensitive": true, "top_n": 2}`,
/// and it is shut down after.
macro_rules! on_both_kinds {
    ($(#[doc = $doc:expr])* async fn $name:ident($b:ident) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            use super::*;

            async fn case($b: &Arc<dyn Backend>) $body

            async fn run((b, _dir): (Arc<dyn Backend>, tempfile::TempDir)) {
                b.initialize(json!({"case_sensitive": true, "top_n": 2}))
                    .await
                    .unwrap();
                case(&b).await;
                b.shutdown().await.unwrap();
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn wasm() {
                run(wasm_backend().await).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn native() {
                run(native_backend().await).await;
            }
        }
    };
}

const TEXT: &str = "The cat saw the dog. THE end";

on_both_kinds! {
    /// Identity and the structural surface, as the capability reports them.
    async fn info_and_surface(b) {
        let info = b.info();
        assert_eq!(
            (info.name.as_str(), info.version.as_str()),
            ("text-stats", "0.1.0")
        );
        let method = info.structural_surface.method("compute_stats").unwrap();
        assert_eq!(method.params, ["text", "kwargs"]);
    }
}

on_both_kinds! {
    /// A config the schema refuses is the caller's error; the accepted one is current.
    async fn configuration_is_validated_and_kept(b) {
        let Err(Error::Job(bad)) = b.initialize(json!({"top_n": "many"})).await else {
            panic!("a string top_n must be refused")
        };
        assert_eq!(bad.category, ErrorCategory::UserInput);
        b.initialize(json!({"case_sensitive": true, "top_n": 2}))
            .await
            .unwrap();
        assert_eq!(
            b.current_config().await.unwrap(),
            json!({"case_sensitive": true, "top_n": 2})
        );
    }
}

on_both_kinds! {
    /// `execute` and the task channel give the same answer, under the configuration.
    async fn execute_and_task_agree(b) {
        let text = json!({"text": TEXT});
        let exec = call(b, CallRequest::execute(kwargs(text.clone())))
            .await
            .unwrap();
        let task = call(
            b,
            CallRequest::task("text_statistics", "compute_stats", kwargs(text)),
        )
        .await
        .unwrap();
        assert_eq!(exec, task);
        assert_eq!(exec["top_words"], json!([["THE", 1], ["The", 1]]));
    }
}

on_both_kinds! {
    /// A missing argument is a user error naming the field.
    async fn a_missing_argument_names_its_field(b) {
        let Err(Error::Job(missing)) =
            call(b, CallRequest::execute(kwargs(json!({"txt": 1})))).await
        else {
            panic!("missing text must fail")
        };
        assert_eq!(missing.category, ErrorCategory::UserInput);
        assert_eq!(
            missing.fields_invalid.as_deref(),
            Some(&["text".to_owned()][..])
        );
    }
}

on_both_kinds! {
    /// An unknown task method is not found, not a failure of the capability.
    async fn an_unknown_method_is_not_found(b) {
        let unknown = call(
            b,
            CallRequest::task("text_statistics", "nope", Default::default()),
        )
        .await;
        assert!(matches!(unknown, Err(Error::NotFound(_))), "{unknown:?}");
    }
}

/// Beyond each case holding on each kind: the two kinds' answers are equal to the byte.
#[tokio::test(flavor = "multi_thread")]
async fn wasm_and_native_text_stats_answer_alike() {
    let (backends, _dirs) = both().await;
    let mut seen = Vec::new();
    for b in &backends {
        b.initialize(json!({"case_sensitive": true, "top_n": 2}))
            .await
            .unwrap();
        let text = json!({"text": TEXT});
        let exec = call(b, CallRequest::execute(kwargs(text.clone())))
            .await
            .unwrap();
        seen.push((
            exec,
            b.info().config_schema.clone(),
            b.info().structural_surface.clone(),
        ));
        b.shutdown().await.unwrap();
    }
    assert_eq!(seen[0], seen[1], "wasm and native answers differ");
}
