//! Bounds on what callers hand the host: how deep JSON may nest, how large it is, how many
//! seconds a caller may ask for. Every entry point that takes JSON values from a caller (the
//! manager's calls, queue submissions, compositions; the command line and the HTTP API parse
//! with serde_json, whose parser stops a whole document at [`MAX_DOCUMENT_DEPTH`]) checks
//! them, so no input can exhaust a thread's stack or the host's memory. The walks here are
//! iterative: checking a hostile value cannot overflow either.

use cjm_guest::contract::JobError;
use serde_json::Value;

/// The longest time a caller may give, in seconds (a job's timeout, a grace period): about
/// 31 years.
pub const MAX_SECONDS: f64 = 1e9;

/// `secs` as a duration when it is a finite number of seconds from 0 (above 0 when
/// `positive`) to [`MAX_SECONDS`]; else what it must be, to follow the value's name.
pub fn seconds(secs: f64, positive: bool) -> Result<std::time::Duration, String> {
    let low = if positive { secs > 0.0 } else { secs >= 0.0 };
    if secs.is_finite() && low && secs <= MAX_SECONDS {
        return Ok(std::time::Duration::from_secs_f64(secs));
    }
    Err(format!(
        "must be a {}number of seconds, at most {MAX_SECONDS:e}",
        if positive { "positive " } else { "" }
    ))
}

/// How deep kwargs and arguments may nest. Below serde_json's own parsing limit
/// ([`MAX_DOCUMENT_DEPTH`]) by enough for what wraps them (a request body, a journal row and
/// the API answer that carries it), so the typed error is what a caller past it sees, and
/// every document that carries accepted kwargs parses again.
pub const MAX_JSON_DEPTH: usize = 100;

/// How deep a whole JSON document may nest: serde_json's parsing limit.
pub const MAX_DOCUMENT_DEPTH: usize = 128;

/// Refuses `value` (named `what` in the error) when it nests deeper than [`MAX_JSON_DEPTH`].
pub fn check_depth(what: &str, value: &Value) -> Result<(), JobError> {
    let mut stack: Vec<(&Value, usize)> = vec![(value, 1)];
    while let Some((v, depth)) = stack.pop() {
        if depth > MAX_JSON_DEPTH {
            return Err(JobError::user_input(format!(
                "{what} nests deeper than {MAX_JSON_DEPTH} levels"
            ))
            .with_fields([what]));
        }
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|i| (i, depth + 1))),
            _ => {}
        }
    }
    Ok(())
}

/// Drops `values` without recursion (serde_json drops nested values recursively, which a
/// hostile nesting depth turns into a stack overflow).
pub fn drop_flat(values: impl IntoIterator<Item = Value>) {
    let mut stack: Vec<Value> = values.into_iter().collect();
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

/// The size of `value` as JSON text, approximately (strings by their bytes, with quotes
/// and separators; numbers as 8), stopping as soon as it is over `limit`: `Some(size)` when
/// it is.
pub fn size_over(value: &Value, limit: usize) -> Option<usize> {
    let size = measure(value, limit);
    (size > limit).then_some(size)
}

/// The approximate size of `value` as JSON text (see [`size_over`]).
pub fn size_of(value: &Value) -> usize {
    measure(value, usize::MAX)
}

fn measure(value: &Value, limit: usize) -> usize {
    let mut size = 0usize;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        size = size.saturating_add(match v {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(_) => 8,
            Value::String(s) => s.len() + 2,
            Value::Array(items) => {
                stack.extend(items);
                2 + items.len()
            }
            Value::Object(map) => {
                stack.extend(map.values());
                2 + map.keys().map(|k| k.len() + 4).sum::<usize>()
            }
        });
        if size > limit {
            break;
        }
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(depth: usize) -> Value {
        // By hand: `json!([v])` deep-copies `v` recursively.
        let mut v = json!(1);
        for _ in 1..depth {
            v = Value::Array(vec![v]);
        }
        v
    }

    #[test]
    fn depth_is_bounded_without_recursion() {
        assert!(check_depth("kwargs", &nested(MAX_JSON_DEPTH)).is_ok());
        let e = check_depth("kwargs", &nested(MAX_JSON_DEPTH + 1)).unwrap_err();
        assert_eq!(e.fields_invalid, Some(vec!["kwargs".to_owned()]));
        // Far deeper than any stack would allow recursively.
        let deep = nested(200_000);
        assert!(check_depth("kwargs", &deep).is_err());
        drop_flat([deep]);
    }

    #[test]
    fn sizes_are_close_to_the_text() {
        let v = json!({"text": "hello", "n": [1, 2, 3], "ok": true});
        let text = v.to_string().len();
        let est = size_of(&v);
        assert!(est >= text / 2 && est <= text * 2, "{est} vs {text}");
        assert_eq!(size_over(&v, 10_000), None);
        assert!(size_over(&v, 5).is_some());
    }
}
