//! The host itself: health, readiness, resources (machine and each worker's subtree), queue
//! figures, Prometheus `/metrics`, secrets (names only; values go in, never out) and the
//! OpenAPI document.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, parse_body};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(resources))
        .routes(routes!(queue))
        .routes(routes!(waiting))
        .routes(routes!(metrics))
        .routes(routes!(secrets))
        .routes(routes!(set_secret))
        .routes(routes!(openapi))
}

/// The service answers.
#[utoipa::path(get, path = "/v1/health", tag = "host",
    responses((status = 200, description = "{\"status\": \"ok\", \"host_id\", \"version\", \"uptime_s\"}", body = Object)))]
async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "host_id": state.host.queue().host_id(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.started.elapsed().as_secs_f64(),
    }))
}

/// Whether it takes work: 503 while shutting down or when the journal cannot be written.
#[utoipa::path(get, path = "/v1/ready", tag = "host",
    responses((status = 200, body = Object), (status = 503, description = "Not taking work, and why")))]
async fn ready(State(state): State<AppState>) -> Response {
    let queue = state.host.queue();
    match queue.wedged() {
        Some(why) => {
            tracing::warn!(reason = %why, "not ready: the journal is wedged");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"ready": false, "reason": "the journal cannot be written"})),
            )
                .into_response()
        }
        None if queue.is_closed() => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "shutting down"})),
        )
            .into_response(),
        None => Json(json!({"ready": true})).into_response(),
    }
}

/// Machine CPU, RAM and GPUs now, and each loaded worker's process subtree.
#[utoipa::path(get, path = "/v1/resources", tag = "host",
    responses((status = 200, body = Object)))]
async fn resources(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let manager = state.host.manager().clone();
    let value = tokio::task::spawn_blocking(move || {
        let telemetry = manager.telemetry();
        let snapshot = telemetry.snapshot();
        let workers: Vec<Value> = manager
            .instances()
            .iter()
            .map(|i| {
                let pid = i.backend().pid();
                let tree = pid.and_then(|p| telemetry.process_tree(p));
                let gpu = tree
                    .as_ref()
                    .and_then(|t| telemetry.gpu_memory_of(&t.subtree_pids))
                    .map(|g| g.gpu_memory_mb);
                json!({
                    "instance_id": i.id(),
                    "kind": i.backend().kind(),
                    "pid": pid,
                    "cpu_percent": tree.as_ref().map(|t| t.cpu_percent),
                    "memory_rss_mb": tree.as_ref().map(|t| t.memory_rss_mb),
                    "gpu_memory_mb": gpu,
                    "subtree_pids": tree.map(|t| t.subtree_pids),
                })
            })
            .collect();
        json!({"machine": snapshot, "workers": workers})
    })
    .await
    .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(value))
}

/// Queue figures: counts by state since start, and the journal's last `seq` (a client
/// that reads state and then follows `/v1/events?after=<journal_seq>` misses nothing).
#[utoipa::path(get, path = "/v1/queue", tag = "host",
    responses((status = 200, body = Object)))]
async fn queue(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let manager = state.host.manager().clone();
    let seq = tokio::task::spawn_blocking(move || manager.journal().last_seq())
        .await
        .map_err(|e| ApiError::internal(&e))??;
    let q = state.host.queue();
    Ok(Json(json!({
        "stats": q.stats(),
        "wedged": q.wedged().is_some(),
        "closed": q.is_closed(),
        "lanes": q.config().max_concurrent_lanes,
        "journal_seq": seq,
    })))
}

/// How many.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct WaitingParams {
    /// At most this many, in priority order (default 200, at most 5000).
    limit: Option<usize>,
    /// Only these jobs (comma-separated ids, at most 1000).
    jobs: Option<String>,
}

/// Why each waiting job waits: the admission ladder's verdict on it now (lanes, an exclusive
/// first run, the instance's cap, GPU or memory shortfall, or the jobs ahead of it).
#[utoipa::path(get, path = "/v1/queue/waiting", tag = "host", params(WaitingParams),
    responses((status = 200, description = "{\"waiting\": [WaitReason...]}", body = Object)))]
async fn waiting(
    State(state): State<AppState>,
    super::error::Query(params): super::error::Query<WaitingParams>,
) -> Result<Json<Value>, ApiError> {
    let queue = state.host.queue();
    if let Some(jobs) = params.jobs {
        let ids: std::collections::BTreeSet<String> = jobs
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if ids.len() > 1000 {
            return Err(ApiError::invalid(
                "at most 1000 job ids per request",
                vec!["jobs".into()],
            ));
        }
        return Ok(Json(json!({ "waiting": queue.waiting_for(&ids) })));
    }
    let limit = params.limit.unwrap_or(200).min(5000);
    Ok(Json(json!({ "waiting": queue.waiting(limit) })))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "host",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> Response {
    use std::fmt::Write as _;
    let q = state.host.queue();
    let s = q.stats();
    let mut out = String::with_capacity(1024);
    let mut gauge = |name: &str, help: &str, kind: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    gauge(
        "cjm_jobs_pending",
        "Jobs waiting for admission.",
        "gauge",
        s.pending as f64,
    );
    gauge(
        "cjm_jobs_running",
        "Jobs running.",
        "gauge",
        s.running as f64,
    );
    gauge(
        "cjm_jobs_completed_total",
        "Jobs completed since start.",
        "counter",
        s.completed as f64,
    );
    gauge(
        "cjm_jobs_failed_total",
        "Jobs failed since start.",
        "counter",
        s.failed as f64,
    );
    gauge(
        "cjm_jobs_cancelled_total",
        "Jobs cancelled since start.",
        "counter",
        s.cancelled as f64,
    );
    gauge(
        "cjm_instances_loaded",
        "Capability instances loaded.",
        "gauge",
        state.host.manager().instances().len() as f64,
    );
    gauge(
        "cjm_journal_wedged",
        "1 when the journal cannot be written.",
        "gauge",
        f64::from(u8::from(q.wedged().is_some())),
    );
    gauge(
        "cjm_uptime_seconds",
        "Seconds since the service started.",
        "gauge",
        state.started.elapsed().as_secs_f64(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The secret names stored per installed capability (never a value).
#[utoipa::path(get, path = "/v1/secrets", tag = "host",
    responses((status = 200, description = "{\"<capability>\": [\"KEY\", ...]}", body = Object)))]
async fn secrets(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let manager = state.host.manager();
    let mut out = serde_json::Map::new();
    for c in manager.manifests() {
        let name = c.manifest.name().to_owned();
        let keys = manager.secrets().list_keys(&name, None)?;
        out.insert(name, json!(keys));
    }
    Ok(Json(Value::Object(out)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SecretBody {
    /// The value (stored 0600; never answered, logged or journaled).
    value: String,
}

impl std::fmt::Debug for SecretBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBody(<redacted>)")
    }
}

/// Stores a secret for a capability (its loaded instances reload to see it).
#[utoipa::path(put, path = "/v1/secrets/{capability}/{key}", tag = "host",
    params(("capability" = String, Path), ("key" = String, Path)),
    request_body(content = SecretBody, content_type = "application/json"),
    responses((status = 204), (status = 404), (status = 422)))]
async fn set_secret(
    State(state): State<AppState>,
    Path((capability, key)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let body: SecretBody = parse_body(&body)?;
    let manager = state.host.manager();
    manager
        .manifest(&capability)
        .map_err(|_| ApiError::not_found(format!("no installed capability '{capability}'")))?;
    manager.set_secret(&capability, &key, &body.value).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// This API's OpenAPI document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "host",
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
async fn openapi(State(state): State<AppState>) -> Response {
    let doc = state
        .openapi
        .get()
        .cloned()
        .unwrap_or_else(|| "{}".to_owned());
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}
