//! Refusals (deep kwargs, a full queue), events (journal first, bounded subscribers, progress), and a journal that fails or is held by another connection.

use super::*;

/// Input that used to kill the host or grow it without bound is refused with typed errors:
/// kwargs nested 10,000 deep (at submit and on a direct call), and waiting jobs past the
/// queue's byte budget; the queue keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_kwargs_and_a_full_queue_are_typed_refusals() {
    let dir = data_dir();
    let h = Host::builder()
        .data_dir(dir.path())
        .queue(QueueConfig {
            max_concurrent_lanes: 1,
            max_pending_bytes: 64 * 1024,
            cancel_timeout: Duration::from_millis(300),
            ..QueueConfig::default()
        })
        .load_with("probe", None, Some("p".to_owned()))
        .build()
        .await
        .unwrap();
    let q = h.queue();
    let deep = || {
        // Built by hand: `json!` would deep-copy (recursively) at every level.
        let mut v = json!("bottom");
        for _ in 0..10_000 {
            v = Value::Object(serde_json::Map::from_iter([("d".to_owned(), v)]));
        }
        serde_json::Map::from_iter([("nested".to_owned(), v)])
    };
    match q.submit(JobSpec::execute("p", deep())).await {
        Err(Error::Job(e)) => {
            assert_eq!(e.category, cjm_guest::contract::ErrorCategory::UserInput);
            assert_eq!(e.fields_invalid, Some(vec!["nested".to_owned()]));
        }
        other => panic!("{other:?}"),
    }
    let direct = h
        .manager()
        .call("p", cjm_host::backend::CallRequest::execute(deep()))
        .await;
    assert!(matches!(direct, Err(Error::Job(_))), "{direct:?}");

    // One job runs (lane 1), the rest wait: 1 KiB each against a 64 KiB budget.
    let busy = q
        .submit(JobSpec::execute(
            "p",
            probe("sleep", json!({"seconds": 60})),
        ))
        .await
        .unwrap();
    until_started(q, &busy).await;
    let filler = "x".repeat(1024);
    let mut waiting = Vec::new();
    let full = loop {
        match q
            .submit(JobSpec::execute(
                "p",
                probe("echo", json!({"text": filler})),
            ))
            .await
        {
            Ok(id) => waiting.push(id),
            Err(e) => break e,
        }
        assert!(waiting.len() < 1000, "never full");
    };
    assert!(
        matches!(full, Error::Queue(QueueError::Full { .. })),
        "{full}"
    );
    assert_eq!(
        full.to_job_error().category,
        cjm_guest::contract::ErrorCategory::Resource
    );
    assert!((50..70).contains(&waiting.len()), "{}", waiting.len());
    q.cancel(&busy).unwrap();
    for id in &waiting {
        assert_eq!(q.wait(id, T).await.unwrap().status, JobStatus::Completed);
    }
    // Drained: the budget is free again.
    let again = q
        .submit(JobSpec::execute(
            "p",
            probe("echo", json!({"text": filler})),
        ))
        .await
        .unwrap();
    assert_eq!(
        q.wait(&again, T).await.unwrap().status,
        JobStatus::Completed
    );
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_journal_first_bounded_subscribers_and_progress() {
    let dir = data_dir();
    let h = host(dir.path(), 4, &[("noop", "n"), ("probe", "p")]).await;
    let q = h.queue();
    let mut all = q.subscribe(Scope::All);
    let slow_reader = q.subscribe(Scope::All);
    let id = q
        .submit(JobSpec::execute("p", probe("slow", json!({"steps": 8}))))
        .await
        .unwrap();
    let mut job_events = Vec::new();
    while let Some(e) = all.next().await {
        if e.job_id.as_deref() == Some(id.as_str()) {
            let end = e.kind == EventKind::StateTransition && e.payload["to"] == "completed";
            job_events.push(e);
            if end {
                break;
            }
        }
    }
    let kinds: Vec<EventKind> = job_events
        .iter()
        .map(|e| e.kind)
        .filter(|k| k.journaled())
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::JobSubmitted,
            EventKind::AdmissionDecided,
            EventKind::StateTransition,
            EventKind::StateTransition
        ]
    );
    // Journal-class events reach subscribers with the seq of the row already written.
    let journal = rows(q, &id);
    for e in job_events.iter().filter(|e| e.kind.journaled()) {
        let seq = e.seq.expect("journaled before fan-out");
        assert!(
            journal
                .iter()
                .any(|r| r.seq == Some(seq) && r.event_type == e.kind.as_str())
        );
    }
    // Progress polled from the native worker and snapshots of its processes are live only.
    assert!(
        job_events
            .iter()
            .any(|e| e.kind == EventKind::ProgressChanged && e.seq.is_none())
    );
    let snapshot = job_events
        .iter()
        .find(|e| e.kind == EventKind::ResourceSnapshot)
        .expect("a resource snapshot");
    assert!(
        snapshot.payload["memory_rss_mb"].as_f64().unwrap() > 0.0,
        "{:?}",
        snapshot.payload
    );
    assert!(
        journal
            .iter()
            .all(|r| r.event_type != "progress_changed" && r.event_type != "resource_snapshot")
    );

    // A subscriber that never reads loses events, counted; the queue does not wait for it.
    let ids = q
        .submit_many(
            (0..600)
                .map(|_| JobSpec::execute("n", kwargs(json!({}))))
                .collect(),
        )
        .await
        .unwrap();
    for i in &ids {
        assert_eq!(q.wait(i, T).await.unwrap().status, JobStatus::Completed);
    }
    assert!(
        slow_reader.dropped() > 0,
        "dropped {}",
        slow_reader.dropped()
    );
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_journal_append_wedges_the_queue_until_a_write_goes_through() {
    let dir = data_dir();
    let h = host(dir.path(), 4, &[("noop", "n")]).await;
    let q = h.queue();
    let ok = q
        .submit(JobSpec::execute("n", kwargs(json!({}))))
        .await
        .unwrap();
    q.wait(&ok, T).await.unwrap();
    assert_eq!(q.wedged(), None);
    // Break the journal under the queue (another connection drops its table).
    let path = h.manager().host_config().journal_db_path();
    let other = rusqlite::Connection::open(&path).unwrap();
    let schema: Vec<String> = other
        .prepare("SELECT sql FROM sqlite_master WHERE tbl_name = 'journal' AND sql IS NOT NULL")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    other.execute_batch("DROP TABLE journal").unwrap();
    // Its submission row cannot be written: its id is not returned (it waits for the row).
    let submitting = tokio::spawn({
        let q = q.clone();
        async move { q.submit(JobSpec::execute("n", kwargs(json!({})))).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !submitting.is_finished(),
        "an id was returned without its row"
    );
    for _ in 0..200 {
        if q.wedged().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(q.wedged().unwrap().contains("journal"), "{:?}", q.wedged());
    let refused = queue_error(q.submit(JobSpec::execute("n", kwargs(json!({})))).await);
    assert!(matches!(refused, QueueError::Wedged(_)));
    assert!(refused.to_string().contains("refused"), "{refused}");
    let refused = queue_error(
        q.submit_composition(Composition::new(vec![Node::new("a", "n")]))
            .await,
    );
    assert!(matches!(refused, QueueError::Wedged(_)));
    assert_eq!(
        q.stats().running,
        0,
        "admitted work still finished, no lane leaks"
    );

    // The journal is repaired: the writer's next probe goes through, the queue un-wedges by
    // itself, and the job is reported done with its row.
    for sql in &schema {
        other.execute_batch(sql).unwrap();
    }
    let lost = submitting.await.unwrap().unwrap();
    let job = q.wait(&lost, T).await.unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert!(rows(q, &lost).iter().any(|r| r.is_terminal_transition()));
    assert_eq!(q.wedged(), None);
    serves(q, "n").await;
}

/// The queue runs a no-op job on instance `id` to completion.
async fn serves(q: &JobQueue, id: &str) {
    let again = q
        .submit(JobSpec::execute(id, kwargs(json!({}))))
        .await
        .unwrap();
    assert_eq!(
        q.wait(&again, T).await.unwrap().status,
        JobStatus::Completed
    );
}

/// Another connection holds the journal's write lock for 5 s: no job is reported done
/// before its row is written, and the queue serves on by itself afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_held_by_another_connection_delays_but_never_lies() {
    let dir = data_dir();
    let h = host(dir.path(), 4, &[("noop", "n")]).await;
    let q = h.queue();
    let path = h.manager().host_config().journal_db_path();
    let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = {
        let released = std::sync::Arc::clone(&released);
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch("BEGIN IMMEDIATE").unwrap();
            locked_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_secs(5));
            released.store(true, std::sync::atomic::Ordering::SeqCst);
            c.execute_batch("COMMIT").unwrap();
        })
    };
    locked_rx.recv().unwrap();
    // A job submitted for its outcome gets its id at once, and its outcome only once its
    // rows, the submission's included, are written.
    let for_outcome = q
        .submit_for_outcome(JobSpec::execute("n", kwargs(json!({}))))
        .await
        .unwrap();
    assert!(!released.load(std::sync::atomic::Ordering::SeqCst));
    // A submission returns once its row is written: not before the lock is released.
    let mut ids = q
        .submit_many(
            (0..20)
                .map(|_| JobSpec::execute("n", kwargs(json!({}))))
                .collect(),
        )
        .await
        .unwrap();
    assert!(
        released.load(std::sync::atomic::Ordering::SeqCst),
        "a submission returned while its row could not be written"
    );
    ids.push(for_outcome);
    for id in &ids {
        let job = q.wait(id, T).await.unwrap();
        assert_eq!(job.status, JobStatus::Completed);
        assert!(
            released.load(std::sync::atomic::Ordering::SeqCst),
            "reported done while its row could not be written"
        );
        assert!(rows(q, id).iter().any(|r| r.is_terminal_transition()));
        assert!(rows(q, id).iter().any(|r| r.event_type == "job_submitted"));
    }
    holder.join().unwrap();
    assert_eq!(q.wedged(), None);
    serves(q, "n").await;
}
