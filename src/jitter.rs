//! Jitter for retry backoffs: a wait drawn at random between half of the backoff and
//! all of it ("equal jitter"), so that the clients that failed together (every notifier
//! of an outage, every replica after an API server restart) do not all try again at the
//! same moment, and no wait is longer than the backoff it comes from.
//!
//! It only draws numbers (fastrand); it sleeps nothing and decides no backoff.

use std::time::Duration;

/// A wait between `backoff / 2` and `backoff`, uniformly.
pub fn jitter(backoff: Duration) -> Duration {
    let half = backoff / 2;
    let spread = u64::try_from((backoff - half).as_micros()).unwrap_or(u64::MAX);
    half + Duration::from_micros(fastrand::u64(0..=spread))
}

#[cfg(test)]
mod tests {
    use super::jitter;
    use std::time::Duration;

    #[test]
    fn a_jittered_wait_lies_between_half_the_backoff_and_all_of_it_and_varies() {
        let backoff = Duration::from_secs(8);
        let waits: Vec<Duration> = (0..1000).map(|_| jitter(backoff)).collect();
        assert!(
            waits.iter().all(|w| *w >= backoff / 2 && *w <= backoff),
            "{waits:?}"
        );
        let (low, high) = (
            waits
                .iter()
                .filter(|w| **w < Duration::from_secs(5))
                .count(),
            waits
                .iter()
                .filter(|w| **w > Duration::from_secs(7))
                .count(),
        );
        assert!(
            low > 100 && high > 100,
            "not spread: {low} low, {high} high"
        );
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        assert!(jitter(Duration::MAX) >= Duration::MAX / 2);
    }
}
