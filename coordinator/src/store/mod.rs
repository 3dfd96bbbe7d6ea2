//! The coordinator's state behind one [`Store`] trait.
//!
//! Every method is one transaction: a change and its audit-log row commit
//! together or not at all, so a crash never leaves half an enrollment or an
//! unaudited admin change. SQLite ([`sqlite::SqliteStore`]) is the embedded
//! default; PostgreSQL ([`postgres::PgStore`]) is shared by several
//! coordinators. No method relies on in-process locking: writers are
//! serialised by the database, allocation happens inside the enrolling
//! transaction and is backed by UNIQUE constraints, and versions are
//! compared-and-set in SQL. Both backends run the same queries (`sql`).

pub mod alloc;
mod location;
pub mod maintain;
pub mod migrate;
pub mod postgres;
pub mod scratch;
mod sql;
mod sql_rows;
pub mod sqlite;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use segmesh_config::{Labels, NodeName, PublicKey};
use serde::{Deserialize, Serialize};

pub use alloc::Prefixes;
pub use location::{Opened, StoreLocation, open};
pub use maintain::{MaintenanceReport, Retention};

/// The migrations of one backend's folder under `migrations/`, in order:
/// both folders hold the same versions (the same schema in each dialect).
macro_rules! migrations {
    ($dir:literal) => {
        &[
            (
                1,
                "init",
                include_str!(concat!("../../migrations/", $dir, "/0001_init.sql")),
            ),
            (
                2,
                "retention",
                include_str!(concat!("../../migrations/", $dir, "/0002_retention.sql")),
            ),
        ]
    };
}
use migrations;

/// The embedded migrations of one backend, as a runtime [`Migrator`]
/// (sqlx's `migrate!` macro needs the `macros` feature).
///
/// [`Migrator`]: sqlx::migrate::Migrator
fn migrator(list: &[(i64, &'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr as _;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let migrations = list
        .iter()
        .map(|(v, d, sql)| {
            Migration::new(
                *v,
                (*d).into(),
                MigrationType::Simple,
                (*sql).into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

/// Unix time in seconds; the clock is injected by the caller.
pub type UnixTime = i64;

/// An enrolled node as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: i64,
    pub name: NodeName,
    pub labels: Labels,
    pub public_key: PublicKey,
    pub addr_v4: Ipv4Addr,
    pub addr_v6: Ipv6Addr,
    /// Endpoints the node reported plus the source address the coordinator saw.
    pub endpoints: Vec<SocketAddr>,
    /// Hex serial of the only client certificate accepted for this node.
    pub cert_serial: String,
    pub revoked: bool,
    /// When the node was first revoked; the maintenance pass deletes the
    /// row (freeing its addresses) a retention period later.
    #[serde(default)]
    pub revoked_at: Option<UnixTime>,
    pub created_at: UnixTime,
    /// Last netmap version sent to the node.
    pub netmap_version: u64,
    /// Last netmap version the node reported as applied.
    pub acked_version: u64,
    pub acked_at: Option<UnixTime>,
}

impl NodeRecord {
    /// Both overlay addresses, v4 first.
    pub fn addresses(&self) -> Vec<IpAddr> {
        vec![IpAddr::V4(self.addr_v4), IpAddr::V6(self.addr_v6)]
    }
}

/// A join token as stored (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: i64,
    pub name_prefix: Option<String>,
    pub labels: Labels,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
    pub uses_total: u32,
    pub uses_left: u32,
    pub revoked: bool,
    /// When the token was revoked or its last use consumed (expiry counts
    /// from `expires_at`); the maintenance pass deletes it a retention
    /// period after it ended.
    #[serde(default)]
    pub ended_at: Option<UnixTime>,
    pub created_by: String,
}

/// What an admin asks for when creating a token.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// SHA-256 of the 256-bit secret.
    pub secret_sha256: [u8; 32],
    pub name_prefix: Option<String>,
    pub labels: Labels,
    pub expires_at: UnixTime,
    pub uses: u32,
}

/// What a node asks for when enrolling.
#[derive(Debug, Clone)]
pub struct EnrollRequest {
    pub secret_sha256: [u8; 32],
    /// Requested name; generated from the token's prefix when absent.
    pub name: Option<NodeName>,
    pub public_key: PublicKey,
    pub endpoints: Vec<SocketAddr>,
}

/// A certificate issued inside the enrolling transaction.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub serial_hex: String,
    pub cert_pem: String,
}

/// Signs the node certificate once the name is known; called inside the
/// enrollment transaction so a failure to sign creates nothing.
pub type CertSigner<'a> = &'a (dyn Fn(&NodeName) -> Result<IssuedCert, String> + Send + Sync);

/// A stored policy version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub version: u64,
    pub text: String,
    pub applied_at: UnixTime,
    pub applied_by: String,
}

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: UnixTime,
    pub actor: String,
    pub action: String,
    pub details: serde_json::Value,
}

/// A netmap version sent to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetmapRecord {
    pub node_id: i64,
    pub version: u64,
    /// What identifies the netmap's content: the distributor stores its
    /// digest ([`crate::distribute::netmap_digest`]), not the JSON. A full
    /// body per node and change was 60 MB per all-node change at 10,000
    /// nodes, and writing it was the slowest step of a policy apply; the
    /// digest is all that comparing contents (restart, other coordinators,
    /// audit) needs. The column is still called `body` (rows written before
    /// hold JSON, which simply compares unequal once).
    pub body: String,
}

/// Who makes a change and when; recorded in the audit log.
#[derive(Debug, Clone)]
pub struct Change {
    pub actor: String,
    pub at: UnixTime,
}

impl Change {
    pub fn new(actor: impl Into<String>, at: UnixTime) -> Self {
        Self {
            actor: actor.into(),
            at,
        }
    }
}

/// Why a token was refused at enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Unknown,
    Expired,
    UsedUp,
    Revoked,
}

impl std::fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unknown => "join token is not known to this coordinator",
            Self::Expired => "join token has expired",
            Self::UsedUp => "join token has no uses left",
            Self::Revoked => "join token was revoked",
        })
    }
}

/// Store failures. `Db` and `Corrupt` are internal; the API never shows
/// their text to clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Token(TokenRefusal),
    #[error("{0}")]
    Invalid(String),
    #[error("overlay prefix {0} has no free address left")]
    Exhausted(String),
    #[error("certificate signing failed: {0}")]
    Sign(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// The coordinator's persistent state. See the module docs for the rules an
/// implementation must follow.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Stores a token (by hash) and audits it.
    async fn create_token(&self, new: NewToken, change: &Change)
    -> Result<TokenRecord, StoreError>;
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    async fn revoke_token(&self, id: i64, change: &Change) -> Result<TokenRecord, StoreError>;

    /// Atomically: checks and consumes one use of the token, picks the name,
    /// allocates overlay addresses, signs the certificate, inserts the node
    /// and audits it. Nothing is written when any step fails.
    async fn enroll(
        &self,
        req: &EnrollRequest,
        prefixes: &Prefixes,
        sign: CertSigner<'_>,
        at: UnixTime,
    ) -> Result<(NodeRecord, IssuedCert), StoreError>;

    /// All nodes, revoked included, by name.
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    async fn node(&self, name: &NodeName) -> Result<Option<NodeRecord>, StoreError>;
    /// Sets and removes labels (admin only) and audits the change.
    async fn label_node(
        &self,
        name: &NodeName,
        set: &Labels,
        remove: &[String],
        change: &Change,
    ) -> Result<NodeRecord, StoreError>;
    async fn revoke_node(&self, name: &NodeName, change: &Change)
    -> Result<NodeRecord, StoreError>;
    /// Replaces the node's endpoints (node-reported; not an admin change).
    /// Returns whether they changed.
    async fn set_endpoints(
        &self,
        name: &NodeName,
        endpoints: &[SocketAddr],
    ) -> Result<bool, StoreError>;

    /// Replaces the node's WireGuard key (a rotation requested by the node
    /// over mTLS) and audits it. Returns the old key and the updated node.
    async fn rotate_key(
        &self,
        name: &NodeName,
        new_key: &PublicKey,
        change: &Change,
    ) -> Result<(PublicKey, NodeRecord), StoreError>;

    /// The current policy, if one was ever applied.
    async fn policy(&self) -> Result<Option<PolicyRecord>, StoreError>;
    /// Stores a new policy version and audits it with `details` (e.g. the diff).
    async fn apply_policy(
        &self,
        text: &str,
        details: serde_json::Value,
        change: &Change,
    ) -> Result<PolicyRecord, StoreError>;

    /// Records netmap versions as sent, all in one transaction; each is
    /// refused (and none is written) unless it is higher than the node's
    /// last recorded version (versions are monotonic per node).
    async fn record_netmaps(&self, maps: &[NetmapRecord]) -> Result<(), StoreError>;
    /// One netmap; see [`Store::record_netmaps`].
    async fn record_netmap(
        &self,
        node_id: i64,
        version: u64,
        body: &str,
    ) -> Result<(), StoreError> {
        let rec = NetmapRecord {
            node_id,
            version,
            body: body.to_string(),
        };
        self.record_netmaps(std::slice::from_ref(&rec)).await
    }
    /// Marks `version` applied by the node; older stored netmaps are dropped.
    async fn ack_netmap(&self, node_id: i64, version: u64, at: UnixTime) -> Result<(), StoreError>;
    /// Records many acks `(node_id, version)` in one transaction; acks that
    /// are stale or name a version never sent are skipped, not errors (the
    /// caller validated them; a batch must not fail for one late ack).
    async fn ack_netmaps(&self, acks: &[(i64, u64)], at: UnixTime) -> Result<(), StoreError>;
    /// The newest netmap recorded for the node.
    async fn latest_netmap(&self, node_id: i64) -> Result<Option<(u64, String)>, StoreError>;
    /// The netmap the node last acked.
    async fn acked_netmap(&self, node_id: i64) -> Result<Option<(u64, String)>, StoreError>;

    /// The maintenance pass (see [`maintain`]): deletes tokens that ended
    /// and nodes revoked longer than `retention` before `now`, with their
    /// audit entries, in one transaction that also holds the writer lock
    /// (so it is ordered with enrollments like any other write). Returns
    /// `None`, having done nothing, when another coordinator sharing the
    /// store is running the pass right now.
    async fn maintain(
        &self,
        now: UnixTime,
        retention: &Retention,
    ) -> Result<Option<MaintenanceReport>, StoreError>;

    /// Appends an audit entry for an action that changes no stored row.
    async fn audit(
        &self,
        action: &str,
        details: serde_json::Value,
        change: &Change,
    ) -> Result<(), StoreError>;
    /// Whether the database answers (health checks).
    async fn ping(&self) -> Result<(), StoreError>;
    /// The newest `limit` entries, oldest first.
    async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;
}
