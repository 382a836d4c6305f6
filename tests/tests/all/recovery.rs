//! Nothing lost, nothing orphaned: journal-first submission, host leases, reconciliation of
//! gone hosts (a real host process SIGKILLed mid-burst), orphan cancels, and a worker's whole
//! subtree dying with its host.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead as _;
use std::path::Path;
use std::time::{Duration, Instant};

use cjm_host::Host;
use cjm_host::config::QueueConfig;
use cjm_host::queue::{JobSpec, JobStatus, NodeState};
use cjm_host::store::{JournalStore, OrphanCancel};
use cjm_tests::{fixtures, kwargs, native_install, wasm_install, write_manifest};
use serde_json::json;

mod compositions;

fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_manifest(
        d,
        "noop",
        wasm_install(fixtures::NOOP, json!({"max_concurrency": 4})),
    );
    write_manifest(
        d,
        "probe",
        native_install(&[env!("CARGO_BIN_EXE_probe_worker")]),
    );
    dir
}

async fn recovering_host(dir: &Path) -> Host {
    Host::builder()
        .data_dir(dir)
        .queue(QueueConfig {
            max_concurrent_lanes: 4,
            lease_ttl: Duration::from_secs(2),
            ..QueueConfig::default()
        })
        .load("noop")
        .load("probe")
        .build()
        .await
        .unwrap()
}

/// A small deterministic generator for the kill moments (seeded from the clock, printed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// Every SQLite store in the data dir passes `PRAGMA integrity_check`.
fn integrity(dir: &Path) {
    for name in [
        "journal.db",
        "diagnostics.db",
        "capability_configs.db",
        "empirical_resources.db",
    ] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let c = rusqlite::Connection::open(&path).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "{name} fails its integrity check");
    }
}

/// Per job with a submission row: its terminal rows.
fn terminal_counts(dir: &Path) -> BTreeMap<String, usize> {
    let c = rusqlite::Connection::open(dir.join("journal.db")).unwrap();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut stmt = c
        .prepare("SELECT DISTINCT job_id FROM journal WHERE event_type = 'job_submitted'")
        .unwrap();
    for id in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
        counts.insert(id.unwrap(), 0);
    }
    let mut stmt = c
        .prepare(
            "SELECT job_id FROM journal WHERE event_type = 'state_transition' \
             AND json_extract(payload, '$.to') IN ('completed', 'failed', 'cancelled')",
        )
        .unwrap();
    for id in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
        *counts.entry(id.unwrap()).or_default() += 1;
    }
    counts
}

/// Per submitted composition: its `composition_finished` rows.
fn composition_counts(dir: &Path) -> BTreeMap<String, usize> {
    let c = rusqlite::Connection::open(dir.join("journal.db")).unwrap();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut stmt = c
        .prepare(
            "SELECT composition_id, event_type FROM journal WHERE event_type IN \
             ('composition_submitted', 'composition_finished') ORDER BY seq",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap();
    for row in rows {
        let (id, kind) = row.unwrap();
        let n = counts.entry(id).or_default();
        if kind == "composition_finished" {
            *n += 1;
        }
    }
    counts
}

/// Runs `body` as a host process of its own would (its own runtime, in a thread of its
/// own) on `dir`; the host it returns then goes away without finishing anything, and
/// `body`'s ids come back once the journal says it is gone (its journal writer marks it
/// stopped after the runtime is gone: a host reconciling before that still sees it alive).
fn gone_host<T, F>(dir: &Path, body: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = (Host, T)>,
{
    let ids = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (host, ids) = rt.block_on(body());
        drop(host);
        rt.shutdown_timeout(Duration::from_secs(5));
        ids
    })
    .join()
    .unwrap();
    let journal = JournalStore::open(&dir.join("journal.db")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal
        .hosts()
        .unwrap()
        .iter()
        .any(|h| h.stopped_at.is_none())
    {
        assert!(
            Instant::now() < deadline,
            "the gone host was never marked stopped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ids
}

async fn until_idle(host: &Host) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = host.queue().stats();
        if s.pending == 0 && s.running == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the queue never drained: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A host process running a mixed wasm + native burst is SIGKILLed at random moments; after
/// each kill a new host reconciles: every store passes its integrity check, every job id the
/// dead host acknowledged has its rows, and once reconciled every job has exactly one
/// terminal row and every composition (resumed from its journaled results) one end. `CJM_CRASH_ROUNDS` sets the rounds (5 by default; more for a soak).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_burst_loses_nothing_and_leaves_no_orphan() {
    let rounds: usize = std::env::var("CJM_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("crash test: {rounds} rounds, seed {seed}");
    let mut rng = Lcg(seed);
    let dir = data_dir();
    let mut killed: Vec<u32> = Vec::new();
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    let (mut adopted, mut ended) = (0, 0);
    for round in 0..rounds {
        let mut child = KillOnDrop(
            std::process::Command::new(env!("CARGO_BIN_EXE_burst_host"))
                .arg(dir.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let child = &mut child.0;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the first acknowledged ids, then a random moment in the burst.
        let first = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        acknowledged.insert(first);
        let lasts = Duration::from_millis(50 + rng.next(700));
        let until = Instant::now() + lasts;
        while Instant::now() < until {
            if let Ok(id) = rx.recv_timeout(Duration::from_millis(5)) {
                acknowledged.insert(id);
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        killed.push(child.id());
        // Every id it printed before dying was acknowledged.
        reader.join().unwrap();
        acknowledged.extend(rx.try_iter());

        integrity(dir.path());
        let counts = terminal_counts(dir.path());
        let missing: Vec<&String> = acknowledged
            .iter()
            .filter(|id| match id.strip_prefix("composition ") {
                Some(comp) => !composition_counts(dir.path()).contains_key(comp),
                None => !counts.contains_key(*id),
            })
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged jobs without a row: {missing:?}"
        );

        // A new host reconciles the dead one (its process is gone: no lease wait).
        let host = recovering_host(dir.path()).await;
        let (a, e) = host.queue().reconcile().await.unwrap();
        adopted += a;
        ended += e;
        until_idle(&host).await;
        host.shutdown().await.unwrap();
        let counts = terminal_counts(dir.path());
        let open: Vec<_> = counts.iter().filter(|(_, n)| **n == 0).collect();
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            open.is_empty(),
            "round {round}: jobs with no outcome: {open:?}"
        );
        assert!(
            twice.is_empty(),
            "round {round}: jobs with two outcomes: {twice:?}"
        );
        let comps = composition_counts(dir.path());
        let unsettled: Vec<_> = comps.iter().filter(|(_, n)| **n != 1).collect();
        assert!(
            unsettled.is_empty(),
            "round {round}: compositions without exactly one end: {unsettled:?}"
        );
    }
    integrity(dir.path());
    let resumed: i64 = rusqlite::Connection::open(dir.path().join("journal.db"))
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM journal WHERE event_type = 'composition_adopted'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    eprintln!(
        "crash test: {} acknowledged jobs and compositions, {adopted} jobs adopted, {ended} ended, {resumed} compositions resumed by reconciliation",
        acknowledged.len()
    );
    // A killed host's worker socket directories are removed by the next host process that
    // spawns a worker (each round's child does, for the rounds before it).
    let left: Vec<String> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| {
            killed[..killed.len().saturating_sub(1)]
                .iter()
                .any(|pid| name.starts_with(&format!("cjm-worker-{pid}-")))
        })
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // The dead hosts are all reconciled; the journal names who did it.
    let journal = JournalStore::open(&dir.path().join("journal.db")).unwrap();
    let hosts = journal.hosts().unwrap();
    assert!(hosts.len() >= 2 * rounds);
    assert!(
        hosts
            .iter()
            .all(|h| h.stopped_at.is_some() || h.reconciled_by.is_some()),
        "{hosts:?}"
    );
}

/// Journal-first: a job accepted by a host that goes away before running it is adopted by
/// the next host (same id, its `job_adopted` row) and runs there; a running job whose policy
/// allows it is retried there, one that does not fails `transient` "host lost"; a job of a
/// gone host can be cancelled by anyone, once; a host's lease expires without heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_a_gone_host_are_adopted_retried_or_ended_once() {
    let dir = data_dir();
    let d = dir.path().to_owned();
    // Host A, on its own runtime (its own "process"): two long jobs run, two wait behind
    // them; then it goes away without finishing any.
    let (a_id, running, retried, waiting, cancelled) = gone_host(dir.path(), move || async move {
        let a = Host::builder()
            .data_dir(&d)
            .queue(QueueConfig {
                max_concurrent_lanes: 2,
                recover: false,
                ..QueueConfig::default()
            })
            .load("probe")
            .load_with("probe", None, Some("probe2".into()))
            .build()
            .await
            .unwrap();
        let q = a.queue();
        // A first run is measured alone: profile both instances first.
        for instance in ["probe", "probe2"] {
            let id = q
                .submit(JobSpec::execute(
                    instance,
                    kwargs(json!({"action": "echo"})),
                ))
                .await
                .unwrap();
            q.wait(&id, None).await.unwrap();
        }
        let sleep = || kwargs(json!({"action": "sleep", "seconds": 30}));
        let running = q.submit(JobSpec::execute("probe", sleep())).await.unwrap();
        let retried = q
            .submit(
                JobSpec::execute("probe2", sleep())
                    .retry(cjm_host::queue::RetryPolicy::attempts(2)),
            )
            .await
            .unwrap();
        let waiting = q
            .submit(JobSpec::execute(
                "probe",
                kwargs(json!({"action": "echo", "text": "adopted"})),
            ))
            .await
            .unwrap();
        let cancelled = q
            .submit(JobSpec::execute("probe", kwargs(json!({"action": "echo"}))))
            .await
            .unwrap();
        while q.running().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // While A lives, its jobs are not orphans.
        let journal = JournalStore::open(&d.join("journal.db")).unwrap();
        assert_eq!(
            journal.cancel_orphan(&cancelled, "test").unwrap(),
            OrphanCancel::NotOrphan
        );
        let a_id = q.host_id().to_owned();
        (a, (a_id, running, retried, waiting, cancelled))
    });
    let journal = JournalStore::open(&dir.path().join("journal.db")).unwrap();
    // Anyone may cancel an orphan, exactly once.
    assert!(matches!(
        journal.cancel_orphan(&cancelled, "test").unwrap(),
        OrphanCancel::Cancelled { .. }
    ));
    assert_eq!(
        journal.cancel_orphan(&cancelled, "test").unwrap(),
        OrphanCancel::Finished
    );

    // Host B reconciles A (it may have done so at start: a gone host is claimed once).
    let b = recovering_host(dir.path()).await;
    let qb = b.queue();
    let first = qb.reconcile().await.unwrap();
    assert_eq!(qb.reconcile().await.unwrap(), (0, 0));
    assert!(first == (0, 0) || first == (2, 1), "{first:?}");
    let a = journal.host(&a_id).unwrap().unwrap();
    assert_eq!(a.reconciled_by.as_deref(), Some(qb.host_id()));

    let job = qb
        .wait(&waiting, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.result.unwrap()["text"], "adopted");
    let lost = qb
        .wait(&running, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(lost.status, JobStatus::Failed);
    let err = lost.error.unwrap();
    assert_eq!(err.category.to_string(), "transient");
    assert!(err.message.contains("host lost"), "{}", err.message);
    // The retried job's second attempt runs here, on an instance B loaded for it.
    for _ in 0..500 {
        if qb
            .get(&retried)
            .is_some_and(|j| j.status == JobStatus::Running)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let job = qb.get(&retried).unwrap();
    assert_eq!((job.status, job.retry_count), (JobStatus::Running, 1));
    qb.cancel(&retried).unwrap();
    let job = qb
        .wait(&retried, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    b.shutdown().await.unwrap();
    let counts = terminal_counts(dir.path());
    assert_eq!(counts.len(), 6);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    // A, were it to come back, could no longer write an outcome.
    assert!(matches!(
        journal.append_batch_as(&a_id, &[cjm_host::store::JournalEvent::new("x")]),
        Err(cjm_host::Error::LeaseLost { .. })
    ));

    // A lease expires without heartbeats, even while its process lives.
    journal.register_host("silent", 0.2).unwrap();
    assert!(
        !journal
            .gone_hosts(cjm_host::store::unix_now())
            .unwrap()
            .iter()
            .any(|(h, _)| h.host_id == "silent")
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let gone = journal.gone_hosts(cjm_host::store::unix_now()).unwrap();
    let (_, why) = gone.iter().find(|(h, _)| h.host_id == "silent").unwrap();
    assert!(why.contains("lease expired"), "{why}");
}

/// A SIGKILLed host leaves no process of a worker's subtree alive after 1 s, a child that
/// started its own session included.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_host_takes_its_workers_detached_children_along() {
    let mut host = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_host_child"))
            .arg("--detach")
            .arg(env!("CARGO_BIN_EXE_probe_worker"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let host = &mut host.0;
    let mut line = String::new();
    std::io::BufReader::new(host.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pids: Vec<i32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{line}");
    let alive = |pid: i32| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && !crate::native::is_zombie(pid)
    };
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");
    // The detached child is in its own session, outside the worker's process group.
    let sid = |pid: i32| nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid))).unwrap();
    // (`setsid` may still be on its way when the probe answers.)
    for _ in 0..100 {
        if sid(pids[0]) != sid(pids[1]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_ne!(sid(pids[0]), sid(pids[1]));
    host.kill().unwrap();
    host.wait().unwrap();
    let killed = Instant::now();
    while pids.iter().any(|&p| alive(p)) && killed.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert!(
        left.is_empty(),
        "still alive 1 s after the host died: {left:?}"
    );
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `Host::shutdown_within` lets a running job finish and its outcome reach the journal
/// before the workers stop; pending jobs are cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_running_jobs_into_the_journal() {
    let dir = data_dir();
    let host = recovering_host(dir.path()).await;
    let q = host.queue();
    let warm = q
        .submit(JobSpec::execute("probe", kwargs(json!({"action": "echo"}))))
        .await
        .unwrap();
    q.wait(&warm, None).await.unwrap();
    let running = q
        .submit(JobSpec::execute(
            "probe",
            kwargs(json!({"action": "sleep", "seconds": 0.5})),
        ))
        .await
        .unwrap();
    let pending = q
        .submit(JobSpec::execute("probe", kwargs(json!({"action": "echo"}))))
        .await
        .unwrap();
    while q.get(&running).unwrap().status != JobStatus::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    host.shutdown_within(Duration::from_secs(10)).await.unwrap();
    let c = rusqlite::Connection::open(dir.path().join("journal.db")).unwrap();
    let outcome = |job: &str| -> String {
        c.query_row(
            "SELECT json_extract(payload, '$.to') FROM journal WHERE job_id = ?1 \
             AND event_type = 'state_transition' ORDER BY seq DESC LIMIT 1",
            [job],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(outcome(&running), "completed");
    assert_eq!(outcome(&pending), "cancelled");
}

/// Kwargs over 64 KiB are journaled by reference to a 0600 file in the data dir (its digest
/// checked when read back), which is removed when the job ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_kwargs_are_journaled_by_reference() {
    use std::os::unix::fs::PermissionsExt;
    let dir = data_dir();
    let host = recovering_host(dir.path()).await;
    let q = host.queue();
    let text = "x".repeat(100 * 1024);
    // A job that runs long enough for its file to be read back while it runs.
    let id = q
        .submit(JobSpec::execute(
            "probe",
            kwargs(json!({"action": "sleep", "seconds": 2.0, "text": text.clone()})),
        ))
        .await
        .unwrap();
    let rows = host
        .manager()
        .journal()
        .query(&cjm_host::store::JournalQuery::job(id.clone()))
        .unwrap();
    let submitted = rows
        .iter()
        .find(|r| r.event_type == "job_submitted")
        .unwrap();
    let record: cjm_host::queue::SpecRecord =
        serde_json::from_value(submitted.payload["spec"].clone()).unwrap();
    assert!(record.kwargs.is_none());
    let reference = record.kwargs_ref.clone().unwrap();
    let file = dir.path().join(&reference.path);
    let spec = record.to_spec(dir.path()).unwrap();
    assert_eq!(spec.request.kwargs["text"], json!(text));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    q.wait(&id, None).await.unwrap();
    for _ in 0..100 {
        if !file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!file.exists(), "the kwargs file outlived its job");
    // A tampered file is refused, not run.
    std::fs::write(&file, b"{\"text\": \"other\"}").unwrap();
    let err = record.to_spec(dir.path()).unwrap_err();
    assert!(err.to_string().contains("digest"), "{err}");
    host.shutdown().await.unwrap();
}
