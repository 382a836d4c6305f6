//! One table of worker-contract cases run against the real cjm-substrate Python worker and
//! against a Rust worker built on cjm-native-worker (the `probe` twin of the Python echo
//! capability): through the host they behave the same.

use std::sync::Arc;

use cjm_guest::contract::{Envelope, ErrorCategory};
use cjm_host::Error;
use cjm_host::backend::native::{NativeBackend, WorkerSpec};
use cjm_host::backend::{Backend, CallControl, CallRequest, NoEvents, RuntimeKind};
use cjm_host::config::HostConfig;
use cjm_host::store::{DiagnosticsStore, RecordQuery};
use cjm_tests::{echo_capability_dir, kwargs, python_with_substrate};
use serde_json::{Value, json};

fn workers() -> Vec<(WorkerSpec, RuntimeKind)> {
    let python = WorkerSpec::python(
        "cjm-capability-echo",
        python_with_substrate(),
        "cjm_capability_echo.capability",
        "EchoCapability",
        &["cjm_capability_echo.adapter:EchoTaskAdapter".into()],
    )
    .env("PYTHONPATH", echo_capability_dir().display().to_string());
    let rust = WorkerSpec::native("probe", &[env!("CARGO_BIN_EXE_probe_worker").into()]).unwrap();
    vec![(python, RuntimeKind::Python), (rust, RuntimeKind::Native)]
}

async fn call(b: &NativeBackend, kw: Value) -> Result<Value, Error> {
    b.call(
        CallRequest::execute(kwargs(kw)),
        Arc::new(CallControl::new()),
    )
    .await
}

fn job(r: Result<Value, Error>) -> cjm_guest::JobError {
    match r {
        Err(Error::Job(e)) => *e,
        other => panic!("expected a job error, got {other:?}"),
    }
}

async fn collect(b: &NativeBackend, kw: Value) -> Vec<Result<Value, Error>> {
    let mut s = b
        .call_stream(
            CallRequest::execute(kwargs(kw)),
            Arc::new(CallControl::new()),
        )
        .await
        .unwrap();
    let mut items = Vec::new();
    while let Some(item) = s.recv().await {
        items.push(item);
    }
    items
}

#[tokio::test(flavor = "multi_thread")]
async fn python_and_rust_workers_pass_the_same_contract_cases() {
    for (spec, kind) in workers() {
        let dir = tempfile::tempdir().unwrap();
        let config = HostConfig::builder().data_dir(dir.path()).build().unwrap();
        config.ensure_layout().unwrap();
        let store = Arc::new(DiagnosticsStore::open(&config.diagnostics_db_path()).unwrap());
        let writer = Arc::new(store.writer().unwrap());
        let name = spec.name.clone();
        let b = NativeBackend::start(
            spec.with_host_env(&config).unwrap(),
            kind,
            writer.clone(),
            Arc::new(NoEvents),
        )
        .await
        .unwrap();
        let who = format!("{kind} worker");

        // health and config schema
        let health = b.health().await.unwrap();
        assert_eq!(health["status"], "running", "{who}");
        let props = &b.info().config_schema["properties"];
        for field in ["prefix", "repeat", "mode", "step_seconds"] {
            assert!(props.get(field).is_some(), "{who}: schema lacks {field}");
        }

        // initialize / reconfigure / execute
        b.initialize(json!({"prefix": "> "})).await.unwrap();
        assert_eq!(
            call(&b, json!({"action": "echo", "text": "hi", "x": 1}))
                .await
                .unwrap(),
            json!({"text": "> hi", "length": 4, "kwargs": {"x": 1}}),
            "{who}"
        );
        b.reconfigure(json!({"prefix": "> "}), json!({"mode": "upper"}))
            .await
            .unwrap();
        assert_eq!(
            call(&b, json!({"action": "echo", "text": "hi"}))
                .await
                .unwrap()["text"],
            "HI",
            "{who}"
        );

        // task
        let out = b
            .call(
                CallRequest::task("echo", "echo", kwargs(json!({"text": "ab", "times": 2}))),
                Arc::new(CallControl::new()),
            )
            .await
            .unwrap();
        assert_eq!(
            out,
            json!({"__wire__": "echo.result", "data": {"text": "ABAB", "times": 2, "length": 4}}),
            "{who}"
        );
        let missing = b
            .call(
                CallRequest::task("nope", "x", Default::default()),
                Arc::new(CallControl::new()),
            )
            .await;
        assert!(
            matches!(missing, Err(Error::NotFound(_))),
            "{who}: {missing:?}"
        );

        // typed errors keep category and fields
        let e = job(call(&b, json!({"action": "fail", "kind": "input"})).await);
        assert_eq!(
            (e.category, e.fields_invalid.clone()),
            (ErrorCategory::UserInput, Some(vec!["text".into()])),
            "{who}"
        );
        let e = job(call(&b, json!({"action": "fail", "kind": "transient"})).await);
        assert_eq!(
            (e.category, e.retry_after_seconds),
            (ErrorCategory::Transient, Some(2.5)),
            "{who}"
        );
        let e = job(call(&b, json!({"action": "fail", "kind": "resource"})).await);
        let s = e.resource_shortfall.unwrap();
        assert_eq!(
            (s.resource.as_str(), s.needed, s.available),
            ("gpu_vram_mb", 4096.0, 1024.0),
            "{who}"
        );

        // stream: chunks, then the end
        let items = collect(&b, json!({"action": "echo", "text": "s"})).await;
        assert!(
            !items.is_empty() && items.iter().all(Result::is_ok),
            "{who}: {items:?}"
        );

        // cooperative cancel -> 409 -> cancelled
        let control = Arc::new(CallControl::new());
        let c2 = Arc::clone(&control);
        tokio::spawn(async move {
            cjm_tests::until_progress(&c2).await;
            c2.request_cancel();
        });
        let r = b
            .call(
                CallRequest::execute(kwargs(json!({"action": "slow", "steps": 400}))),
                control,
            )
            .await;
        assert!(matches!(r, Err(Error::Cancelled)), "{who}: {r:?}");

        // stats of the worker process
        let stats = b.stats().await.unwrap();
        assert_eq!(stats["pid"].as_u64().map(|p| p as u32), b.pid(), "{who}");
        assert!(stats["memory_rss_mb"].as_f64().unwrap() > 0.0, "{who}");

        // log records in our diagnostics store, stamped with the job id of the envelope
        let req = CallRequest::execute(kwargs(json!({"action": "log"})))
            .with_envelope(Envelope::for_job("job-log"));
        b.call(req, Arc::new(CallControl::new())).await.unwrap();
        b.shutdown().await.unwrap();
        writer.flush().unwrap();
        let records = store
            .query_records(&RecordQuery {
                job_id: Some("job-log".into()),
                ..RecordQuery::default()
            })
            .unwrap();
        let seen: Vec<(&str, &str)> = records
            .iter()
            .map(|r| (r.level.as_str(), r.message.as_str()))
            .collect();
        for expected in [("INFO", "info line"), ("WARNING", "warning line")] {
            assert!(
                seen.contains(&expected),
                "{who} ({name}): {expected:?} not in {seen:?}"
            );
        }
    }
}
