//! Supervision of a native worker: a worker that dies on its own (at start or later) is
//! respawned after an exponential backoff with jitter, and one that dies
//! [`CRASH_LIMIT`] times within [`CRASH_WINDOW`] is a crash loop: the backend is marked
//! failed (journaled, reported by `health`) and spawns nothing more until it is reloaded.
//! A worker the host kills itself (a deadline, a forced cancel, an unload) is not a death
//! here.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Deaths within [`CRASH_WINDOW`] that make a crash loop.
pub const CRASH_LIMIT: usize = 5;
/// The window deaths are counted in.
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// The delay before the first respawn after a death; it doubles with each further death.
const BASE_BACKOFF: Duration = Duration::from_millis(250);
/// The longest delay before a respawn.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What to do before the next spawn.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NextSpawn {
    /// Spawn now.
    Now,
    /// Spawn after `delay` (the `attempt`-th respawn within the window).
    After {
        /// Respawns within the window so far, this one included.
        attempt: usize,
        /// How long to wait first.
        delay: Duration,
    },
    /// The worker crash-loops: spawn nothing (`newly` the first time this is said).
    Failed {
        /// Why, for the error and the journal.
        why: String,
        /// Whether the loop was detected just now.
        newly: bool,
    },
}

/// The deaths of one backend's workers.
#[derive(Debug, Default)]
pub(crate) struct Supervision {
    deaths: VecDeque<Instant>,
    failed: Option<String>,
}

impl Supervision {
    /// A worker died on its own.
    pub(crate) fn death(&mut self) {
        self.deaths.push_back(Instant::now());
    }

    /// Whether the backend gave up on its worker.
    pub(crate) fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Decides the next spawn from the deaths within the window; `jitter` in `0..1` spreads
    /// the delay by up to ±20 %.
    pub(crate) fn next_spawn(&mut self, name: &str, jitter: f64) -> NextSpawn {
        if let Some(why) = &self.failed {
            return NextSpawn::Failed {
                why: why.clone(),
                newly: false,
            };
        }
        let now = Instant::now();
        while self
            .deaths
            .front()
            .is_some_and(|d| now.duration_since(*d) > CRASH_WINDOW)
        {
            self.deaths.pop_front();
        }
        let n = self.deaths.len();
        if n >= CRASH_LIMIT {
            let why = format!(
                "capability '{name}' is crash-looping: its worker died {n} times within {}s; \
                 reload it (or fix its environment) to try again",
                CRASH_WINDOW.as_secs()
            );
            self.failed = Some(why.clone());
            return NextSpawn::Failed { why, newly: true };
        }
        if n == 0 {
            return NextSpawn::Now;
        }
        let exp = u32::try_from(n - 1).unwrap_or(u32::MAX).min(16);
        let delay = BASE_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF);
        let spread = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        NextSpawn::After {
            attempt: n,
            delay: delay.mul_f64(spread),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_the_loop_is_detected_once() {
        let mut s = Supervision::default();
        assert_eq!(s.next_spawn("w", 0.5), NextSpawn::Now);
        let mut delays = Vec::new();
        for _ in 0..CRASH_LIMIT - 1 {
            s.death();
            match s.next_spawn("w", 0.5) {
                NextSpawn::After { delay, .. } => delays.push(delay),
                other => panic!("{other:?}"),
            }
        }
        assert!(delays.windows(2).all(|w| w[1] > w[0]), "{delays:?}");
        s.death();
        assert!(matches!(
            s.next_spawn("w", 0.5),
            NextSpawn::Failed { newly: true, .. }
        ));
        assert!(matches!(
            s.next_spawn("w", 0.5),
            NextSpawn::Failed { newly: false, .. }
        ));
        assert!(s.failed().unwrap().contains("crash-looping"));
    }
}
