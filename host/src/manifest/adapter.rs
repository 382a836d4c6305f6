//! Adapter manifests (`"unit": "adapter"`): the registration record of one task-adapter
//! implementation, discovered beside capability manifests.
//!
//! An adapter records the task it serves and the members its tool protocol requires; the
//! host matches those against a capability manifest's structural surface, with no code
//! loaded (the matcher lives in the `adapter` module).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::contract::MethodSurface;

/// The `unit` value of adapter manifests.
pub const ADAPTER_UNIT: &str = "adapter";

/// An adapter manifest. Field order is that of the files `cjm-ctl generate-adapter-manifest`
/// writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterManifest {
    /// Always `adapter`.
    pub unit: String,
    /// Unique unit name (`module.ClassName`).
    pub name: String,
    /// Version of the interface library at generation (`0.0.0` when unknown).
    #[serde(default = "default_version")]
    pub version: String,
    /// The task it serves (`sentence_segmentation`).
    pub task_name: String,
    /// The implementation module (importable in the tool's worker env).
    pub module: String,
    /// The implementation class; the JSON key is `class`.
    #[serde(rename = "class")]
    pub class_name: String,
    /// The protocol's fully qualified name (the semantic contract; never imported host-side).
    #[serde(default)]
    pub required_tool_protocol: String,
    /// The members the protocol requires of a capability.
    #[serde(default)]
    pub protocol_members: ProtocolMembers,
    /// The adapter's own config schema (`{}` for none).
    #[serde(default)]
    pub config_schema: Value,
    /// When it was generated (ISO-8601 UTC).
    #[serde(default)]
    pub generated_at: String,
    /// The env it was generated from.
    #[serde(default)]
    pub conda_env: String,
    /// Keys this version does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_version() -> String {
    "0.0.0".to_owned()
}

impl AdapterManifest {
    /// An adapter manifest for `task_name` implemented by `module.class_name`.
    pub fn new(
        task_name: impl Into<String>,
        module: impl Into<String>,
        class_name: impl Into<String>,
    ) -> Self {
        let module = module.into();
        let class_name = class_name.into();
        AdapterManifest {
            unit: ADAPTER_UNIT.to_owned(),
            name: format!("{module}.{class_name}"),
            version: default_version(),
            task_name: task_name.into(),
            module,
            class_name,
            required_tool_protocol: String::new(),
            protocol_members: ProtocolMembers::default(),
            config_schema: Value::Object(Map::new()),
            generated_at: String::new(),
            conda_env: String::new(),
            extra: Map::new(),
        }
    }

    /// The manifest as JSON.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// What a tool protocol requires: methods (with their parameter names) and properties.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProtocolMembers {
    /// Required methods.
    #[serde(default)]
    pub methods: Vec<MethodSurface>,
    /// Required property names.
    #[serde(default)]
    pub properties: Vec<String>,
    /// Keys this version does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
