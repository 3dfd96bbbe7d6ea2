//! [`Store`] on PostgreSQL, shared by several coordinators. The methods are
//! the SQLite ones (see `super::sql`); what differs is how writers are
//! kept apart and how other coordinators hear of changes.
//!
//! Every write transaction first takes one transaction-level advisory lock
//! ([`WRITE_LOCK`]), so writers from all coordinators run one at a time,
//! exactly as SQLite's `BEGIN IMMEDIATE` orders them in one process: the
//! read-modify-write steps (lowest free address, next name, label merge,
//! policy version) cannot interleave, and the UNIQUE constraints stay as a
//! second line of defence. Writes are admin changes, enrollments and
//! batched acks, so one writer at a time is far from a bottleneck; readers
//! never wait for it. When netmaps are recorded the transaction also sends
//! `NOTIFY` on [`CHANGES_CHANNEL`], delivered to listeners only on commit.
//!
//! Background work that must run once (the maintenance pass deleting ended
//! tokens and reclaiming revoked nodes) is guarded by a second advisory
//! lock, [`MAINTENANCE_LOCK`], taken with `pg_try_advisory_xact_lock`: a
//! coordinator that does not get it at once skips the round.

use std::net::SocketAddr;
use std::time::Duration;

use segmesh_config::{Labels, NodeName, PublicKey};
use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::sql_rows::{corrupt, hex, to_json};
use super::{
    AuditEntry, CertSigner, Change, EnrollRequest, IssuedCert, MaintenanceReport, NetmapRecord,
    NewToken, NodeRecord, PolicyRecord, Prefixes, Retention, Store, StoreError, TokenRecord,
    TokenRefusal, UnixTime, migrator,
};

pub(super) const MIGRATIONS: &[(i64, &str, &str)] = super::migrations!("postgres");

/// Advisory lock key serialising writers ("segmesh" in ASCII).
pub const WRITE_LOCK: i64 = 0x0073_6567_6d65_7368;
/// Advisory lock key held by the coordinator running the maintenance pass
/// ("segmaint" in ASCII).
pub const MAINTENANCE_LOCK: i64 = 0x7365_676d_6169_6e74;
/// The LISTEN/NOTIFY channel announcing newly recorded netmaps.
pub const CHANGES_CHANNEL: &str = "segmesh_changes";

/// The PostgreSQL store. Cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Random id of this process's store, sent as the NOTIFY payload so a
    /// coordinator can tell its own notifications from others'.
    instance: String,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and runs
    /// migrations (sqlx holds an advisory lock while migrating, so two
    /// coordinators starting together do not race).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            // Fail a request quickly when the database is down instead of
            // holding it for sqlx's 30 s default.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await?;
        migrator(MIGRATIONS).run(&pool).await?;
        let instance = format!(
            "{:016x}",
            rand_core::RngCore::next_u64(&mut rand_core::OsRng)
        );
        Ok(Self { pool, instance })
    }

    /// The connection pool (for `migrate-store`, which copies tables).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection listening on [`CHANGES_CHANNEL`] (same server and
    /// credentials as the pool).
    pub async fn listen(&self) -> Result<sqlx::postgres::PgListener, StoreError> {
        let mut l = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        l.listen(CHANGES_CHANNEL).await?;
        Ok(l)
    }

    async fn write(&self) -> Result<Tx, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_writers(&mut tx).await?;
        Ok(tx)
    }

    /// The maintenance pass runs once across coordinators: whoever gets
    /// [`MAINTENANCE_LOCK`] without waiting runs it, the others skip this
    /// round (the lock is released with the transaction, so a crashed
    /// coordinator never blocks the pass). Then the writer lock, taken in
    /// this order only, so the two locks cannot deadlock.
    async fn maintenance(&self) -> Result<Option<Tx>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(MAINTENANCE_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !ours {
            tx.rollback().await?;
            return Ok(None);
        }
        lock_writers(&mut tx).await?;
        Ok(Some(tx))
    }

    /// The payload of this store's notifications.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    async fn netmaps_recorded(&self, tx: &mut Tx) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGES_CHANNEL)
            .bind(&self.instance)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// Waits for [`WRITE_LOCK`]; held until the transaction ends.
async fn lock_writers(tx: &mut Tx) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(WRITE_LOCK)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

super::sql::sql_store!(PgStore, Postgres);
