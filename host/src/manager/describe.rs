//! What a capability is, as one JSON document: the `cjm-ctl info` view and the API's
//! `GET /v1/capabilities/{id}`. From the manifest alone for a capability that is not loaded;
//! with the live instance's info (tasks, schema, surface, current config, drift, measured
//! profile) for a loaded one.

use serde_json::{Value, json};

use super::{CapabilityManager, Instance};
use crate::Result;
use crate::manifest::{CapabilityManifest, Loaded};

impl CapabilityManager {
    /// Describes instance `id`, else the installed capability named `id`: kind, version,
    /// description, config schema, structural surface, the matcher's verdict for every
    /// adapter, the sandbox grants of a wasm component; for a loaded instance also its
    /// tasks, bound adapters, current config, drift and measured profile. An id that is
    /// neither is a `user_input` error.
    pub fn describe(&self, id: &str) -> Result<Value> {
        if let Ok(instance) = self.instance(id) {
            let manifest = self.manifest(instance.name())?;
            let mut view = self.manifest_view(&manifest);
            live_view(&mut view, &instance);
            return Ok(view);
        }
        let manifest = self.manifest(id)?;
        let mut view = self.manifest_view(&manifest);
        view["loaded"] = json!(false);
        Ok(view)
    }

    fn manifest_view(&self, c: &Loaded<CapabilityManifest>) -> Value {
        let m = &c.manifest;
        let verdicts: Vec<Value> = self
            .adapter_manifests()
            .iter()
            .map(|a| {
                let verdict = crate::adapter::check(&a.manifest, m);
                json!({
                    "name": a.manifest.name,
                    "task": a.manifest.task_name,
                    "compatible": verdict.compatible,
                    "verdict": verdict.to_value(),
                })
            })
            .collect();
        let grants = m
            .install
            .wasm
            .as_ref()
            .map(|w| serde_json::to_value(&w.sandbox).unwrap_or(Value::Null));
        json!({
            "name": m.name(),
            "kind": m.runtime(),
            "version": m.code.version,
            "description": m.code.description,
            "config_schema": m.code.config_schema,
            "structural_surface": m.code.structural_surface,
            "adapters": verdicts,
            "grants": grants,
        })
    }
}

fn live_view(view: &mut Value, i: &Instance) {
    let live = i.backend().info().clone();
    view["id"] = json!(i.id());
    view["loaded"] = json!(true);
    view["enabled"] = json!(i.enabled());
    view["config"] = i.config();
    view["config_hash"] = json!(i.config_hash());
    view["config_schema"] = live.config_schema;
    view["structural_surface"] =
        serde_json::to_value(&live.structural_surface).unwrap_or(Value::Null);
    view["tasks"] = json!(live.tasks);
    view["bound_adapters"] = json!(i.adapters());
    view["drift"] = json!(i.drift());
    view["profile"] = i
        .profile()
        .map(|p| {
            json!({
                "samples": p.sample_count,
                "success_rate": p.success_rate(),
                "duration_s_mean": p.duration_seconds_mean,
                "memory_mb_peak_max": p.memory_mb_peak_max,
                "gpu_memory_mb_peak_max": p.gpu_memory_mb_peak_max,
                "cpu_percent_mean": p.cpu_percent_mean,
            })
        })
        .unwrap_or(Value::Null);
}
