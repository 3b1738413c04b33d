//! The relay's retry policy: batch size, attempts, and exponential backoff with jitter between
//! `initial` and `max` (`relay:`; routes and destinations may override attempts and backoff).

use std::time::Duration;

use crate::config::RelayConfig;

#[derive(Debug, Clone)]
pub struct RelayPolicy {
    pub batch_size: usize,
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub max_age: Option<Duration>,
}

impl RelayPolicy {
    pub fn from_config(c: &RelayConfig) -> Self {
        Self {
            batch_size: c.batch_size,
            max_attempts: c.max_attempts,
            backoff_initial: c.backoff.initial.get(),
            backoff_max: c.backoff.max.get(),
            max_age: c.max_age.map(|d| d.get()),
        }
    }

    /// Delay after the `attempt`-th failure (1-based): the ceiling doubles per attempt from
    /// `initial` up to `max`, and the delay is drawn uniformly between `initial` and that
    /// ceiling, so that events that failed together do not retry together.
    /// `backoff_ms` is a route's or destination's (initial, max) override.
    pub fn delay(&self, attempt: u32, backoff_ms: Option<(u64, u64)>) -> Duration {
        let (initial, max) = match backoff_ms {
            Some((i, m)) => (Duration::from_millis(i), Duration::from_millis(m)),
            None => (self.backoff_initial, self.backoff_max),
        };
        let doublings = attempt.saturating_sub(1).min(31);
        let ceiling = initial.saturating_mul(1u32 << doublings).min(max);
        let floor = initial.min(ceiling);
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
            max_age: None,
        };
        for _ in 0..100 {
            assert_eq!(p.delay(1, None), Duration::from_secs(1));
            let d3 = p.delay(3, None);
            assert!(d3 >= Duration::from_secs(1) && d3 <= Duration::from_secs(4), "{d3:?}");
            let d40 = p.delay(40, None);
            assert!(d40 >= Duration::from_secs(1) && d40 <= Duration::from_secs(60), "{d40:?}");
            let own = p.delay(5, Some((10, 50)));
            assert!(own >= Duration::from_millis(10) && own <= Duration::from_millis(50));
        }
    }
}
