//! Keeping injected secrets out of what the host records from a capability. The values the
//! host put into a worker's environment (its secret `worker_env` entries), or a wasm guest's
//! (its granted `secrets`), are replaced by `***` in every line of its output and in its log
//! records ([`MaskingSink`]); for native workers also in the errors and accounts they report
//! and in their progress messages. Results pass through verbatim: a capability that returns a
//! secret returns it to its caller, on purpose or not, and the host does not rewrite data.

use std::borrow::Cow;
use std::sync::Arc;

/// What replaces a secret value.
pub const MASK: &str = "***";

/// Values shorter than this are not masked: replacing every `a` or `42` would make output
/// unreadable and protect nothing.
const MIN_LEN: usize = 4;

/// A diagnostics sink that masks `masker`'s values in every record and line before they
/// reach `inner`.
pub struct MaskingSink {
    /// Where the masked records go.
    pub inner: Arc<dyn super::DiagnosticsSink>,
    /// What to mask.
    pub masker: Masker,
}

impl super::DiagnosticsSink for MaskingSink {
    fn record(&self, mut record: super::DiagnosticRecord) {
        record.message = self.masker.mask(&record.message).into_owned();
        if let Some(exc) = &record.exc_text {
            record.exc_text = Some(self.masker.mask(exc).into_owned());
        }
        self.inner.record(record);
    }

    fn chunk(&self, worker_session_id: &str, stream: &str, content: &str) {
        self.inner
            .chunk(worker_session_id, stream, &self.masker.mask(content));
    }

    fn scrub(&self, worker_session_id: &str, values: &[String]) {
        self.inner.scrub(worker_session_id, values);
    }
}

/// The secret values of one worker. Cheap to clone; `Debug` shows how many, never which.
#[derive(Clone, Default)]
pub struct Masker(Arc<[String]>);

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} values)", self.0.len())
    }
}

impl Masker {
    /// Masks `values` (the short ones excepted).
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = values.into_iter().filter(|v| v.len() >= MIN_LEN).collect();
        // Longest first: a secret containing another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Masker(values.into())
    }

    /// Whether there is anything to mask.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values (for a store that scrubs rows a worker wrote itself).
    pub fn values(&self) -> &[String] {
        &self.0
    }

    /// `text` with every secret value replaced by [`MASK`].
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for v in self.0.iter() {
            if out.contains(v.as_str()) {
                out = Cow::Owned(out.replace(v.as_str(), MASK));
            }
        }
        out
    }

    /// `error` with the secret values masked in its text fields.
    pub fn mask_error(&self, error: cjm_guest::JobError) -> cjm_guest::JobError {
        if self.is_empty() {
            return error;
        }
        match serde_json::to_value(&error) {
            Ok(mut value) => {
                self.mask_json(&mut value);
                serde_json::from_value(value).unwrap_or(error)
            }
            Err(_) => error,
        }
    }

    /// Masks a JSON value's strings in place (an error's fields, an account's payload).
    pub fn mask_json(&self, value: &mut serde_json::Value) {
        if self.is_empty() {
            return;
        }
        let mut stack = vec![value];
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::String(s) => {
                    if let Cow::Owned(m) = self.mask(s) {
                        *s = m;
                    }
                }
                serde_json::Value::Array(items) => stack.extend(items.iter_mut()),
                serde_json::Value::Object(map) => stack.extend(map.values_mut()),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_short_values_are_not() {
        let m = Masker::new(["sk-live-123".to_owned(), "abc".to_owned()]);
        assert_eq!(m.mask("key=sk-live-123 abc"), "key=*** abc");
        assert!(matches!(m.mask("nothing here"), Cow::Borrowed(_)));
        let mut v = serde_json::json!({"e": ["x sk-live-123 y"]});
        m.mask_json(&mut v);
        assert_eq!(v, serde_json::json!({"e": ["x *** y"]}));
        assert_eq!(format!("{m:?}"), "Masker(1 values)");
    }
}
