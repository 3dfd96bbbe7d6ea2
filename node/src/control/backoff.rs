//! Reconnect backoff: exponential with full jitter, so a coordinator restart
//! is not followed by every node reconnecting in the same instant. Sans-IO:
//! the random value is an argument.

use std::time::Duration;

/// Backoff state for one connection.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    base: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            attempt: 0,
            base,
            cap,
        }
    }

    /// The delay before the next attempt: uniform in [ceiling/2, ceiling]
    /// where ceiling = min(cap, base * 2^attempt); `random` is any u64.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        let ceiling = exp.min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let span = u64::try_from((ceiling - half).as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(if span == 0 { 0 } else { random % (span + 1) })
    }

    /// A connection succeeded: start over.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_jitters_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let d0 = b.next_delay(0);
        assert_eq!(d0, Duration::from_millis(250));
        let d1 = b.next_delay(u64::MAX);
        assert!(
            d1 >= Duration::from_millis(500) && d1 <= Duration::from_secs(1),
            "{d1:?}"
        );
        for _ in 0..30 {
            assert!(b.next_delay(12345) <= Duration::from_secs(30));
        }
        assert!(b.next_delay(0) >= Duration::from_secs(15));
        b.reset();
        assert!(b.next_delay(7) <= Duration::from_millis(500));
    }
}
