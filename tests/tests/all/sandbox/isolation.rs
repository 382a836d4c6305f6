//! Instance isolation: `isolation: per_call` gives every call a fresh, configured instance
//! from the engine's pool, so nothing a guest keeps in memory reaches the next caller.

use super::*;

fn remember(value: &str) -> Value {
    json!({"attack": "remember", "value": value})
}

async fn stats(g: &Guest) -> Value {
    g.live_backend().stats().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn per_call_isolation_carries_nothing_between_calls_and_reuse_does() {
    for way in WAYS {
        // The default: one instance serves call after call, and what the guest kept stays.
        let reused = Guest::new(way, json!({})).await;
        assert_eq!(
            reused.call(remember("alice")).await.unwrap(),
            json!(["alice"])
        );
        assert_eq!(
            reused.call(remember("bob")).await.unwrap(),
            json!(["alice", "bob"]),
            "{way:?}"
        );
        let s = stats(&reused).await;
        assert_eq!(s["isolation"], "reuse", "{way:?}");
        assert_eq!(s["instances_retired"], 0, "{way:?}");

        // Per call: each call sees only its own value, on an instance configured as the
        // capability is.
        let isolated = Guest::new(way, json!({"isolation": "per_call"})).await;
        let before = stats(&isolated).await;
        assert_eq!(
            isolated.call(remember("alice")).await.unwrap(),
            json!(["alice"])
        );
        assert_eq!(
            isolated.call(remember("bob")).await.unwrap(),
            json!(["bob"]),
            "{way:?}: bob saw what alice left"
        );
        assert_eq!(
            isolated
                .call(json!({"attack": "echo_config"}))
                .await
                .unwrap(),
            "configured",
            "{way:?}: a fresh instance is initialized with the current config"
        );
        let after = stats(&isolated).await;
        assert_eq!(after["isolation"], "per_call", "{way:?}");
        let delta = |key: &str| after[key].as_u64().unwrap() - before[key].as_u64().unwrap();
        assert_eq!(delta("instances_retired"), 3, "{way:?}: {after}");
        assert!(delta("instances_created") >= 2, "{way:?}: {after}");
        assert_eq!(after["instances_discarded"], 0, "{way:?}: {after}");
        // A trap still discards, and the next call still gets a fresh instance.
        contained(
            &isolated,
            json!({"attack": "panic"}),
            ErrorCategory::Fatal,
            "panic",
        )
        .await;
        assert_eq!(
            isolated.call(remember("carol")).await.unwrap(),
            json!(["carol"])
        );
    }
}

/// A configuration change reaches per-call instances: the next call's fresh instance is
/// initialized with the new config.
#[tokio::test(flavor = "multi_thread")]
async fn per_call_instances_follow_a_reconfiguration() {
    let g = Guest::new(Way::Fresh, json!({"isolation": "per_call", "pool_size": 1})).await;
    let b = g.live_backend();
    b.reconfigure(json!({"label": "configured"}), json!({"label": "second"}))
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            g.call(json!({"attack": "echo_config"})).await.unwrap(),
            "second"
        );
    }
}

/// A full instance pool is the host's shortage, not the guest's fault: the call fails with a
/// retriable `resource` error, the manager unloads an idle capability (freeing its instance)
/// and the call succeeds when tried again.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_instance_pool_unloads_an_idle_capability_and_the_call_is_retried() {
    let data = tempfile::tempdir().unwrap();
    write_manifest(
        data.path(),
        "hostile",
        wasm_install(fixtures::HOSTILE, json!({"max_concurrency": 2})),
    );
    write_manifest(data.path(), "noop", wasm_install(fixtures::NOOP, json!({})));
    // Two slots: the idle instance of each capability fills the pool.
    let host = Host::builder()
        .data_dir(data.path())
        .wasm_instance_slots(2)
        .load_with("hostile", None, Some(ID.to_owned()))
        .load_with("noop", None, Some("noop-1".to_owned()))
        .build()
        .await
        .unwrap();
    let m = host.manager().clone();
    m.call("noop-1", CallRequest::execute(kwargs(json!({}))))
        .await
        .unwrap();
    let sleeper = {
        let m = m.clone();
        tokio::spawn(async move {
            m.call(
                ID,
                CallRequest::execute(kwargs(json!({"attack": "sleep", "secs": 1.0}))),
            )
            .await
        })
    };
    until_busy(&m.instance(ID).unwrap().backend()).await;
    // A second call at once needs a third instance.
    let r = m
        .call(ID, CallRequest::execute(kwargs(json!({"attack": "ok"}))))
        .await;
    assert_eq!(r.unwrap(), "ok");
    assert_eq!(sleeper.await.unwrap().unwrap(), "slept");
    let journal = m
        .journal()
        .query(&cjm_host::store::JournalQuery::default())
        .unwrap();
    let retry = journal
        .iter()
        .find(|e| e.event_type == "retry_started")
        .expect("a retry after the pool was full");
    let payload = retry.payload.to_string();
    assert!(payload.contains("instance pool is full"), "{payload}");
    assert!(
        payload.contains("noop-1"),
        "the idle capability was unloaded: {payload}"
    );
    // The unloaded capability comes back on its next call.
    m.call("noop-1", CallRequest::execute(kwargs(json!({}))))
        .await
        .unwrap();
}
