//! Bounds on what a guest emits: the size of each progress or log message, and a rate of log
//! records (and captured output lines) per instance. A guest that logs in a tight loop costs
//! the host a counter, not a database: records past the rate are dropped and counted, and one
//! warning record says how many.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Cuts `text` to at most `max` bytes (at a character boundary) and says how much was cut.
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    text.truncate(end);
    text.push_str(&format!(
        " …[{cut} bytes cut: the sandbox's max_message_bytes]"
    ));
    text
}

/// A token bucket of log records for one instance: `rate` per second, bursts up to one
/// second's worth.
#[derive(Debug)]
pub(crate) struct LogBudget {
    rate: f64,
    tokens: f64,
    refilled: Instant,
    /// Dropped since the last summary.
    dropped: u64,
    /// Dropped over the pool's life (the backend's stats).
    dropped_total: Arc<AtomicU64>,
}

impl LogBudget {
    pub(crate) fn new(rate: u32, dropped_total: Arc<AtomicU64>) -> Self {
        let rate = f64::from(rate.max(1));
        LogBudget {
            rate,
            tokens: rate,
            refilled: Instant::now(),
            dropped: 0,
            dropped_total,
        }
    }

    /// Whether one more record may be stored now; a refused one is counted.
    pub(crate) fn admit(&mut self) -> bool {
        if self.tokens < 1.0 {
            let now = Instant::now();
            let earned = now.duration_since(self.refilled).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + earned).min(self.rate);
            self.refilled = now;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        self.dropped += 1;
        self.dropped_total.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Records dropped since the last call (for the summary record).
    pub(crate) fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// The rate, for the summary's text.
    pub(crate) fn rate(&self) -> f64 {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_characters_whole_and_says_so() {
        assert_eq!(truncate("short".into(), 10), "short");
        let cut = truncate("ééééé".into(), 3);
        assert!(cut.starts_with('é') && !cut.starts_with("éé"), "{cut}");
        assert!(cut.contains("8 bytes cut"), "{cut}");
    }

    #[test]
    fn a_burst_past_the_rate_is_dropped_and_counted() {
        let total = Arc::new(AtomicU64::new(0));
        let mut b = LogBudget::new(10, Arc::clone(&total));
        let admitted = (0..1000).filter(|_| b.admit()).count();
        assert!((10..=11).contains(&admitted), "{admitted}");
        assert_eq!(b.take_dropped() as usize, 1000 - admitted);
        assert_eq!(b.take_dropped(), 0);
        assert_eq!(total.load(Ordering::Relaxed) as usize, 1000 - admitted);
    }
}
