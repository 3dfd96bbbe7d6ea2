//! Waiting for conditions with a deadline instead of sleeping blindly.

use std::time::{Duration, Instant};

/// Polls `cond` every 50 ms until it returns `Some`, or panics after
/// `timeout` naming `what`.
#[allow(clippy::disallowed_methods)] // tests wait in real time
pub fn wait_until<T>(timeout: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
