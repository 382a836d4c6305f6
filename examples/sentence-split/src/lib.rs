//! `sentence-split`: a sentence segmenter built on Wikimedia's `sentencex`.
//!
//! Task `sentence_segmentation`, method `segment_text(text, **kwargs)`, answers in the very
//! shape the Python pySBD capability of the cjm ecosystem does: sentence spans as Unicode
//! code point offsets over the original text, trimmed to non-whitespace, wrapped as
//! `{"__wire__": "sentence_segmentation.result", "data": {"spans": [...], "metadata": {...}}}`.

use cjm_guest::{CallResult, Capability, Ctx, JobError, Kwargs, Tasks, arg, opt_arg, wire};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The wire kind of a segmentation result.
pub const RESULT_KIND: &str = "sentence_segmentation.result";

/// Configuration of `sentence-split`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SentenceSplitConfig {
    /// ISO 639-1 language code of the text (`en`, `de`, `fr`, ...).
    pub language: String,
}

impl Default for SentenceSplitConfig {
    fn default() -> Self {
        SentenceSplitConfig {
            language: "en".to_owned(),
        }
    }
}

/// A sentence span in Unicode code points, end exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// First code point of the sentence.
    pub start_char: usize,
    /// One past its last code point.
    pub end_char: usize,
}

/// Segments `text` into sentence spans over the original text, trimmed to non-whitespace.
pub fn segment(language: &str, text: &str) -> Vec<Span> {
    let mut spans = Vec::new();
    // Byte cursor into `text` and the code point count up to it: offsets are computed in one
    // forward pass, never by rescanning from the start.
    let (mut cursor, mut chars_before) = (0usize, 0usize);
    for sentence in sentencex::segment(language, text) {
        let piece = sentence.trim();
        if piece.is_empty() {
            continue;
        }
        let Some(found) = text[cursor..].find(piece) else {
            continue;
        };
        let start = cursor + found;
        let end = start + piece.len();
        let start_char = chars_before + text[cursor..start].chars().count();
        let end_char = start_char + piece.chars().count();
        spans.push(Span {
            start_char,
            end_char,
        });
        cursor = end;
        chars_before = end_char;
    }
    spans
}

/// The capability.
pub struct SentenceSplit {
    language: String,
}

impl SentenceSplit {
    fn segment_text(&mut self, _: &Ctx<'_>, kwargs: Kwargs) -> CallResult {
        let text: String = arg(&kwargs, "text")?;
        let language =
            opt_arg::<String>(&kwargs, "language")?.unwrap_or_else(|| self.language.clone());
        let spans = segment(&language, &text);
        Ok(wire(
            RESULT_KIND,
            json!({
                "spans": spans,
                "metadata": {"sentence_count": spans.len(), "language": language},
            }),
        ))
    }
}

impl Capability for SentenceSplit {
    type Config = SentenceSplitConfig;
    const NAME: &'static str = "sentence-split";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Sentence segmentation (sentencex) with code point spans";

    fn initialize(config: &SentenceSplitConfig, _: &Ctx<'_>) -> Result<Self, JobError> {
        if config.language.is_empty() {
            return Err(
                JobError::user_input("language must not be empty").with_fields(["language"])
            );
        }
        Ok(SentenceSplit {
            language: config.language.clone(),
        })
    }

    fn execute(&mut self, cx: &Ctx<'_>, args: Vec<Value>, mut kwargs: Kwargs) -> CallResult {
        if let Some(first) = args.into_iter().next() {
            kwargs.entry("text").or_insert(first);
        }
        self.segment_text(cx, kwargs)
    }

    fn tasks(tasks: &mut Tasks<Self>) {
        tasks.method(
            "sentence_segmentation",
            "segment_text",
            &["text", "**kwargs"],
            Self::segment_text,
        );
    }
}

cjm_guest::export_capability!(SentenceSplit);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_code_points_trimmed_to_non_whitespace() {
        let text = "  Héllo wörld. Dr. Smith arrived.  Ünïcode ends here!  ";
        let spans = segment("en", text);
        let chars: Vec<char> = text.chars().collect();
        let sentences: Vec<String> = spans
            .iter()
            .map(|s| chars[s.start_char..s.end_char].iter().collect())
            .collect();
        assert_eq!(
            sentences,
            ["Héllo wörld.", "Dr. Smith arrived.", "Ünïcode ends here!"]
        );
    }
}
