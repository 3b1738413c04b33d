//! Retry timing: exponential backoff with jitter, between `initial` and `max`.

use std::time::Duration;

use crate::config::RelayConfig;

#[derive(Debug, Clone)]
pub struct RelayPolicy {
    pub batch_size: usize,
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl RelayPolicy {
    pub fn from_config(c: &RelayConfig) -> Self {
        Self {
            batch_size: c.batch_size,
            max_attempts: c.max_attempts,
            backoff_initial: c.backoff.initial.get(),
            backoff_max: c.backoff.max.get(),
        }
    }

    /// Delay after the `attempt`-th failure (1-based): the ceiling doubles per attempt from
    /// `initial` up to `max`, and the delay is drawn uniformly between `initial` and that
    /// ceiling, so that events that failed together do not retry together.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        let ceiling =
            self.backoff_initial.saturating_mul(1u32 << doublings.min(31)).min(self.backoff_max);
        let floor = self.backoff_initial.min(ceiling);
        let span = (ceiling - floor).as_millis() as u64;
        floor + Duration::from_millis(fastrand::u64(0..=span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_within_bounds() {
        let p = RelayPolicy {
            batch_size: 1,
            max_attempts: 10,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        };
        for _ in 0..100 {
            assert_eq!(p.delay(1), Duration::from_secs(1));
            let d3 = p.delay(3);
            assert!(d3 >= Duration::from_secs(1) && d3 <= Duration::from_secs(4), "{d3:?}");
            let d40 = p.delay(40);
            assert!(d40 >= Duration::from_secs(1) && d40 <= Duration::from_secs(60), "{d40:?}");
        }
    }
}
