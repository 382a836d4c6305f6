//! `JobError` as the Python worker puts it on the wire.
//!
//! `cjm_guest::contract::JobError` leaves unset optional fields off (the shape the contract
//! allows); the Python worker writes all eleven keys of its dataclass, in declaration order,
//! nulls included, and stamps `capability_name` and `occurred_at`. [`wire_job_error`] gives
//! that shape, so a `_job_error` body of this worker has the same keys, order and types as
//! one of the Python worker.

use crate::contract::{ErrorCategory, JobError};
use serde_json::{Map, Value};

use super::time::now_isoformat as now_iso;

/// The keys of the Python `JobError` dataclass, in declaration order.
const KEYS: [&str; 11] = [
    "category",
    "message",
    "retriable",
    "original_exc_repr",
    "traceback",
    "retry_after_seconds",
    "fields_invalid",
    "resource_shortfall",
    "capability_name",
    "capability_instance_id",
    "occurred_at",
];

/// `error` with every key of the Python dataclass present (nulls included) and in its
/// order, then any extra keys the error carries. Unset `capability_name` and `occurred_at`
/// are stamped with `capability` and now; an empty `original_exc_repr` becomes the repr of
/// the Python exception class of the same category (`CapabilityInputError('bad text')`), the
/// form Python hosts inspect.
pub fn wire_job_error(error: &JobError, capability: &str) -> Value {
    let mut error = error.clone();
    error
        .capability_name
        .get_or_insert_with(|| capability.to_owned());
    error.occurred_at.get_or_insert_with(now_iso);
    if error.original_exc_repr.is_empty() {
        error.original_exc_repr = format!(
            "{}({})",
            exception_class(error.category),
            py_str_repr(&error.message)
        );
    }
    let mut given = match serde_json::to_value(&error) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let mut out = Map::with_capacity(KEYS.len() + given.len());
    for key in KEYS {
        out.insert(key.to_owned(), given.remove(key).unwrap_or(Value::Null));
    }
    out.extend(given);
    Value::Object(out)
}

/// The job error of a call that observed a cancellation, as the Python worker reports it on
/// a stream (`CapabilityCancelledError`: transient, not retriable).
pub fn cancelled_job_error(capability: &str) -> JobError {
    let message = cancelled_message(capability);
    JobError::transient(message.clone())
        .with_retriable(false)
        .with_repr(format!(
            "CapabilityCancelledError({})",
            py_str_repr(&message)
        ))
}

/// The message of a cancelled call: `Capability 'x' cancelled by operator`.
pub fn cancelled_message(capability: &str) -> String {
    format!("Capability '{capability}' cancelled by operator")
}

/// The cjm-substrate exception class whose category is `category`.
fn exception_class(category: ErrorCategory) -> &'static str {
    match category {
        ErrorCategory::UserInput => "CapabilityInputError",
        ErrorCategory::Transient => "CapabilityTransientError",
        ErrorCategory::Resource => "CapabilityResourceError",
        ErrorCategory::Fatal => "CapabilityFatalError",
    }
}

/// Python's `repr(str)`: single quotes unless the text has a single quote and no double
/// quote, backslash escapes for the quote, `\`, `\n`, `\r`, `\t` and `\xNN` for other
/// non-printable characters below U+00A1.
pub fn py_str_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr()` of a list of strings: `['a', 'b']`.
pub fn py_list_repr(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| py_str_repr(s)).collect();
    format!("[{}]", inner.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn all_keys_in_python_order_with_nulls() {
        let e = JobError::user_input("bad text").with_fields(["text"]);
        let v = wire_job_error(&e, "echo");
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, KEYS);
        assert_eq!(v["original_exc_repr"], "CapabilityInputError('bad text')");
        assert_eq!(v["fields_invalid"], json!(["text"]));
        assert_eq!(v["traceback"], Value::Null);
        assert_eq!(v["capability_name"], "echo");
        assert!(v["occurred_at"].as_str().unwrap().ends_with("+00:00"));
        let r = JobError::resource("out of VRAM")
            .with_shortfall("gpu_vram_mb", 4096.0, 1024.0)
            .with_repr("OomError");
        let v = wire_job_error(&r, "echo");
        assert_eq!(v["original_exc_repr"], "OomError");
        assert_eq!(
            crate::python::wire::to_spaced_ascii(&v["resource_shortfall"]).unwrap(),
            r#"{"resource": "gpu_vram_mb", "needed": 4096.0, "available": 1024.0}"#
        );
    }

    #[test]
    fn cancellation_reads_as_the_python_exception() {
        let e = cancelled_job_error("cjm-capability-echo");
        let v = wire_job_error(&e, "cjm-capability-echo");
        assert_eq!(v["category"], "transient");
        assert_eq!(v["retriable"], false);
        assert_eq!(
            v["original_exc_repr"],
            r#"CapabilityCancelledError("Capability 'cjm-capability-echo' cancelled by operator")"#
        );
    }

    #[test]
    fn reprs() {
        assert_eq!(py_str_repr("a\\b\n"), r"'a\\b\n'");
        assert_eq!(py_str_repr(r#"it's "x""#), r#"'it\'s "x"'"#);
        assert_eq!(
            py_list_repr(&["echo".into(), "sentence_segmentation".into()]),
            "['echo', 'sentence_segmentation']"
        );
    }
}
