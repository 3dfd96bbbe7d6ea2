//! The maintenance driver: runs the store's maintenance pass
//! ([`Store::maintain`]: ended join tokens deleted, revoked nodes' addresses
//! reclaimed) every interval for as long as the coordinator runs.
//!
//! Every coordinator runs this loop. With a shared PostgreSQL store the
//! store makes one pass run at a time across all of them (an advisory lock
//! taken without waiting: the others skip that round), and each
//! coordinator's jitter keeps coordinators started together from trying at
//! the same moment every time. A failed pass (database down) is logged and
//! tried again at the next interval; nothing is lost by skipping a round.
//!
//! Nothing is pushed after a pass: a deleted node was revoked, so no netmap
//! lists it and the distributor holds no slot for it (revocation removed
//! both), and acks still queued for it match no row and are skipped.

use std::sync::Arc;
use std::time::Duration;

use rand_core::{OsRng, RngCore as _};

use crate::clock::Clock;
use crate::store::{MaintenanceReport, Retention, Store};

/// When passes run and what they delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Between passes, before jitter; more than zero.
    pub interval: Duration,
    pub retention: Retention,
}

/// Runs a round every interval (plus jitter) until the task is dropped.
pub async fn run(store: Arc<dyn Store>, clock: Arc<dyn Clock>, schedule: Schedule) {
    loop {
        tokio::time::sleep(jittered(schedule.interval, OsRng.next_u64())).await;
        round(store.as_ref(), clock.as_ref(), &schedule.retention).await;
    }
}

/// `interval` plus up to a tenth of it, picked by `random`.
pub fn jittered(interval: Duration, random: u64) -> Duration {
    let spread = u64::try_from(interval.as_millis() / 10).unwrap_or(u64::MAX);
    let extra = random.checked_rem(spread.saturating_add(1)).unwrap_or(0);
    interval.saturating_add(Duration::from_millis(extra))
}

/// One round: passes until no batch was full (each pass is its own
/// transaction, so writers get in between), one log line for what was
/// deleted and one warning if a pass failed. Returns what was deleted.
pub async fn round(
    store: &dyn Store,
    clock: &dyn Clock,
    retention: &Retention,
) -> MaintenanceReport {
    let mut total = MaintenanceReport::default();
    loop {
        match store.maintain(clock.now().unix, retention).await {
            Ok(Some(report)) => {
                total.tokens.extend(report.tokens);
                total.nodes.extend(report.nodes);
                if !report.more {
                    break;
                }
            }
            Ok(None) => {
                tracing::debug!("maintenance: another coordinator is running the pass");
                break;
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "maintenance pass failed; trying again at the next interval"
                );
                break;
            }
        }
    }
    if !total.is_empty() {
        tracing::info!(
            tokens = total.tokens.len(),
            nodes = total.nodes.len(),
            "maintenance: deleted ended join tokens and reclaimed revoked nodes"
        );
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_tenth() {
        let i = Duration::from_secs(60);
        assert_eq!(jittered(i, 0), i);
        assert_eq!(jittered(i, 6_000), i + Duration::from_secs(6));
        assert_eq!(jittered(i, 6_001), i);
        for r in [1, 999, u64::MAX] {
            let j = jittered(i, r);
            assert!(j >= i && j <= i + Duration::from_secs(6), "{j:?}");
        }
        let tiny = Duration::from_millis(5);
        assert_eq!(jittered(tiny, 12345), tiny, "nothing to spread");
        assert!(jittered(Duration::MAX, u64::MAX) >= Duration::MAX);
    }
}
