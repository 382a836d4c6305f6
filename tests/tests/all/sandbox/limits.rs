//! The sandbox's bounds under load: a panicking host import, pool concurrency, progress
//! coalescing and message bounds, log rate limits, result bounds, blocking WASI calls on
//! warm instances, and large results leaving the history.

use super::*;

/// A sink whose `record` panics on one message: a panic inside a host import.
#[derive(Default)]
struct PanickingSink;

impl DiagnosticsSink for PanickingSink {
    fn record(&self, record: DiagnosticRecord) {
        assert_ne!(record.message, "hello from the guest", "the sink fails");
    }
    fn chunk(&self, _: &str, _: &str, _: &str) {}
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_inside_a_host_import_fails_that_call_and_the_next_one_succeeds() {
    let (rt, _dir) = runtime();
    let b = WasmBackend::load(
        &rt,
        Path::new(fixtures::HOSTILE),
        SandboxGrants::default(),
        Arc::new(PanickingSink),
    )
    .await
    .unwrap();
    b.initialize(json!({"label": "configured"})).await.unwrap();
    let before = b.stats().await.unwrap()["instances_discarded"]
        .as_u64()
        .unwrap();
    let log = CallRequest::execute(kwargs(json!({"attack": "log"})));
    let e = job_error(
        b.call(log, Arc::new(CallControl::new())).await,
        "panicking import",
    );
    assert_eq!(e.category, ErrorCategory::Fatal);
    assert!(!e.retriable);
    assert!(e.message.contains("the sink fails"), "{}", e.message);
    let stats = b.stats().await.unwrap();
    assert_eq!(stats["instances_busy"], 0, "the slot was released: {stats}");
    assert_eq!(stats["instances_discarded"].as_u64().unwrap(), before + 1);
    let ok = CallRequest::execute(kwargs(json!({"attack": "echo_config"})));
    assert_eq!(
        b.call(ok, Arc::new(CallControl::new())).await.unwrap(),
        "configured"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_of_n_runs_n_calls_at_once() {
    let g = Guest::new(Way::Fresh, json!({"max_concurrency": 2})).await;
    let b = g.backend.clone().unwrap();
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
    for _ in 0..500 {
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
    let r = g.call(json!({"attack": "ok"})).await;
    assert!(r.unwrap_err().to_string().contains("shut down"));
}

/// A million progress reports reach each subscriber as a bounded number of events ending
/// with the last value; a 1 MiB message is cut to the sandbox's bound.
#[tokio::test(flavor = "multi_thread")]
async fn progress_is_coalesced_and_messages_are_bounded() {
    let g = Guest::new(Way::WarmQueue, json!({})).await;
    let q = g.host().queue();
    let rss_before = rss_kib();
    let mut all = q.subscribe(Scope::All);
    let id = q
        .submit(JobSpec::execute(
            ID,
            kwargs(json!({"attack": "progress_flood", "n": 1_000_000})),
        ))
        .await
        .unwrap();
    let job = q.wait(&id, T).await.unwrap();
    assert_eq!(job.status, JobStatus::Completed, "{job:?}");
    let mut progress = Vec::new();
    while let Some(e) = all.try_next() {
        if e.kind == EventKind::ProgressChanged && e.job_id.as_deref() == Some(&id) {
            progress.push(e.payload);
        }
    }
    assert!(
        !progress.is_empty() && progress.len() < 1_000,
        "{} progress events",
        progress.len()
    );
    let last = progress.last().unwrap();
    assert_eq!(last["progress"], 1.0, "{last}");
    assert_eq!(last["message"], "step 1000000", "{last}");
    assert_eq!(all.dropped(), 0);

    let control = Arc::new(CallControl::new());
    let big = json!({"attack": "big_message", "bytes": 1024 * 1024});
    let m = g.host().manager();
    m.call_with(ID, CallRequest::execute(kwargs(big)), Arc::clone(&control))
        .await
        .unwrap();
    let p = control.progress();
    assert!(p.message.len() < 17 * 1024, "{}", p.message.len());
    assert!(p.message.contains("bytes cut"));
    let longest = g.logged().iter().map(String::len).max().unwrap();
    assert!(longest < 17 * 1024, "{longest}");
    // For the record (RSS is the whole test process's: run alone to read it).
    eprintln!(
        "RSS before the 1M progress reports and the 1 MiB message: {rss_before} KiB, after: {} KiB",
        rss_kib()
    );
}

/// `max_message_bytes` set below its default: progress and log messages are cut to it.
#[tokio::test(flavor = "multi_thread")]
async fn a_smaller_max_message_bytes_cuts_messages_to_it() {
    let g = Guest::new(Way::Fresh, json!({"max_message_bytes": 1024})).await;
    let control = Arc::new(CallControl::new());
    let big = json!({"attack": "big_message", "bytes": 64 * 1024});
    g.call_with(big, Arc::clone(&control)).await.unwrap();
    let p = control.progress();
    assert!(p.message.len() < 2 * 1024, "{}", p.message.len());
    assert!(p.message.contains("bytes cut"), "{}", p.message);
    let longest = g.logged().iter().map(String::len).max().unwrap();
    assert!(longest < 2 * 1024, "{longest}");
}

/// This process's resident set, in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Log records past the per-instance rate are dropped and counted; one warning says so.
#[tokio::test(flavor = "multi_thread")]
async fn log_records_are_rate_limited_per_instance() {
    for way in [Way::Fresh, Way::WarmManager] {
        let g = Guest::new(way, json!({"log_records_per_second": 50})).await;
        let flood = json!({"attack": "log_flood", "n": 10_000});
        let started = Instant::now();
        assert_eq!(g.call(flood).await.unwrap(), 10_000);
        // A burst of one second's worth, then the rate while the flood lasted.
        let allowed = 50 + (50.0 * started.elapsed().as_secs_f64()).ceil() as usize;
        let logged = g.logged();
        let kept = logged.iter().filter(|m| m.starts_with("record ")).count();
        assert!(
            (50..=allowed).contains(&kept),
            "{way:?}: {kept} kept, {allowed} allowed"
        );
        let warning = logged
            .iter()
            .find(|m| m.contains("dropped"))
            .unwrap_or_else(|| panic!("{way:?}: no summary in {:?}", &logged[..3]));
        assert!(warning.contains("log_records_per_second"), "{warning}");
        let stats = match way {
            Way::Fresh => g.backend.as_ref().unwrap().stats().await,
            _ => {
                g.host()
                    .manager()
                    .instance(ID)
                    .unwrap()
                    .backend()
                    .stats()
                    .await
            }
        }
        .unwrap();
        assert_eq!(
            stats["log_records_dropped"].as_u64().unwrap() as usize,
            10_000 - kept,
            "{stats}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn results_past_the_bound_are_typed_resource_errors() {
    for way in WAYS {
        let g = Guest::new(way, json!({"max_result_bytes": 1024})).await;
        let fits = json!({"attack": "big_result", "bytes": 1000});
        assert_eq!(g.call(fits).await.unwrap().as_str().unwrap().len(), 1000);
        let e = job_error(
            g.call(json!({"attack": "big_result", "bytes": 4096})).await,
            "big result",
        );
        assert_eq!(e.category, ErrorCategory::Resource, "{way:?}");
        assert!(!e.retriable);
        assert!(e.message.contains("max_result_bytes"), "{}", e.message);
    }
}

/// Warm calls keep working when many run at once on a 2-worker runtime: nothing blocks a
/// runtime thread (granted reads and captured output included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_warm_calls_with_blocking_wasi_operations_never_wedge_the_runtime() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("hello.txt"), "hi").unwrap();
    let sandbox = json!({
        "capture_output": true,
        "max_concurrency": 2,
        "preopens": [{"host": data.path(), "guest": "/data", "mode": "ro"}],
    });
    let g = Arc::new(Guest::new(Way::WarmQueue, sandbox).await);
    let q = g.host().queue().clone();
    let seen = Arc::new(Mutex::new(0));
    let mut ids = Vec::new();
    for i in 0..200 {
        let args = if i % 2 == 0 {
            json!({"attack": "read_file", "path": "/data/hello.txt"})
        } else {
            json!({"attack": "print"})
        };
        let mut spec = JobSpec::execute(ID, kwargs(args));
        spec.timeout = Some(Duration::from_secs(20));
        ids.push(q.submit(spec).await.unwrap());
    }
    for id in ids {
        let job = tokio::time::timeout(Duration::from_secs(60), q.wait(&id, T))
            .await
            .expect("the runtime is not wedged")
            .unwrap();
        assert_eq!(job.status, JobStatus::Completed, "{job:?}");
        *seen.lock().unwrap() += 1;
    }
    assert_eq!(*seen.lock().unwrap(), 200);
}

/// A large result leaves the in-memory history once delivered; with nobody waiting when the
/// job ends, at once. Small results stay.
#[tokio::test(flavor = "multi_thread")]
async fn large_results_leave_the_history_after_delivery() {
    let g = Guest::new(Way::WarmQueue, json!({})).await;
    let q = g.host().queue();
    let run = |bytes: usize| async move {
        let mut events = q.subscribe(Scope::All);
        let id = q
            .submit(JobSpec::execute(
                ID,
                kwargs(json!({"attack": "big_result", "bytes": bytes})),
            ))
            .await
            .unwrap();
        {
            // Wait through events, not `wait`: nobody waits on the job itself.
            loop {
                let e = events.next().await.unwrap();
                if e.job_id.as_deref() == Some(&id)
                    && e.kind == EventKind::StateTransition
                    && e.payload["to"] == "completed"
                {
                    break;
                }
            }
            q.wait(&id, T).await.unwrap()
        }
    };
    let small = run(1000).await;
    assert_eq!(small.result.unwrap().as_str().unwrap().len(), 1000);
    assert_eq!(small.result_dropped_bytes, None);
    let big = run(2 * 1024 * 1024).await;
    assert_eq!(big.status, JobStatus::Completed);
    assert!(big.result.is_none());
    assert!(big.result_dropped_bytes.unwrap() > 2 * 1024 * 1024);
}
