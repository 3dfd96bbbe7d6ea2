//! The injected clock: handlers and the distributor take `Now` values, so
//! tests can drive time and no core code reads the system clock.

use std::time::Instant;

use crate::store::UnixTime;

/// A moment, as both a monotonic instant (latencies) and wall-clock unix
/// seconds (expiry, audit).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub unix: UnixTime,
}

/// Source of [`Now`].
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Now;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place the coordinator reads the clock
    fn now(&self) -> Now {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Now {
            instant: Instant::now(),
            unix,
        }
    }
}

/// A clock whose unix time is set by hand while its instant stays real
/// (tests: token expiry without sleeping).
#[derive(Debug, Default)]
pub struct ManualUnixClock(pub std::sync::atomic::AtomicI64);

impl ManualUnixClock {
    pub fn new(unix: UnixTime) -> Self {
        Self(std::sync::atomic::AtomicI64::new(unix))
    }

    /// Moves the wall clock forward.
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualUnixClock {
    #[allow(clippy::disallowed_methods)] // latency measurement stays real
    fn now(&self) -> Now {
        Now {
            instant: Instant::now(),
            unix: self.0.load(std::sync::atomic::Ordering::SeqCst),
        }
    }
}
