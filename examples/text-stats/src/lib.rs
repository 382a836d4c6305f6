//! `text-stats`: counts characters, words, lines and the most frequent words of a text.
//!
//! Config: `case_sensitive` (whether `The` and `the` are one word) and `top_n` (how many
//! frequent words to report). Execute with `text=...`, or call task `text_statistics`
//! method `compute_stats(text, **kwargs)`.

use std::collections::HashMap;

use cjm_guest::{CallResult, Capability, Ctx, JobError, Kwargs, Tasks, arg};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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

    fn compute(&mut self, cx: &Ctx<'_>, kwargs: Kwargs) -> CallResult {
        let text: String = arg(&kwargs, "text")?;
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
        tasks.method(
            "text_statistics",
            "compute_stats",
            &["text", "**kwargs"],
            Self::compute,
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
