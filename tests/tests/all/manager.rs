//! The capability manager over both kinds: the same manager calls against the wasm and the
//! native build of `text-stats` behave the same; configs and enabled flags survive a restart;
//! a resource error reloads and retries; bad input is typed and leaves nothing behind.

use std::path::Path;
use std::sync::Arc;

use cjm_guest::contract::ErrorCategory;
use cjm_host::Error;
use cjm_host::backend::CallRequest;
use cjm_host::config::HostConfig;
use cjm_host::manager::CapabilityManager;
use cjm_host::store::JournalQuery;
use cjm_tests::{fixtures, kwargs, wasm_install, write_manifest};
use serde_json::{Value, json};

/// A data dir with `text-stats` as wasm and as a native worker, `probe` as a native worker,
/// and a Python capability whose interpreter does not exist.
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_manifest(
        dir.path(),
        "text-stats",
        wasm_install(fixtures::TEXT_STATS, json!({})),
    );
    write_manifest(
        dir.path(),
        "text-stats-native",
        json!({"runtime": "native", "native": {"command": [env!("CARGO_BIN_EXE_parity_worker")]}}),
    );
    write_manifest(
        dir.path(),
        "probe",
        json!({"runtime": "native", "native": {"command": [env!("CARGO_BIN_EXE_probe_worker")]}}),
    );
    let doc = json!({
        "format_version": "2.0",
        "install": {"python_path": "/no/such/env/bin/python"},
        "code": {"name": "ghost", "version": "1", "description": "d", "module": "m", "class": "C"},
        "drift_tracking": {}, "overrides": {}
    });
    std::fs::write(dir.path().join("manifests/ghost.json"), doc.to_string()).unwrap();
    dir
}

fn manager(dir: &Path) -> CapabilityManager {
    CapabilityManager::open(HostConfig::builder().data_dir(dir).build().unwrap()).unwrap()
}

fn job(r: Result<Value, Error>) -> cjm_guest::JobError {
    match r {
        Err(Error::Job(e)) => *e,
        other => panic!("expected a job error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_manager_calls_behave_the_same_on_wasm_and_native() {
    let dir = data_dir();
    let m = manager(dir.path());
    let problems: Vec<String> = m.discover().iter().map(ToString::to_string).collect();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(m.capabilities().contains(&"text-stats".to_owned()));
    let mut answers = Vec::new();
    for name in ["text-stats", "text-stats-native"] {
        let bad = m
            .load(name, Some(json!({"top_n": "x", "colour": 1})), Some("bad"))
            .await
            .unwrap_err();
        let Error::Job(bad) = bad else {
            panic!("{bad:?}")
        };
        let fields = bad.fields_invalid.clone().unwrap();
        assert!(
            fields.contains(&"top_n".into()) && fields.contains(&"colour".into()),
            "{name}: {fields:?}"
        );
        assert!(
            m.instance("bad").is_err(),
            "nothing half-loaded is left behind"
        );

        let id = format!("{name}-1");
        let inst = m
            .load(name, Some(json!({"top_n": 1})), Some(&id))
            .await
            .unwrap();
        assert_eq!(
            inst.config(),
            json!({"top_n": 1}),
            "as given (what cjm-substrate's host sends to /initialize)"
        );
        assert_eq!(m.info(&id).unwrap().name, "text-stats");
        // Idempotent re-load.
        assert!(Arc::ptr_eq(
            &inst,
            &m.load(name, None, Some(&id)).await.unwrap()
        ));

        let req = CallRequest::execute(kwargs(json!({"text": "a b a"})));
        let out = m.call(&id, req.clone()).await.unwrap();
        m.update_config(&id, json!({"case_sensitive": false, "top_n": 2}))
            .await
            .unwrap();
        let out2 = m.call(&id, req.clone()).await.unwrap();
        let e = job(m
            .call(&id, CallRequest::execute(kwargs(json!({"txt": 1}))))
            .await);
        assert_eq!(
            (e.category, e.fields_invalid.clone()),
            (ErrorCategory::UserInput, Some(vec!["text".into()]))
        );

        m.set_enabled(&id, false).await.unwrap();
        let e = job(m.call(&id, req.clone()).await);
        assert!(e.message.contains("disabled"), "{name}: {}", e.message);
        m.set_enabled(&id, true).await.unwrap();
        m.reload(&id).await.unwrap();
        assert_eq!(
            m.call(&id, req.clone()).await.unwrap(),
            out2,
            "{name}: same answer after reload"
        );

        let rows = m.empirical().list_records(Some(name)).unwrap();
        let calls: u64 = rows.iter().map(|r| r.sample_count).sum();
        assert_eq!(
            calls, 4,
            "{name}: one empirical sample per call, by (instance, config hash)"
        );
        assert_eq!(rows.len(), 2, "{name}: two configs, two profiles");
        answers.push((out, out2));
        m.unload(&id).await.unwrap();
    }
    assert_eq!(answers[0], answers[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn configs_and_enabled_flags_survive_a_restart() {
    let dir = data_dir();
    {
        let m = manager(dir.path());
        m.load(
            "text-stats",
            Some(json!({"case_sensitive": true})),
            Some("ts"),
        )
        .await
        .unwrap();
        m.set_enabled("ts", false).await.unwrap();
        m.shutdown().await.unwrap();
    }
    let m = manager(dir.path());
    let inst = m.load("text-stats", None, Some("ts")).await.unwrap();
    assert_eq!(inst.config()["case_sensitive"], true);
    assert!(!inst.enabled());
    let e = job(m
        .call("ts", CallRequest::execute(kwargs(json!({"text": "x"}))))
        .await);
    assert!(e.message.contains("disabled"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resource_error_reloads_and_retries_once_in_the_journal() {
    let dir = data_dir();
    let m = manager(dir.path());
    m.load("text-stats", None, Some("idle-wasm")).await.unwrap();
    m.load("probe", None, Some("p")).await.unwrap();
    let e = job(m
        .call(
            "p",
            CallRequest::execute(kwargs(json!({"action": "fail", "kind": "resource"}))),
        )
        .await);
    assert_eq!(e.category, ErrorCategory::Resource);
    let events = m.journal().query(&JournalQuery::default()).unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let retry = types
        .iter()
        .position(|t| *t == "retry_started")
        .expect("a retry row");
    assert!(types[retry..].contains(&"capability_reloaded"), "{types:?}");
    assert!(types[retry..].contains(&"worker_spawned"), "{types:?}");
    assert_eq!(
        types.iter().filter(|t| **t == "retry_started").count(),
        1,
        "one retry"
    );
    // The evicted instance stays registered and comes back on its next call.
    assert!(types.contains(&"capability_evicted"), "{types:?}");
    let back = m
        .call(
            "idle-wasm",
            CallRequest::execute(kwargs(json!({"text": "a b"}))),
        )
        .await
        .unwrap();
    assert_eq!(back["words"], 2);
    m.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_typed_and_leaves_nothing_behind() {
    let dir = data_dir();
    let m = manager(dir.path());
    let msg = |r: Result<Arc<cjm_host::manager::Instance>, Error>| r.unwrap_err().to_string();
    assert!(msg(m.load("nope", None, None).await).contains("unknown capability 'nope'"));
    assert!(msg(m.load("text-stats", None, Some("bad id!")).await).contains("invalid instance id"));
    assert!(
        msg(m.load("ghost", None, None).await).contains("/no/such/env/bin/python does not exist")
    );
    assert!(
        m.call("missing", CallRequest::execute(Default::default()))
            .await
            .unwrap_err()
            .to_string()
            .contains("no loaded capability instance 'missing'")
    );
    // A config violating the schema names each bad field.
    let e = msg(m
        .load(
            "text-stats",
            Some(json!({"top_n": -1, "case_sensitive": "yes", "extra": 1})),
            None,
        )
        .await);
    for field in ["top_n", "case_sensitive", "extra"] {
        assert!(e.contains(field), "{e}");
    }
    // A secret for a capability that is not installed.
    let e = m
        .set_secret("nope", "API_KEY", "hunter2")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown capability 'nope'") && !e.contains("hunter2"),
        "{e}"
    );
    assert!(m.instances().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn loads_run_concurrently_bindings_secrets_and_drift() {
    let dir = data_dir();
    let m = manager(dir.path());
    let loads = (0..4).map(|i| {
        let m = m.clone();
        tokio::spawn(async move { m.load("text-stats", None, Some(&format!("ts-{i}"))).await })
    });
    for l in loads {
        l.await.unwrap().unwrap();
    }
    assert_eq!(m.instances().len(), 4);
    let b = m.binding("ts-2").unwrap();
    assert_eq!(
        b.execute(kwargs(json!({"text": "one two"}))).await.unwrap()["words"],
        2
    );
    assert!(m.binding("nope").is_err());

    // A secret for an unknown capability is refused; for a known one its workers respawn.
    assert!(
        m.set_secret("nope", "API_KEY", "s3cret")
            .await
            .unwrap_err()
            .to_string()
            .contains("unknown capability")
    );
    let probe = m.load("probe", None, Some("p")).await.unwrap();
    let before = probe.backend().stats().await.unwrap()["pid"].clone();
    m.set_secret("probe", "API_KEY", "s3cret").await.unwrap();
    let after = probe.backend().stats().await.unwrap()["pid"].clone();
    assert_ne!(
        before, after,
        "the worker was respawned with the new environment"
    );
    // Its manifest declares no `worker_env`: the worker sees every secret of its capability.
    let env = |name: &str| {
        let m = m.clone();
        let name = name.to_owned();
        async move {
            m.call(
                "p",
                CallRequest::execute(kwargs(json!({"action": "env", "name": name}))),
            )
            .await
            .unwrap()["value"]
                .clone()
        }
    };
    assert_eq!(env("API_KEY").await, "s3cret");
    // A key that is no variable name, or an empty value, is refused naming the field.
    for (key, value, field) in [
        ("A=B", "v", "key"),
        ("1X", "v", "key"),
        ("OK", "", "value"),
        ("OK", "a\0b", "value"),
    ] {
        let e = job(m
            .set_secret("probe", key, value)
            .await
            .map(|()| Value::Null));
        assert_eq!(e.fields_invalid, Some(vec![field.to_owned()]), "{key}");
    }
    let journal = m.journal().query(&JournalQuery::default()).unwrap();
    assert!(
        !serde_json::to_string(&journal.iter().map(|e| &e.payload).collect::<Vec<_>>())
            .unwrap()
            .contains("s3cret")
    );

    // A manifest whose recorded schema hash no longer matches the live capability is flagged.
    assert_eq!(m.instance("ts-0").unwrap().drift(), Default::default());
    let path = dir.path().join("manifests/text-stats.json");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    doc["drift_tracking"]["config_schema_hash"] = json!(format!("sha256:{}", "0".repeat(64)));
    std::fs::write(&path, doc.to_string()).unwrap();
    m.discover();
    let drifted = m.load("text-stats", None, Some("ts-drift")).await.unwrap();
    assert!(drifted.drift().config_schema && !drifted.drift().structural_surface);
    m.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn compatible_adapters_bind_at_load_and_native_samples_are_measured() {
    let dir = data_dir();
    let adapter = cjm_tests::repo_root()
        .join("host/tests/fixtures/python/manifests/adapter-sentence_segmentation-GenericSentenceSegmentationAdapter.json");
    std::fs::copy(
        &adapter,
        dir.path()
            .join("manifests/adapter-sentence_segmentation.json"),
    )
    .unwrap();
    write_manifest(
        dir.path(),
        "sentence-split",
        json!({"runtime": "wasm", "wasm": {"component": fixtures::SENTENCE_SPLIT, "sha256": format!("sha256:{}", "0".repeat(64)), "sandbox": {}}}),
    );
    // The wasm manifest records the surface the guest reports (what install writes).
    let path = dir.path().join("manifests/sentence-split.json");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let surface = cjm_guest::Hosted::<sentence_split_surface::SentenceSplit>::new().surface();
    doc["code"]["structural_surface"] = serde_json::to_value(surface).unwrap();
    std::fs::write(&path, doc.to_string()).unwrap();

    // text-stats records its real surface, which lacks `segment_text`.
    let path = dir.path().join("manifests/text-stats.json");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let surface = cjm_guest::Hosted::<text_stats::TextStats>::new().surface();
    doc["code"]["structural_surface"] = serde_json::to_value(surface).unwrap();
    std::fs::write(&path, doc.to_string()).unwrap();

    let m = manager(dir.path());
    let split = m.load("sentence-split", None, Some("ss")).await.unwrap();
    assert_eq!(
        split.adapters(),
        ["cjm_sentence_segmentation_adapter_interface.generic.GenericSentenceSegmentationAdapter"]
    );
    // Asked for explicitly: a compatible adapter binds, an incompatible one is refused with
    // its missing members named and nothing is loaded.
    let unit =
        "cjm_sentence_segmentation_adapter_interface.generic.GenericSentenceSegmentationAdapter"
            .to_owned();
    let asked = m
        .load_with_adapters(
            "sentence-split",
            None,
            Some("ss2"),
            Some(std::slice::from_ref(&unit)),
        )
        .await
        .unwrap();
    assert_eq!(asked.adapters(), std::slice::from_ref(&unit));
    let refused = m
        .load_with_adapters("text-stats", None, Some("ts-bad"), Some(&[unit]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("segment_text") && refused.contains("not compatible"),
        "{refused}"
    );
    assert!(m.instance("ts-bad").is_err());
    let stats = m.load("text-stats", None, Some("ts")).await.unwrap();
    assert!(
        stats.adapters().is_empty(),
        "its surface lacks segment_text: nothing binds"
    );

    m.load("probe", None, Some("p")).await.unwrap();
    m.call(
        "p",
        CallRequest::execute(kwargs(json!({"action": "echo", "text": "x"}))),
    )
    .await
    .unwrap();
    let rows = m.empirical().list_records(Some("probe")).unwrap();
    assert!(
        rows[0].memory_mb_peak_max > 0.0,
        "the worker's RSS was measured: {rows:?}"
    );
    m.shutdown().await.unwrap();
}

mod sentence_split_surface {
    pub use sentence_split::SentenceSplit;
}

/// Manifests in extra dirs are discovered before the data dir's: the first of a name wins.
#[tokio::test(flavor = "multi_thread")]
async fn extra_manifest_dirs_are_searched_first() {
    let data = tempfile::tempdir().unwrap();
    let extra = tempfile::tempdir().unwrap();
    cjm_tests::write_manifest(
        data.path(),
        "noop",
        cjm_tests::wasm_install(cjm_tests::fixtures::NOOP, json!({"max_concurrency": 1})),
    );
    // `write_manifest` writes into `<dir>/manifests`: that folder is the extra search dir.
    cjm_tests::write_manifest(
        extra.path(),
        "noop",
        cjm_tests::wasm_install(cjm_tests::fixtures::NOOP, json!({"max_concurrency": 3})),
    );
    cjm_tests::write_manifest(
        extra.path(),
        "only-here",
        cjm_tests::wasm_install(cjm_tests::fixtures::NOOP, json!({})),
    );
    let h = cjm_host::Host::builder()
        .data_dir(data.path())
        .manifest_dirs([extra.path().join("manifests")])
        .load("noop")
        .load("only-here")
        .build()
        .await
        .unwrap();
    let m = h.manager();
    assert_eq!(
        m.instance("noop").unwrap().max_concurrency(),
        3,
        "the extra dir shadows"
    );
    assert!(m.instance("only-here").is_ok());
    h.shutdown().await.unwrap();
}

/// A wasm guest sees exactly the secrets its sandbox grants, as environment variables; a
/// secret it is not granted is refused when set, not stored for nothing.
#[tokio::test(flavor = "multi_thread")]
async fn wasm_guests_see_only_their_granted_secrets() {
    let dir = tempfile::tempdir().unwrap();
    write_manifest(
        dir.path(),
        "keyed",
        wasm_install(fixtures::HOSTILE, json!({"secrets": ["API_KEY"]})),
    );
    write_manifest(
        dir.path(),
        "plain",
        wasm_install(fixtures::HOSTILE, json!({})),
    );
    let m = manager(dir.path());
    let problems: Vec<String> = m.discover().iter().map(ToString::to_string).collect();
    assert!(problems.is_empty(), "{problems:?}");
    m.set_secret("keyed", "API_KEY", "v-123-secret")
        .await
        .unwrap();
    for (name, key) in [("keyed", "OTHER"), ("plain", "API_KEY")] {
        let e = job(m.set_secret(name, key, "x").await.map(|()| Value::Null));
        assert_eq!(e.category, ErrorCategory::UserInput);
        assert!(e.message.contains("grants no secret"), "{}", e.message);
        assert!(!e.message.contains("x\""));
    }
    let read = |name: &'static str| {
        CallRequest::execute(kwargs(json!({"attack": "read_env", "name": name})))
    };
    m.load("keyed", None, Some("keyed")).await.unwrap();
    m.load("plain", None, Some("plain")).await.unwrap();
    assert_eq!(
        m.call("keyed", read("API_KEY")).await.unwrap(),
        "v-123-secret"
    );
    assert!(m.call("plain", read("API_KEY")).await.is_err());
    // What the guest logs or prints of it is masked in the diagnostics store.
    let echo = CallRequest::execute(kwargs(
        json!({"attack": "echo_log", "text": "key=v-123-secret"}),
    ));
    assert_eq!(m.call("keyed", echo).await.unwrap(), "echoed");
    m.flush_samples().unwrap();
    let mut seen = String::new();
    for _ in 0..100 {
        let records = m
            .diagnostics()
            .query_records(&cjm_host::store::RecordQuery::default())
            .unwrap();
        let chunks = m
            .diagnostics()
            .query_chunks(&cjm_host::store::ChunkQuery::default())
            .unwrap();
        seen = records
            .iter()
            .map(|r| r.message.clone())
            .chain(chunks.iter().map(|c| c.content.clone()))
            .collect::<Vec<_>>()
            .join("\n");
        if seen.contains("the guest says") && seen.contains("printed") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(seen.contains("the guest says key=***"), "{seen}");
    assert!(seen.contains("printed key=***"), "{seen}");
    assert!(!seen.contains("v-123-secret"), "{seen}");
    // Nor is it in an error the guest fails with.
    let fail = CallRequest::execute(kwargs(
        json!({"attack": "read_file", "path": "/v-123-secret"}),
    ));
    let e = job(m.call("keyed", fail).await);
    assert!(!e.to_string().contains("v-123-secret"), "{e}");
    assert!(e.message.contains("***"), "{e}");
    // The grant names the secret; the value is in no manifest or answer.
    let described = m.describe("keyed").unwrap().to_string();
    assert!(described.contains("API_KEY") && !described.contains("v-123-secret"));
    m.shutdown().await.unwrap();
}

/// A native manifest's relative program is relative to the manifest's directory, whatever
/// the host's working directory; a missing one is named in the error.
#[tokio::test(flavor = "multi_thread")]
async fn a_relative_native_program_is_found_beside_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("manifests/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_probe_worker"), bin.join("probe")).unwrap();
    write_manifest(
        dir.path(),
        "probe",
        json!({"runtime": "native", "native": {"command": ["bin/probe"]}}),
    );
    write_manifest(
        dir.path(),
        "lost",
        json!({"runtime": "native", "native": {"command": ["bin/nowhere"]}}),
    );
    let m = manager(dir.path());
    let out = m
        .call("probe", CallRequest::execute(kwargs(json!({"text": "hi"}))))
        .await;
    assert!(out.is_err(), "not loaded yet");
    m.load("probe", None, Some("probe")).await.unwrap();
    let out = m
        .call("probe", CallRequest::execute(kwargs(json!({"text": "hi"}))))
        .await
        .unwrap();
    assert_eq!(out["text"], "hi");
    let e = m.load("lost", None, None).await.unwrap_err().to_string();
    assert!(
        e.contains("'bin/nowhere' is not found") && e.contains("manifests"),
        "{e}"
    );
    m.shutdown().await.unwrap();
}
