//! The matcher itself: an adapter's protocol members against a capability's structural
//! surface, giving a [`Verdict`] with the same keys and meaning as cjm-substrate's
//! `match_protocol_against_surface`.
//!
//! A required method matches when a surface method of that name exists and, when both sides
//! record parameters, the surface's parameters start with the protocol's (so a capability may
//! take more parameters than the protocol passes). Parameter names are compared, annotations
//! never: their rendering differs between environments. A surface method that absorbs the
//! protocol's parameters through `**kwargs` is a mismatch, as in Python. Required properties
//! match by name. A capability with no recorded surface is incompatible, with the reason.

use std::fmt;

use cjm_guest::python::hash::python_truthy;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contract::StructuralSurface;
use crate::manifest::ProtocolMembers;

/// The reason given when the capability manifest records no structural surface (Python's
/// text, kept verbatim so verdicts compare equal across the two hosts).
pub const NO_SURFACE_REASON: &str =
    "capability manifest has no structural_surface (pre-fracture; regenerate the manifest)";

/// Whether a capability satisfies an adapter's protocol, and if not, what it lacks.
///
/// Serializes to the object Python's matcher returns (`reason` is `null` unless the surface
/// itself could not be matched).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// No member is missing or mismatched and a surface was recorded.
    pub compatible: bool,
    /// Required methods the surface lacks, in protocol order.
    pub missing_methods: Vec<String>,
    /// Required properties the surface lacks, in protocol order.
    pub missing_properties: Vec<String>,
    /// Methods present on both sides whose surface parameters do not start with the
    /// protocol's.
    pub param_mismatches: Vec<ParamMismatch>,
    /// Why no member-by-member match was possible (no surface recorded, or not a surface).
    pub reason: Option<String>,
}

/// A method present on both sides whose parameters disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamMismatch {
    /// The method name.
    pub method: String,
    /// The parameters the protocol passes.
    pub protocol_params: Vec<String>,
    /// The parameters the capability's surface records.
    pub surface_params: Vec<String>,
}

impl Verdict {
    /// An incompatible verdict with `reason` and no member named.
    pub fn unmatched(reason: impl Into<String>) -> Self {
        Verdict {
            reason: Some(reason.into()),
            ..Verdict::default()
        }
    }

    /// The verdict as Python's matcher writes it.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Lists what is missing (`missing methods: segment_text; ...`), or says `compatible`.
impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.compatible {
            return f.write_str("compatible");
        }
        let mut parts = Vec::new();
        if !self.missing_methods.is_empty() {
            parts.push(format!(
                "missing methods: {}",
                self.missing_methods.join(", ")
            ));
        }
        if !self.missing_properties.is_empty() {
            parts.push(format!(
                "missing properties: {}",
                self.missing_properties.join(", ")
            ));
        }
        for m in &self.param_mismatches {
            parts.push(format!(
                "parameter mismatch in {}: the protocol passes ({}), the capability takes ({})",
                m.method,
                m.protocol_params.join(", "),
                m.surface_params.join(", ")
            ));
        }
        if let Some(reason) = &self.reason {
            parts.push(reason.clone());
        }
        if parts.is_empty() {
            return f.write_str("incompatible");
        }
        f.write_str(&parts.join("; "))
    }
}

/// Matches `members` against a typed surface (one a guest reported through `info`, or a
/// native worker's introspection). Every method of a typed surface records its parameters.
pub fn match_surface(members: &ProtocolMembers, surface: &StructuralSurface) -> Verdict {
    let methods: Vec<SurfaceMethod<'_>> = surface
        .methods
        .iter()
        .map(|m| SurfaceMethod {
            name: Some(&m.name),
            params: Some(&m.params),
        })
        .collect();
    let properties: Vec<&str> = surface.properties.iter().map(String::as_str).collect();
    match_members(members, &methods, &properties)
}

/// Matches `members` against a surface as a manifest records it (`code.structural_surface`,
/// `None` when absent). A surface Python finds falsy (`null`, `{}`) was never recorded; one
/// without the surface's shape is incompatible with the reason, where Python would raise.
pub fn match_recorded(members: &ProtocolMembers, recorded: Option<&Value>) -> Verdict {
    let Some(value) = recorded.filter(|v| python_truthy(v)) else {
        return Verdict::unmatched(NO_SURFACE_REASON);
    };
    let surface = match RecordedSurface::deserialize(value) {
        Ok(s) => s,
        Err(e) => {
            return Verdict::unmatched(format!(
                "capability manifest structural_surface is not a surface ({e}); regenerate \
                 the manifest"
            ));
        }
    };
    let methods: Vec<SurfaceMethod<'_>> = surface
        .methods
        .iter()
        .map(|m| SurfaceMethod {
            name: m.name.as_deref(),
            params: m.params.as_deref(),
        })
        .collect();
    let properties: Vec<&str> = surface.properties.iter().map(String::as_str).collect();
    match_members(members, &methods, &properties)
}

/// A surface as a manifest records it, read leniently: only what the rule needs, and a method
/// may lack `params` (then its parameters are not compared, as in Python).
#[derive(Deserialize)]
struct RecordedSurface {
    #[serde(default)]
    methods: Vec<RecordedMethod>,
    #[serde(default)]
    properties: Vec<String>,
}

#[derive(Deserialize)]
struct RecordedMethod {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    params: Option<Vec<String>>,
}

/// One surface method as the rule sees it, whichever form it came from.
struct SurfaceMethod<'a> {
    name: Option<&'a str>,
    /// `None` when the surface does not record the parameters.
    params: Option<&'a [String]>,
}

/// The rule, over either form of surface.
fn match_members(
    members: &ProtocolMembers,
    methods: &[SurfaceMethod<'_>],
    properties: &[&str],
) -> Verdict {
    let mut verdict = Verdict::default();
    for required in &members.methods {
        // Python builds a name -> method dict, so of two methods with one name the last wins.
        let Some(found) = methods
            .iter()
            .rev()
            .find(|m| m.name == Some(required.name.as_str()))
        else {
            verdict.missing_methods.push(required.name.clone());
            continue;
        };
        // An empty protocol parameter list constrains nothing (Python: `if p_params and ...`).
        if let Some(params) = found.params
            && !required.params.is_empty()
            && !params.starts_with(&required.params)
        {
            verdict.param_mismatches.push(ParamMismatch {
                method: required.name.clone(),
                protocol_params: required.params.clone(),
                surface_params: params.to_vec(),
            });
        }
    }
    verdict.missing_properties = members
        .properties
        .iter()
        .filter(|p| !properties.contains(&p.as_str()))
        .cloned()
        .collect();
    verdict.compatible = verdict.missing_methods.is_empty()
        && verdict.missing_properties.is_empty()
        && verdict.param_mismatches.is_empty();
    verdict
}
