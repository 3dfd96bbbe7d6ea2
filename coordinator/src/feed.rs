//! The change feed between coordinators sharing one PostgreSQL database:
//! LISTEN on the store's channel and run [`Distributor::sync`] whenever
//! another coordinator recorded netmaps. No polling: a notification is the
//! trigger, and a (re)connected listener syncs once for whatever it may
//! have missed while it was not listening.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::distribute::Distributor;
use crate::store::postgres::PgStore;

/// Longest wait between attempts to (re)open the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Follows the feed until the task is dropped. Errors are logged and
/// retried with backoff: a coordinator without its feed still serves the
/// nodes connected to it, just without other coordinators' changes.
pub async fn follow(store: PgStore, dist: Arc<Distributor>, clock: Arc<dyn Clock>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match store.listen().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "change feed: cannot listen");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        tracing::info!("change feed: listening");
        backoff = Duration::from_millis(100);
        sync(&dist, clock.as_ref()).await;
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    // Coalesce a burst into one sync; skip our own.
                    let mut foreign = n.payload() != store.instance();
                    while let Some(more) = listener.next_buffered() {
                        foreign |= more.payload() != store.instance();
                    }
                    if foreign {
                        sync(&dist, clock.as_ref()).await;
                    }
                }
                // The connection dropped. Notifications in between are
                // lost: listen afresh, then catch up with one sync.
                Ok(None) => {
                    tracing::warn!("change feed: connection lost, reconnecting");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "change feed: listener failed");
                    break;
                }
            }
        }
    }
}

async fn sync(dist: &Distributor, clock: &dyn Clock) {
    match dist.sync(clock.now().instant).await {
        Ok(pushed) if !pushed.is_empty() => {
            tracing::info!(
                nodes = pushed.len(),
                "change feed: netmaps updated from the store"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "change feed: cannot sync from the store"),
    }
}
