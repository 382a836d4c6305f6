//! Request bodies and small answers of the worker contract, and typed-result envelopes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::Envelope;

/// The key that marks a typed result: `{"__wire__": kind, "data": ...}`.
pub const WIRE_KEY: &str = "__wire__";

/// Wraps `data` as a typed result of `kind`, the shape registered DTOs cross the wire in.
pub fn wire(kind: &str, data: Value) -> Value {
    json!({ WIRE_KEY: kind, "data": data })
}

/// Body of `POST /execute` and `POST /execute_stream`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecuteRequest {
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments, key order kept.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// Correlation data, left off the wire when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<Envelope>,
}

/// Body of `POST /task`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskRequest {
    /// The task name (for example `sentence_segmentation`).
    pub task: String,
    /// The method of the task's protocol (for example `segment_text`).
    pub method: String,
    /// Keyword arguments, key order kept.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// Correlation data, left off the wire when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<Envelope>,
}

/// Answer of `GET /progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// 0..1, or -1 when unknown.
    pub progress: f64,
    /// What the capability is doing.
    #[serde(default)]
    pub message: String,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            progress: -1.0,
            message: String::new(),
        }
    }
}

/// The `{"status": ...}` answer of lifecycle endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `ok`, `reconfigured`, `prefetched`, `not_supported`, `enabled`, `disabled`, ...
    pub status: String,
}

impl Status {
    /// A status answer.
    pub fn new(status: impl Into<String>) -> Self {
        Status {
            status: status.into(),
        }
    }

    /// `{"status": "not_supported"}`: the capability does not implement the hook.
    pub fn not_supported() -> Self {
        Status::new("not_supported")
    }
}
