//! Who may drive the host (tokens, other origins), any host answering for any job, why waiting jobs wait, and typed arguments checked before the guest.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_configured() {
    let dir = data_dir();
    let host = Host::builder().data_dir(dir.path()).build().await.unwrap();
    let token = Token::generate();
    assert!(!format!("{token:?}").contains(token.expose()));
    let router = Server::new(
        host.clone(),
        ServerConfig {
            token: Some(token.clone()),
            ..ServerConfig::default()
        },
    )
    .router();
    let a = call(&router, Method::GET, "/v1/health", Body::empty()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.headers["www-authenticate"], "Bearer");
    let a = call_with(
        &router,
        Method::GET,
        "/v1/health",
        Body::empty(),
        Some("wrong"),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.kind(), "unauthorized");
    let a = call_with(
        &router,
        Method::GET,
        "/v1/health",
        Body::empty(),
        Some(token.expose()),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    // No CORS headers are sent.
    assert!(a.headers.get("access-control-allow-origin").is_none());
    host.shutdown().await.unwrap();
}

/// Two hosts on one data dir: the service of one answers for a job the other holds, from the
/// journal — its state while it runs, and `wait` until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_answers_for_a_job_another_host_runs() {
    let dir = data_dir();
    let runner = host(dir.path(), 1).await;
    let served = Host::builder().data_dir(dir.path()).build().await.unwrap();
    let router = Server::new(served.clone(), ServerConfig::default()).router();
    let id = runner
        .queue()
        .submit(cjm_host::queue::JobSpec::execute(
            "probe",
            cjm_tests::kwargs(json!({"action": "sleep", "seconds": 1.0})),
        ))
        .await
        .unwrap();
    let a = call(
        &router,
        Method::GET,
        &format!("/v1/jobs/{id}"),
        Body::empty(),
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    let job = a.json();
    assert!(
        matches!(job["status"].as_str(), Some("pending" | "running")),
        "{job}"
    );
    assert_eq!(job["instance_id"], "probe");
    let a = call(
        &router,
        Method::GET,
        &format!("/v1/jobs/{id}/wait?timeout_s=30"),
        Body::empty(),
    )
    .await;
    assert_eq!(a.json()["status"], "completed");
    let a = call(&router, Method::GET, "/v1/jobs/no-such-job", Body::empty()).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    served.shutdown().await.unwrap();
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_jobs_say_why_and_instances_say_their_state() {
    let dir = data_dir();
    let host = host(dir.path(), 1).await;
    let router = Server::new(host.clone(), ServerConfig::default()).router();
    let submit = |body: &'static str| {
        let router = router.clone();
        async move {
            let a = call(&router, Method::POST, "/v1/jobs", body).await;
            assert_eq!(a.status, StatusCode::ACCEPTED);
            a.json()["job_id"].as_str().unwrap().to_owned()
        }
    };
    // One lane, held by a sleeping probe job (its first run: measured alone).
    let sleeper =
        submit(r#"{"capability": "probe", "kwargs": {"action": "sleep", "seconds": 1.5}}"#).await;
    let started = std::time::Instant::now();
    while host.queue().running().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let head =
        submit(r#"{"capability": "probe", "kwargs": {"action": "echo", "text": "a"}}"#).await;
    let behind =
        submit(r#"{"capability": "probe", "kwargs": {"action": "echo", "text": "b"}}"#).await;
    let other = submit(r#"{"capability": "text-stats", "kwargs": {"text": "x"}}"#).await;
    let why = call(&router, Method::GET, "/v1/queue/waiting", Body::empty())
        .await
        .json();
    let why: std::collections::HashMap<String, Value> = why["waiting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["job_id"].as_str().unwrap().to_owned(), w.clone()))
        .collect();
    assert_eq!(why.len(), 3, "{why:?}");
    assert!(!why.contains_key(&sleeper), "a running job does not wait");
    // Nothing is admitted beside a first run; the second probe job is behind the first.
    assert_eq!(why[&head]["kind"], "exclusive", "{why:?}");
    assert_eq!(why[&other]["kind"], "exclusive", "{why:?}");
    assert_eq!(why[&behind]["kind"], "behind", "{why:?}");
    assert_eq!(why[&behind]["ahead"], 1);
    assert!(
        why[&behind]["message"]
            .as_str()
            .unwrap()
            .contains("behind 1 earlier job(s) of 'probe'")
    );
    let a = call(
        &router,
        Method::GET,
        "/v1/queue/waiting?limit=1",
        Body::empty(),
    )
    .await;
    assert_eq!(a.json()["waiting"].as_array().unwrap().len(), 1);
    // Or for the jobs asked about (a page shows the newest; the queue orders by priority).
    let a = call(
        &router,
        Method::GET,
        &format!("/v1/queue/waiting?jobs={behind},{sleeper}"),
        Body::empty(),
    )
    .await
    .json();
    assert_eq!(a["waiting"].as_array().unwrap().len(), 1, "{a}");
    assert_eq!(a["waiting"][0]["job_id"], behind.as_str());
    // The instances say what they do.
    let caps = call(&router, Method::GET, "/v1/capabilities", Body::empty())
        .await
        .json();
    let state = |id: &str| {
        caps["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["instances"].as_array().unwrap().iter())
            .find(|i| i["id"] == id)
            .map(|i| i["state"].clone())
            .unwrap()
    };
    assert_eq!(state("probe"), "busy");
    assert_eq!(state("text-stats"), "idle");
    // The queue's figures carry the journal's cursor: events after it are what comes next.
    let q = call(&router, Method::GET, "/v1/queue", Body::empty())
        .await
        .json();
    assert_eq!(q["lanes"], 1);
    assert!(q["journal_seq"].as_i64().unwrap() > 0, "{q}");
    // A composition is listed while it runs and once it is done.
    let a = call(
        &router,
        Method::POST,
        "/v1/compositions",
        r#"{"nodes": [{"id": "a", "instance_id": "text-stats", "kwargs": {"text": "one"}}]}"#,
    )
    .await;
    let comp = a.json()["composition_id"].as_str().unwrap().to_owned();
    let listed = call(&router, Method::GET, "/v1/compositions", Body::empty())
        .await
        .json();
    assert_eq!(listed["compositions"][0]["id"], comp.as_str());
    let done = call(
        &router,
        Method::GET,
        &format!("/v1/compositions/{comp}/wait?timeout_s=30"),
        Body::empty(),
    )
    .await
    .json();
    assert_eq!(done["status"], "completed");
    let why = call(&router, Method::GET, "/v1/queue/waiting", Body::empty())
        .await
        .json();
    assert_eq!(why["waiting"], json!([]), "nothing waits once all ran");
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_on_another_origin_cannot_drive_the_host() {
    let dir = data_dir();
    let host = host(dir.path(), 2).await;
    let router = Server::new(host.clone(), ServerConfig::default()).router();
    let send = |origin: Option<&'static str>, uri: &'static str| {
        let router = router.clone();
        async move {
            let mut request = Request::builder()
                .method(Method::POST)
                .uri(uri)
                .header("host", "127.0.0.1:8631")
                // What a form or a no-cors fetch sends: no preflight asked.
                .header("content-type", "text/plain");
            if let Some(o) = origin {
                request = request.header("origin", o);
            }
            router
                .oneshot(
                    request
                        .body(Body::from(r#"{"kwargs": {"text": "csrf"}}"#))
                        .unwrap(),
                )
                .await
                .unwrap()
                .status()
        }
    };
    let refused = [
        "/v1/capabilities/text-stats/execute",
        "/v1/capabilities/text-stats/unload",
        "/mcp",
    ];
    for uri in refused {
        assert_eq!(
            send(Some("http://evil.example"), uri).await,
            StatusCode::FORBIDDEN,
            "{uri}"
        );
        assert_eq!(
            send(Some("null"), uri).await,
            StatusCode::FORBIDDEN,
            "{uri}"
        );
    }
    // The dashboard's own origin and clients that are not browsers pass.
    assert_eq!(
        send(
            Some("http://127.0.0.1:8631"),
            "/v1/capabilities/text-stats/execute"
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        send(None, "/v1/capabilities/text-stats/execute").await,
        StatusCode::OK
    );
    assert!(
        host.manager().instance("text-stats").is_ok(),
        "not unloaded"
    );
    // DNS rebinding: a page of another name re-pointed at 127.0.0.1 is same-origin with
    // itself; without a token only loopback names are answered, the dashboard included.
    let named = |name: &'static str, uri: &'static str| {
        let router = router.clone();
        async move {
            router
                .oneshot(
                    Request::builder()
                        .uri(uri)
                        .header("host", name)
                        .header("origin", format!("http://{name}"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap()
                .status()
        }
    };
    for uri in ["/v1/jobs", "/v1/secrets", "/"] {
        assert_eq!(
            named("evil.example:8631", uri).await,
            StatusCode::FORBIDDEN,
            "{uri}"
        );
        for name in ["localhost:8631", "127.0.0.1:8631", "[::1]:8631"] {
            assert_eq!(named(name, uri).await, StatusCode::OK, "{name}{uri}");
        }
    }
    // The bearer scheme is case-insensitive.
    let token = Token::generate();
    let guarded = Server::new(
        host.clone(),
        ServerConfig {
            token: Some(token.clone()),
            ..ServerConfig::default()
        },
    )
    .router();
    let a = guarded
        .oneshot(
            Request::builder()
                .uri("/v1/health")
                .header("authorization", format!("bearer {}", token.expose()))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(a.status(), StatusCode::OK);
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_arguments_are_checked_before_the_call_reaches_the_guest() {
    let dir = data_dir();
    let host = host(dir.path(), 2).await;
    let router = Server::new(host.clone(), ServerConfig::default()).router();
    // The author typed compute_stats' arguments: the surface carries their schema.
    let info = call(
        &router,
        Method::GET,
        "/v1/capabilities/text-stats",
        Body::empty(),
    )
    .await
    .json();
    let method = info["structural_surface"]["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "compute_stats")
        .unwrap()
        .clone();
    assert_eq!(
        method["params_schema"]["properties"]["text"]["type"], "string",
        "{method}"
    );
    assert_eq!(method["signature"], "(self, text, **kwargs)");
    for kind in ["text-stats", "text-stats-native"] {
        let a = call(
            &router,
            Method::POST,
            "/v1/jobs",
            format!(
                r#"{{"capability": "{kind}", "task": "text_statistics", "method": "compute_stats", "kwargs": {{"text": 5}}}}"#
            ),
        )
        .await;
        let id = a.json()["job_id"].as_str().unwrap().to_owned();
        let job = call(
            &router,
            Method::GET,
            &format!("/v1/jobs/{id}/wait?timeout_s=30"),
            Body::empty(),
        )
        .await
        .json();
        assert_eq!(job["status"], "failed", "{job}");
        let error = &job["error"];
        assert_eq!(error["category"], "user_input", "{error}");
        assert_eq!(error["fields_invalid"], json!(["text"]), "{error}");
        // The host's words, not the guest's: it never ran.
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with("invalid arguments for 'text-stats"),
            "{error}"
        );
    }
    host.shutdown().await.unwrap();
}
