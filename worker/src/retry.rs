//! Exponential backoff with jitter for transient backend failures.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Backoff schedule: `base * 2^attempt`, capped at `max`, with up to half of it as jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max }
    }

    /// Delay before retry number `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponential = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        let half = exponential / 2;
        half + jitter(half)
    }
}

/// A pseudo-random duration in `0..=range`, taken from the clock's nanoseconds. Jitter only has
/// to spread retries of different jobs apart, so it needs no real random source.
fn jitter(range: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mixed = u64::from(nanos).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    let range_nanos = u64::try_from(range.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(mixed % range_nanos.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_grows_and_stays_capped() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..20 {
            let d = b.delay(attempt);
            let full = (Duration::from_millis(100) * 2u32.pow(attempt.min(16)))
                .min(Duration::from_secs(2));
            assert!(
                d >= full / 2,
                "attempt {attempt}: {d:?} below half of {full:?}"
            );
            assert!(d <= full, "attempt {attempt}: {d:?} above {full:?}");
        }
    }
}
