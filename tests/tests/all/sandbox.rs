//! Hostile guests: each attack is contained with a typed error, and the next call, on a fresh
//! instance where the attack trapped, succeeds.

use std::sync::Arc;
use std::time::Duration;

use cjm_guest::contract::{Envelope, ErrorCategory};
use cjm_host::Error;
use cjm_host::backend::wasm::{DirGrant, SandboxGrants, WasmBackend};
use cjm_host::backend::{Backend, CallControl, CallRequest};
use cjm_tests::{CollectingSink, fixtures, kwargs, load, runtime};
use serde_json::{Value, json};

async fn hostile(grants: SandboxGrants) -> (WasmBackend, Arc<CollectingSink>, tempfile::TempDir) {
    let (rt, dir) = runtime();
    let (b, sink) = load(&rt, fixtures::HOSTILE, grants);
    b.initialize(json!({"label": "configured"})).await.unwrap();
    (b, sink, dir)
}

async fn attack(b: &WasmBackend, args: Value) -> Result<Value, Error> {
    b.call(
        CallRequest::execute(kwargs(args)),
        Arc::new(CallControl::new()),
    )
    .await
}

async fn discarded(b: &WasmBackend) -> u64 {
    b.stats().await.unwrap()["instances_discarded"]
        .as_u64()
        .unwrap()
}

/// The attack fails with a job error of `category` whose message contains `needle`, and the
/// capability keeps serving afterwards with its configuration.
async fn contained(b: &WasmBackend, args: Value, category: ErrorCategory, needle: &str) {
    let e = match attack(b, args.clone()).await {
        Err(Error::Job(e)) => e,
        other => panic!("{args}: expected a job error, got {other:?}"),
    };
    assert_eq!(e.category, category, "{args}: {e}");
    assert!(e.message.contains(needle), "{args}: {}", e.message);
    assert_eq!(e.capability_name.as_deref(), Some("hostile"));
    assert_eq!(
        attack(b, json!({"attack": "echo_config"})).await.unwrap(),
        "configured",
        "after {args}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_filesystem_env_or_network_without_a_grant() {
    let (b, _, _dir) = hostile(SandboxGrants::default()).await;
    contained(
        &b,
        json!({"attack": "read_passwd"}),
        ErrorCategory::Fatal,
        "/etc/passwd",
    )
    .await;
    contained(
        &b,
        json!({"attack": "list_root"}),
        ErrorCategory::Fatal,
        "list /",
    )
    .await;
    // SAFETY of the test: the variable is set on the host, never granted to the guest.
    unsafe_set_env("CJM_TEST_NOT_GRANTED", "host secret");
    contained(
        &b,
        json!({"attack": "read_env", "name": "CJM_TEST_NOT_GRANTED"}),
        ErrorCategory::Fatal,
        "CJM_TEST_NOT_GRANTED",
    )
    .await;
    contained(
        &b,
        json!({"attack": "open_socket"}),
        ErrorCategory::Fatal,
        "127.0.0.1:9",
    )
    .await;
}

fn unsafe_set_env(name: &str, value: &str) {
    // Tests in this binary never read these variables concurrently with the write.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var(name, value)
    };
}

#[tokio::test(flavor = "multi_thread")]
async fn granted_env_and_dirs_are_visible_and_read_only_means_read_only() {
    unsafe_set_env("CJM_TEST_GRANTED", "visible");
    let ro = tempfile::tempdir().unwrap();
    let rw = tempfile::tempdir().unwrap();
    std::fs::write(ro.path().join("hello.txt"), "hello from the host").unwrap();
    let grants = SandboxGrants {
        env: vec!["CJM_TEST_GRANTED".into()],
        dirs: vec![
            DirGrant {
                host: ro.path().into(),
                guest: "/data".into(),
                writable: false,
            },
            DirGrant {
                host: rw.path().into(),
                guest: "/out".into(),
                writable: true,
            },
        ],
        ..SandboxGrants::default()
    };
    let (b, _, _dir) = hostile(grants).await;
    let got = attack(
        &b,
        json!({"attack": "read_env", "name": "CJM_TEST_GRANTED"}),
    )
    .await
    .unwrap();
    assert_eq!(got, "visible");
    let got = attack(
        &b,
        json!({"attack": "read_file", "path": "/data/hello.txt"}),
    )
    .await
    .unwrap();
    assert_eq!(got, "hello from the host");

    contained(
        &b,
        json!({"attack": "write_file", "path": "/data/pwned.txt"}),
        ErrorCategory::Fatal,
        "/data/pwned.txt",
    )
    .await;
    assert!(!ro.path().join("pwned.txt").exists());
    // Escaping a grant through `..` is refused too.
    contained(
        &b,
        json!({"attack": "read_file", "path": "/data/../../etc/passwd"}),
        ErrorCategory::Fatal,
        "passwd",
    )
    .await;

    assert_eq!(
        attack(&b, json!({"attack": "write_file", "path": "/out/ok.txt"}))
            .await
            .unwrap(),
        "written"
    );
    assert_eq!(
        std::fs::read_to_string(rw.path().join("ok.txt")).unwrap(),
        "pwned"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runaway_guest_is_stopped_at_its_deadline() {
    let grants = SandboxGrants {
        time_limit_secs: 0.3,
        ..SandboxGrants::default()
    };
    let (b, _, _dir) = hostile(grants).await;
    let before = discarded(&b).await;
    contained(
        &b,
        json!({"attack": "loop_forever"}),
        ErrorCategory::Transient,
        "time limit",
    )
    .await;
    assert_eq!(
        discarded(&b).await,
        before + 1,
        "the trapped instance is discarded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forced_cancel_traps_an_infinite_loop() {
    let (b, _, _dir) = hostile(SandboxGrants::default()).await;
    let control = Arc::new(CallControl::new());
    let c2 = Arc::clone(&control);
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        c2.request_cancel(); // ignored by a guest that never checks
        tokio::time::sleep(Duration::from_millis(150)).await;
        c2.force_cancel();
    });
    let r = b
        .call(
            CallRequest::execute(kwargs(json!({"attack": "loop_forever"}))),
            control,
        )
        .await;
    killer.await.unwrap();
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert_eq!(
        attack(&b, json!({"attack": "echo_config"})).await.unwrap(),
        "configured"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cooperative_cancel_keeps_the_instance() {
    let (b, _, _dir) = hostile(SandboxGrants::default()).await;
    let before = discarded(&b).await;
    let control = Arc::new(CallControl::new());
    let c2 = Arc::clone(&control);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c2.request_cancel();
    });
    let r = b
        .call(
            CallRequest::execute(kwargs(json!({"attack": "loop_cooperative"}))),
            control,
        )
        .await;
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert_eq!(
        discarded(&b).await,
        before,
        "a guest that stopped by itself is kept"
    );
    // A call cancelled before it starts never runs.
    let pre = Arc::new(CallControl::new());
    pre.request_cancel();
    let r = b
        .call(CallRequest::execute(kwargs(json!({"attack": "ok"}))), pre)
        .await;
    assert!(matches!(r, Err(Error::Cancelled)));
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_stack_and_panics_are_typed() {
    let grants = SandboxGrants {
        memory_limit_mb: 64,
        ..SandboxGrants::default()
    };
    let (b, _, _dir) = hostile(grants).await;
    contained(
        &b,
        json!({"attack": "grow_memory"}),
        ErrorCategory::Resource,
        "memory limit",
    )
    .await;
    let e = match attack(&b, json!({"attack": "grow_memory"})).await {
        Err(Error::Job(e)) => e,
        other => panic!("{other:?}"),
    };
    let shortfall = e.resource_shortfall.unwrap();
    assert_eq!(shortfall.resource, "system_ram_mb");
    assert_eq!(shortfall.available, 64.0);
    assert!(shortfall.needed > 64.0);

    contained(
        &b,
        json!({"attack": "recurse"}),
        ErrorCategory::Fatal,
        "stack",
    )
    .await;
    contained(
        &b,
        json!({"attack": "panic"}),
        ErrorCategory::Fatal,
        "hostile guest panics on purpose",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_guest_errors_cross_field_for_field() {
    let (b, _, _dir) = hostile(SandboxGrants::default()).await;
    let e = match attack(&b, json!({"attack": "fail_resource"})).await {
        Err(Error::Job(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(e.category, ErrorCategory::Resource);
    assert!(e.retriable);
    assert_eq!(e.retry_after_seconds, Some(2.5));
    let s = e.resource_shortfall.unwrap();
    assert_eq!(
        (s.resource.as_str(), s.needed, s.available),
        ("gpu_vram_mb", 4096.0, 1024.0)
    );
    contained(
        &b,
        json!({"attack": "fail_user"}),
        ErrorCategory::UserInput,
        "too short",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_accounts_usage_and_progress_reach_the_host() {
    let (b, sink, _dir) = hostile(SandboxGrants::default()).await;
    let control = Arc::new(CallControl::new());
    let req = CallRequest::execute(kwargs(json!({"attack": "log"})))
        .with_envelope(Envelope::for_job("job-42"));
    assert_eq!(b.call(req, Arc::clone(&control)).await.unwrap(), "logged");
    let records = sink.records.lock().unwrap().clone();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].message, "hello from the guest");
    assert_eq!(records[0].level, "INFO");
    assert_eq!(records[1].level, "WARNING");
    assert!(
        records
            .iter()
            .all(|r| r.job_id.as_deref() == Some("job-42"))
    );
    assert_eq!(
        records[0].worker_session_id.as_deref(),
        Some(b.session_id())
    );

    let control = Arc::new(CallControl::new());
    b.call(
        CallRequest::execute(kwargs(json!({"attack": "account"}))),
        Arc::clone(&control),
    )
    .await
    .unwrap();
    let accounts = control.take_accounts();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].event_type, "api_call");
    assert_eq!(accounts[0].payload["tokens"], 12);
    assert_eq!(Value::Object(control.usage()), json!({"tokens": 12}));
    assert_eq!(control.progress().progress, 0.5);
}

#[tokio::test(flavor = "multi_thread")]
async fn stdio_is_discarded_unless_captured() {
    let (b, sink, _dir) = hostile(SandboxGrants::default()).await;
    attack(&b, json!({"attack": "print"})).await.unwrap();
    assert!(sink.chunks.lock().unwrap().is_empty());

    let (b, sink, _dir) = hostile(SandboxGrants {
        capture_stdio: true,
        ..SandboxGrants::default()
    })
    .await;
    attack(&b, json!({"attack": "print"})).await.unwrap();
    let chunks: Vec<(String, String)> = sink
        .chunks
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s, c)| (s.clone(), c.clone()))
        .collect();
    assert_eq!(
        chunks,
        [
            ("stdout".into(), "line one to stdout".into()),
            ("stdout".into(), "progress 100%".into()),
            ("stderr".into(), "a line to stderr".into()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_of_n_runs_n_calls_at_once() {
    let (b, _, _dir) = hostile(SandboxGrants {
        max_instances: 2,
        ..SandboxGrants::default()
    })
    .await;
    let controls: Vec<Arc<CallControl>> = (0..2).map(|_| Arc::new(CallControl::new())).collect();
    let calls: Vec<_> = controls
        .iter()
        .map(|c| {
            let (b, c) = (b.clone(), Arc::clone(c));
            tokio::spawn(async move {
                b.call(
                    CallRequest::execute(kwargs(json!({"attack": "loop_cooperative"}))),
                    c,
                )
                .await
            })
        })
        .collect();
    let mut busy = 0;
    for _ in 0..200 {
        busy = b.stats().await.unwrap()["instances_busy"].as_u64().unwrap();
        if busy == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(busy, 2, "both calls run at once");
    controls.iter().for_each(|c| c.request_cancel());
    for call in calls {
        assert!(matches!(call.await.unwrap(), Err(Error::Cancelled)));
    }
    b.shutdown().await.unwrap();
    assert!(
        attack(&b, json!({"attack": "ok"}))
            .await
            .unwrap_err()
            .to_string()
            .contains("shut down")
    );
}
