//! Jobs, compositions and secrets over the API.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_compositions_and_secrets_over_the_api() {
    let dir = data_dir();
    let host = host(dir.path(), 1).await;
    let router = Server::new(host.clone(), ServerConfig::default()).router();
    // One lane: a sleeping job holds it, the next waits and is cancelled while waiting.
    let a = call(
        &router,
        Method::POST,
        "/v1/jobs",
        r#"{"capability": "probe", "kwargs": {"action": "sleep", "seconds": 1.0}}"#,
    )
    .await;
    let sleeper = a.json()["job_id"].as_str().unwrap().to_owned();
    let a = call(&router, Method::POST, "/v1/jobs", r#"[{"capability": "text-stats", "kwargs": {"text": "x"}, "run_id": "batch"}, {"capability": "text-stats", "kwargs": {"text": "y z"}, "run_id": "batch", "priority": 5}]"#).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let ids: Vec<String> = serde_json::from_value(a.json()["job_ids"].clone()).unwrap();
    let a = call(
        &router,
        Method::POST,
        &format!("/v1/jobs/{}/priority", ids[0]),
        r#"{"priority": 9}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = call(
        &router,
        Method::POST,
        &format!("/v1/jobs/{}/cancel", ids[1]),
        Body::empty(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let waited = call(
        &router,
        Method::GET,
        &format!("/v1/jobs/{}/wait?timeout_s=30", ids[1]),
        Body::empty(),
    )
    .await
    .json();
    assert_eq!(waited["status"], "cancelled");
    assert!(
        waited["started_at"].is_null(),
        "a cancelled waiting job never started"
    );
    let done = call(
        &router,
        Method::GET,
        &format!("/v1/jobs/{}/wait?timeout_s=30", ids[0]),
        Body::empty(),
    )
    .await
    .json();
    assert_eq!(done["status"], "completed");
    let a = call(
        &router,
        Method::GET,
        &format!("/v1/jobs/{sleeper}/wait?timeout_s=30"),
        Body::empty(),
    )
    .await;
    assert_eq!(a.json()["status"], "completed");
    // A finished job cannot be cancelled or reordered: 409.
    let a = call(
        &router,
        Method::POST,
        &format!("/v1/jobs/{}/cancel", ids[0]),
        Body::empty(),
    )
    .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    // The list, from the journal, filtered and paged.
    let page = call(
        &router,
        Method::GET,
        "/v1/jobs?run_id=batch&limit=1",
        Body::empty(),
    )
    .await
    .json();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_i64().unwrap();
    let next = call(
        &router,
        Method::GET,
        &format!("/v1/jobs?run_id=batch&limit=1&cursor={cursor}"),
        Body::empty(),
    )
    .await
    .json();
    assert_eq!(next["jobs"].as_array().unwrap().len(), 1);
    assert_ne!(page["jobs"][0]["id"], next["jobs"][0]["id"]);
    assert!(next["next_cursor"].is_null());
    let failed = call(
        &router,
        Method::GET,
        "/v1/jobs?status=cancelled",
        Body::empty(),
    )
    .await
    .json();
    assert_eq!(failed["jobs"][0]["id"], ids[1].as_str());
    // The timeline of one job.
    let t = call(
        &router,
        Method::GET,
        &format!("/v1/jobs/{}/journal", ids[0]),
        Body::empty(),
    )
    .await
    .json();
    let types = strings(&t["events"], "event_type");
    assert_eq!(types.first(), Some(&"job_submitted"));
    assert!(types.contains(&"admission_decided"));
    // A composition across kinds.
    let a = call(&router, Method::POST, "/v1/compositions", r#"{"nodes": [
        {"id": "a", "instance_id": "text-stats", "kwargs": {"text": "hello hello world"}},
        {"id": "b", "instance_id": "text-stats-native", "task": "text_statistics", "method": "merge_stats", "kwargs": {"one": {"$output": "a"}}}]}"#).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let cid = a.json()["composition_id"].as_str().unwrap().to_owned();
    let run = call(
        &router,
        Method::GET,
        &format!("/v1/compositions/{cid}/wait?timeout_s=60"),
        Body::empty(),
    )
    .await
    .json();
    assert_eq!(run["status"], "completed");
    assert_eq!(run["nodes"]["b"]["result"]["words"], 3);
    // Secrets: names listed, the value never answered.
    let a = call(
        &router,
        Method::PUT,
        "/v1/secrets/probe/API_KEY",
        r#"{"value": "hunter2-secret"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let names = call(&router, Method::GET, "/v1/secrets", Body::empty()).await;
    assert_eq!(names.json()["probe"], json!(["API_KEY"]));
    for uri in [
        "/v1/secrets",
        "/v1/capabilities/probe",
        "/v1/capabilities",
        "/v1/resources",
    ] {
        let a = call(&router, Method::GET, uri, Body::empty()).await;
        assert!(
            !String::from_utf8_lossy(&a.body).contains("hunter2"),
            "{uri}"
        );
    }
    // Host figures.
    let m = call(&router, Method::GET, "/metrics", Body::empty()).await;
    let text = String::from_utf8_lossy(&m.body).into_owned();
    assert!(text.contains("cjm_jobs_completed_total "), "{text}");
    let r = call(&router, Method::GET, "/v1/resources", Body::empty())
        .await
        .json();
    assert!(r["machine"]["system"]["cpu_count"].as_u64().unwrap() >= 1);
    assert!(
        r["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["instance_id"] == "probe" && w["pid"].is_u64())
    );
    let info = call(
        &router,
        Method::GET,
        "/v1/capabilities/text-stats",
        Body::empty(),
    )
    .await
    .json();
    assert_eq!(info["kind"], "wasm");
    assert!(
        info["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "text_statistics")
    );
    assert!(info["config_schema"]["properties"]["top_n"].is_object());
    host.shutdown().await.unwrap();
}

/// `/v1/journal` and `/v1/logs` read a page: the newest rows newest first, or the rows after
/// a cursor oldest first (what `cjm-ctl logs` shows and follows through a service).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_and_log_pages_read_the_newest_or_after_a_cursor() {
    let dir = data_dir();
    let host = host(dir.path(), 1).await;
    let router = Server::new(host.clone(), ServerConfig::default()).router();
    let a = call(
        &router,
        Method::POST,
        "/v1/capabilities/text-stats/execute",
        r#"{"kwargs": {"text": "a b"}}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let job = a.headers["x-cjm-job-id"].to_str().unwrap().to_owned();
    let page = |uri: String| {
        let router = router.clone();
        async move {
            let a = call(&router, Method::GET, &uri, Body::empty()).await;
            assert_eq!(a.status, StatusCode::OK, "{uri}");
            a.json()
        }
    };
    // The job's rows, all of them, oldest first.
    let all = page(format!("/v1/journal?job={job}")).await;
    let seqs: Vec<i64> = all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert!(seqs.len() >= 4, "{all}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(all["next_cursor"], *seqs.last().unwrap());
    assert_eq!(all["more"], false);
    assert_eq!(all["rows"][0]["event_type"], "job_submitted");
    // The newest two, newest first: the terminal row leads.
    let newest = page(format!("/v1/journal?job={job}&newest=true&limit=2")).await;
    let rows = newest["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{newest}");
    assert_eq!(newest["more"], true, "the job has more rows than two");
    assert_eq!(rows[0]["seq"], *seqs.last().unwrap());
    assert_eq!(rows[0]["payload"]["to"], "completed");
    // After a cursor: only what came later.
    let later = page(format!("/v1/journal?job={job}&after={}", seqs[1])).await;
    assert_eq!(later["rows"].as_array().unwrap().len(), seqs.len() - 2);
    // Log pages take the same reading; newest has no cursor and does not follow.
    let diagnostics = host.manager().diagnostics();
    for message in ["first", "second", "third"] {
        let mut r = cjm_host::store::DiagnosticRecord::new("INFO", message);
        r.job_id = Some(job.clone());
        diagnostics.append_record(&r).unwrap();
    }
    let logs = page(format!("/v1/logs?job={job}&newest=true&limit=2")).await;
    let messages = strings(&logs["records"], "message");
    assert_eq!(messages, ["third", "second"], "{logs}");
    let logs = page(format!("/v1/logs?job={job}")).await;
    assert_eq!(logs["records"][0]["message"], "first", "{logs}");
    for bad in [
        "/v1/journal?newest=true&after=3",
        "/v1/logs?newest=true&follow=true",
        "/v1/logs?newest=true&after=1",
    ] {
        let a = call(&router, Method::GET, bad, Body::empty()).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(a.json()["error"]["fields"][0], "newest", "{bad}");
    }
    host.shutdown().await.unwrap();
}
