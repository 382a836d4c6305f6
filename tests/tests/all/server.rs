//! The HTTP service's router, driven with `oneshot` over a real host (wasm and native
//! text-stats, the probe worker): every route of the OpenAPI document answers, bad input gets
//! clear errors and leaves the host unharmed, the worker contract answers the same bytes for
//! a wasm and a native capability, jobs and compositions run, the token is enforced.

use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use cjm_host::Host;
use cjm_host::config::QueueConfig;
use cjm_host::server::{Server, ServerConfig, Token};
use cjm_tests::{fixtures, native_install, wasm_install, write_manifest};
use serde_json::{Value, json};
use tower::ServiceExt as _;

mod access;
mod api;

fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_manifest(
        d,
        "text-stats",
        wasm_install(fixtures::TEXT_STATS, json!({})),
    );
    write_manifest(
        d,
        "text-stats-native",
        native_install(&[env!("CARGO_BIN_EXE_parity_worker")]),
    );
    write_manifest(
        d,
        "probe",
        native_install(&[env!("CARGO_BIN_EXE_probe_worker")]),
    );
    dir
}

async fn host(dir: &Path, lanes: u32) -> Host {
    Host::builder()
        .data_dir(dir)
        .queue(QueueConfig {
            max_concurrent_lanes: lanes,
            cancel_timeout: Duration::from_millis(300),
            ..QueueConfig::default()
        })
        .load("text-stats")
        .load("text-stats-native")
        .load("probe")
        .build()
        .await
        .unwrap()
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn kind(&self) -> String {
        self.json()["error"]["kind"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// The string `field` of every object in the array `list` (an answer's rows), in order.
fn strings<'v>(list: &'v Value, field: &str) -> Vec<&'v str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|item| item[field].as_str().unwrap())
        .collect()
}

async fn call(router: &Router, method: Method, uri: &str, body: impl Into<Body>) -> Answer {
    call_with(router, method, uri, body, None).await
}

async fn call_with(
    router: &Router,
    method: Method,
    uri: &str,
    body: impl Into<Body>,
    token: Option<&str>,
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let response = router
        .clone()
        .oneshot(request.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = if headers
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"))
    {
        axum::body::Bytes::new() // a stream never ends: its status and type are what is checked
    } else {
        axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024)
            .await
            .unwrap()
    };
    Answer {
        status,
        headers,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_answers_and_none_is_undocumented() {
    let dir = data_dir();
    let host = host(dir.path(), 2).await;
    let router = Server::new(host.clone(), ServerConfig::default()).router();
    let doc = call(&router, Method::GET, "/v1/openapi.json", Body::empty()).await;
    assert_eq!(doc.status, StatusCode::OK);
    let doc = doc.json();
    let paths = doc["paths"].as_object().unwrap();
    // Jobs and compositions are typed in it.
    for schema in [
        "Job",
        "JobStatus",
        "CompositionRun",
        "Composition",
        "NodeState",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} has no schema"
        );
    }
    assert_eq!(
        doc["paths"]["/v1/jobs/{id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
            ["$ref"],
        "#/components/schemas/Job"
    );
    assert!(doc["components"]["schemas"]["Job"]["properties"]["status"].is_object());
    // The routes this service has, each in the document.
    for path in [
        "/v1/capabilities",
        "/v1/capabilities/{id}",
        "/v1/capabilities/{id}/execute",
        "/v1/capabilities/{id}/task",
        "/v1/capabilities/{id}/execute_stream",
        "/v1/capabilities/{id}/config",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/wait",
        "/v1/compositions",
        "/v1/events",
        "/v1/logs",
        "/v1/journal",
        "/v1/secrets",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    // Every documented route and method is routed (not the fallback, not 405).
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let uri = path
                .replace("{id}", "text-stats")
                .replace("{capability}", "text-stats")
                .replace("{key}", "API_KEY");
            let uri = if uri.starts_with("/v1/jobs/text-stats")
                || uri.starts_with("/v1/compositions/text-stats")
            {
                uri.replace("text-stats", "no-such-id")
            } else {
                uri
            };
            let uri = if uri.contains("/wait") {
                format!("{uri}?timeout_s=0")
            } else {
                uri
            };
            let body = if method == Method::PUT && uri.contains("secrets") {
                r#"{"value": "s3cret"}"#
            } else if method == Method::PUT {
                r#"{"top_n": 3}"#
            } else {
                "{}"
            };
            // Lifecycle routes change the instance: skip the ones that take it away.
            if uri.ends_with("/unload") || uri.ends_with("/disable") {
                continue;
            }
            let a = call(&router, method.clone(), &uri, body).await;
            assert_ne!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            if a.status == StatusCode::NOT_FOUND && !a.body.is_empty() {
                let text = String::from_utf8_lossy(&a.body);
                assert!(
                    !text.contains("no such route"),
                    "{method} {uri} is not routed"
                );
            }
        }
    }
    // And an unknown route is a JSON 404 pointing at the document.
    let a = call(&router, Method::GET, "/v2/nothing", Body::empty()).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("openapi.json")
    );
    let a = call(&router, Method::DELETE, "/v1/jobs", Body::empty()).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_contract_answers_the_same_bytes_for_wasm_and_native() {
    let dir = data_dir();
    let host = host(dir.path(), 2).await;
    let router = Server::new(host.clone(), ServerConfig::default()).router();
    let task = r#"{"task": "text_statistics", "method": "compute_stats", "kwargs": {"text": "Été, été! b a b 1e16"}}"#;
    let exec = r#"{"args": [], "kwargs": {"text": "one two two"}, "envelope": {"run_id": "r-7"}}"#;
    for (path, body) in [("task", task), ("execute", exec)] {
        let wasm = call(
            &router,
            Method::POST,
            &format!("/v1/capabilities/text-stats/{path}"),
            body,
        )
        .await;
        let native = call(
            &router,
            Method::POST,
            &format!("/v1/capabilities/text-stats-native/{path}"),
            body,
        )
        .await;
        let direct = call(
            &router,
            Method::POST,
            &format!("/v1/capabilities/text-stats/{path}?direct=true"),
            body,
        )
        .await;
        assert_eq!(
            wasm.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&wasm.body)
        );
        assert_eq!(wasm.body, native.body, "{path}: wasm and native differ");
        assert_eq!(wasm.body, direct.body, "{path}: queued and direct differ");
        // It ran as a job: its id rides along and the journal has it.
        let job = wasm
            .headers
            .get("x-cjm-job-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let a = call(
            &router,
            Method::GET,
            &format!("/v1/jobs/{job}"),
            Body::empty(),
        )
        .await;
        assert_eq!(a.json()["status"], "completed");
    }
    // The native worker's accounts ride on X-CJM-Accounts as the worker sent them.
    let native = call(
        &router,
        Method::POST,
        "/v1/capabilities/text-stats-native/task",
        task,
    )
    .await;
    let accounts: Value = serde_json::from_str(
        native
            .headers
            .get("x-cjm-accounts")
            .unwrap()
            .to_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(accounts[0]["event_type"], "task_account");
    // Unknown task method: the worker's 404 with its detail, for both kinds.
    for bad in [
        r#"{"task": "text_statistics", "method": "nope", "kwargs": {}}"#,
        r#"{"task": "no_such_task", "method": "run", "kwargs": {}}"#,
    ] {
        let wasm = call(
            &router,
            Method::POST,
            "/v1/capabilities/text-stats/task",
            bad,
        )
        .await;
        let native = call(
            &router,
            Method::POST,
            "/v1/capabilities/text-stats-native/task",
            bad,
        )
        .await;
        assert_eq!(wasm.status, StatusCode::NOT_FOUND, "{bad}");
        assert_eq!(wasm.body, native.body, "{bad}");
    }
    // A failing call: 500 with the `_job_error` of all eleven keys.
    let a = call(
        &router,
        Method::POST,
        "/v1/capabilities/text-stats/execute",
        r#"{"kwargs": {"text": 5}}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    let e = &a.json()["_job_error"];
    assert_eq!(e["category"], "user_input");
    assert_eq!(e.as_object().unwrap().len(), 11);
    // The stream: one NDJSON line with the result, as the worker's.
    let a = call(
        &router,
        Method::POST,
        "/v1/capabilities/text-stats/execute_stream",
        exec,
    )
    .await;
    assert_eq!(a.headers["content-type"], "application/x-ndjson");
    let line: Value = serde_json::from_slice(a.body.strip_suffix(b"\n").unwrap()).unwrap();
    assert_eq!(line["words"], 3);
    // Schema, surface, health, progress, cancel answer per instance.
    for q in [
        "config_schema",
        "structural_surface",
        "health",
        "stats",
        "progress",
    ] {
        let a = call(
            &router,
            Method::GET,
            &format!("/v1/capabilities/text-stats-native/{q}"),
            Body::empty(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{q}");
    }
    let a = call(
        &router,
        Method::POST,
        "/v1/capabilities/probe/cancel",
        Body::empty(),
    )
    .await;
    assert_eq!(a.json(), json!({"status": "cancelled"}));
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_host_stays_up() {
    let dir = data_dir();
    let host = host(dir.path(), 2).await;
    let router = Server::new(
        host.clone(),
        ServerConfig {
            max_body_bytes: 64 * 1024,
            ..ServerConfig::default()
        },
    )
    .router();
    // Unknown capability, on every family of routes.
    for (method, uri) in [
        (Method::GET, "/v1/capabilities/nope"),
        (Method::POST, "/v1/capabilities/nope/execute"),
        (Method::POST, "/v1/capabilities/nope/reload"),
        (Method::GET, "/v1/capabilities/nope/config"),
    ] {
        let a = call(&router, method, uri, "{}").await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(a.kind(), "not_found");
    }
    // A query string that does not parse: the API's error, naming the parameter.
    for uri in [
        "/v1/journal?limit=abc",
        "/v1/logs?after=x",
        "/v1/jobs?limit=-1",
        "/v1/jobs/some-id/wait?timeout_s=soon",
        "/v1/events?after=z",
        "/v1/queue/waiting?limit=many",
        "/v1/capabilities/text-stats/execute?direct=perhaps",
    ] {
        let method = if uri.contains("/execute") {
            Method::POST
        } else {
            Method::GET
        };
        let a = call(&router, method, uri, "{}").await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(a.kind(), "bad_request", "{uri}");
        let message = a.json()["error"]["message"].as_str().unwrap().to_owned();
        let name = uri.split('?').nth(1).unwrap().split('=').next().unwrap();
        assert!(message.contains(name), "{uri}: {message}");
    }
    let a = call(
        &router,
        Method::POST,
        "/v1/jobs",
        r#"{"capability": "nope"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    // Bad JSON, a wrong shape, unknown fields.
    let a = call(&router, Method::POST, "/v1/jobs", "{not json").await;
    assert_eq!(
        (a.status, a.kind().as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    // Nesting: kwargs past the host's bound get the typed error naming the field; a body
    // past the parser's limit is said to be too deep, not invalid.
    // A job whose one kwarg nests `n` levels.
    let nested_job = |n: usize| {
        format!(
            r#"{{"capability": "text-stats", "kwargs": {{"text": {}1{}}}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    let a = call(&router, Method::POST, "/v1/jobs", nested_job(110)).await;
    assert!(a.status.is_client_error(), "{}", a.status);
    let e = &a.json()["error"];
    assert_eq!(e["kind"], "invalid", "{e}");
    assert_eq!(e["fields"], json!(["text"]), "{e}");
    assert!(e["message"].as_str().unwrap().contains("100 levels"), "{e}");
    let a = call(&router, Method::POST, "/v1/jobs", nested_job(200)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nests deeper than 128 levels"),
        "{}",
        a.json()
    );
    let a = call(
        &router,
        Method::POST,
        "/v1/jobs",
        r#"{"capability": "text-stats", "kwarg": {}}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("kwarg")
    );
    let a = call(
        &router,
        Method::POST,
        "/v1/capabilities/text-stats/execute",
        "[1]",
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    // A config the schema refuses: 422 naming the field; the old config stays.
    let before = call(
        &router,
        Method::GET,
        "/v1/capabilities/text-stats/config",
        Body::empty(),
    )
    .await
    .json();
    let a = call(
        &router,
        Method::PUT,
        "/v1/capabilities/text-stats/config",
        r#"{"top_n": 1000}"#,
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert!(
        a.json()["error"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "top_n")
    );
    let after = call(
        &router,
        Method::GET,
        "/v1/capabilities/text-stats/config",
        Body::empty(),
    )
    .await
    .json();
    assert_eq!(before, after);
    let a = call(
        &router,
        Method::PUT,
        "/v1/capabilities/text-stats/config",
        r#"{"top_n": 4}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["top_n"], 4);
    // Over-deep JSON and an oversized body.
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let a = call(&router, Method::POST, "/v1/jobs", deep).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let deep = format!(
        r#"{{"kwargs": {{"x": {}1{}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let a = call(
        &router,
        Method::POST,
        "/v1/capabilities/text-stats/execute",
        deep,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let big = format!(
        r#"{{"capability": "text-stats", "kwargs": {{"text": "{}"}}}}"#,
        "a".repeat(100 * 1024)
    );
    let a = call(&router, Method::POST, "/v1/jobs", big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.kind(), "payload_too_large", "the API's error shape");
    // A declared length past the bound is refused before any of the body is read.
    let a = router
        .clone()
        .oneshot(
            Request::builder()
                .method(Method::POST)
                .uri("/v1/jobs")
                .header("content-length", "99999999999")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(a.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Bad query values.
    let a = call(
        &router,
        Method::GET,
        "/v1/jobs?status=sideways",
        Body::empty(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let a = call(&router, Method::GET, "/v1/jobs?limit=minus", Body::empty()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    // A bad composition names its problem.
    let a = call(&router, Method::POST, "/v1/compositions", r#"{"nodes": [{"id": "a", "instance_id": "text-stats", "kwargs": {"t": {"$output": "a"}}}]}"#).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("itself")
    );
    // The host is unharmed: a job still runs.
    let a = call(
        &router,
        Method::POST,
        "/v1/jobs",
        r#"{"capability": "text-stats", "kwargs": {"text": "still here"}}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let id = a.json()["job_id"].as_str().unwrap().to_owned();
    let a = call(
        &router,
        Method::GET,
        &format!("/v1/jobs/{id}/wait?timeout_s=30"),
        Body::empty(),
    )
    .await;
    assert_eq!(a.json()["status"], "completed");
    assert_eq!(a.json()["result"]["words"], 2);
    host.shutdown().await.unwrap();
}
