//! Fan-outs mixing wasm and native, the composition rules, and bad input.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_mixing_wasm_and_native_matches_one_by_one_calls() {
    let dir = data_dir();
    let h = host(
        dir.path(),
        4,
        &[
            ("text-stats", "ts"),
            ("text-stats-native", "tsn"),
            ("sentence-split", "split"),
            ("probe", "p"),
        ],
    )
    .await;
    let q = h.queue();
    let text = "Dr. Smith arrived. The cat sat on the mat! Was it late?";
    let comp = Composition::new(vec![
        Node::new("echo", "p")
            .arg("action", json!("echo"))
            .arg("text", json!(text)),
        Node::new("stats_wasm", "ts").bind("text", OutputRef::field("echo", "text")),
        Node::new("stats_native", "tsn").bind("text", OutputRef::field("echo", "text")),
        Node::new("split", "split").bind("text", OutputRef::field("echo", "text")),
        Node::new("words", "tsn")
            .bind("text", OutputRef::field("echo", "text"))
            .arg("case_sensitive", json!(true)),
    ]);
    let mut events = q.subscribe(Scope::All);
    let id = q.submit_composition(comp).await.unwrap();
    // Subscribed right after submit: the composition's rows wait for the group commit.
    let mut scoped = q.subscribe(Scope::Composition(id.clone()));
    let run = q.wait_composition(&id, T).await.unwrap();
    assert_eq!(run.status, NodeState::Completed);
    let m = h.manager();
    let stats = m
        .binding("ts")
        .unwrap()
        .execute(kwargs(json!({"text": text})))
        .await
        .unwrap();
    let split = m
        .binding("split")
        .unwrap()
        .execute(kwargs(json!({"text": text})))
        .await
        .unwrap();
    let words = m
        .binding("tsn")
        .unwrap()
        .execute(kwargs(json!({"text": text, "case_sensitive": true})))
        .await
        .unwrap();
    let result = |n: &str| run.nodes[n].result.clone().unwrap();
    assert_eq!(result("stats_wasm"), stats);
    assert_eq!(result("stats_native"), stats);
    assert_eq!(result("split"), split);
    assert_eq!(result("words"), words);
    // Member jobs carry the composition; it advanced once, then finished, all journaled.
    let journal = m
        .journal()
        .query(&JournalQuery {
            composition_id: Some(id.clone()),
            ..JournalQuery::default()
        })
        .unwrap();
    let count = |t: &str| journal.iter().filter(|e| e.event_type == t).count();
    assert_eq!(count("composition_advanced"), 1);
    assert_eq!(count("composition_finished"), 1);
    assert_eq!(count("state_transition"), 10);
    let mut seen = Vec::new();
    while let Some(e) = events.try_next() {
        if e.composition_id.as_deref() == Some(id.as_str()) && e.job_id.is_none() {
            seen.push(e.kind);
        }
    }
    assert_eq!(
        seen,
        [
            EventKind::CompositionSubmitted,
            EventKind::CompositionAdvanced,
            EventKind::CompositionFinished
        ]
    );
    // The composition's own stream: its members' journaled events and its own, nothing
    // else, every one from the moment it subscribed (the submission returned after its
    // first rows were committed).
    let mut mine = Vec::new();
    let mut seqs = Vec::new();
    while let Some(e) = scoped.try_next() {
        assert_eq!(e.composition_id.as_deref(), Some(id.as_str()));
        if e.kind.journaled() {
            mine.push(e.kind);
            seqs.push(e.seq.unwrap());
        }
    }
    let expected: Vec<i64> = journal
        .iter()
        .filter_map(|e| e.seq)
        .filter(|s| *s >= seqs[0])
        .collect();
    assert_eq!(seqs, expected, "{mine:?}");
    assert_eq!(mine.last(), Some(&EventKind::CompositionFinished));
    assert_eq!(scoped.dropped(), 0);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composition_rules() {
    let dir = data_dir();
    let h = host(
        dir.path(),
        4,
        &[
            ("probe", "p"),
            ("probe", "q"),
            ("text-stats", "ts"),
            ("noop", "n"),
        ],
    )
    .await;
    let q = h.queue();
    // Profile both probe instances so members are admitted side by side.
    for i in ["p", "q"] {
        let j = q
            .submit(JobSpec::execute(i, probe("echo", json!({}))))
            .await
            .unwrap();
        q.wait(&j, T).await.unwrap();
    }
    let echo = |id: &str, inst: &str| {
        Node::new(id, inst)
            .arg("action", json!("echo"))
            .arg("text", json!("some words here"))
    };
    let fail = |id: &str| Node::new(id, "q").arg("action", json!("fail"));
    let busy = || async {
        q.submit(JobSpec::execute("p", probe("slow", json!({"steps": 6}))))
            .await
            .unwrap()
    };

    let state = |run: &cjm_host::queue::CompositionRun, n: &str| run.nodes[n].state;
    use NodeState::*;

    // A binding to a missing field fails its node loudly; its dependents skip.
    let id = q
        .submit_composition(Composition::new(vec![
            echo("a", "p"),
            Node::new("b", "ts").bind("text", OutputRef::field("a", "nope")),
            Node::new("c", "ts").bind("text", OutputRef::whole("b")),
        ]))
        .await
        .unwrap();
    let run = q.wait_composition(&id, T).await.unwrap();
    assert_eq!(
        (
            run.status,
            state(&run, "a"),
            state(&run, "b"),
            state(&run, "c")
        ),
        (Failed, Completed, Failed, Skipped)
    );
    let err = run.nodes["b"].error.as_ref().unwrap();
    assert!(
        err.message.contains("has no field 'nope'") && err.message.contains("binding"),
        "{}",
        err.message
    );
    assert!(
        run.nodes["c"].job_id.is_none(),
        "skipped nodes never get a job"
    );

    // Fail-fast: a failure cancels independent pending members (x, y wait behind a busy
    // instance), dependents skip, the composition is failed, not cancelled.
    let b = busy().await;
    until_running(q, &b).await;
    let comp = Composition::new(vec![
        fail("f"),
        echo("x", "p"),
        echo("y", "p"),
        Node::new("z", "ts").bind("text", OutputRef::field("f", "text")),
    ]);
    let run = q
        .wait_composition(&q.submit_composition(comp.clone()).await.unwrap(), T)
        .await
        .unwrap();
    assert_eq!(
        (
            run.status,
            state(&run, "f"),
            state(&run, "x"),
            state(&run, "y"),
            state(&run, "z")
        ),
        (Failed, Failed, Cancelled, Cancelled, Skipped)
    );
    q.wait(&b, T).await.unwrap();

    // Best-effort: independent members still run; the composition completes.
    let run = q
        .wait_composition(&q.submit_composition(comp.best_effort()).await.unwrap(), T)
        .await
        .unwrap();
    assert_eq!(
        (
            run.status,
            state(&run, "f"),
            state(&run, "x"),
            state(&run, "y"),
            state(&run, "z")
        ),
        (Completed, Failed, Completed, Completed, Skipped)
    );

    // Cancelled as a unit: the pending member and the node without a job are cancelled.
    let b = busy().await;
    until_running(q, &b).await;
    let comp = Composition::new(vec![
        echo("x", "p"),
        Node::new("y", "ts").bind("text", OutputRef::field("x", "text")),
    ]);
    let id = q.submit_composition(comp.clone()).await.unwrap();
    q.cancel_composition(&id).unwrap();
    let run = q.wait_composition(&id, T).await.unwrap();
    assert_eq!(
        (run.status, state(&run, "x"), state(&run, "y")),
        (Cancelled, Cancelled, Cancelled)
    );
    assert!(run.cancel_requested);
    assert!(matches!(
        queue_error(q.cancel_composition(&id)),
        QueueError::Finished { .. }
    ));

    // A member cancelled directly (no failure) lands the composition cancelled.
    let id = q.submit_composition(comp).await.unwrap();
    let member = q.composition(&id).unwrap().nodes["x"]
        .job_id
        .clone()
        .unwrap();
    q.cancel(&member).unwrap();
    let run = q.wait_composition(&id, T).await.unwrap();
    assert_eq!(
        (run.status, state(&run, "x"), state(&run, "y")),
        (Cancelled, Cancelled, Skipped)
    );
    assert!(!run.cancel_requested);
    q.wait(&b, T).await.unwrap();

    // An empty composition completes at submit.
    let run = q
        .wait_composition(
            &q.submit_composition(Composition::new(vec![]))
                .await
                .unwrap(),
            T,
        )
        .await
        .unwrap();
    assert_eq!(run.status, Completed);

    // Validation at submit, every problem listed; nothing is enqueued.
    h.manager().set_enabled("n", false).await.unwrap();
    let bad: Vec<(Composition, &str)> = vec![
        (
            Composition::new(vec![
                Node::new("a", "ts").bind("t", OutputRef::whole("b")),
                Node::new("b", "ts").bind("t", OutputRef::whole("a")),
            ]),
            "dependency cycle: ",
        ),
        (
            Composition::new(vec![Node::new("a", "ts"), Node::new("a", "ts")]),
            "duplicate node id 'a'",
        ),
        (
            Composition::new(vec![
                Node::new("a", "ts").bind("t", OutputRef::whole("ghost")),
            ]),
            "unknown node 'ghost'",
        ),
        (
            Composition::new(vec![Node::new("a", "nowhere")]),
            "node 'a': no loaded capability instance 'nowhere'",
        ),
        (
            Composition::new(vec![Node::new("a", "n")]),
            "node 'a': capability instance 'n' is disabled",
        ),
    ];
    let before = q.stats();
    for (comp, want) in bad {
        let e = queue_error(q.submit_composition(comp).await);
        assert!(matches!(e, QueueError::InvalidComposition(_)));
        assert!(e.to_string().contains(want), "{e} / {want}");
    }
    assert_eq!(q.stats(), before);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_typed_and_the_queue_is_unharmed() {
    let dir = data_dir();
    let h = host(dir.path(), 4, &[("noop", "n"), ("probe", "p")]).await;
    let q = h.queue();
    let e = q
        .submit(JobSpec::execute("nowhere", kwargs(json!({}))))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no loaded capability instance 'nowhere'"),
        "{e}"
    );
    h.manager().set_enabled("p", false).await.unwrap();
    let e = q
        .submit(JobSpec::execute("p", kwargs(json!({}))))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("disabled"), "{e}");
    h.manager().set_enabled("p", true).await.unwrap();
    assert_eq!(
        queue_error(q.cancel("no-such-job")),
        QueueError::UnknownJob("no-such-job".into())
    );
    let done = q
        .submit(JobSpec::execute("n", kwargs(json!({}))))
        .await
        .unwrap();
    q.wait(&done, T).await.unwrap();
    assert!(
        matches!(queue_error(q.cancel(&done)), QueueError::Finished { status, .. } if status == "completed")
    );
    assert!(matches!(
        queue_error(q.reorder(&done, 3)),
        QueueError::NotPending { .. }
    ));
    assert!(matches!(
        queue_error(q.wait("no-such-job", T).await),
        QueueError::UnknownJob(_)
    ));
    let slow = q
        .submit(JobSpec::execute(
            "p",
            probe("sleep", json!({"seconds": 0.5})),
        ))
        .await
        .unwrap();
    assert!(matches!(
        queue_error(q.wait(&slow, Some(Duration::from_millis(1))).await),
        QueueError::Timeout(..)
    ));
    // A failing job is a typed failure stamped with its instance.
    let failed = q
        .submit(JobSpec::execute(
            "p",
            probe("fail", json!({"kind": "input"})),
        ))
        .await
        .unwrap();
    let job = q.wait(&failed, T).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    let err = job.error.unwrap();
    assert_eq!(
        (err.message.as_str(), err.capability_instance_id.as_deref()),
        ("bad text", Some("p"))
    );
    // Still serving.
    let ok = q
        .submit(JobSpec::execute("n", kwargs(json!({}))))
        .await
        .unwrap();
    assert_eq!(q.wait(&ok, T).await.unwrap().status, JobStatus::Completed);
    let s = q.stats();
    assert_eq!((s.pending, s.running, s.failed), (0, 0, 1));
    h.shutdown().await.unwrap();
    assert!(matches!(
        queue_error(q.submit(JobSpec::execute("n", kwargs(json!({})))).await),
        QueueError::Closed
    ));
}
