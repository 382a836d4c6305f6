//! The worker contract per instance: `/v1/capabilities/{id}/execute`, `/task`,
//! `/execute_stream`, `/config_schema`, `/structural_surface`, `/health`, `/stats`,
//! `/progress`, `/cancel` — the bodies, statuses, bytes and `X-CJM-Accounts` header of a
//! cjm-substrate worker (CONTRACT.md), whatever the instance's kind.
//!
//! Calls go through the queue (admission, journal, retries) as a job; `?direct=true` calls the
//! instance without queueing. A client that hangs up before the answer cancels its job. The
//! job's id rides on `X-CJM-Job-Id`.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cjm_guest::contract::Envelope;
use cjm_guest::python::job_error::{cancelled_job_error, cancelled_message, wire_job_error};
use cjm_guest::python::wire::{to_compact, to_spaced_ascii};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::capabilities::instance;
use super::error::{ApiError, Query, parse_value};
use crate::backend::{CallRequest, Target};
use crate::queue::{Job, JobSpec, JobStatus};

/// The header carrying the accounts a call recorded.
pub const ACCOUNTS_HEADER: &str = "x-cjm-accounts";
/// The header carrying the id of the job a contract call ran as.
pub const JOB_ID_HEADER: &str = "x-cjm-job-id";

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(execute))
        .routes(routes!(task))
        .routes(routes!(execute_stream))
        .routes(routes!(config_schema))
        .routes(routes!(structural_surface))
        .routes(routes!(health))
        .routes(routes!(stats))
        .routes(routes!(progress))
        .routes(routes!(cancel))
}

/// `?direct=true`: call the instance without queueing.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct CallParams {
    /// Call the instance directly (no admission, no journal row).
    #[serde(default)]
    direct: bool,
}

/// `POST /execute` of the worker contract.
#[utoipa::path(post, path = "/v1/capabilities/{id}/execute", tag = "contract",
    params(("id" = String, Path, description = "Instance id"), CallParams),
    request_body(content = Object, description = r#"{"args": [...], "kwargs": {...}, "envelope": {...}}"#, content_type = "application/json"),
    responses((status = 200, description = "The result, as the capability returned it", body = Object),
        (status = 409, description = "Cancelled: {\"detail\": ...}"),
        (status = 500, description = "{\"_job_error\": JobError}"),
        (status = 404, description = "Unknown instance")))]
async fn execute(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<CallParams>,
    body: Bytes,
) -> Response {
    match request(&body, false) {
        Ok(request) => unary(&state, &id, request, params.direct).await,
        Err(e) => e.into_response(),
    }
}

/// `POST /task` of the worker contract.
#[utoipa::path(post, path = "/v1/capabilities/{id}/task", tag = "contract",
    params(("id" = String, Path, description = "Instance id"), CallParams),
    request_body(content = Object, description = r#"{"task", "method", "kwargs": {...}, "envelope": {...}}"#, content_type = "application/json"),
    responses((status = 200, description = "The result", body = Object),
        (status = 404, description = "Unknown instance, task or method: {\"detail\": ...}"),
        (status = 409, description = "Cancelled"),
        (status = 500, description = "{\"_job_error\": JobError}")))]
async fn task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<CallParams>,
    body: Bytes,
) -> Response {
    match request(&body, true) {
        Ok(request) => unary(&state, &id, request, params.direct).await,
        Err(e) => e.into_response(),
    }
}

/// `POST /execute_stream` of the worker contract: NDJSON, the result (or a `_job_error`)
/// as the stream's line.
#[utoipa::path(post, path = "/v1/capabilities/{id}/execute_stream", tag = "contract",
    params(("id" = String, Path, description = "Instance id"), CallParams),
    request_body(content = Object, description = "As /execute", content_type = "application/json"),
    responses((status = 200, description = "NDJSON lines", content_type = "application/x-ndjson")))]
async fn execute_stream(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<CallParams>,
    body: Bytes,
) -> Response {
    let request = match request(&body, false) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    let name = match instance(&state, &id) {
        Ok(i) => i.name().to_owned(),
        Err(e) => return e.into_response(),
    };
    let call = tokio::spawn(async move {
        match run(&state, &id, request, params.direct).await {
            Ok(Outcome::Done(job)) => outcome_line(&job, &name),
            Ok(Outcome::Direct(Ok(value))) => value,
            Ok(Outcome::Direct(Err(e))) => json!({"_job_error": direct_error(&e, &name)}),
            Err(e) => {
                json!({"_job_error": {"category": "fatal", "message": e.message(), "retriable": false}})
            }
        }
    });
    let line = async move {
        let value = call.await.unwrap_or_else(|_| {
            json!({"_job_error": {"category": "fatal", "message": "the call was lost", "retriable": false}})
        });
        let mut text = to_spaced_ascii(&value).unwrap_or_default();
        text.push('\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(text))
    };
    let mut response = Body::from_stream(futures_util::stream::once(line)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

fn outcome_line(job: &Job, name: &str) -> Value {
    match job.status {
        JobStatus::Completed => job.result.clone().unwrap_or(Value::Null),
        JobStatus::Cancelled => {
            json!({"_job_error": wire_job_error(&cancelled_job_error(name), name)})
        }
        _ => match (&job.not_found, &job.raw_error) {
            (Some(detail), _) => {
                json!({"_job_error": wire_job_error(&cjm_guest::JobError::user_input(detail.clone()), name)})
            }
            (None, Some(e)) => json!({"_job_error": wire_job_error(e, name)}),
            (None, None) => {
                json!({"_job_error": wire_job_error(&cjm_guest::JobError::fatal("the job failed"), name)})
            }
        },
    }
}

/// The request of a contract body: `args`/`kwargs` (and `task`/`method` for the task
/// channel), the top-level `envelope`.
fn request(body: &[u8], task: bool) -> Result<CallRequest, ApiError> {
    let Value::Object(mut data) = parse_value(body)? else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    let envelope = match data.remove("envelope") {
        None | Some(Value::Null) => Envelope::default(),
        Some(env @ Value::Object(_)) => serde_json::from_value(env)
            .map_err(|e| ApiError::bad_request(format!("bad envelope: {e}")))?,
        Some(_) => return Err(ApiError::bad_request("envelope must be an object")),
    };
    let kwargs = match data.remove("kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(kwargs)) => kwargs,
        Some(_) => return Err(ApiError::bad_request("kwargs must be an object")),
    };
    let target = if task {
        let text = |key: &str, data: &mut Map<String, Value>| match data.remove(key) {
            Some(Value::String(s)) => Ok(s),
            _ => Err(ApiError::bad_request(format!("{key} must be a string"))),
        };
        Target::Task {
            task: text("task", &mut data)?,
            method: text("method", &mut data)?,
        }
    } else {
        match data.remove("args") {
            None | Some(Value::Null) => Target::Execute { args: Vec::new() },
            Some(Value::Array(args)) => Target::Execute { args },
            Some(_) => return Err(ApiError::bad_request("args must be a list")),
        }
    };
    Ok(CallRequest {
        target,
        kwargs,
        envelope,
    })
}

enum Outcome {
    /// Ran as a job.
    Done(Job),
    /// Ran directly.
    Direct(crate::Result<Value>),
}

/// Cancels the job if the request goes away before it ends.
pub(super) struct CancelOnDrop<'a> {
    queue: &'a crate::queue::JobQueue,
    job_id: Option<String>,
}

impl<'a> CancelOnDrop<'a> {
    pub(super) fn new(queue: &'a crate::queue::JobQueue, job_id: &str) -> Self {
        CancelOnDrop {
            queue,
            job_id: Some(job_id.to_owned()),
        }
    }

    /// The job ended: nothing to cancel.
    pub(super) fn disarm(&mut self) {
        self.job_id = None;
    }
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.job_id.take() {
            let _ = self.queue.cancel(&id);
        }
    }
}

async fn run(
    state: &AppState,
    id: &str,
    request: CallRequest,
    direct: bool,
) -> Result<Outcome, ApiError> {
    instance(state, id)?;
    if direct {
        return Ok(Outcome::Direct(
            state.host.manager().call(id, request).await,
        ));
    }
    let queue = state.host.queue();
    // The caller sees only the outcome: the submission is committed with it.
    let job_id = queue.submit_for_outcome(JobSpec::call(id, request)).await?;
    let mut guard = CancelOnDrop::new(queue, &job_id);
    let job = queue.wait(&job_id, None).await?;
    guard.disarm();
    Ok(Outcome::Done(job))
}

async fn unary(state: &AppState, id: &str, request: CallRequest, direct: bool) -> Response {
    let name = match instance(state, id) {
        Ok(i) => i.name().to_owned(),
        Err(e) => return e.into_response(),
    };
    match run(state, id, request, direct).await {
        Err(e) => e.into_response(),
        Ok(Outcome::Direct(Ok(value))) => compact(StatusCode::OK, &value),
        Ok(Outcome::Direct(Err(e))) if e.is_cancelled() => {
            detail(StatusCode::CONFLICT, &cancelled_message(&name))
        }
        Ok(Outcome::Direct(Err(crate::Error::NotFound(what)))) => {
            detail(StatusCode::NOT_FOUND, &what)
        }
        Ok(Outcome::Direct(Err(e))) => compact(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"_job_error": direct_error(&e, &name)}),
        ),
        Ok(Outcome::Done(job)) => {
            let mut response = match job.status {
                JobStatus::Completed => {
                    compact(StatusCode::OK, job.result.as_ref().unwrap_or(&Value::Null))
                }
                JobStatus::Cancelled => detail(StatusCode::CONFLICT, &cancelled_message(&name)),
                _ => match (&job.not_found, &job.raw_error) {
                    (Some(what), _) => detail(StatusCode::NOT_FOUND, what),
                    (None, raw) => compact(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &json!({"_job_error": wire_job_error(
                            raw.as_deref().or(job.error.as_deref()).unwrap_or(&cjm_guest::JobError::fatal("the job failed")),
                            &name,
                        )}),
                    ),
                },
            };
            if !job.accounts.is_empty()
                && let Ok(text) = to_spaced_ascii(&job.accounts)
                && let Ok(value) = HeaderValue::from_str(&text)
            {
                response.headers_mut().insert(ACCOUNTS_HEADER, value);
            }
            if let Ok(value) = HeaderValue::from_str(&job.id) {
                response.headers_mut().insert(JOB_ID_HEADER, value);
            }
            response
        }
    }
}

fn direct_error(e: &crate::Error, name: &str) -> Value {
    wire_job_error(&e.to_job_error(), name)
}

/// A compact JSON answer, as the Python worker writes it.
fn compact(status: StatusCode, value: &Value) -> Response {
    match to_compact(value) {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            Bytes::from(bytes),
        )
            .into_response(),
        Err(e) => ApiError::internal(&e).into_response(),
    }
}

/// `{"detail": message}`, as FastAPI's `HTTPException`.
fn detail(status: StatusCode, message: &str) -> Response {
    compact(status, &json!({ "detail": message }))
}

macro_rules! query_route {
    ($fn:ident, $path:literal, $doc:literal, |$state:ident, $i:ident| $body:expr) => {
        #[doc = $doc]
        #[utoipa::path(get, path = $path, tag = "contract",
                    params(("id" = String, Path, description = "Instance id")),
                    responses((status = 200, description = $doc, body = Object), (status = 404)))]
        async fn $fn(State($state): State<AppState>, Path(id): Path<String>) -> Response {
            let $i = match instance(&$state, &id) {
                Ok(i) => i,
                Err(e) => return e.into_response(),
            };
            match $body {
                Ok(value) => compact(StatusCode::OK, &value),
                Err(e) => e.into_response(),
            }
        }
    };
}

query_route!(
    config_schema,
    "/v1/capabilities/{id}/config_schema",
    "The config's JSON Schema.",
    |state, i| Ok::<_, ApiError>(i.backend().info().config_schema.clone())
);
query_route!(
    structural_surface,
    "/v1/capabilities/{id}/structural_surface",
    "Methods, properties and attributes of the capability.",
    |state, i| serde_json::to_value(&i.backend().info().structural_surface)
        .map_err(|e| ApiError::internal(&e))
);
query_route!(
    health,
    "/v1/capabilities/{id}/health",
    "The capability's health.",
    |state, i| i.backend().health().await.map_err(ApiError::from)
);
query_route!(
    stats,
    "/v1/capabilities/{id}/stats",
    "CPU and memory of the capability's worker subtree.",
    |state, i| i.backend().stats().await.map_err(ApiError::from)
);
query_route!(
    progress,
    "/v1/capabilities/{id}/progress",
    "Progress of the job running on the instance.",
    |state, i| Ok::<_, ApiError>({
        let running = state.host.queue().running();
        let job = running.iter().find(|j| j.instance_id == i.id());
        json!({
            "progress": job.map_or(0.0, |j| j.progress),
            "message": job.map_or("", |j| j.status_message.as_str()),
        })
    })
);

/// Cancels what runs on the instance (`{"status": "cancelled"}`).
#[utoipa::path(post, path = "/v1/capabilities/{id}/cancel", tag = "contract",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "{\"status\": \"cancelled\"}", body = Object), (status = 404)))]
async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if let Err(e) = instance(&state, &id) {
        return e.into_response();
    }
    let queue = state.host.queue();
    for job in queue.running().iter().filter(|j| j.instance_id == id) {
        let _ = queue.cancel(&job.id);
    }
    compact(StatusCode::OK, &json!({"status": "cancelled"}))
}
