//! The native backend against the real cjm-substrate Python worker, and against workers that
//! misbehave (exit at once, never become ready, answer garbage, leave grandchildren).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cjm_guest::contract::{Envelope, ErrorCategory};
use cjm_host::Error;
use cjm_host::backend::native::{NativeBackend, WorkerSpec};
use cjm_host::backend::{
    Backend, CallControl, CallRequest, NoDiagnostics, RuntimeKind, WorkerEvents,
};
use cjm_tests::{CollectingSink, echo_capability_dir, kwargs, python_with_substrate, repo_root};
use serde_json::{Value, json};

/// Worker events kept for assertions.
#[derive(Default)]
struct Events(Mutex<Vec<(String, Value)>>);

impl WorkerEvents for Events {
    fn event(&self, event_type: &str, _: &str, payload: Value) {
        self.0.lock().unwrap().push((event_type.into(), payload));
    }
}

impl Events {
    fn types(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }
}

fn echo_spec() -> WorkerSpec {
    WorkerSpec::python(
        "cjm-capability-echo",
        python_with_substrate(),
        "cjm_capability_echo.capability",
        "EchoCapability",
        &["cjm_capability_echo.adapter:EchoTaskAdapter".into()],
    )
    .env("PYTHONPATH", echo_capability_dir().display().to_string())
}

async fn echo() -> (NativeBackend, Arc<CollectingSink>, Arc<Events>) {
    let sink = Arc::new(CollectingSink::default());
    let events = Arc::new(Events::default());
    let b = NativeBackend::start(
        echo_spec(),
        RuntimeKind::Python,
        sink.clone(),
        events.clone(),
    )
    .await
    .unwrap();
    b.initialize(json!({})).await.unwrap();
    (b, sink, events)
}

fn job(r: Result<Value, Error>) -> cjm_guest::JobError {
    match r {
        Err(Error::Job(e)) => *e,
        other => panic!("expected a job error, got {other:?}"),
    }
}

async fn run(b: &NativeBackend, req: CallRequest) -> Result<Value, Error> {
    b.call(req, Arc::new(CallControl::new())).await
}

#[tokio::test(flavor = "multi_thread")]
async fn python_worker_execute_task_and_typed_errors() {
    let (b, _, events) = echo().await;
    assert_eq!(b.info().name, "cjm-capability-echo");
    assert_eq!(b.info().version, "0.1.0");
    assert!(b.info().config_schema.is_object());
    // A Python worker has no `/tasks`: its tasks are its adapters'.
    assert!(b.info().tasks.is_empty());
    assert_eq!(
        b.info()
            .structural_surface
            .method("segment_text")
            .unwrap()
            .params,
        ["text", "kwargs"]
    );
    assert_eq!(events.types()[..2], ["worker_spawned", "worker_ready"]);

    let out = run(
        &b,
        CallRequest::execute(kwargs(json!({"action": "echo", "text": "héllo 😀"}))),
    )
    .await
    .unwrap();
    assert_eq!(out, json!({"text": "héllo 😀", "length": 7, "kwargs": {}}));
    // Number types and key order cross unchanged.
    let out = run(
        &b,
        CallRequest::execute(kwargs(
            json!({"action": "types", "a": 0.0, "b": 0, "k": {"z": 1, "a": 2}}),
        )),
    )
    .await
    .unwrap();
    assert_eq!(out["types"], json!({"a": "float", "b": "int", "k": "dict"}));
    assert_eq!(
        serde_json::to_string(&out["values"]).unwrap(),
        r#"{"a":0.0,"b":0,"k":{"z":1,"a":2}}"#
    );

    let control = Arc::new(CallControl::new());
    let req = CallRequest::task("echo", "echo", kwargs(json!({"text": "hi", "times": 2})))
        .with_envelope(Envelope::for_job("job-7"));
    let out = b.call(req, Arc::clone(&control)).await.unwrap();
    assert_eq!(
        out,
        json!({"__wire__": "echo.result", "data": {"text": "hihi", "times": 2, "length": 4}})
    );
    let accounts = control.take_accounts();
    assert_eq!(accounts[0].event_type, "task_account");

    let e = job(run(
        &b,
        CallRequest::execute(kwargs(json!({"action": "fail", "kind": "input"}))),
    )
    .await);
    assert_eq!(
        (e.category, e.fields_invalid.as_deref()),
        (ErrorCategory::UserInput, Some(&["text".to_owned()][..]))
    );
    assert!(e.traceback.unwrap().contains("CapabilityInputError"));
    let e = job(run(
        &b,
        CallRequest::execute(kwargs(json!({"action": "fail", "kind": "resource"}))),
    )
    .await);
    assert_eq!(e.category, ErrorCategory::Resource);
    assert_eq!(e.resource_shortfall.unwrap().resource, "gpu_vram_mb");

    let missing = run(&b, CallRequest::task("nope", "x", Default::default()))
        .await
        .unwrap_err();
    assert!(
        matches!(missing, Error::NotFound(ref d) if d.contains("No adapter bound")),
        "{missing:?}"
    );

    let stats = b.stats().await.unwrap();
    assert_eq!(stats["pid"].as_u64().map(|p| p as u32), b.pid());
    b.shutdown().await.unwrap();
    assert!(events.types().contains(&"worker_stopped".to_owned()));
}

#[tokio::test(flavor = "multi_thread")]
async fn python_worker_cooperative_cancel_is_cancelled() {
    let (b, _, _) = echo().await;
    let control = Arc::new(CallControl::new());
    let c2 = Arc::clone(&control);
    tokio::spawn(async move {
        cjm_tests::until_progress(&c2).await;
        c2.request_cancel();
    });
    let r = b
        .call(
            CallRequest::execute(kwargs(json!({"action": "slow", "steps": 100}))),
            Arc::clone(&control),
        )
        .await;
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert!(control.progress().progress >= 0.0, "progress was polled");
    b.shutdown().await.unwrap();
}

/// The Python worker serves on a Unix socket in a directory only this user can enter: no
/// loopback port any local process could call (a secret in its environment would be
/// reachable through it). The directory goes with the worker.
#[tokio::test(flavor = "multi_thread")]
async fn the_worker_channel_is_a_private_unix_socket() {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let (b, _, _) = echo().await;
    let socket = b.endpoint().unwrap();
    assert!(std::fs::metadata(&socket).unwrap().file_type().is_socket());
    let dir = socket.parent().unwrap().to_owned();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    // The worker listens on no TCP port: its sockets are the Unix one and its clients'.
    let pid = b.pid().unwrap();
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    // /proc/net/tcp: state 0A is LISTEN; column 10 is the inode.
    let listening_tcp = tcp.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.get(3) == Some(&"0A") && cols.get(9).is_some_and(|i| inodes.iter().any(|n| n == i))
    });
    assert!(!listening_tcp, "the worker listens on a TCP port");
    let out = run(
        &b,
        CallRequest::execute(kwargs(json!({"action": "echo", "text": "private"}))),
    )
    .await
    .unwrap();
    assert_eq!(out["text"], "private");
    b.shutdown().await.unwrap();
    assert!(!dir.exists(), "the socket dir outlived its worker");
}

/// An idle worker is watched: one that stops answering (SIGSTOP) or dies (SIGKILL) between
/// calls is replaced and journaled dead before the next call needs it, and the next call runs
/// on a fresh worker.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_worker_that_hangs_or_dies_is_replaced() {
    let mut spec =
        WorkerSpec::native("probe", &[env!("CARGO_BIN_EXE_probe_worker").into()]).unwrap();
    spec.idle_probe = Duration::from_millis(200);
    let events = Arc::new(Events::default());
    let b = NativeBackend::start(
        spec,
        RuntimeKind::Native,
        Arc::new(NoDiagnostics),
        events.clone(),
    )
    .await
    .unwrap();
    b.initialize(json!({})).await.unwrap();
    let died = |events: &Events| {
        events
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == "worker_died")
            .map(|(_, p)| p["reason"].as_str().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    for (signal, reason) in [
        (nix::sys::signal::Signal::SIGSTOP, "did not answer /health"),
        (nix::sys::signal::Signal::SIGKILL, "(SIGKILL) while idle"),
    ] {
        let pid = b.pid().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
        let start = std::time::Instant::now();
        while !died(&events).iter().any(|r| r.contains(reason)) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{signal}: not noticed: {:?}",
                died(&events)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            b.pid(),
            None,
            "{signal}: the dead worker is still published"
        );
        let out = run(&b, CallRequest::execute(kwargs(json!({"text": "again"}))))
            .await
            .unwrap();
        assert_eq!(out["text"], "again");
        assert_ne!(b.pid(), Some(pid));
    }
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkilled_worker_is_a_resource_error_and_the_next_call_respawns() {
    let (b, _, events) = echo().await;
    let pid = b.pid().unwrap();
    let control = Arc::new(CallControl::new());
    let c2 = Arc::clone(&control);
    tokio::spawn(async move {
        cjm_tests::until_progress(&c2).await;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    let e = job(b
        .call(
            CallRequest::execute(kwargs(json!({"action": "slow", "steps": 100}))),
            control,
        )
        .await);
    assert_eq!(e.category, ErrorCategory::Resource, "{e}");
    assert!(e.message.contains("SIGKILL"), "{}", e.message);
    let out = run(
        &b,
        CallRequest::execute(kwargs(json!({"action": "echo", "text": "again"}))),
    )
    .await
    .unwrap();
    assert_eq!(out["text"], "again");
    assert_ne!(b.pid(), Some(pid));
    assert!(events.types().contains(&"worker_died".to_owned()));
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn forced_cancel_kills_a_worker_that_ignores_cancel() {
    let (b, _, _) = echo().await;
    // `slow` honours check_cancel only between steps: with 30 s steps, only a kill stops it.
    b.initialize(json!({"step_seconds": 30.0})).await.unwrap();
    let pid = b.pid().unwrap();
    let control = Arc::new(CallControl::new());
    let c2 = Arc::clone(&control);
    tokio::spawn(async move {
        cjm_tests::until_progress(&c2).await;
        c2.force_cancel();
    });
    let r = b
        .call(
            CallRequest::execute(kwargs(json!({"action": "slow", "steps": 2}))),
            control,
        )
        .await;
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    let out = run(
        &b,
        CallRequest::execute(kwargs(json!({"action": "echo", "text": "back"}))),
    )
    .await
    .unwrap();
    assert_eq!(out["text"], "back");
    assert_ne!(b.pid(), Some(pid));
    b.shutdown().await.unwrap();
}

fn fake(mode: &str) -> WorkerSpec {
    let script = repo_root().join("tests/fixtures/fake_worker.py");
    let mut spec = WorkerSpec::native(
        format!("fake-{mode}"),
        &["python3".into(), script.display().to_string(), mode.into()],
    )
    .unwrap();
    spec.ready_timeout = Duration::from_secs(2);
    spec
}

async fn start(spec: WorkerSpec) -> Result<NativeBackend, Error> {
    NativeBackend::start(
        spec,
        RuntimeKind::Native,
        Arc::new(NoDiagnostics),
        Arc::new(Events::default()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_that_fail_to_start_are_clear_errors_with_their_last_lines() {
    let e = start(fake("exit")).await.unwrap_err().to_string();
    assert!(
        e.contains("fake-exit") && e.contains("exited with code 3"),
        "{e}"
    );
    assert!(e.contains("fatal: no model weights found"), "{e}");

    let e = start(fake("never")).await.unwrap_err().to_string();
    assert!(
        e.contains("fake-never") && e.contains("did not become ready"),
        "{e}"
    );
    assert!(e.contains("loading forever"), "{e}");

    let e = start(fake("garbage")).await.unwrap_err().to_string();
    assert!(e.contains("fake-garbage") && e.contains("non-JSON"), "{e}");

    let missing = WorkerSpec::native("ghost", &["/no/such/worker".into()]).unwrap();
    let e = start(missing).await.unwrap_err().to_string();
    assert!(e.contains("/no/such/worker"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unload_kills_the_workers_grandchildren() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pids");
    let spec = fake("grandchild").env("FAKE_WORKER_PIDFILE", pidfile.display().to_string());
    let b = start(spec).await.unwrap();
    let pids = std::fs::read_to_string(&pidfile).unwrap();
    let pids: Vec<i32> = pids
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let alive = |pid: i32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    assert!(pids.iter().all(|&p| alive(p)));
    b.shutdown().await.unwrap();
    // The grandchild is reparented to init and reaped there; give it a moment.
    for _ in 0..100 {
        if !pids.iter().any(|&p| alive(p)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !pids.iter().any(|&p| alive(p)),
        "worker and grandchild are gone: {pids:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_exit_when_their_host_is_killed() {
    use std::io::BufRead as _;
    let mut host = std::process::Command::new(env!("CARGO_BIN_EXE_host_child"))
        .arg(python_with_substrate())
        .arg(echo_capability_dir())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(host.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let worker: i32 = line.trim().parse().unwrap();
    let alive = |pid: i32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    assert!(alive(worker));
    host.kill().unwrap(); // SIGKILL: the host gets no chance to clean up
    host.wait().unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if !alive(worker) || is_zombie(worker) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gone,
        "worker {worker} still running 5 s after its host died"
    );
}

pub(crate) fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread")]
async fn python_worker_streams_ndjson_and_ends_a_failed_stream_with_its_error() {
    let (b, _, _) = echo().await;
    let mut s = b
        .call_stream(
            CallRequest::execute(kwargs(json!({"n": 3}))),
            Arc::new(CallControl::new()),
        )
        .await
        .unwrap();
    let mut chunks = Vec::new();
    while let Some(item) = s.recv().await {
        chunks.push(item.unwrap());
    }
    assert_eq!(
        chunks,
        [
            json!({"i": 0, "text": "0"}),
            json!({"i": 1, "text": "1"}),
            json!({"i": 2, "text": "2"})
        ]
    );

    let mut s = b
        .call_stream(
            CallRequest::execute(kwargs(json!({"n": 5, "fail_at": 2}))),
            Arc::new(CallControl::new()),
        )
        .await
        .unwrap();
    let mut items = Vec::new();
    while let Some(item) = s.recv().await {
        items.push(item);
    }
    assert_eq!(items.len(), 3);
    let Err(Error::Job(e)) = &items[2] else {
        panic!("{:?}", items[2])
    };
    assert_eq!(
        (e.category, e.retry_after_seconds),
        (ErrorCategory::Transient, Some(1.0))
    );
    assert!(e.message.contains("stream failed at 2"));
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn python_log_records_and_output_land_in_our_diagnostics_store_stamped_with_the_job() {
    use cjm_host::config::HostConfig;
    use cjm_host::store::{ChunkQuery, DiagnosticsStore, RecordQuery};
    let dir = tempfile::tempdir().unwrap();
    let config = HostConfig::builder().data_dir(dir.path()).build().unwrap();
    config.ensure_layout().unwrap();
    let store = Arc::new(DiagnosticsStore::open(&config.diagnostics_db_path()).unwrap());
    let writer = Arc::new(store.writer().unwrap());
    let spec = echo_spec().with_host_env(&config).unwrap();
    let b = NativeBackend::start(
        spec,
        RuntimeKind::Python,
        writer.clone(),
        Arc::new(Events::default()),
    )
    .await
    .unwrap();
    b.initialize(json!({})).await.unwrap();
    let session = b.session_id().unwrap();
    // With a key cjm-substrate's envelope does not have (the trace context this host adds):
    // the Python worker still reads the job id from it.
    let req = CallRequest::execute(kwargs(json!({"action": "log"}))).with_envelope(Envelope {
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        ..Envelope::for_job("job-logs")
    });
    assert_eq!(run(&b, req).await.unwrap(), json!({"logged": 4}));
    assert!(config.capability_data_dir("cjm-capability-echo").is_dir());
    b.shutdown().await.unwrap();
    writer.flush().unwrap();

    let records = store
        .query_records(&RecordQuery {
            job_id: Some("job-logs".into()),
            ..RecordQuery::default()
        })
        .unwrap();
    let seen: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.level.as_str(), r.message.as_str()))
        .collect();
    for expected in [
        ("INFO", "info line"),
        ("WARNING", "warning line"),
        ("ERROR", "error with traceback"),
    ] {
        assert!(seen.contains(&expected), "{expected:?} not in {seen:?}");
    }
    assert!(
        records
            .iter()
            .all(|r| r.worker_session_id.as_deref() == Some(session.as_str()))
    );
    assert!(records.iter().any(|r| {
        r.exc_text
            .as_deref()
            .is_some_and(|t| t.contains("ZeroDivisionError"))
    }));
    let chunks = store
        .query_chunks(&ChunkQuery {
            worker_session_id: Some(session),
            ..ChunkQuery::default()
        })
        .unwrap();
    assert!(
        chunks
            .iter()
            .any(|c| c.stream == "stdout" && c.content == "a bare print to stdout"),
        "{chunks:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prefetch_without_progress_is_stopped_at_the_stall_threshold() {
    let mut spec = fake("stall");
    spec.prefetch_stall = Duration::from_secs(1);
    let events = Arc::new(Events::default());
    let b = NativeBackend::start(
        spec,
        RuntimeKind::Native,
        Arc::new(NoDiagnostics),
        events.clone(),
    )
    .await
    .unwrap();
    let e = match b.prefetch().await {
        Err(Error::Job(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(e.category, ErrorCategory::Transient);
    assert!(
        e.message.contains("prefetch made no progress"),
        "{}",
        e.message
    );
    assert!(b.pid().is_none(), "the stalled worker was stopped");
    assert!(events.types().contains(&"worker_stopped".to_owned()));
}

/// A worker that dies at every start once its environment broke: respawns wait a growing
/// backoff (journaled), then the instance is marked failed (journaled, in its health) and
/// spawns nothing more; the host keeps serving its other capabilities.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_looping_worker_backs_off_then_is_marked_failed() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken");
    let script = repo_root().join("tests/fixtures/fake_worker.py");
    let mut install =
        cjm_tests::native_install(&["python3", &script.display().to_string(), "flaky"]);
    install["env_vars"] = json!({"FAKE_WORKER_BROKEN": broken});
    cjm_tests::write_manifest(dir.path(), "flaky", install);
    cjm_tests::write_manifest(
        dir.path(),
        "noop",
        cjm_tests::wasm_install(cjm_tests::fixtures::NOOP, json!({})),
    );
    let h = cjm_host::Host::builder()
        .data_dir(dir.path())
        .load("flaky")
        .load("noop")
        .build()
        .await
        .unwrap();
    let m = h.manager();
    let pid = m.instance("flaky").unwrap().backend().pid().unwrap();
    std::fs::write(&broken, "").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut last = None;
    for _ in 0..20 {
        match m
            .call("flaky", CallRequest::execute(kwargs(json!({}))))
            .await
        {
            Err(Error::Job(e)) if e.message.contains("crash-looping") => {
                last = Some(e);
                break;
            }
            _ => {}
        }
    }
    let e = last.expect("the loop was detected");
    assert_eq!(e.category, ErrorCategory::Fatal);
    let health = m
        .instance("flaky")
        .unwrap()
        .backend()
        .health()
        .await
        .unwrap();
    assert_eq!(health["status"], "failed", "{health}");
    let rows = m
        .journal()
        .query(&cjm_host::store::JournalQuery::default())
        .unwrap();
    let delays: Vec<f64> = rows
        .iter()
        .filter(|r| r.event_type == "worker_restart_scheduled")
        .map(|r| r.payload["delay_ms"].as_f64().unwrap())
        .collect();
    assert!(delays.len() >= 3, "{delays:?}");
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "growing: {delays:?}"
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.event_type == "worker_crash_loop")
            .count(),
        1
    );
    // The other capability still serves.
    m.call("noop", CallRequest::execute(kwargs(json!({}))))
        .await
        .unwrap();
    h.shutdown().await.unwrap();
}
