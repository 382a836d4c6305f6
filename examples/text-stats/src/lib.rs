//! `text-stats`: counts characters, words, lines and the most frequent words of a text.
//!
//! Config: `case_sensitive` (whether `The` and `the` are one word) and `top_n` (how many
//! frequent words to report). Execute with `text=...`, or call task `text_statistics`
//! method `compute_stats(text, **kwargs)`.

use std::collections::HashMap;

use cjm_guest::{CallResult, Capability, Ctx, JobError, Kwargs, Tasks, args};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The keyword arguments of `compute_stats` (more are accepted and ignored).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ComputeArgs {
    /// The text to count.
    pub text: String,
}

/// Configuration of `text-stats`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TextStatsConfig {
    /// Count `The` and `the` as different words.
    pub case_sensitive: bool,
    /// How many of the most frequent words to report.
    #[schemars(range(min = 0, max = 100))]
    pub top_n: u32,
}

impl Default for TextStatsConfig {
    fn default() -> Self {
        TextStatsConfig {
            case_sensitive: false,
            top_n: 3,
        }
    }
}

/// The capability.
pub struct TextStats {
    config: TextStatsConfig,
}

impl TextStats {
    /// The statistics of `text` under this configuration.
    pub fn stats(&self, text: &str) -> Value {
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut words = 0u64;
        for word in text
            .split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|w| !w.is_empty())
        {
            words += 1;
            let key = if self.config.case_sensitive {
                word.to_owned()
            } else {
                word.to_lowercase()
            };
            *counts.entry(key).or_default() += 1;
        }
        let unique_words = counts.len();
        let mut top: Vec<(String, u64)> = counts.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(self.config.top_n as usize);
        json!({
            "chars": text.chars().count(),
            "words": words,
            "lines": text.lines().count(),
            "unique_words": unique_words,
            "top_words": top.into_iter().map(|(w, n)| json!([w, n])).collect::<Vec<_>>(),
        })
    }

    /// Folds many results into one: every keyword argument that is a `text-stats` result
    /// (has `words`) is summed (`top_words` merged by count), and every sentence-split result
    /// (has `spans`) adds its sentence count. What a fan-in node of a composition calls.
    pub fn merge(&self, parts: &Kwargs) -> Value {
        let (mut chars, mut words, mut lines, mut sentences, mut n) = (0u64, 0u64, 0u64, 0u64, 0);
        let mut top: HashMap<String, u64> = HashMap::new();
        for part in parts.values() {
            // A typed wire result (`{"__wire__": ..., "data": ...}`) is read through its data.
            let part = match part.get("__wire__") {
                Some(_) => part.get("data").unwrap_or(part),
                None => part,
            };
            if let Some(w) = part.get("words").and_then(Value::as_u64) {
                n += 1;
                words += w;
                chars += part.get("chars").and_then(Value::as_u64).unwrap_or(0);
                lines += part.get("lines").and_then(Value::as_u64).unwrap_or(0);
                for pair in part
                    .get("top_words")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let (Some(word), Some(count)) = (pair[0].as_str(), pair[1].as_u64()) {
                        *top.entry(word.to_owned()).or_default() += count;
                    }
                }
            }
            if let Some(spans) = part.get("spans").and_then(Value::as_array) {
                sentences += spans.len() as u64;
            }
        }
        let mut top: Vec<(String, u64)> = top.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(self.config.top_n as usize);
        json!({
            "parts": n,
            "chars": chars,
            "words": words,
            "lines": lines,
            "sentences": sentences,
            "top_words": top.into_iter().map(|(w, n)| json!([w, n])).collect::<Vec<_>>(),
        })
    }

    fn merge_stats(&mut self, cx: &Ctx<'_>, kwargs: Kwargs) -> CallResult {
        cx.progress(1.0, "merged");
        Ok(self.merge(&kwargs))
    }

    fn compute(&mut self, cx: &Ctx<'_>, kwargs: Kwargs) -> CallResult {
        let ComputeArgs { text } = args(&kwargs)?;
        cx.progress(1.0, "counted");
        Ok(self.stats(&text))
    }
}

impl Capability for TextStats {
    type Config = TextStatsConfig;
    const NAME: &'static str = "text-stats";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "Character, word and line counts with the most frequent words";

    fn initialize(config: &TextStatsConfig, _: &Ctx<'_>) -> Result<Self, JobError> {
        Ok(TextStats {
            config: config.clone(),
        })
    }

    fn execute(&mut self, cx: &Ctx<'_>, args: Vec<Value>, mut kwargs: Kwargs) -> CallResult {
        // `execute("some text")` works as `execute(text="some text")`.
        if let Some(first) = args.into_iter().next() {
            kwargs.entry("text").or_insert(first);
        }
        self.compute(cx, kwargs)
    }

    fn tasks(tasks: &mut Tasks<Self>) {
        // Typed: the host checks `text` is a string before the call reaches the guest, and
        // MCP clients see its schema.
        tasks.typed::<ComputeArgs>("text_statistics", "compute_stats", Self::compute);
        tasks.method(
            "text_statistics",
            "merge_stats",
            &["**kwargs"],
            Self::merge_stats,
        );
    }
}

cjm_guest::export_capability!(TextStats);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_sensitivity_changes_the_top_words() {
        let text = "The cat saw the dog. THE end";
        let insensitive = TextStats {
            config: TextStatsConfig::default(),
        }
        .stats(text);
        assert_eq!(insensitive["top_words"][0], json!(["the", 3]));
        assert_eq!(insensitive["words"], 7);
        let sensitive = TextStats {
            config: TextStatsConfig {
                case_sensitive: true,
                top_n: 1,
            },
        }
        .stats(text);
        assert_eq!(sensitive["top_words"], json!([["THE", 1]]));
    }
}
