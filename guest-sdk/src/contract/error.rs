//! `JobError`: the one failure shape of the contract (the `_job_error` body of a worker, the
//! journal's error payload, the API's error shape) and `CallError`, the outcome of a call that
//! produced no result.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The domain taxonomy of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCategory {
    /// The caller's input was wrong; fixing the input fixes the call.
    UserInput,
    /// A passing fault (a dead worker, a timeout, a flaky dependency).
    Transient,
    /// Not enough memory, VRAM or disk.
    Resource,
    /// A bug or a broken installation: retrying will not help.
    Fatal,
}

impl ErrorCategory {
    /// Whether a failure of this category is retriable unless said otherwise.
    pub fn retriable_by_default(self) -> bool {
        !matches!(self, ErrorCategory::Fatal)
    }

    /// The wire name (`user_input`, `transient`, `resource`, `fatal`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCategory::UserInput => "user_input",
            ErrorCategory::Transient => "transient",
            ErrorCategory::Resource => "resource",
            ErrorCategory::Fatal => "fatal",
        }
    }
}

impl fmt::Display for ErrorCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which resource ran short.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceShortfall {
    /// `gpu_vram_mb`, `system_ram_mb` or `disk_mb`.
    pub resource: String,
    /// How much was needed, in the resource's unit.
    pub needed: f64,
    /// How much was available.
    pub available: f64,
}

/// A typed failure, wire compatible with cjm-substrate's `JobError`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    /// The taxonomy bucket.
    pub category: ErrorCategory,
    /// What went wrong, for a person.
    pub message: String,
    /// Whether the queue may retry the call.
    pub retriable: bool,
    /// The representation of the original exception (Python) or error (Rust).
    #[serde(default)]
    pub original_exc_repr: String,
    /// A traceback or backtrace, when one exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
    /// How long to wait before a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<f64>,
    /// The input fields that were invalid (user_input errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields_invalid: Option<Vec<String>>,
    /// The resource that ran short (resource errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_shortfall: Option<ResourceShortfall>,
    /// The capability that failed, stamped by the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability_name: Option<String>,
    /// The instance that failed, stamped by the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability_instance_id: Option<String>,
    /// When it failed (ISO-8601 UTC), stamped by the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    /// Fields a newer worker sent that this version does not know: kept, passed on verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl JobError {
    /// A failure of `category` with the category's default retriability.
    pub fn new(category: ErrorCategory, message: impl Into<String>) -> Self {
        let message = message.into();
        JobError {
            category,
            retriable: category.retriable_by_default(),
            original_exc_repr: String::new(),
            message,
            traceback: None,
            retry_after_seconds: None,
            fields_invalid: None,
            resource_shortfall: None,
            capability_name: None,
            capability_instance_id: None,
            occurred_at: None,
            extra: Map::new(),
        }
    }

    /// The caller's input was wrong.
    pub fn user_input(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::UserInput, message)
    }

    /// A passing fault.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::Transient, message)
    }

    /// A resource ran short.
    pub fn resource(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::Resource, message)
    }

    /// A failure retrying will not fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::Fatal, message)
    }

    /// Names the invalid input fields.
    pub fn with_fields<I, S>(mut self, fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.fields_invalid = Some(fields.into_iter().map(Into::into).collect());
        self
    }

    /// Says how long to wait before retrying.
    pub fn with_retry_after(mut self, seconds: f64) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }

    /// Says which resource ran short.
    pub fn with_shortfall(mut self, resource: &str, needed: f64, available: f64) -> Self {
        self.resource_shortfall = Some(ResourceShortfall {
            resource: resource.to_owned(),
            needed,
            available,
        });
        self
    }

    /// Overrides retriability.
    pub fn with_retriable(mut self, retriable: bool) -> Self {
        self.retriable = retriable;
        self
    }

    /// Records the original error's representation.
    pub fn with_repr(mut self, repr: impl Into<String>) -> Self {
        self.original_exc_repr = repr.into();
        self
    }

    /// Attaches a traceback or other detail (for example the last output lines of a worker).
    pub fn with_traceback(mut self, traceback: impl Into<String>) -> Self {
        self.traceback = Some(traceback.into());
        self
    }

    /// Stamps the capability and instance that failed, keeping values already set.
    pub fn stamped(mut self, capability: &str, instance_id: &str) -> Self {
        self.capability_name
            .get_or_insert_with(|| capability.to_owned());
        self.capability_instance_id
            .get_or_insert_with(|| instance_id.to_owned());
        self
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.category, self.message)?;
        if let Some(fields) = &self.fields_invalid {
            write!(f, " (fields: {})", fields.join(", "))?;
        }
        Ok(())
    }
}

impl std::error::Error for JobError {}

/// Why a call produced no result: a failure, a cancellation (its own outcome, not a failure),
/// or an unknown task/method (the worker contract's 404).
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The capability failed.
    Failed(JobError),
    /// The call observed a cancellation request and stopped.
    Cancelled,
    /// No such task or method.
    NotFound(String),
}

impl CallError {
    /// The job error inside, if this is a failure.
    pub fn job_error(&self) -> Option<&JobError> {
        match self {
            CallError::Failed(e) => Some(e),
            _ => None,
        }
    }
}

impl From<JobError> for CallError {
    fn from(e: JobError) -> Self {
        CallError::Failed(e)
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Failed(e) => e.fmt(f),
            CallError::Cancelled => f.write_str("cancelled"),
            CallError::NotFound(what) => write!(f, "not found: {what}"),
        }
    }
}

impl std::error::Error for CallError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape_omits_empty_optionals_and_keeps_unknown_fields() {
        let e = JobError::user_input("bad text").with_fields(["text"]);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"category":"user_input","message":"bad text","retriable":true,
                "original_exc_repr":"","fields_invalid":["text"]})
        );
        let raw = r#"{"category":"fatal","message":"m","retriable":false,
            "original_exc_repr":"X()","traceback":null,"future_field":1}"#;
        let e: JobError = serde_json::from_str(raw).unwrap();
        assert_eq!(e.category, ErrorCategory::Fatal);
        assert!(e.traceback.is_none());
        assert_eq!(e.extra["future_field"], 1);
        assert_eq!(serde_json::to_value(&e).unwrap()["future_field"], 1);
    }

    #[test]
    fn retriable_defaults_follow_the_category() {
        assert!(JobError::user_input("x").retriable);
        assert!(JobError::transient("x").retriable);
        assert!(JobError::resource("x").retriable);
        assert!(!JobError::fatal("x").retriable);
    }
}
