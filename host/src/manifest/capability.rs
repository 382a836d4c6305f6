//! The v2.0 capability manifest: four sections (`install`, `code`, `drift_tracking`,
//! `overrides`) plus `format_version`, as cjm-substrate's `manifest_format` reads and writes
//! them, with this host's `runtime` extension in `install`.
//!
//! Field order of the structs is the order Python writes, so a manifest written by the
//! Python tools and rewritten here is byte for byte the same file. Keys this version does
//! not know are kept (`extra`) and written back.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::hash;
use super::runtime::{NativeInstall, RuntimeKind, WasmInstall};
use crate::contract::StructuralSurface;

/// The one format version this host reads and writes.
pub const FORMAT_VERSION: &str = "2.0";

/// A capability manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityManifest {
    /// Always [`FORMAT_VERSION`] (loading refuses anything else).
    pub format_version: String,
    /// Deployment facts written at install time.
    pub install: InstallSection,
    /// Facts derived from the capability's code (introspection).
    pub code: CodeSection,
    /// Witness hashes for drift detection.
    #[serde(default)]
    pub drift_tracking: DriftTracking,
    /// Operator overlay (free-form).
    #[serde(default)]
    pub overrides: Map<String, Value>,
    /// Top-level keys this version does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CapabilityManifest {
    /// A manifest for `name` at `version`, running as `runtime`, with empty sections.
    pub fn new(name: impl Into<String>, version: impl Into<String>, runtime: RuntimeKind) -> Self {
        CapabilityManifest {
            format_version: FORMAT_VERSION.to_owned(),
            install: InstallSection {
                runtime: (runtime != RuntimeKind::Python).then_some(runtime),
                ..InstallSection::default()
            },
            code: CodeSection {
                name: name.into(),
                version: version.into(),
                ..CodeSection::default()
            },
            drift_tracking: DriftTracking::default(),
            overrides: Map::new(),
            extra: Map::new(),
        }
    }

    /// The capability name (`code.name`).
    pub fn name(&self) -> &str {
        &self.code.name
    }

    /// How it runs (`install.runtime`, python when absent).
    pub fn runtime(&self) -> RuntimeKind {
        self.install.runtime.unwrap_or_default()
    }

    /// Recomputes both drift witnesses from the code section, as the Python writer does: the
    /// config-schema hash always, the surface hash only when a surface is recorded.
    pub fn refresh_drift_hashes(&mut self) {
        self.drift_tracking.config_schema_hash =
            Some(hash::config_schema_hash(self.code.config_schema.as_ref()));
        self.drift_tracking.structural_surface_hash = self
            .code
            .structural_surface
            .as_ref()
            .map(|s| hash::structural_surface_hash(Some(s)));
    }

    /// Whether `live_schema` (from the running capability) differs from the recorded witness.
    /// `false` when no witness is recorded.
    pub fn config_schema_drifted(&self, live_schema: Option<&Value>) -> bool {
        self.drift_tracking
            .config_schema_hash
            .as_deref()
            .is_some_and(|recorded| recorded != hash::config_schema_hash(live_schema))
    }

    /// Whether `live_surface` differs from the recorded surface witness. `false` when none is
    /// recorded (a pre-surface manifest is not drift).
    pub fn structural_surface_drifted(&self, live_surface: Option<&Value>) -> bool {
        self.drift_tracking
            .structural_surface_hash
            .as_deref()
            .is_some_and(|recorded| recorded != hash::structural_surface_hash(live_surface))
    }

    /// The manifest as JSON.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Deployment-specific facts (`install`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstallSection {
    /// The capability env's python interpreter (python runtime).
    #[serde(default)]
    pub python_path: String,
    /// The conda environment name.
    #[serde(default)]
    pub conda_env: String,
    /// The capability's own SQLite path, if any.
    #[serde(default)]
    pub db_path: String,
    /// Environment variables set for the worker.
    #[serde(default)]
    pub env_vars: IndexMap<String, String>,
    /// When it was installed (ISO-8601 UTC).
    #[serde(default)]
    pub installed_at: String,
    /// `"cjm-ctl <version>"` that wrote the manifest.
    #[serde(default)]
    pub installer_version: String,
    /// The original install input (a pip spec, a path, a URL).
    #[serde(default)]
    pub package_source: String,
    /// `dev`, `distribution` or empty.
    #[serde(default)]
    pub mode: String,
    /// Every cjm-* distribution of the env and its installed version.
    #[serde(default)]
    pub resolved: IndexMap<String, String>,
    /// The last `cjm-ctl refresh` (ISO-8601 UTC) or empty.
    #[serde(default)]
    pub refreshed_at: String,
    /// How the capability runs; absent means python (see [`CapabilityManifest::runtime`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeKind>,
    /// The component and its sandbox (wasm runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<WasmInstall>,
    /// The command (native runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<NativeInstall>,
    /// Keys this version does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Facts derived from the capability's code (`code`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CodeSection {
    /// The unique capability name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// A short description.
    #[serde(default)]
    pub description: String,
    /// The Python module of the capability class (python runtime).
    #[serde(default)]
    pub module: String,
    /// The capability class (python runtime); the JSON key is `class`.
    #[serde(default, rename = "class")]
    pub class_name: String,
    /// Binary hard facts (GPU, platforms, accelerators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// JSON Schema of the configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_schema: Option<Value>,
    /// The worker-environment contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_env: Option<Vec<EnvVarSpec>>,
    /// When the code section was last regenerated (ISO-8601 UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regenerated_at: Option<String>,
    /// The public surface (methods, properties, attributes), kept as written so its hash is
    /// stable; [`CodeSection::surface`] gives the typed view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structural_surface: Option<Value>,
    /// `full` or `ambient`: the journal class the capability declares (absent = full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability_class: Option<String>,
    /// Keys this version does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CodeSection {
    /// The typed structural surface, when one is recorded and has the surface's shape.
    pub fn surface(&self) -> Option<StructuralSurface> {
        self.structural_surface
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// Records `surface` (as JSON) in the code section.
    pub fn set_surface(&mut self, surface: &StructuralSurface) {
        self.structural_surface = serde_json::to_value(surface).ok();
    }
}

/// Binary hard facts of what a capability needs (`code.resources`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceRequirements {
    /// Whether it needs a GPU.
    #[serde(default)]
    pub requires_gpu: bool,
    /// Platforms it runs on (`linux-x64`, ...); empty means any.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Accelerators it can use (`cuda`, `cpu`, ...).
    #[serde(default)]
    pub accelerators: Vec<String>,
    /// Keys this version does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of the worker-environment contract (`code.worker_env[]`, Python's `EnvVarSpec`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvVarSpec {
    /// The variable the worker reads.
    pub name: String,
    /// Resolved from the secret store (never has a default).
    #[serde(default)]
    pub secret: bool,
    /// The worker cannot do useful work without it.
    #[serde(default)]
    pub required: bool,
    /// Display label.
    #[serde(default)]
    pub label: String,
    /// Help text.
    #[serde(default)]
    pub description: String,
    /// Default of a visible variable; may use the placeholders of
    /// [`super::runtime::PLACEHOLDERS`].
    #[serde(default)]
    pub default: Option<String>,
    /// A finite domain of a visible variable.
    #[serde(default)]
    pub options: Option<Vec<String>>,
    /// Keys this version does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Witness hashes for drift detection (`drift_tracking`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DriftTracking {
    /// `"sha256:<hex>"` of the canonical `code.config_schema`.
    #[serde(default)]
    pub config_schema_hash: Option<String>,
    /// `"sha256:<hex>"` of the canonical `code.structural_surface` (none for a manifest from
    /// before surfaces were recorded).
    #[serde(default)]
    pub structural_surface_hash: Option<String>,
    /// Keys this version does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
