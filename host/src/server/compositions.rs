//! `/v1/compositions`: submit a DAG of jobs, read its node states and results, wait, cancel.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, Query, parse_body};
use crate::queue::{Composition, CompositionRun, QueueError};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit, list))
        .routes(routes!(get_composition))
        .routes(routes!(wait))
        .routes(routes!(cancel))
}

/// Submits a composition (`{"nodes": [...], "fail_fast", "priority", "run_id", "actor"}`);
/// answers once it is in the journal.
#[utoipa::path(post, path = "/v1/compositions", tag = "compositions",
    request_body(content = Composition, description = "The composition", content_type = "application/json"),
    responses((status = 202, description = "{\"composition_id\"}", body = Object), (status = 422, description = "Invalid DAG: every problem named")))]
async fn submit(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let composition: Composition = parse_body(&body)?;
    let id = state.host.queue().submit_composition(composition).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "composition_id": id }))))
}

/// How many.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// At most this many (default 50, at most 500).
    limit: Option<usize>,
}

/// The compositions this host holds (running and recently finished), newest first.
#[utoipa::path(get, path = "/v1/compositions", tag = "compositions", params(ListParams),
    responses((status = 200, description = "{\"compositions\": [...]}", body = Object)))]
async fn list(State(state): State<AppState>, Query(params): Query<ListParams>) -> Json<Value> {
    let limit = params.limit.unwrap_or(50).min(500);
    Json(json!({ "compositions": state.host.queue().compositions(limit) }))
}

fn get(state: &AppState, id: &str) -> Result<CompositionRun, ApiError> {
    state
        .host
        .queue()
        .composition(id)
        .ok_or_else(|| ApiError::not_found(format!("no composition '{id}'")))
}

/// A composition: status, node states, member jobs and results.
#[utoipa::path(get, path = "/v1/compositions/{id}", tag = "compositions",
    params(("id" = String, Path, description = "Composition id")),
    responses((status = 200, body = CompositionRun), (status = 404)))]
async fn get_composition(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CompositionRun>, ApiError> {
    Ok(Json(get(&state, &id)?))
}

/// How long to wait.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct WaitParams {
    /// Seconds (default 30, at most the server's limit).
    timeout_s: Option<f64>,
}

/// Waits for a composition to end (long poll): it once terminal, or as it is at the timeout.
#[utoipa::path(get, path = "/v1/compositions/{id}/wait", tag = "compositions",
    params(("id" = String, Path, description = "Composition id"), WaitParams),
    responses((status = 200, body = CompositionRun), (status = 404)))]
async fn wait(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<WaitParams>,
) -> Result<Json<CompositionRun>, ApiError> {
    let timeout = super::error::wait_timeout(params.timeout_s, state.config.max_wait)?;
    match state
        .host
        .queue()
        .wait_composition(&id, Some(timeout))
        .await
    {
        Ok(run) => Ok(Json(run)),
        Err(crate::Error::Queue(QueueError::Timeout(..))) => Ok(Json(get(&state, &id)?)),
        Err(e) => Err(e.into()),
    }
}

/// Cancels a composition: its waiting and running members.
#[utoipa::path(post, path = "/v1/compositions/{id}/cancel", tag = "compositions",
    params(("id" = String, Path, description = "Composition id")),
    responses((status = 200, body = Object), (status = 404), (status = 409, description = "Already finished")))]
async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.host.queue().cancel_composition(&id)?;
    Ok(Json(json!({"id": id, "status": "cancelling"})))
}
