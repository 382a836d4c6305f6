//! What a capability says about itself: identity, config schema and structural surface.
//!
//! The structural surface is what adapter protocols are matched against, manifest against
//! manifest, with no code loaded. Its shape is cjm-substrate's `derive_structural_surface`:
//! methods sorted by name with `str(inspect.signature)` and the parameter names (self
//! excluded, `*args`/`**kwargs` by bare name), property names, attributes with a type name.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One public method of a capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodSurface {
    /// The method name.
    pub name: String,
    /// The signature as Python prints it, e.g. `(self, text, **kwargs)`.
    #[serde(default)]
    pub signature: String,
    /// Parameter names in order, without `self` and without `*` / `**` prefixes.
    #[serde(default)]
    pub params: Vec<String>,
    /// The JSON Schema of its keyword arguments, when its author declared them as a type
    /// (a cjm addition: absent for Python capabilities, ignored by the Python host). The
    /// host validates a call against it before the call reaches the capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_schema: Option<Value>,
}

impl MethodSurface {
    /// A method from its parameters written as in a Python signature (`text`, `*args`,
    /// `**kwargs`): the signature string (with `self`, as `inspect.signature` of an unbound
    /// method prints it) and the bare parameter names are derived from them.
    pub fn from_params(name: &str, params: &[&str]) -> Self {
        MethodSurface {
            params_schema: None,
            name: name.to_owned(),
            signature: format!(
                "({})",
                std::iter::once("self")
                    .chain(params.iter().copied())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            params: params
                .iter()
                .map(|p| {
                    let bare = p.split([':', '=']).next().unwrap_or(p);
                    bare.trim().trim_start_matches('*').to_owned()
                })
                .collect(),
        }
    }

    /// A method whose keyword arguments are the properties of `schema` (a JSON Schema
    /// object): required ones first, then the optional ones (`=None`), then `**kwargs` unless
    /// the schema closes the object (`additionalProperties: false`).
    pub fn from_schema(name: &str, schema: Value) -> Self {
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let names: Vec<&str> = schema["properties"]
            .as_object()
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let mut params: Vec<String> = names
            .iter()
            .filter(|n| required.contains(n))
            .map(|n| (*n).to_owned())
            .collect();
        params.extend(
            names
                .iter()
                .filter(|n| !required.contains(n))
                .map(|n| format!("{n}=None")),
        );
        if schema["additionalProperties"] != Value::Bool(false) {
            params.push("**kwargs".to_owned());
        }
        let params: Vec<&str> = params.iter().map(String::as_str).collect();
        let mut method = MethodSurface::from_params(name, &params);
        method.params_schema = Some(schema);
        method
    }
}

/// The public surface of a capability.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StructuralSurface {
    /// Public methods, sorted by name.
    #[serde(default)]
    pub methods: Vec<MethodSurface>,
    /// Property names.
    #[serde(default)]
    pub properties: Vec<String>,
    /// Other public attributes (`{"name", "type"}` objects as the Python tool records them).
    #[serde(default)]
    pub attributes: Vec<Value>,
}

impl StructuralSurface {
    /// Sorts methods by name (and properties), as the Python tool does, so the hash is stable.
    pub fn normalized(mut self) -> Self {
        self.methods.sort_by(|a, b| a.name.cmp(&b.name));
        self.methods.dedup_by(|a, b| a.name == b.name);
        self.properties.sort();
        self.properties.dedup();
        self
    }

    /// The method named `name`, if present.
    pub fn method(&self, name: &str) -> Option<&MethodSurface> {
        self.methods.iter().find(|m| m.name == name)
    }
}

/// Identity and contract of a capability, as `info` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityInfo {
    /// The capability name (unique among installed capabilities).
    pub name: String,
    /// Its version.
    pub version: String,
    /// A one-line description.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of its configuration.
    pub config_schema: Value,
    /// Its structural surface.
    pub structural_surface: StructuralSurface,
    /// The tasks it serves through the task channel.
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Anything else a worker reported.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_params_are_bare_names_and_signature_is_pythonic() {
        let m = MethodSurface::from_params("segment_text", &["text", "**kwargs"]);
        assert_eq!(m.signature, "(self, text, **kwargs)");
        assert_eq!(m.params, ["text", "kwargs"]);
        let m = MethodSurface::from_params("initialize", &["config: dict = None"]);
        assert_eq!(m.params, ["config"]);
    }
}
