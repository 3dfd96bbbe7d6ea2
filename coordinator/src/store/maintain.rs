//! The maintenance pass of the store ([`Store::maintain`](super::Store::maintain)):
//! deleting join tokens and revoked nodes whose retention has passed.
//!
//! Tokens that expired, were used up or were revoked are kept for a while so
//! `tokens list` and the audit log can still be read against them; then the
//! row (and the secret's hash) goes. A revoked node keeps its row, and so its
//! UNIQUE overlay addresses, name and key, for a grace period: an address is
//! not handed to another node soon after a revocation, so flow logs and
//! firewall records stay unambiguous. Deleting the row frees them for
//! enrollment (lowest free address, see [`super::alloc`]).
//!
//! The queries are expanded into each backend by `maintain_tx`; how the
//! pass runs once across coordinators is the backend's `maintenance()`
//! transaction (see `super::sql`).

use std::time::Duration;

use segmesh_config::NodeName;

use super::UnixTime;

/// The most rows of each kind one pass deletes. A pass holds the writer
/// lock; a bounded batch keeps enrollments and admin changes from waiting
/// long behind a large backlog. The next pass continues (see
/// [`MaintenanceReport::more`]).
pub const BATCH: i64 = 500;

/// The audit-log actor of the pass.
pub const ACTOR: &str = "maintenance";

/// How long ended rows are kept before the pass deletes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Expired (from `expires_at`), used-up or revoked join tokens.
    pub tokens: Duration,
    /// Revoked nodes, counted from their first revocation.
    pub revoked_nodes: Duration,
}

impl Retention {
    /// Tokens that ended at or before this time are deleted.
    pub fn token_cutoff(&self, now: UnixTime) -> UnixTime {
        cutoff(now, self.tokens)
    }

    /// Nodes revoked at or before this time are deleted.
    pub fn node_cutoff(&self, now: UnixTime) -> UnixTime {
        cutoff(now, self.revoked_nodes)
    }
}

fn cutoff(now: UnixTime, keep: Duration) -> UnixTime {
    now.saturating_sub(i64::try_from(keep.as_secs()).unwrap_or(i64::MAX))
}

/// What one pass deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Ids of the deleted tokens, ascending.
    pub tokens: Vec<i64>,
    /// The deleted (revoked) nodes, whose addresses are free again.
    pub nodes: Vec<NodeName>,
    /// A batch was full: more may be due, and the next pass continues.
    pub more: bool,
}

impl MaintenanceReport {
    /// Whether the pass deleted nothing.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.nodes.is_empty()
    }
}

/// Expands to `maintain_tx`, the pass's deletions inside the transaction
/// the backend opened for it (written once for both backends, like
/// [`super::sql_rows`]).
macro_rules! maintain_tx {
    () => {
        /// Deletes the tokens and revoked nodes past `retention` (at most
        /// [`BATCH`](crate::store::maintain::BATCH) of each) and audits
        /// that: one `token.purge` entry listing the token ids, one
        /// `node.reclaim` entry per node with the addresses it freed (what
        /// an address's history is looked up by). Netmap rows cascade.
        async fn maintain_tx(
            tx: &mut Tx,
            now: UnixTime,
            retention: &$crate::store::maintain::Retention,
        ) -> Result<$crate::store::maintain::MaintenanceReport, StoreError> {
            use $crate::store::maintain::{ACTOR, BATCH, MaintenanceReport};
            let change = Change::new(ACTOR, now);
            let token_cutoff = retention.token_cutoff(now);
            let mut tokens = sqlx::query(
                "DELETE FROM tokens WHERE id IN (SELECT id FROM tokens \
                 WHERE expires_at <= $1 OR ended_at <= $1 ORDER BY id LIMIT $2) \
                 RETURNING id",
            )
            .bind(token_cutoff)
            .bind(BATCH)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|r| sqlx::Row::try_get::<i64, _>(r, "id"))
            .collect::<Result<Vec<i64>, _>>()?;
            tokens.sort_unstable();
            if !tokens.is_empty() {
                let details = serde_json::json!({
                    "tokens": tokens, "ended_before": token_cutoff,
                });
                audit_tx(tx, "token.purge", &details, &change).await?;
            }

            let revoked = sqlx::query(
                "SELECT * FROM nodes WHERE revoked = TRUE AND revoked_at <= $1 \
                 ORDER BY id LIMIT $2",
            )
            .bind(retention.node_cutoff(now))
            .bind(BATCH)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(node_row)
            .collect::<Result<Vec<NodeRecord>, _>>()?;
            let mut nodes = Vec::with_capacity(revoked.len());
            for n in revoked {
                sqlx::query("DELETE FROM nodes WHERE id = $1")
                    .bind(n.id)
                    .execute(&mut **tx)
                    .await?;
                let details = serde_json::json!({
                    "node": n.name, "id": n.id, "public_key": n.public_key,
                    "addresses": [n.addr_v4.to_string(), n.addr_v6.to_string()],
                    "revoked_at": n.revoked_at,
                });
                audit_tx(tx, "node.reclaim", &details, &change).await?;
                nodes.push(n.name);
            }
            let full = |n: usize| i64::try_from(n).is_ok_and(|n| n >= BATCH);
            Ok(MaintenanceReport {
                more: full(tokens.len()) || full(nodes.len()),
                tokens,
                nodes,
            })
        }
    };
}
pub(super) use maintain_tx;
