//! `/v1/jobs`: submit (one or a batch), get, wait (long poll), cancel (also of waiting
//! jobs), reorder, list (from the journal, with filters and a cursor), a job's journal
//! timeline, accounts and logs.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::capabilities::instance;
use super::error::{ApiError, Query, parse_body, parse_value};
use crate::backend::{CallRequest, Target};
use crate::queue::{Job, JobFilter, JobSpec, QueueError, RetryPolicy};
use crate::store::{JournalQuery, RecordQuery};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit, list))
        .routes(routes!(get_job))
        .routes(routes!(wait))
        .routes(routes!(cancel))
        .routes(routes!(reorder))
        .routes(routes!(timeline))
        .routes(routes!(accounts))
        .routes(routes!(logs))
}

/// One job to submit.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SubmitBody {
    /// The instance to run on.
    capability: String,
    /// `execute` (default) or `task`.
    #[serde(default)]
    channel: Option<String>,
    /// The task (task channel).
    #[serde(default)]
    task: Option<String>,
    /// The method (task channel).
    #[serde(default)]
    method: Option<String>,
    /// Positional arguments (execute channel).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    args: Vec<Value>,
    /// Keyword arguments.
    #[serde(default)]
    #[schema(value_type = Object)]
    kwargs: Map<String, Value>,
    /// Higher runs first.
    #[serde(default)]
    priority: i64,
    /// Run correlation.
    #[serde(default)]
    run_id: Option<String>,
    /// Who asks.
    #[serde(default)]
    actor: Option<String>,
    /// Per-call control flags (`{"force": true}`).
    #[serde(default)]
    #[schema(value_type = Object)]
    control: Map<String, Value>,
    /// A wall-clock limit, seconds.
    #[serde(default)]
    timeout_s: Option<f64>,
    /// When it runs again after a failure.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    retry: Option<RetryPolicy>,
}

impl SubmitBody {
    fn into_spec(self) -> Result<JobSpec, ApiError> {
        let target = match self.channel.as_deref().unwrap_or(if self.task.is_some() {
            "task"
        } else {
            "execute"
        }) {
            "execute" => Target::Execute { args: self.args },
            "task" => match (self.task, self.method) {
                (Some(task), Some(method)) => Target::Task { task, method },
                _ => {
                    return Err(ApiError::invalid(
                        "the task channel needs `task` and `method`",
                        vec!["task".into(), "method".into()],
                    ));
                }
            },
            other => {
                return Err(ApiError::invalid(
                    format!("unknown channel '{other}' (execute or task)"),
                    vec!["channel".into()],
                ));
            }
        };
        let mut request = CallRequest {
            target,
            kwargs: self.kwargs,
            envelope: Default::default(),
        };
        request.envelope.run_id = self.run_id;
        request.envelope.actor = self.actor;
        request.envelope.control = self.control;
        let mut spec = JobSpec::call(self.capability, request).priority(self.priority);
        if let Some(t) = self.timeout_s {
            let timeout = crate::bounds::seconds(t, true).map_err(|why| {
                ApiError::invalid(format!("timeout_s {why}"), vec!["timeout_s".into()])
            })?;
            spec = spec.timeout(timeout);
        }
        if let Some(retry) = self.retry {
            spec = spec.retry(retry);
        }
        Ok(spec)
    }
}

/// Submits a job (a JSON object) or a batch (an array: all accepted or none). Answers once
/// the submission is in the journal.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(content = SubmitBody, description = "One job, or an array of jobs", content_type = "application/json"),
    responses((status = 202, description = "{\"job_id\"} (or {\"job_ids\"} for a batch)", body = Object),
        (status = 404, description = "Unknown instance"), (status = 422), (status = 429, description = "Queue full"),
        (status = 503, description = "Shutting down or the journal is wedged")))]
async fn submit(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let value = parse_value(&body)?;
    let queue = state.host.queue();
    if let Value::Array(items) = value {
        let mut specs = Vec::with_capacity(items.len());
        for item in items {
            let body: SubmitBody = serde_json::from_value(item)
                .map_err(|e| ApiError::bad_request(format!("bad job: {e}")))?;
            instance(&state, &body.capability)?;
            specs.push(body.into_spec()?);
        }
        let ids = queue.submit_many(specs).await?;
        return Ok((StatusCode::ACCEPTED, Json(json!({ "job_ids": ids }))));
    }
    let body: SubmitBody = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("bad job: {e}")))?;
    instance(&state, &body.capability)?;
    let id = queue.submit(body.into_spec()?).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "job_id": id }))))
}

/// Which jobs to list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// pending, running, completed, failed or cancelled.
    status: Option<String>,
    /// Only this instance's jobs.
    capability: Option<String>,
    /// Only this run's.
    run_id: Option<String>,
    /// At most this many (default 50, at most 1000).
    limit: Option<usize>,
    /// The previous page's `next_cursor`.
    cursor: Option<i64>,
}

/// Jobs from the journal, newest first, with a cursor.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListParams),
    responses((status = 200, description = "{\"jobs\": [...], \"next_cursor\"}", body = Object)))]
async fn list(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    if let Some(s) = &params.status
        && crate::queue::JobStatus::parse(s).is_none()
    {
        return Err(ApiError::invalid(
            format!("unknown status '{s}' (pending, running, completed, failed, cancelled)"),
            vec!["status".into()],
        ));
    }
    let filter = JobFilter {
        status: params.status,
        run_id: params.run_id,
        instance_id: params.capability,
        before: params.cursor,
        limit: params.limit.unwrap_or(50).clamp(1, 1000),
    };
    let manager = state.host.manager().clone();
    let page =
        tokio::task::spawn_blocking(move || crate::queue::list_jobs(manager.journal(), &filter))
            .await
            .map_err(|e| ApiError::internal(&e))??;
    Ok(Json(
        json!({"jobs": page.jobs, "next_cursor": page.next_cursor}),
    ))
}

/// The job as this queue holds it, else as the journal knows it (a finished job, or one
/// another host holds).
async fn find(state: &AppState, id: &str) -> Result<Job, ApiError> {
    let queue = state.host.queue();
    if let Some(job) = queue.get(id) {
        return Ok(job);
    }
    queue
        .job_from_journal(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job '{id}'")))
}

/// One job: state, progress, result or typed error, accounts.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = Job), (status = 404)))]
async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(find(&state, &id).await?))
}

/// How long to wait.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct WaitParams {
    /// Seconds (default 30; at most the server's limit). The job is answered as it is then.
    timeout_s: Option<f64>,
}

/// Waits for a job to end (long poll): the job once terminal, or as it is at the timeout.
#[utoipa::path(get, path = "/v1/jobs/{id}/wait", tag = "jobs",
    params(("id" = String, Path, description = "Job id"), WaitParams),
    responses((status = 200, body = Job), (status = 404)))]
async fn wait(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<WaitParams>,
) -> Result<Json<Job>, ApiError> {
    let timeout = super::error::wait_timeout(params.timeout_s, state.config.max_wait)?;
    match state.host.queue().wait(&id, Some(timeout)).await {
        Ok(job) => Ok(Json(job)),
        Err(crate::Error::Queue(QueueError::Timeout(..))) => Ok(Json(find(&state, &id).await?)),
        Err(e) => Err(e.into()),
    }
}

/// Cancels a job, waiting or running (a waiting job never starts).
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = Object), (status = 404), (status = 409, description = "Already finished")))]
async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.host.queue().cancel(&id)?;
    Ok(Json(json!({"id": id, "status": "cancelling"})))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReorderBody {
    /// The new priority (higher runs first).
    priority: i64,
}

/// Changes a waiting job's priority.
#[utoipa::path(post, path = "/v1/jobs/{id}/priority", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    request_body(content = ReorderBody, content_type = "application/json"),
    responses((status = 200, body = Object), (status = 404), (status = 409, description = "Not waiting")))]
async fn reorder(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: ReorderBody = parse_body(&body)?;
    state.host.queue().reorder(&id, body.priority)?;
    Ok(Json(json!({"id": id, "priority": body.priority})))
}

async fn journal_rows(
    state: &AppState,
    query: JournalQuery,
) -> Result<Vec<crate::store::JournalEvent>, ApiError> {
    let manager = state.host.manager().clone();
    Ok(
        tokio::task::spawn_blocking(move || manager.journal().query(&query))
            .await
            .map_err(|e| ApiError::internal(&e))??,
    )
}

/// Every journal row of a job: submission, admission, transitions, retries, accounts.
#[utoipa::path(get, path = "/v1/jobs/{id}/journal", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = Object), (status = 404)))]
async fn timeline(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rows = journal_rows(&state, JournalQuery::job(&id)).await?;
    if rows.is_empty() {
        return Err(ApiError::not_found(format!("no job '{id}' in the journal")));
    }
    Ok(Json(json!({ "events": rows })))
}

/// The accounts a job's capability reported (journaled with the job's id).
#[utoipa::path(get, path = "/v1/jobs/{id}/accounts", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = Object)))]
async fn accounts(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rows = journal_rows(&state, JournalQuery::job(&id)).await?;
    let accounts: Vec<Value> = rows
        .into_iter()
        .filter(|r| r.worker_reported)
        .map(
            |r| json!({"seq": r.seq, "ts": r.ts, "event_type": r.event_type, "payload": r.payload}),
        )
        .collect();
    Ok(Json(json!({ "accounts": accounts })))
}

/// A job's log records (worker and guest logs stamped with its id).
#[utoipa::path(get, path = "/v1/jobs/{id}/logs", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = Object)))]
async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let manager = state.host.manager().clone();
    let query = RecordQuery {
        job_id: Some(id),
        limit: Some(10_000),
        ..RecordQuery::default()
    };
    let records = tokio::task::spawn_blocking(move || manager.diagnostics().query_records(&query))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    Ok(Json(json!({ "records": records })))
}
