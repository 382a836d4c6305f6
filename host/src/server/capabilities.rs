//! `/v1/capabilities`: what is installed and loaded, one capability's interface with the
//! matcher's verdicts, lifecycle (load, unload, reload, enable, disable) and config.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, parse_body, parse_value};
use crate::backend::Condition;
use crate::manager::Instance;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(info))
        .routes(routes!(load))
        .routes(routes!(unload))
        .routes(routes!(reload))
        .routes(routes!(enable))
        .routes(routes!(disable))
        .routes(routes!(get_config, put_config))
        .routes(routes!(config_options))
}

/// A loaded instance, or a 404 naming it.
pub(super) fn instance(state: &AppState, id: &str) -> Result<Arc<Instance>, ApiError> {
    state
        .host
        .manager()
        .instance(id)
        .map_err(|_| ApiError::not_found(format!("no loaded capability instance '{id}'")))
}

/// The instances that run a job now.
fn busy_instances(state: &AppState) -> std::collections::HashSet<String> {
    state
        .host
        .queue()
        .running()
        .into_iter()
        .map(|j| j.instance_id)
        .collect()
}

/// `disabled`, `crash_looping` (with `reason`), `starting` (no live worker yet), `busy` or
/// `idle`.
fn instance_state(
    i: &Instance,
    busy: &std::collections::HashSet<String>,
) -> (&'static str, Option<String>) {
    if !i.enabled() {
        return ("disabled", None);
    }
    match i.backend().condition() {
        Condition::CrashLooping(why) => return ("crash_looping", Some(why)),
        Condition::Starting => return ("starting", None),
        Condition::Ready => {}
    }
    (
        if busy.contains(i.id()) {
            "busy"
        } else {
            "idle"
        },
        None,
    )
}

fn instance_summary(i: &Instance, busy: &std::collections::HashSet<String>) -> Value {
    let (now, reason) = instance_state(i, busy);
    json!({
        "id": i.id(),
        "enabled": i.enabled(),
        "state": now,
        "reason": reason,
        "kind": i.backend().kind(),
        "drift": i.drift(),
        "adapters": i.adapters(),
        "pid": i.backend().pid(),
    })
}

/// Every installed capability with its loaded instances.
#[utoipa::path(get, path = "/v1/capabilities", tag = "capabilities",
    responses((status = 200, description = "Installed capabilities, each with kind, version, compatible adapters, drift visible on disk, its manifest file, what runs it, and loaded instances (enabled, state, drift, bound adapters)", body = Object)))]
async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let manager = state.host.manager();
    let manifests = manager.manifests();
    // What the files on disk say (hashing components, finding programs) is read on a
    // blocking thread, never on the runtime's.
    let on_disk: Vec<(Vec<&'static str>, String)> = {
        let manifests = manifests.clone();
        tokio::task::spawn_blocking(move || {
            manifests
                .iter()
                .map(|c| (c.drift_on_disk(), c.runs()))
                .collect()
        })
        .await
        .map_err(|e| ApiError::internal(&e))?
    };
    let instances = manager.instances();
    let adapters = manager.adapter_manifests();
    let busy = busy_instances(&state);
    let items: Vec<Value> = manifests
        .iter()
        .zip(on_disk)
        .map(|(c, (drift, runs))| {
            let m = &c.manifest;
            let mine: Vec<Value> = instances
                .iter()
                .filter(|i| i.name() == m.name())
                .map(|i| instance_summary(i, &busy))
                .collect();
            let compatible: Vec<&str> = adapters
                .iter()
                .filter(|a| crate::adapter::check(&a.manifest, m).compatible)
                .map(|a| a.manifest.name.as_str())
                .collect();
            json!({
                "name": m.name(),
                "kind": m.runtime(),
                "version": m.code.version,
                "description": m.code.description,
                "instances": mine,
                "adapters": compatible,
                "drift": drift,
                "manifest": c.path.display().to_string(),
                "runs": runs,
            })
        })
        .collect();
    Ok(Json(json!({ "capabilities": items })))
}

/// One capability: an instance id (live info) or a capability name (its manifest).
#[utoipa::path(get, path = "/v1/capabilities/{id}", tag = "capabilities",
    params(("id" = String, Path, description = "Instance id or capability name")),
    responses((status = 200, description = "Tasks and methods with parameters, config schema and current config, grants, the matcher's verdict for every adapter", body = Object),
        (status = 404, description = "Neither a loaded instance nor an installed capability")))]
async fn info(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let manager = state.host.manager();
    let mut view = manager
        .describe(&id)
        .map_err(|_| ApiError::not_found(format!("no capability or instance '{id}'")))?;
    if let Ok(i) = manager.instance(&id) {
        let (now, reason) = instance_state(&i, &busy_instances(&state));
        view["state"] = json!(now);
        view["reason"] = json!(reason);
    }
    Ok(Json(view))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LoadBody {
    /// The instance id (default: the capability's name).
    #[serde(default)]
    instance_id: Option<String>,
    /// Its config (default: the stored one, else the schema's defaults).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    config: Option<Value>,
    /// Adapters to bind by name (default: every compatible one).
    #[serde(default)]
    adapters: Option<Vec<String>>,
}

/// Loads capability `name` as an instance.
#[utoipa::path(post, path = "/v1/capabilities/{id}/load", tag = "capabilities",
    params(("id" = String, Path, description = "Capability name")),
    request_body(content = LoadBody, description = "All optional", content_type = "application/json"),
    responses((status = 200, description = "The loaded instance", body = Object), (status = 404), (status = 422)))]
async fn load(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: LoadBody = parse_body(&body)?;
    let manager = state.host.manager();
    manager
        .manifest(&name)
        .map_err(|_| ApiError::not_found(format!("no installed capability '{name}'")))?;
    let instance_id = body.instance_id.unwrap_or_else(|| name.clone());
    let loaded = manager
        .load_with_adapters(
            &name,
            body.config,
            Some(&instance_id),
            body.adapters.as_deref(),
        )
        .await?;
    Ok(Json(instance_summary(&loaded, &busy_instances(&state))))
}

macro_rules! lifecycle {
    ($fn:ident, $path:literal, $doc:literal, |$m:ident, $id:ident| $call:expr) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "capabilities",
            params(("id" = String, Path, description = "Instance id")),
            responses((status = 200, description = $doc, body = Object), (status = 404)))]
        async fn $fn(
            State(state): State<AppState>,
            Path($id): Path<String>,
        ) -> Result<Json<Value>, ApiError> {
            instance(&state, &$id)?;
            let $m = state.host.manager();
            $call.await?;
            Ok(Json(json!({"id": $id, "status": "ok"})))
        }
    };
}

lifecycle!(
    unload,
    "/v1/capabilities/{id}/unload",
    "Unloads an instance (its worker stops).",
    |m, id| m.unload(&id)
);
lifecycle!(
    reload,
    "/v1/capabilities/{id}/reload",
    "Replaces an instance's backend with a fresh one.",
    |m, id| m.reload(&id)
);
lifecycle!(
    enable,
    "/v1/capabilities/{id}/enable",
    "Enables an instance.",
    |m, id| m.set_enabled(&id, true)
);
lifecycle!(
    disable,
    "/v1/capabilities/{id}/disable",
    "Disables an instance (calls are refused).",
    |m, id| m.set_enabled(&id, false)
);

/// An instance's current config.
#[utoipa::path(get, path = "/v1/capabilities/{id}/config", tag = "capabilities",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, body = Object), (status = 404)))]
async fn get_config(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(instance(&state, &id)?.config()))
}

/// Replaces an instance's config (validated against its schema; errors name the fields).
#[utoipa::path(put, path = "/v1/capabilities/{id}/config", tag = "capabilities",
    params(("id" = String, Path, description = "Instance id")),
    request_body(content = Object, description = "The new config", content_type = "application/json"),
    responses((status = 200, body = Object), (status = 404), (status = 422, description = "Invalid for the schema; `error.fields` names the fields")))]
async fn put_config(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    instance(&state, &id)?;
    let config = parse_value(&body)?;
    if !config.is_object() {
        return Err(ApiError::bad_request("the config must be a JSON object"));
    }
    state.host.manager().update_config(&id, config).await?;
    Ok(Json(instance(&state, &id)?.config()))
}

/// The live options of an instance's config fields (from the capability).
#[utoipa::path(get, path = "/v1/capabilities/{id}/config_options", tag = "capabilities",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, body = Object), (status = 404)))]
async fn config_options(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    instance(&state, &id)?;
    Ok(Json(state.host.manager().config_options(&id).await?))
}
