//! Retry policies: when a failed job runs again (never sooner than the capability's
//! `retry_after_seconds`, capped by the policy's longest delay). A job's own policy, else its capability's
//! default (`QueueConfig::retry_defaults`), else none (one attempt). A retried job keeps its
//! id; each attempt is journaled (a `running -> pending` transition carrying the attempt, the
//! delay and the error), and only the last attempt's outcome is terminal.

use std::time::Duration;

use cjm_guest::contract::{ErrorCategory, JobError};
use serde::{Deserialize, Serialize};

/// When and how often a failed job runs again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: no retry).
    pub max_attempts: u32,
    /// The delay before the first retry; it doubles with each further one.
    pub backoff_seconds: f64,
    /// The longest delay.
    pub max_backoff_seconds: f64,
    /// The error categories retried (only errors the capability marked retriable).
    pub on: Vec<ErrorCategory>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff_seconds: 1.0,
            max_backoff_seconds: 30.0,
            on: vec![ErrorCategory::Transient, ErrorCategory::Resource],
        }
    }
}

/// The most attempts a policy may ask for: a job failing fast under a larger count would fill
/// the journal with attempts.
pub const MAX_ATTEMPTS: u32 = 100;

impl RetryPolicy {
    /// Refuses a policy past the bounds: more than [`MAX_ATTEMPTS`] attempts, or a delay that
    /// is not a number of seconds of at least 0 (typed `user_input`, naming the field).
    pub fn check(&self) -> Result<(), JobError> {
        if self.max_attempts > MAX_ATTEMPTS {
            return Err(JobError::user_input(format!(
                "retry.max_attempts is {}: at most {MAX_ATTEMPTS} attempts",
                self.max_attempts
            ))
            .with_fields(["retry.max_attempts"]));
        }
        for (field, secs) in [
            ("retry.backoff_seconds", self.backoff_seconds),
            ("retry.max_backoff_seconds", self.max_backoff_seconds),
        ] {
            if !(secs.is_finite() && secs >= 0.0) {
                return Err(JobError::user_input(format!(
                    "{field} must be a number of seconds, 0 or more"
                ))
                .with_fields([field]));
            }
        }
        Ok(())
    }

    /// Whether it is the default policy (a single attempt, the default backoff and
    /// categories): a journaled spec leaves it out.
    pub(crate) fn is_default(&self) -> bool {
        *self == RetryPolicy::default()
    }

    /// Up to `max_attempts` attempts with the default backoff and categories.
    pub fn attempts(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            ..RetryPolicy::default()
        }
    }

    /// The same policy with a first delay of `backoff` (doubling, capped at 30 s unless set).
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff_seconds = backoff.as_secs_f64();
        self
    }

    /// Whether a job that failed with `error` on attempt `attempt` (1-based) runs again.
    pub fn retries(&self, error: &JobError, attempt: u32) -> bool {
        attempt < self.max_attempts && error.retriable && self.on.contains(&error.category)
    }

    /// The delay before attempt `attempt + 1`: exponential, capped, spread by ±20 % with
    /// `jitter` in `0..1`.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let base = (self.backoff_seconds * f64::from(1u32 << exp)).min(self.max_backoff_seconds);
        seconds(base * (0.8 + 0.4 * jitter.clamp(0.0, 1.0)))
    }
}

/// The longest delay a policy or a capability can ask for (a day).
const LONGEST: Duration = Duration::from_secs(24 * 3600);

/// `secs` as a delay: negative or NaN is none, anything past a day (infinity included) is a
/// day. Never panics, whatever a capability or a policy says.
pub(crate) fn seconds(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs).map_or(LONGEST, |d| d.min(LONGEST))
}

/// A number in `0..1` to spread delays with (no two hosts retry in lockstep).
pub(crate) fn jitter() -> f64 {
    f64::from(uuid::Uuid::new_v4().as_u128() as u16) / f64::from(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_retriable_errors_of_the_listed_categories_are_retried_while_attempts_remain() {
        let p = RetryPolicy::attempts(3);
        let transient = JobError::transient("later");
        assert!(p.retries(&transient, 1) && p.retries(&transient, 2));
        assert!(!p.retries(&transient, 3));
        assert!(!p.retries(&JobError::fatal("broken"), 1));
        assert!(!p.retries(&JobError::transient("no").with_retriable(false), 1));
        assert!(!p.retries(&JobError::user_input("bad"), 1));
        assert!(!RetryPolicy::default().retries(&transient, 1));
    }

    #[test]
    fn policies_past_the_bounds_are_refused_naming_the_field() {
        assert!(RetryPolicy::attempts(MAX_ATTEMPTS).check().is_ok());
        let e = RetryPolicy::attempts(u32::MAX).check().unwrap_err();
        assert_eq!(
            e.fields_invalid,
            Some(vec!["retry.max_attempts".to_owned()])
        );
        for bad in [f64::NAN, f64::INFINITY, -1.0] {
            let p = RetryPolicy {
                backoff_seconds: bad,
                ..RetryPolicy::default()
            };
            assert_eq!(
                p.check().unwrap_err().fields_invalid,
                Some(vec!["retry.backoff_seconds".to_owned()])
            );
        }
        assert!(
            RetryPolicy::default()
                .backoff(Duration::ZERO)
                .check()
                .is_ok()
        );
    }

    #[test]
    fn absurd_delays_never_panic() {
        assert_eq!(seconds(f64::NAN), Duration::ZERO);
        assert_eq!(seconds(-1.0), Duration::ZERO);
        assert_eq!(seconds(1e300), LONGEST);
        assert_eq!(seconds(f64::INFINITY), LONGEST);
        let p = RetryPolicy {
            max_backoff_seconds: f64::INFINITY,
            backoff_seconds: 1e300,
            ..RetryPolicy::attempts(3)
        };
        assert_eq!(p.delay(2, 0.5), LONGEST);
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let p = RetryPolicy::attempts(10).backoff(Duration::from_secs(1));
        let d: Vec<Duration> = (1..8).map(|a| p.delay(a, 0.5)).collect();
        assert_eq!(d[0], Duration::from_secs(1));
        assert!(d.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*d.last().unwrap(), Duration::from_secs(30));
    }
}
