//! Adapter compatibility: which task adapters a capability can serve, decided manifest against
//! manifest with no code loaded, for every kind of capability alike.
//!
//! A capability manifest records its structural surface (a Python worker's introspection, or
//! what a wasm guest reported through `info` at install); an adapter manifest records the task
//! it serves and the members its tool protocol requires. [`verdict`] (the rule) matches the
//! two; this module answers the questions asked of it:
//!
//! - [`adapters_for_task`]: the adapters serving a task;
//! - [`compatible_capabilities`]: the capabilities an adapter can bind to;
//! - [`check`]: the [`Verdict`] for one pair, with the missing members named;
//! - [`auto_bind`]: the adapters that bind on their own when a capability loads (every
//!   compatible one, one per task);
//! - [`check_requested`]: an explicitly requested list, refused with a typed `user_input`
//!   error naming the missing members when an adapter does not fit;
//! - [`resolve`]: either of the last two, as `load` asks (cjm-substrate's
//!   `_resolve_adapter_specs`).

pub mod verdict;

use crate::contract::JobError;
use crate::error::{Error, Result};
use crate::manifest::{AdapterManifest, CapabilityManifest};

pub use verdict::{NO_SURFACE_REASON, ParamMismatch, Verdict, match_recorded, match_surface};

/// The invalid field named by the errors of explicit adapter requests (Python's
/// `fields_invalid=["adapters"]`).
pub const ADAPTERS_FIELD: &str = "adapters";

/// The verdict for `adapter` against the surface `capability`'s manifest records.
pub fn check(adapter: &AdapterManifest, capability: &CapabilityManifest) -> Verdict {
    match_recorded(
        &adapter.protocol_members,
        capability.code.structural_surface.as_ref(),
    )
}

/// The adapters serving `task_name`, in the order given.
pub fn adapters_for_task<'a>(
    adapters: impl IntoIterator<Item = &'a AdapterManifest>,
    task_name: &str,
) -> Vec<&'a AdapterManifest> {
    adapters
        .into_iter()
        .filter(|a| a.task_name == task_name)
        .collect()
}

/// The capabilities whose recorded surface satisfies `adapter`'s protocol, in the order given.
pub fn compatible_capabilities<'a>(
    adapter: &AdapterManifest,
    capabilities: impl IntoIterator<Item = &'a CapabilityManifest>,
) -> Vec<&'a CapabilityManifest> {
    capabilities
        .into_iter()
        .filter(|c| check(adapter, c).compatible)
        .collect()
}

/// The adapters compatible with `capability`, in the order given (several may serve one task).
pub fn compatible_adapters<'a>(
    capability: &CapabilityManifest,
    adapters: impl IntoIterator<Item = &'a AdapterManifest>,
) -> Vec<&'a AdapterManifest> {
    adapters
        .into_iter()
        .filter(|a| check(a, capability).compatible)
        .collect()
}

/// The adapters that bind to `capability` when it loads with no explicit request: every
/// compatible adapter, one per task. When two compatible adapters serve one task the first
/// given binds (discovery order, as the Python worker keeps the first of a task) and the other
/// is logged.
pub fn auto_bind<'a>(
    capability: &CapabilityManifest,
    adapters: impl IntoIterator<Item = &'a AdapterManifest>,
) -> Vec<&'a AdapterManifest> {
    let mut bound: Vec<&'a AdapterManifest> = Vec::new();
    for adapter in compatible_adapters(capability, adapters) {
        if let Some(first) = bound.iter().find(|b| b.task_name == adapter.task_name) {
            tracing::warn!(
                capability = capability.name(),
                task = %adapter.task_name,
                bound = %first.name,
                skipped = %adapter.name,
                "two compatible adapters serve one task; the first binds"
            );
            continue;
        }
        tracing::debug!(
            capability = capability.name(),
            task = %adapter.task_name,
            adapter = %adapter.name,
            "adapter binds automatically"
        );
        bound.push(adapter);
    }
    bound
}

/// Checks the adapters `requested` by name for `capability` against the known `adapters`, and
/// returns them in request order (a name given twice counts once).
///
/// Refused with a `user_input` [`JobError`] (field [`ADAPTERS_FIELD`]) that names every
/// problem: an unknown adapter (with the known ones), an incompatible one (with its missing
/// methods and properties, its parameter mismatches, or why no surface could be matched), and
/// two requested adapters serving one task (only one could bind).
pub fn check_requested<'a, S: AsRef<str>>(
    capability: &CapabilityManifest,
    adapters: impl IntoIterator<Item = &'a AdapterManifest>,
    requested: &[S],
) -> Result<Vec<&'a AdapterManifest>> {
    let known: Vec<&'a AdapterManifest> = adapters.into_iter().collect();
    let mut chosen: Vec<&'a AdapterManifest> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for name in requested {
        let name = name.as_ref();
        if chosen.iter().any(|a| a.name == name) {
            continue;
        }
        let Some(adapter) = known.iter().copied().find(|a| a.name == name) else {
            problems.push(unknown_adapter(name, &known));
            continue;
        };
        let verdict = check(adapter, capability);
        if !verdict.compatible {
            problems.push(format!(
                "adapter '{}' (task '{}') is not compatible with capability '{}': {verdict}",
                adapter.name,
                adapter.task_name,
                capability.name()
            ));
            continue;
        }
        if let Some(other) = chosen.iter().find(|a| a.task_name == adapter.task_name) {
            problems.push(format!(
                "adapters '{}' and '{}' both serve task '{}'; request one",
                other.name, adapter.name, adapter.task_name
            ));
            continue;
        }
        chosen.push(adapter);
    }
    if problems.is_empty() {
        Ok(chosen)
    } else {
        Err(Error::job(
            JobError::user_input(problems.join("; ")).with_fields([ADAPTERS_FIELD]),
        ))
    }
}

/// The adapters to bind when `capability` loads: [`auto_bind`] when `requested` is `None`,
/// otherwise [`check_requested`] (an empty list binds none).
pub fn resolve<'a, S: AsRef<str>>(
    capability: &CapabilityManifest,
    adapters: impl IntoIterator<Item = &'a AdapterManifest>,
    requested: Option<&[S]>,
) -> Result<Vec<&'a AdapterManifest>> {
    match requested {
        None => Ok(auto_bind(capability, adapters)),
        Some(names) => check_requested(capability, adapters, names),
    }
}

/// The spec a native worker binds an adapter by (`module:ClassName`, the worker's
/// `--adapters` entries).
pub fn worker_spec(adapter: &AdapterManifest) -> String {
    format!("{}:{}", adapter.module, adapter.class_name)
}

fn unknown_adapter(name: &str, known: &[&AdapterManifest]) -> String {
    if known.is_empty() {
        format!("unknown adapter '{name}' (none discovered)")
    } else {
        let names: Vec<&str> = known.iter().map(|a| a.name.as_str()).collect();
        format!(
            "unknown adapter '{name}' (discovered: {})",
            names.join(", ")
        )
    }
}

#[cfg(test)]
mod tests;
