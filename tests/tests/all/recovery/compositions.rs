//! Compositions of a gone or stopping host: resumed from their journaled results, finished
//! by the next host, and a cancelled one stays cancelled.

use super::*;

/// A composition whose host went away mid-run resumes on the host that reconciles it: the
/// completed node keeps its result (kept by reference past 64 KiB) and is not rerun, a
/// running member is retried by its policy, a waiting member whose bound kwargs were too
/// large to journal is bound again in a new job, and the nodes that had no job yet run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_composition_of_a_gone_host_resumes_from_its_journaled_results() {
    use cjm_host::queue::{Composition, Node, OutputRef};
    let dir = data_dir();
    let d = dir.path().to_owned();
    let big = "y".repeat(70_000);
    // Host A, on its own runtime, one lane: `a` completes, `z` runs, `b` waits behind it,
    // `c` has no job yet; then A goes away.
    let (comp, a_job, z_job, b_job) = gone_host(dir.path(), move || async move {
        let a = Host::builder()
            .data_dir(&d)
            .queue(QueueConfig {
                max_concurrent_lanes: 1,
                recover: false,
                retry_defaults: [(
                    "probe".to_owned(),
                    cjm_host::queue::RetryPolicy::attempts(2),
                )]
                .into(),
                ..QueueConfig::default()
            })
            .load("probe")
            .build()
            .await
            .unwrap();
        let q = a.queue();
        let warm = q
            .submit(JobSpec::execute("probe", kwargs(json!({"action": "echo"}))))
            .await
            .unwrap();
        q.wait(&warm, None).await.unwrap();
        let comp = q
            .submit_composition(Composition::new(vec![
                Node::new("a", "probe")
                    .arg("action", json!("echo"))
                    .arg("text", json!(big)),
                Node::new("z", "probe")
                    .arg("action", json!("sleep"))
                    .arg("seconds", json!(1.5)),
                Node::new("b", "probe")
                    .arg("action", json!("echo"))
                    .bind("text", OutputRef::field("a", "text")),
                Node::new("c", "probe")
                    .arg("action", json!("echo"))
                    .arg("text", json!("done"))
                    .bind("n", OutputRef::field("b", "length")),
            ]))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let (a_job, z_job, b_job) = loop {
            let run = q.composition(&comp).unwrap();
            let job = |n: &str| run.nodes[n].job_id.clone();
            let running = |j: &Option<String>| {
                j.as_ref()
                    .and_then(|j| q.get(j))
                    .is_some_and(|j| j.status == JobStatus::Running)
            };
            if run.nodes["a"].state == NodeState::Completed
                && running(&job("z"))
                && job("b").is_some()
            {
                break (job("a").unwrap(), job("z").unwrap(), job("b").unwrap());
            }
            assert!(Instant::now() < deadline, "{run:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        (a, (comp, a_job, z_job, b_job))
    });
    // A's node result is kept by reference.
    let result_file = dir.path().join(format!("payloads/{a_job}.result.json"));
    assert!(result_file.exists());

    let b = recovering_host(dir.path()).await;
    let qb = b.queue();
    qb.reconcile().await.unwrap();
    let run = qb
        .wait_composition(&comp, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(run.status, NodeState::Completed, "{run:?}");
    for node in ["a", "z", "b", "c"] {
        assert_eq!(
            run.nodes[node].state,
            NodeState::Completed,
            "{node}: {run:?}"
        );
    }
    // `a` was not rerun; `z` is the same job on its second attempt; `b` is a new job.
    assert_eq!(run.nodes["a"].job_id.as_deref(), Some(a_job.as_str()));
    assert_eq!(run.nodes["a"].result.as_ref().unwrap()["length"], 70_000);
    assert_eq!(run.nodes["z"].job_id.as_deref(), Some(z_job.as_str()));
    assert_eq!(qb.get(&z_job).unwrap().retry_count, 1);
    assert_ne!(run.nodes["b"].job_id.as_deref(), Some(b_job.as_str()));
    let c = run.nodes["c"].result.as_ref().unwrap();
    assert_eq!(c["kwargs"]["n"], 70_000, "{c}");
    b.shutdown().await.unwrap();

    let journal = JournalStore::open(&dir.path().join("journal.db")).unwrap();
    let rows = journal
        .query(&cjm_host::store::JournalQuery {
            composition_id: Some(comp.clone()),
            ..Default::default()
        })
        .unwrap();
    let count = |t: &str| rows.iter().filter(|r| r.event_type == t).count();
    assert_eq!(count("composition_adopted"), 1);
    assert_eq!(count("composition_finished"), 1);
    let submitted_a = rows
        .iter()
        .filter(|r| r.event_type == "job_submitted" && r.node_id.as_deref() == Some("a"))
        .count();
    assert_eq!(submitted_a, 1, "node a ran once");
    // Every member job has exactly one outcome (the old `b` ended, re-bound).
    let counts = terminal_counts(dir.path());
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    assert_eq!(
        journal
            .query(&cjm_host::store::JournalQuery::job(b_job.clone()))
            .unwrap()
            .iter()
            .filter_map(|r| r
                .payload
                .get("to")
                .and_then(|t| t.as_str())
                .map(str::to_owned))
            .next_back()
            .as_deref(),
        Some("failed")
    );
    // The result kept for the resume is gone with the composition.
    for _ in 0..100 {
        if !result_file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !result_file.exists(),
        "a node's result file outlived its composition"
    );
}

/// On a warm probe, a composition of two nodes: `names.0` sleeps `seconds`, then `names.1`
/// echoes bound to it. Returns the composition and the first node's job once it runs.
async fn sleep_then_echo(
    q: &cjm_host::queue::JobQueue,
    names: (&str, &str),
    seconds: f64,
) -> (String, String) {
    use cjm_host::queue::{Composition, Node, OutputRef};
    let warm = q
        .submit(JobSpec::execute("probe", kwargs(json!({"action": "echo"}))))
        .await
        .unwrap();
    q.wait(&warm, None).await.unwrap();
    let comp = q
        .submit_composition(Composition::new(vec![
            Node::new(names.0, "probe")
                .arg("action", json!("sleep"))
                .arg("seconds", json!(seconds)),
            Node::new(names.1, "probe")
                .arg("action", json!("echo"))
                .bind("n", OutputRef::field(names.0, "slept")),
        ]))
        .await
        .unwrap();
    loop {
        let run = q.composition(&comp).unwrap();
        if let Some(job) = run.nodes[names.0].job_id.clone()
            && q.get(&job).is_some_and(|j| j.status == JobStatus::Running)
        {
            return (comp, job);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A host that stops leaving its work to the next (`stop_leaving_pending`, as `cjm-ctl serve`
/// on SIGTERM) lets a running member finish but starts no further node and does not end
/// the composition: the host that reconciles it runs the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_composition_left_by_a_stopping_host_is_finished_by_the_next() {
    let dir = data_dir();
    let a = recovering_host(dir.path()).await;
    let q = a.queue();
    let (comp, first) = sleep_then_echo(q, ("first", "second"), 0.5).await;
    a.stop_leaving_pending(Duration::from_secs(10))
        .await
        .unwrap();
    let run = q.composition(&comp).unwrap();
    assert_eq!(run.nodes["first"].state, NodeState::Completed);
    assert_eq!(run.nodes["second"].state, NodeState::Pending, "{run:?}");
    assert!(run.nodes["second"].job_id.is_none());
    drop(a);
    let b = recovering_host(dir.path()).await;
    b.queue().reconcile().await.unwrap();
    let run = b
        .queue()
        .wait_composition(&comp, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(run.status, NodeState::Completed, "{run:?}");
    assert_eq!(run.nodes["first"].job_id.as_deref(), Some(first.as_str()));
    assert_eq!(
        run.nodes["second"].result.as_ref().unwrap()["kwargs"]["n"],
        0.5
    );
    b.shutdown().await.unwrap();
    let comps = composition_counts(dir.path());
    assert_eq!(comps[&comp], 1, "one end");
}

/// A composition cancelled as a unit whose host went away is not run on by the host that
/// resumes it: a member its retry policy would have adopted is cancelled before it runs
/// again, and the composition ends cancelled, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_composition_of_a_gone_host_stays_cancelled() {
    let dir = data_dir();
    let d = dir.path().to_owned();
    let (comp, slow) = gone_host(dir.path(), move || async move {
        let a = Host::builder()
            .data_dir(&d)
            .queue(QueueConfig {
                recover: false,
                // The cooperative phase outlasts the test: the member is still running.
                cancel_timeout: Duration::from_secs(60),
                retry_defaults: [(
                    "probe".to_owned(),
                    cjm_host::queue::RetryPolicy::attempts(3),
                )]
                .into(),
                ..QueueConfig::default()
            })
            .load("probe")
            .build()
            .await
            .unwrap();
        let q = a.queue();
        let (comp, slow) = sleep_then_echo(q, ("slow", "after"), 30.0).await;
        q.cancel_composition(&comp).unwrap();
        (a, (comp, slow))
    });
    let b = recovering_host(dir.path()).await;
    b.queue().reconcile().await.unwrap();
    let run = b
        .queue()
        .wait_composition(&comp, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(run.status, NodeState::Cancelled, "{run:?}");
    // The running member was adopted for its next attempt and cancelled before it ran.
    let job = b.queue().get(&slow).unwrap();
    assert_eq!(job.status, JobStatus::Cancelled, "{job:?}");
    assert!(job.started_at.is_none(), "{job:?}");
    assert!(run.nodes["after"].job_id.is_none(), "{run:?}");
    b.shutdown().await.unwrap();
    assert_eq!(composition_counts(dir.path())[&comp], 1);
    let counts = terminal_counts(dir.path());
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}
