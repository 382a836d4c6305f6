#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! One trace per job: `cjm-ctl serve` with `OTEL_EXPORTER_OTLP_ENDPOINT` set exports its spans
//! over OTLP/HTTP to an in-process receiver that decodes the protobuf (the collector's own
//! message types). A job submitted with a W3C `traceparent` gives one trace whose spans nest
//! from the HTTP request to the call to the native worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::{Value, json};

mod common;
use common::*;

/// An OTLP/HTTP trace receiver on loopback: every span of every export it was sent.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    rt: tokio::runtime::Runtime,
}

impl Receiver {
    fn start() -> Receiver {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let s = Arc::clone(&spans);
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                    assert_eq!(
                        headers.get("content-type").unwrap(),
                        "application/x-protobuf",
                        "OTLP/HTTP in protobuf"
                    );
                    let request = ExportTraceServiceRequest::decode(body).unwrap();
                    let mut all = s.lock().unwrap();
                    for resource in request.resource_spans {
                        for scope in resource.scope_spans {
                            all.extend(scope.spans);
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                },
            ),
        );
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, spans, rt }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            any_value::Value::StringValue(s) => s.clone(),
            any_value::Value::IntValue(i) => i.to_string(),
            any_value::Value::BoolValue(b) => b.to_string(),
            other => format!("{other:?}"),
        })
}

fn install(env: &Env) {
    let caps = env.write("capabilities.yaml", &capabilities_yaml(""));
    env.ctl()
        .args(["install-all", "--capabilities", caps.to_str().unwrap()])
        .assert()
        .success();
}

/// `POST /v1/jobs` with `headers`, then the job once done.
fn run_job(rt: &tokio::runtime::Runtime, url: &str, headers: &[(&str, &str)]) -> Value {
    rt.block_on(async {
        let http = reqwest::Client::new();
        let mut submit = http
            .post(format!("{url}/v1/jobs"))
            .header("content-type", "application/json")
            .body(
                json!({"capability": "text-stats-native", "kwargs": {"text": "one two"}})
                    .to_string(),
            );
        for (k, v) in headers {
            submit = submit.header(*k, *v);
        }
        let answer = submit.send().await.unwrap();
        assert_eq!(answer.status(), 202);
        let id: Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
        let id = id["job_id"].as_str().unwrap().to_owned();
        let done = http
            .get(format!("{url}/v1/jobs/{id}/wait?timeout=60"))
            .send()
            .await
            .unwrap();
        let job: Value = serde_json::from_slice(&done.bytes().await.unwrap()).unwrap();
        assert_eq!(job["status"], "completed", "{job}");
        job
    })
}

/// One MCP `tools/call` over streamable HTTP (initialize, initialized, the call) with
/// `_meta.traceparent`; the call's answer.
fn mcp_call(rt: &tokio::runtime::Runtime, url: &str, traceparent: &str) -> String {
    rt.block_on(async {
        let http = reqwest::Client::new();
        let post = |body: Value, session: Option<&str>| {
            let mut r = http
                .post(format!("{url}/mcp"))
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(body.to_string());
            if let Some(s) = session {
                r = r.header("mcp-session-id", s);
            }
            r.send()
        };
        let init = post(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "trace-test", "version": "1"}}}),
            None,
        )
        .await
        .unwrap();
        assert_eq!(init.status(), 200);
        let session = init.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        init.bytes().await.unwrap();
        let ready = post(
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            Some(&session),
        )
        .await
        .unwrap();
        assert!(ready.status().is_success(), "{}", ready.status());
        let call = post(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
                "name": "text-stats-native__execute", "arguments": {"text": "one two"},
                "_meta": {"traceparent": traceparent}}}),
            Some(&session),
        )
        .await
        .unwrap();
        assert_eq!(call.status(), 200);
        String::from_utf8(call.bytes().await.unwrap().to_vec()).unwrap()
    })
}

#[test]
fn a_job_through_serve_to_a_native_worker_is_one_trace() {
    let env = Env::new();
    install(&env);
    let receiver = Receiver::start();
    let serving = Serving::start_env(
        &env,
        "127.0.0.1:0",
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("OTEL_SERVICE_NAME", "cjm-trace-test"),
        ],
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let job = run_job(
        &receiver.rt,
        &serving.url,
        &[("traceparent", &format!("00-{trace_id}-{caller_span}-01"))],
    );
    let job_id = job["id"].as_str().unwrap().to_owned();
    // An MCP tool call in a trace of its own, named by its `_meta`.
    let mcp_trace = "0af7651916cd43dd8448eb211c80319c";
    let answer = mcp_call(
        &receiver.rt,
        &serving.url,
        &format!("00-{mcp_trace}-b7ad6b7169203331-01"),
    );
    assert!(
        answer.contains(r#"\"words\":2"#) || answer.contains(r#""words":2"#),
        "{answer}"
    );
    // Stopping the service sends what its exporter still buffers.
    let (status, log) = serving.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("traces: OTLP/HTTP to http://127.0.0.1:"),
        "{log}"
    );

    let all = receiver.spans();
    let ours: Vec<&Span> = all
        .iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .collect();
    let by_name: HashMap<&str, &Span> = ours.iter().map(|s| (s.name.as_str(), *s)).collect();
    let names: Vec<&str> = ours.iter().map(|s| s.name.as_str()).collect();
    let get = |name: &str| -> &Span {
        by_name
            .get(name)
            .unwrap_or_else(|| panic!("no span '{name}' in the caller's trace: {names:?}"))
    };
    let http = get("POST /v1/jobs");
    let submit = get("cjm.submit");
    let admission = get("cjm.admission");
    let attempt = get("cjm.attempt");
    let backend = get("cjm.backend.call");
    let worker = get("POST /execute");
    let parent_of = |child: &Span, parent: &Span| {
        assert_eq!(
            hex(&child.parent_span_id),
            hex(&parent.span_id),
            "'{}' is not a child of '{}'",
            child.name,
            parent.name
        );
    };
    // From the caller's span down to the worker call, one chain.
    assert_eq!(hex(&http.parent_span_id), caller_span);
    parent_of(submit, http);
    parent_of(admission, submit);
    parent_of(attempt, submit);
    parent_of(backend, attempt);
    parent_of(worker, backend);
    // Server and client kinds where the trace crosses a process boundary.
    assert_eq!(http.kind, 2, "http.request is a server span");
    assert_eq!(worker.kind, 3, "the worker call is a client span");
    // Journal rows and spans join on the job id.
    for span in [submit, admission, attempt, backend, worker] {
        assert_eq!(
            attr(span, "cjm.job_id").as_deref(),
            Some(job_id.as_str()),
            "{}",
            span.name
        );
    }
    assert_eq!(attr(attempt, "cjm.attempt").as_deref(), Some("1"));
    assert_eq!(attr(http, "http.route").as_deref(), Some("/v1/jobs"));
    assert_eq!(
        attr(http, "http.response.status_code").as_deref(),
        Some("202")
    );
    assert_eq!(attr(backend, "cjm.kind").as_deref(), Some("Native"));
    // Spans nest in time too.
    assert!(http.start_time_unix_nano <= submit.start_time_unix_nano);
    assert!(attempt.start_time_unix_nano <= backend.start_time_unix_nano);
    assert!(worker.end_time_unix_nano <= backend.end_time_unix_nano);
    // The MCP call: its span is a child of `_meta.traceparent`, and its job's spans of it.
    let mcp: Vec<&Span> = all
        .iter()
        .filter(|s| hex(&s.trace_id) == mcp_trace)
        .collect();
    let find = |name: &str| {
        *mcp.iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no '{name}' in the MCP call's trace"))
    };
    let tool = find("tools/call text-stats-native__execute");
    assert_eq!(hex(&tool.parent_span_id), "b7ad6b7169203331");
    parent_of(find("cjm.submit"), tool);
    parent_of(find("cjm.backend.call"), find("cjm.attempt"));
    parent_of(find("POST /execute"), find("cjm.backend.call"));
    // `cjm-ctl run` in-process (no service any more) exports its call's spans too.
    let before = receiver.spans().len();
    env.ctl()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)
        .args(["run", "text-stats-native", r#"{"text": "a b c"}"#])
        .assert()
        .success();
    let after = receiver.spans();
    let backend = after[before..]
        .iter()
        .find(|s| s.name == "cjm.backend.call")
        .unwrap_or_else(|| panic!("run exported no backend call: {:?}", &after[before..]));
    assert!(
        after[before..]
            .iter()
            .any(|s| s.name == "POST /execute" && s.parent_span_id == backend.span_id)
    );
    // Requests that came without a trace context (the wait) start traces of their own.
    assert!(
        all.iter()
            .any(|s| s.name == "GET /v1/jobs/{id}/wait" && hex(&s.trace_id) != trace_id),
        "{names:?}"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
