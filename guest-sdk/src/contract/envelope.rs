//! The per-call envelope: correlation ids and control flags that travel beside the arguments.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Per-call flags (`{"force": true}` bypasses capability caches). Sent only when set.
pub type Control = Map<String, Value>;

/// Correlation data of one call. Every field is optional and dropped from the wire when unset,
/// as the Python worker expects.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The job this call belongs to; workers stamp their log records with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// A caller-chosen run correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The composition the job is a member of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composition_id: Option<String>,
    /// The composition node the job runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Who asked for the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Per-call flags, omitted when empty.
    #[serde(default, skip_serializing_if = "Control::is_empty")]
    pub control: Control,
    /// The W3C trace context of the call (`00-<trace id>-<span id>-<flags>`), when the caller
    /// or the host traces it: a worker that traces makes its spans children of it. An
    /// addition to cjm-substrate's envelope, whose workers ignore keys they do not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Envelope {
    /// An envelope for one job.
    pub fn for_job(job_id: impl Into<String>) -> Self {
        Envelope {
            job_id: Some(job_id.into()),
            ..Envelope::default()
        }
    }

    /// Whether nothing is set (the envelope is then left off the wire).
    pub fn is_empty(&self) -> bool {
        self.job_id.is_none()
            && self.run_id.is_none()
            && self.composition_id.is_none()
            && self.node_id.is_none()
            && self.actor.is_none()
            && self.control.is_empty()
            && self.traceparent.is_none()
    }

    /// Whether the boolean control flag `name` is set to true.
    pub fn flag(&self, name: &str) -> bool {
        self.control
            .get(name)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_are_dropped() {
        let mut e = Envelope::for_job("j1");
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"job_id":"j1"}"#);
        e.control.insert("force".into(), Value::Bool(true));
        assert!(e.flag("force"));
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"job_id":"j1","control":{"force":true}}"#
        );
        assert!(Envelope::default().is_empty());
    }
}
