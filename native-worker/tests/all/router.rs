//! Every endpoint of the worker contract, answered by the router for the `probe` capability,
//! checked against the Python worker's shapes (FACTS / worker transcripts).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use cjm_native_worker::{LogConfig, LogSink, Worker, router};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::probe::Probe;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    fn accounts(&self) -> Option<&str> {
        self.headers
            .get("x-cjm-accounts")
            .map(|v| v.to_str().unwrap())
    }
}

fn app() -> Router {
    router(Worker::new::<Probe>(LogSink::new(LogConfig {
        stderr: false,
        ..LogConfig::default()
    })))
}

async fn send(app: &Router, method: &str, path: &str, body: Option<&str>) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

async fn get(app: &Router, path: &str) -> Reply {
    send(app, "GET", path, None).await
}

async fn post(app: &Router, path: &str, body: &str) -> Reply {
    send(app, "POST", path, Some(body)).await
}

async fn initialized() -> Router {
    let app = app();
    let r = post(&app, "/initialize", r#"{"prefix":"> "}"#).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, r#"{"status":"ok"}"#)
    );
    app
}

#[tokio::test]
async fn health_names_the_capability_and_runtime() {
    let app = app();
    let r = get(&app, "/health").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.content_type(), "application/json");
    let expected = format!(
        r#"{{"status":"running","pid":{},"name":"probe","version":"0.3.0","substrate_version":"{}","runtime":"native"}}"#,
        std::process::id(),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(r.body, expected);
}

#[tokio::test]
async fn schema_surface_and_config_before_initialize() {
    let app = app();
    let schema = get(&app, "/config_schema").await.json();
    assert_eq!(schema["properties"]["level"]["maximum"], 10);
    assert_eq!(schema["properties"]["prefix"]["type"], "string");
    let surface = get(&app, "/structural_surface").await.json();
    let shout = surface["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "shout")
        .unwrap();
    assert_eq!(
        shout,
        &json!({"name": "shout", "signature": "(self, text, **kwargs)", "params": ["text", "kwargs"]})
    );
    assert_eq!(surface["properties"], json!([]));
    assert_eq!(
        get(&app, "/config").await.body,
        r#"{"prefix":"","level":0}"#
    );
    assert_eq!(get(&app, "/config_options").await.body, "{}");
}

#[tokio::test]
async fn initialize_good_and_bad() {
    let app = initialized().await;
    assert_eq!(
        get(&app, "/config").await.json(),
        json!({"prefix": "> ", "level": 0})
    );

    let r = post(&app, "/initialize", r#"{"bogus":1}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let detail = r.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("unknown field `bogus`"), "{detail}");

    let r = post(&app, "/initialize", r#"{"level":11}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body,
        r#"{"detail":"level: 11 is greater than maximum 10"}"#
    );

    let r = post(&app, "/initialize", "not json").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .starts_with("invalid json body")
    );
    // A failed initialize leaves the previous configuration in force.
    assert_eq!(
        get(&app, "/config").await.json(),
        json!({"prefix": "> ", "level": 0})
    );
}

#[tokio::test]
async fn execute_keeps_number_types_key_order_and_text() {
    let app = initialized().await;
    let r = post(
        &app,
        "/execute",
        r#"{"args":["x"],"kwargs":{"action":"echo","text":"héllo 😀 世界","a":0.0,"b":0,"c":1e16,"d":-0.0,"f":12345678901234567890,"j":[1,2.0],"k":{"z":1,"a":2}}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        r#"{"args":["x"],"kwargs":{"text":"héllo 😀 世界","a":0.0,"b":0,"c":1e+16,"d":-0.0,"f":12345678901234567890,"j":[1,2.0],"k":{"z":1,"a":2}}}"#
    );
    assert!(r.accounts().is_none());
    // `{}` is a call with no arguments.
    assert_eq!(
        post(&app, "/execute", "{}").await.body,
        r#"{"args":[],"kwargs":{}}"#
    );
}

#[tokio::test]
async fn bad_bodies_get_a_bare_500_and_bad_args_a_job_error() {
    let app = initialized().await;
    for body in ["not json", "[]"] {
        let r = post(&app, "/execute", body).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.body, "Internal Server Error");
        assert!(r.content_type().starts_with("text/plain"));
    }
    let r = post(&app, "/execute", r#"{"args":{"a":1}}"#).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let e = &r.json()["_job_error"];
    assert_eq!(e["category"], "user_input");
    assert_eq!(e["message"], "args must be a list, not dict");
}

#[tokio::test]
async fn execute_before_initialize_is_fatal() {
    let app = app();
    let r = post(&app, "/execute", "{}").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let e = &r.json()["_job_error"];
    assert_eq!(e["category"], "fatal");
    assert_eq!(e["retriable"], false);
    assert_eq!(e["message"], "capability 'probe' is not initialized");
}

#[tokio::test]
async fn typed_errors_keep_category_fields_and_accounts() {
    let app = initialized().await;
    let r = post(&app, "/execute", r#"{"kwargs":{"action":"fail"}}"#).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        r.accounts(),
        Some(r#"[{"event_type": "result_saved", "payload": {"path": "/tmp/x"}}]"#)
    );
    let body = r.json();
    let e = body["_job_error"].as_object().unwrap();
    let keys: Vec<&str> = e.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "category",
            "message",
            "retriable",
            "original_exc_repr",
            "traceback",
            "retry_after_seconds",
            "fields_invalid",
            "resource_shortfall",
            "capability_name",
            "capability_instance_id",
            "occurred_at"
        ]
    );
    assert_eq!(e["category"], "resource");
    assert_eq!(e["retriable"], true);
    assert_eq!(
        e["original_exc_repr"],
        "CapabilityResourceError('out of VRAM')"
    );
    assert_eq!(
        e["resource_shortfall"],
        json!({"resource": "gpu_vram_mb", "needed": 4096.0, "available": 1024.0})
    );
    assert!(r.body.contains(r#""needed":4096.0"#), "{}", r.body);
    assert_eq!(e["capability_name"], "probe");
    assert_eq!(e["capability_instance_id"], Value::Null);

    let r = post(&app, "/execute", r#"{"kwargs":{"action":"input"}}"#).await;
    let e = &r.json()["_job_error"];
    assert_eq!(
        (e["category"].as_str(), e["fields_invalid"].clone()),
        (Some("user_input"), json!(["text"]))
    );
    assert!(r.accounts().is_none());
}

#[tokio::test]
async fn accounts_ride_the_header_as_json_dumps_writes_them() {
    let app = initialized().await;
    let r = post(
        &app,
        "/execute",
        r#"{"kwargs":{"action":"accounts"},"envelope":{"job_id":"job-2","unknown_key":5}}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, r#"{"accounts":2}"#)
    );
    assert_eq!(
        r.accounts(),
        Some(
            r#"[{"event_type": "cache_hit", "payload": {"key": "abc", "n": 1}}, {"event_type": "result_saved", "payload": {"path": "/tmp/\u00e9"}}]"#
        )
    );
}

#[tokio::test]
async fn tasks_dispatch_account_and_404() {
    let app = initialized().await;
    let r = post(
        &app,
        "/task",
        r#"{"task":"probe_task","method":"shout","kwargs":{"text":"hi"},"envelope":{"job_id":"job-3"}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        r#"{"__wire__":"probe.result","data":{"text":"> HI"}}"#
    );
    let accounts: Value = serde_json::from_str(r.accounts().unwrap()).unwrap();
    assert_eq!(
        accounts[0],
        json!({"event_type": "cache_hit", "payload": {"key": "hi"}})
    );
    let task_account = &accounts[1];
    assert_eq!(task_account["event_type"], "task_account");
    let payload = task_account["payload"].as_object().unwrap();
    let keys: Vec<&str> = payload.keys().map(String::as_str).take(4).collect();
    assert_eq!(keys, ["task", "method", "ok", "duration_s"]);
    assert_eq!(payload["ok"], true);
    assert!(payload["duration_s"].is_f64());

    let r = post(
        &app,
        "/task",
        r#"{"task":"probe_task","method":"shout","kwargs":{}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.json()["_job_error"]["fields_invalid"], json!(["text"]));
    let accounts: Value = serde_json::from_str(r.accounts().unwrap()).unwrap();
    assert_eq!(accounts[0]["payload"]["ok"], false);
    assert_eq!(accounts[0]["payload"]["error_category"], "user_input");

    let cases = [
        (
            r#"{"task":"nope","method":"shout","kwargs":{}}"#,
            r#"{"detail":"No adapter bound for task 'nope' (bound: ['probe_task'])"}"#,
        ),
        (
            r#"{"method":"shout"}"#,
            r#"{"detail":"No adapter bound for task None (bound: ['probe_task'])"}"#,
        ),
        (
            r#"{"task":"probe_task","method":"missing","kwargs":{}}"#,
            r#"{"detail":"Task 'probe_task' adapter has no method 'missing'"}"#,
        ),
        (
            r#"{"task":"probe_task","method":"_private","kwargs":{}}"#,
            r#"{"detail":"Invalid task method '_private'"}"#,
        ),
        (
            r#"{"task":"probe_task","kwargs":{}}"#,
            r#"{"detail":"Invalid task method ''"}"#,
        ),
    ];
    for (body, answer) in cases {
        let r = post(&app, "/task", body).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::NOT_FOUND, answer),
            "{body}"
        );
        assert!(r.accounts().is_none());
    }
}

#[tokio::test]
async fn cancel_stops_a_cooperative_call_with_409_and_progress_stays() {
    let app = initialized().await;
    let slow = tokio::spawn({
        let app = app.clone();
        async move {
            post(
                &app,
                "/execute",
                r#"{"kwargs":{"action":"slow","steps":100000}}"#,
            )
            .await
        }
    });
    // Progress is readable while the call holds the capability.
    wait_for_steps(&app).await;
    assert_eq!(get(&app, "/health").await.status, StatusCode::OK);
    let r = post(&app, "/cancel", "").await;
    assert_eq!(r.body, r#"{"status":"cancelled"}"#);
    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(
        r.body,
        r#"{"detail":"Capability 'probe' cancelled by operator"}"#
    );
    assert!(r.accounts().is_none());
    // Progress is not reset by the worker.
    let after = get(&app, "/progress").await.json();
    assert!(after["message"].as_str().unwrap().starts_with("step "));
    // The flag is reset at the start of the next call.
    let r = post(
        &app,
        "/execute",
        r#"{"kwargs":{"action":"slow","steps":2}}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, r#"{"steps":2}"#)
    );
    assert_eq!(
        get(&app, "/progress").await.body,
        r#"{"progress":1.0,"message":"done"}"#
    );
}

/// Waits until a `slow` call reports its steps.
async fn wait_for_steps(app: &Router) {
    let mut seen = Value::Null;
    for _ in 0..2000 {
        seen = get(app, "/progress").await.json();
        if seen["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("step "))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no progress reported: {seen}");
}

#[tokio::test]
async fn a_cancelled_stream_ends_with_the_cancellation_line() {
    let app = initialized().await;
    let stream = tokio::spawn({
        let app = app.clone();
        async move {
            post(
                &app,
                "/execute_stream",
                r#"{"kwargs":{"action":"slow","steps":100000}}"#,
            )
            .await
        }
    });
    wait_for_steps(&app).await;
    post(&app, "/cancel", "").await;
    let r = stream.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.matches('\n').count(), 1);
    let e = &r.json()["_job_error"];
    assert_eq!(e["category"], "transient");
    assert_eq!(e["retriable"], false);
    assert_eq!(e["message"], "Capability 'probe' cancelled by operator");
    assert_eq!(
        e["original_exc_repr"],
        r#"CapabilityCancelledError("Capability 'probe' cancelled by operator")"#
    );
}

#[tokio::test]
async fn progress_starts_at_zero() {
    let app = app();
    assert_eq!(
        get(&app, "/progress").await.body,
        r#"{"progress":0.0,"message":""}"#
    );
}

#[tokio::test]
async fn stream_is_ndjson_with_a_typed_error_line() {
    let app = initialized().await;
    let r = post(
        &app,
        "/execute_stream",
        r#"{"kwargs":{"action":"echo","t":"é","n":1.0}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.content_type(), "application/x-ndjson");
    assert_eq!(
        r.body,
        "{\"args\": [], \"kwargs\": {\"t\": \"\\u00e9\", \"n\": 1.0}}\n"
    );

    let r = post(&app, "/execute_stream", r#"{"kwargs":{"action":"input"}}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.ends_with('\n') && r.body.matches('\n').count() == 1);
    assert!(r.body.starts_with(r#"{"_job_error": {"category": "user_input", "message": "bad text", "retriable": true, "original_exc_repr": "CapabilityInputError('bad text')", "traceback": null,"#), "{}", r.body);
    assert!(r.accounts().is_none());

    let r = post(&app, "/execute_stream", "[]").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn stats_report_the_subtree_and_the_last_usage() {
    let app = initialized().await;
    let r = get(&app, "/stats").await;
    let stats = r.json();
    let keys: Vec<&str> = stats
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "pid",
            "cpu_percent",
            "memory_rss_mb",
            "subtree_pids",
            "usage"
        ]
    );
    assert_eq!(stats["pid"], std::process::id());
    assert_eq!(stats["subtree_pids"][0], std::process::id());
    assert!(stats["cpu_percent"].is_f64() && stats["memory_rss_mb"].as_f64().unwrap() > 1.0);
    assert_eq!(stats["usage"], Value::Null);

    post(&app, "/execute", r#"{"kwargs":{"action":"usage"}}"#).await;
    let stats = get(&app, "/stats").await.json();
    assert_eq!(stats["usage"], json!({"characters": 42, "requests": 1}));
    // A lifecycle call keeps the last job's usage; the next job resets it.
    post(&app, "/prefetch", "").await;
    let stats = get(&app, "/stats").await.json();
    assert_eq!(stats["usage"], json!({"characters": 42, "requests": 1}));
    post(&app, "/execute", "{}").await;
    assert_eq!(get(&app, "/stats").await.json()["usage"], Value::Null);
}

#[tokio::test]
async fn lifecycle_hooks() {
    let app = initialized().await;
    assert_eq!(
        post(&app, "/prefetch", "").await.body,
        r#"{"status":"prefetched"}"#
    );
    assert_eq!(
        post(&app, "/on_enable", "").await.body,
        r#"{"status":"not_supported"}"#
    );
    let r = post(&app, "/on_disable", "").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            StatusCode::OK,
            r#"{"status":"error","detail":"cannot release"}"#
        )
    );
    let r = post(
        &app,
        "/reconfigure",
        r#"{"old_config":{"prefix":"> "},"new_config":{"prefix":"+"}}"#,
    )
    .await;
    assert_eq!(r.body, r#"{"status":"reconfigured"}"#);
    assert_eq!(get(&app, "/config").await.json()["prefix"], "+");
    let r = post(
        &app,
        "/reconfigure",
        r#"{"old_config":{},"new_config":{"zzz":1}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.json()["detail"].as_str().unwrap().contains("zzz"));
    assert_eq!(
        post(&app, "/cleanup", "").await.body,
        r#"{"status":"cleaned"}"#
    );
    let r = post(&app, "/execute", "{}").await;
    assert_eq!(r.json()["_job_error"]["category"], "fatal");
}

#[tokio::test]
async fn a_panic_is_a_fatal_job_error_and_the_worker_goes_on() {
    let app = initialized().await;
    let r = post(&app, "/execute", r#"{"kwargs":{"action":"panic"}}"#).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let e = &r.json()["_job_error"];
    assert_eq!(e["category"], "fatal");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("probe panicked on purpose")
    );
    let r = post(&app, "/execute", r#"{"kwargs":{"action":"echo"}}"#).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_routes_methods_and_monitor_endpoints() {
    let app = app();
    let r = get(&app, "/nonexistent").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::NOT_FOUND, r#"{"detail":"Not Found"}"#)
    );
    let r = get(&app, "/execute").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.body, r#"{"detail":"Method Not Allowed"}"#);
    assert_eq!(r.headers.get("allow").unwrap(), "POST");
    let r = post(&app, "/get_system_status", "").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            StatusCode::NOT_FOUND,
            r#"{"detail":"Capability 'probe' is not a monitor capability (no get_system_status method)."}"#
        )
    );
    let r = post(&app, "/list_processes", "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn logs_land_in_the_diagnostics_database_with_the_job_id() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("diagnostics.db");
    let worker = Worker::new::<Probe>(LogSink::new(LogConfig {
        stderr: false,
        database: Some(db.clone()),
        session_id: Some("sess-9".into()),
        ..LogConfig::default()
    }));
    let app = router(worker.clone());
    post(&app, "/initialize", "{}").await;
    let r = post(
        &app,
        "/execute",
        r#"{"kwargs":{"action":"log"},"envelope":{"job_id":"job-log","run_id":"r"}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(worker.logs().flush(Duration::from_secs(10)));
    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows: Vec<(String, String, String, String, String)> = conn
        .prepare("SELECT worker_session_id, job_id, level, logger_name, message FROM records")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        [(
            "sess-9".to_owned(),
            "job-log".to_owned(),
            "INFO".to_owned(),
            "capability".to_owned(),
            "hello from probe".to_owned()
        )]
    );
}
