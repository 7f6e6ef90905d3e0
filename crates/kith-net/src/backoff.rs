//! Jittered exponential backoff for redials and retries.

use std::time::Duration;

use rand::RngExt;

/// Doubles from `min` to `max`, and each delay is drawn uniformly from half
/// to all of the current step, so many clients that lost the same node do
/// not return in lock step.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        // A zero step would never grow: redials every millisecond.
        let min = min.max(Duration::from_millis(10));
        Self {
            min,
            max: max.max(min),
            step: min,
        }
    }

    /// The next delay; each call doubles the step up to the maximum.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let millis = u64::try_from(step.as_millis()).unwrap_or(u64::MAX).max(2);
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
    }

    /// Back to the shortest delay, after a success.
    pub(crate) fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_minimum_still_backs_off() {
        let mut backoff = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        backoff.next_delay();
        assert!(backoff.next_delay() >= Duration::from_millis(10));
    }

    #[test]
    fn grows_with_jitter_and_caps() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let delays: Vec<Duration> = (0..6).map(|_| backoff.next_delay()).collect();
        let steps = [100u64, 200, 400, 800, 800, 800];
        for (delay, step) in delays.iter().zip(steps) {
            let ms = u64::try_from(delay.as_millis()).unwrap();
            assert!((step / 2..=step).contains(&ms), "{ms} outside {step}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
