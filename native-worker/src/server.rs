//! The HTTP/JSON worker contract (`CONTRACT.md`) as an axum [`Router`], endpoint by endpoint
//! as the Python worker answers: same paths, statuses, body shapes and bytes.
//!
//! Request bodies are read as raw JSON whatever the content type (as Starlette's
//! `request.json()` does), with no size limit; a body that is not a JSON object where one is
//! required gets Starlette's bare `500 Internal Server Error`. Unary bodies are compact JSON,
//! stream lines and the accounts header `json.dumps` defaults ([`cjm_guest::python::wire`]).

use std::convert::Infallible;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cjm_guest::{CallError, Envelope, JobError};
use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::stats::{io_delta, proc_io};
use crate::worker::{Outcome, Worker};
use cjm_guest::python::job_error::{
    cancelled_job_error, cancelled_message, py_list_repr, py_str_repr, wire_job_error,
};
use cjm_guest::python::wire::{to_compact, to_spaced_ascii};

/// The response header carrying the accounts a call recorded.
pub const ACCOUNTS_HEADER: &str = "x-cjm-accounts";

/// The version `/health` reports as `substrate_version`: this crate's.
pub const SUBSTRATE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The router serving `worker` over the worker contract.
pub fn router(worker: Worker) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/stats", get(stats))
        .route("/structural_surface", get(structural_surface))
        .route("/tasks", get(tasks))
        .route("/config_schema", get(config_schema))
        .route("/config", get(config))
        .route("/config_options", get(config_options))
        .route("/initialize", post(initialize))
        .route("/reconfigure", post(reconfigure))
        .route("/prefetch", post(prefetch))
        .route("/on_enable", post(on_enable))
        .route("/on_disable", post(on_disable))
        .route("/cleanup", post(cleanup))
        .route("/execute", post(execute))
        .route("/task", post(task))
        .route("/execute_stream", post(execute_stream))
        .route("/cancel", post(cancel))
        .route("/progress", get(progress))
        .route("/get_system_status", post(get_system_status))
        .route("/list_processes", post(list_processes))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::disable())
        .with_state(worker)
}

// ---------------------------------------------------------------------------------------
// Identity and telemetry: never wait for the capability.

async fn health(State(w): State<Worker>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "status": "running",
            "pid": std::process::id(),
            "name": w.name(),
            "version": w.version(),
            "substrate_version": SUBSTRATE_VERSION,
            "runtime": "native",
        }),
    )
}

async fn stats(State(w): State<Worker>) -> Response {
    let probe = w.clone();
    let sample = match tokio::task::spawn_blocking(move || probe.shared().stats.sample()).await {
        Ok(Ok(sample)) => sample,
        Ok(Err(e)) => return e.into_response(),
        Err(e) => return Error::Aborted(e).into_response(),
    };
    json_response(
        StatusCode::OK,
        &json!({
            "pid": sample.pid,
            "cpu_percent": sample.cpu_percent,
            "memory_rss_mb": sample.memory_rss_mb,
            "subtree_pids": sample.subtree_pids,
            "usage": w.shared().call.usage(),
        }),
    )
}

async fn cancel(State(w): State<Worker>) -> Response {
    w.cancel();
    status("cancelled")
}

async fn progress(State(w): State<Worker>) -> Response {
    let p = w.shared().call.progress();
    json_response(
        StatusCode::OK,
        &json!({"progress": p.progress, "message": p.message}),
    )
}

// ---------------------------------------------------------------------------------------
// Contract and configuration.

async fn structural_surface(State(w): State<Worker>) -> Response {
    info_field(&w, |info| json!(info.structural_surface)).await
}

/// The tasks it serves through `/task` (an addition to cjm-substrate's contract: a host that
/// asks a Python worker gets a 404 and reads its tasks from its adapters instead).
async fn tasks(State(w): State<Worker>) -> Response {
    info_field(&w, |info| json!(info.tasks)).await
}

async fn config_schema(State(w): State<Worker>) -> Response {
    info_field(&w, |info| info.config_schema.clone()).await
}

async fn info_field(w: &Worker, field: fn(&cjm_guest::CapabilityInfo) -> Value) -> Response {
    if let Some(info) = w.cached_info() {
        return json_response(StatusCode::OK, &field(info));
    }
    match w.query(move |s| field(s.info())).await {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(e) => e.into_response(),
    }
}

async fn config(State(w): State<Worker>) -> Response {
    match w.query(|s| s.capability.current_config()).await {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(e) => e.into_response(),
    }
}

async fn config_options(State(w): State<Worker>) -> Response {
    match w.query(|s| s.capability.config_options()).await {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(e) => e.into_response(),
    }
}

// ---------------------------------------------------------------------------------------
// Lifecycle.

async fn initialize(State(w): State<Worker>, body: Bytes) -> Response {
    // Any failure, an unreadable body included, is a 400 with the reason.
    let config: Value = match serde_json::from_slice(&body) {
        Ok(config) => config,
        Err(e) => return detail(StatusCode::BAD_REQUEST, &format!("invalid json body: {e}")),
    };
    match w
        .lifecycle(move |s| s.capability.initialize(config, s.cx))
        .await
    {
        Ok(Outcome { value: Ok(()), .. }) => status("ok"),
        Ok(Outcome { value: Err(e), .. }) => detail(StatusCode::BAD_REQUEST, &e.message),
        Err(e @ Error::Panic(_)) => detail(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => e.into_response(),
    }
}

async fn reconfigure(State(w): State<Worker>, body: Bytes) -> Response {
    let mut data = match parse_object(&body) {
        Ok(data) => data,
        Err(e) => return detail(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let old = data.remove("old_config").unwrap_or(Value::Null);
    let new = data.remove("new_config").unwrap_or(Value::Null);
    let outcome = w
        .lifecycle(move |s| s.capability.reconfigure(old, new, s.cx))
        .await;
    match outcome {
        Ok(Outcome { value: Ok(()), .. }) => status("reconfigured"),
        Ok(Outcome { value: Err(e), .. }) => detail(StatusCode::INTERNAL_SERVER_ERROR, &e.message),
        Err(e) => e.into_response(),
    }
}

async fn prefetch(State(w): State<Worker>) -> Response {
    match w.lifecycle(|s| s.capability.prefetch(s.cx)).await {
        Ok(Outcome { value: Ok(st), .. }) => status(&st.status),
        Ok(Outcome { value: Err(e), .. }) => detail(StatusCode::INTERNAL_SERVER_ERROR, &e.message),
        Err(e) => e.into_response(),
    }
}

async fn on_enable(State(w): State<Worker>) -> Response {
    hook(w.lifecycle(|s| s.capability.on_enable()).await)
}

async fn on_disable(State(w): State<Worker>) -> Response {
    hook(w.lifecycle(|s| s.capability.on_disable()).await)
}

/// `/on_enable`, `/on_disable`: a failure is a 200 `{"status":"error","detail":...}`.
fn hook(outcome: crate::error::Result<Outcome<Result<cjm_guest::Status, JobError>>>) -> Response {
    let message = match outcome {
        Ok(Outcome { value: Ok(st), .. }) => return status(&st.status),
        Ok(Outcome { value: Err(e), .. }) => e.message,
        Err(e) => e.to_string(),
    };
    json_response(
        StatusCode::OK,
        &json!({"status": "error", "detail": message}),
    )
}

async fn cleanup(State(w): State<Worker>) -> Response {
    match w.lifecycle(|s| s.capability.cleanup()).await {
        Ok(Outcome { value: Ok(()), .. }) => status("cleaned"),
        Ok(Outcome { value: Err(e), .. }) => detail(StatusCode::INTERNAL_SERVER_ERROR, &e.message),
        Err(e) => e.into_response(),
    }
}

// ---------------------------------------------------------------------------------------
// Calls.

async fn execute(State(w): State<Worker>, body: Bytes) -> Response {
    let mut data = match parse_object(&body) {
        Ok(data) => data,
        Err(e) => return e.into_response(),
    };
    let envelope = take_envelope(&mut data);
    match run_execute(&w, envelope, data).await {
        Ok(Outcome { value, accounts }) => unary_outcome(&w, "execute", value, &accounts),
        Err(e) => unary_outcome(&w, "execute", Err(worker_failure(e)), &[]),
    }
}

async fn task(State(w): State<Worker>, body: Bytes) -> Response {
    let mut data = match parse_object(&body) {
        Ok(data) => data,
        Err(e) => return e.into_response(),
    };
    let envelope = take_envelope(&mut data);
    let task_repr = match data.get("task") {
        None | Some(Value::Null) => "None".to_owned(),
        Some(Value::String(s)) => py_str_repr(s),
        Some(other) => other.to_string(),
    };
    let task = match data.remove("task") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let method = match data.remove("method") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => String::new(),
        Some(Value::String(s)) => s,
        Some(_) => return Error::BadBody.into_response(),
    };
    let kwargs = match data.remove("kwargs") {
        None => Ok(Map::new()),
        Some(Value::Object(kwargs)) => Ok(kwargs),
        Some(other) => Err(not_a("kwargs", "mapping", &other)),
    };
    let outcome = w
        .call(envelope, move |s| {
            let bound = &s.info().tasks;
            let Some(task) = task.filter(|t| bound.contains(t)) else {
                return TaskOutcome::NoTask(bound.clone());
            };
            if method.is_empty() || method.starts_with('_') {
                return TaskOutcome::BadMethod(method);
            }
            let started = Instant::now();
            let io_before = proc_io();
            let result = kwargs.and_then(|kw| s.capability.task(s.cx, &task, &method, kw));
            let duration_s = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
            let mut account = json!({"task": task, "method": method});
            match &result {
                Ok(_) => {
                    account["ok"] = json!(true);
                    account["duration_s"] = json!(duration_s);
                    if let (Some(before), Some(after)) = (io_before, proc_io()) {
                        account["io"] = io_delta(&before, &after);
                    }
                }
                Err(CallError::Failed(e)) => {
                    account["ok"] = json!(false);
                    account["duration_s"] = json!(duration_s);
                    account["error_category"] = json!(e.category.as_str());
                }
                Err(_) => return TaskOutcome::Ran(result, task, method),
            }
            s.services.push_account("task_account", account);
            TaskOutcome::Ran(result, task, method)
        })
        .await;
    match outcome {
        Ok(Outcome { value, accounts }) => match value {
            TaskOutcome::NoTask(bound) => detail(
                StatusCode::NOT_FOUND,
                &format!(
                    "No adapter bound for task {task_repr} (bound: {})",
                    py_list_repr(&bound)
                ),
            ),
            TaskOutcome::BadMethod(method) => detail(
                StatusCode::NOT_FOUND,
                &format!("Invalid task method {}", py_str_repr(&method)),
            ),
            TaskOutcome::Ran(Err(CallError::NotFound(_)), task, method) => detail(
                StatusCode::NOT_FOUND,
                &format!(
                    "Task {} adapter has no method {}",
                    py_str_repr(&task),
                    py_str_repr(&method)
                ),
            ),
            TaskOutcome::Ran(result, _, _) => unary_outcome(&w, "task", result, &accounts),
        },
        Err(e) => unary_outcome(&w, "task", Err(worker_failure(e)), &[]),
    }
}

enum TaskOutcome {
    NoTask(Vec<String>),
    BadMethod(String),
    Ran(Result<Value, CallError>, String, String),
}

async fn execute_stream(State(w): State<Worker>, body: Bytes) -> Response {
    let mut data = match parse_object(&body) {
        Ok(data) => data,
        Err(e) => return e.into_response(),
    };
    let envelope = take_envelope(&mut data);
    // Start now: the headers go out at once, the line when the call ends.
    let worker = w.clone();
    let call = tokio::spawn(async move { run_execute(&worker, envelope, data).await });
    let name = w.name().to_owned();
    let line = async move {
        let result = match call.await {
            Ok(Ok(outcome)) => outcome.value,
            Ok(Err(e)) => Err(worker_failure(e)),
            Err(e) => Err(worker_failure(Error::Aborted(e))),
        };
        let value = match result {
            Ok(value) => value,
            Err(e) => {
                let job_error = match e {
                    CallError::Failed(e) => e,
                    CallError::Cancelled => cancelled_job_error(&name),
                    CallError::NotFound(what) => JobError::user_input(what),
                };
                eprintln!("[cjm-native-worker] execute_stream failed: {job_error}");
                json!({"_job_error": wire_job_error(&job_error, &name)})
            }
        };
        Ok::<_, Infallible>(Bytes::from(ndjson_line(&value)))
    };
    let mut response = Body::from_stream(futures_util::stream::once(line)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// `/execute` and `/execute_stream`: checks `args`/`kwargs` as Python's call would and runs
/// `execute`.
async fn run_execute(
    w: &Worker,
    envelope: Envelope,
    mut data: Map<String, Value>,
) -> crate::error::Result<Outcome<Result<Value, CallError>>> {
    let args = match data.remove("args") {
        None => Ok(Vec::new()),
        Some(Value::Array(args)) => Ok(args),
        Some(other) => Err(not_a("args", "list", &other)),
    };
    let kwargs = match data.remove("kwargs") {
        None => Ok(Map::new()),
        Some(Value::Object(kwargs)) => Ok(kwargs),
        Some(other) => Err(not_a("kwargs", "mapping", &other)),
    };
    w.call(envelope, move |s| {
        let (args, kwargs) = (args?, kwargs?);
        s.capability.execute(s.cx, args, kwargs)
    })
    .await
}

/// The answer of `/execute` and `/task` to a call's result: 200 with the value, 409 when
/// cancelled, 404 for an unknown method, 500 `{"_job_error": ...}` on failure; accounts ride
/// on the 200 and the 500.
fn unary_outcome(
    w: &Worker,
    endpoint: &str,
    result: Result<Value, CallError>,
    accounts: &[Value],
) -> Response {
    let response = match result {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(CallError::Cancelled) => {
            return detail(StatusCode::CONFLICT, &cancelled_message(w.name()));
        }
        Err(CallError::NotFound(what)) => return detail(StatusCode::NOT_FOUND, &what),
        Err(CallError::Failed(e)) => {
            eprintln!("[cjm-native-worker] {endpoint} failed: {e}");
            json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"_job_error": wire_job_error(&e, w.name())}),
            )
        }
    };
    with_accounts(response, accounts)
}

/// A worker-side failure around a call (a panic, a lost task) as the call's failure.
fn worker_failure(e: Error) -> CallError {
    CallError::Failed(match e {
        Error::Panic(_) => JobError::fatal(e.to_string()),
        other => JobError::transient(other.to_string()),
    })
}

/// The `user_input` failure Python's call raises for `*args` / `**kwargs` of a wrong type.
fn not_a(field: &str, expected: &str, got: &Value) -> CallError {
    let kind = match got {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    };
    CallError::Failed(
        JobError::user_input(format!("{field} must be a {expected}, not {kind}"))
            .with_fields([field]),
    )
}

// ---------------------------------------------------------------------------------------
// Monitor-only and unknown routes.

async fn get_system_status(State(w): State<Worker>) -> Response {
    not_a_monitor(&w, "get_system_status")
}

async fn list_processes(State(w): State<Worker>) -> Response {
    not_a_monitor(&w, "list_processes")
}

fn not_a_monitor(w: &Worker, method: &str) -> Response {
    detail(
        StatusCode::NOT_FOUND,
        &format!(
            "Capability {} is not a monitor capability (no {method} method).",
            py_str_repr(w.name())
        ),
    )
}

async fn not_found() -> Response {
    detail(StatusCode::NOT_FOUND, "Not Found")
}

async fn method_not_allowed() -> Response {
    detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

// ---------------------------------------------------------------------------------------
// Bodies and answers.

fn parse_object(body: &[u8]) -> crate::error::Result<Map<String, Value>> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Error::BadBody),
    }
}

/// Removes and decodes the top-level `envelope` (unknown keys ignored; a malformed one is
/// treated as absent, as records then simply carry no job id).
fn take_envelope(data: &mut Map<String, Value>) -> Envelope {
    match data.remove("envelope") {
        Some(env @ Value::Object(_)) => serde_json::from_value(env).unwrap_or_default(),
        _ => Envelope::default(),
    }
}

/// A compact JSON answer.
pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response {
    match to_compact(value) {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            Bytes::from(bytes),
        )
            .into_response(),
        Err(e) => Error::Encode(e).into_response(),
    }
}

/// `{"detail": message}` with `status`, as FastAPI's `HTTPException`.
pub(crate) fn detail(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({"detail": message}))
}

/// `{"status": status}`.
fn status(status: &str) -> Response {
    json_response(StatusCode::OK, &json!({"status": status}))
}

/// Adds `X-CJM-Accounts` when the call recorded any.
fn with_accounts(mut response: Response, accounts: &[Value]) -> Response {
    if accounts.is_empty() {
        return response;
    }
    if let Ok(text) = to_spaced_ascii(accounts)
        && let Ok(value) = HeaderValue::from_str(&text)
    {
        response.headers_mut().insert(ACCOUNTS_HEADER, value);
    }
    response
}

/// One NDJSON line of `value`, newline included.
fn ndjson_line(value: &Value) -> String {
    // Serializing a `Value` cannot fail; should it ever, the stream still ends typed.
    let mut line = to_spaced_ascii(value).unwrap_or_else(|_| {
        r#"{"_job_error": {"category": "fatal", "message": "cannot encode the chunk", "retriable": false}}"#
            .to_owned()
    });
    line.push('\n');
    line
}
