//! [`Store`] on SQLite: WAL, migrations at open, one transaction per method.
//! The methods themselves are shared with PostgreSQL (see `super::sql`).
//!
//! Write transactions start with `BEGIN IMMEDIATE`, so two writers queue on
//! SQLite's write lock (with a busy timeout) instead of failing when a read
//! transaction tries to upgrade.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use segmesh_config::{Labels, NodeName, PublicKey};
use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::sql_rows::{corrupt, hex, to_json};
use super::{
    AuditEntry, CertSigner, Change, EnrollRequest, IssuedCert, MaintenanceReport, NetmapRecord,
    NewToken, NodeRecord, PolicyRecord, Prefixes, Retention, Store, StoreError, TokenRecord,
    TokenRefusal, UnixTime, migrator,
};

pub(super) const MIGRATIONS: &[(i64, &str, &str)] = super::migrations!("sqlite");

/// The SQLite store. Cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file and runs migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged admin change survives power loss.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        migrator(MIGRATIONS).run(&pool).await?;
        Ok(Self { pool })
    }

    /// The connection pool (for `migrate-store`, which copies tables).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn write(&self) -> Result<Tx, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// One coordinator owns a SQLite file: the pass always runs, as a writer.
    async fn maintenance(&self) -> Result<Option<Tx>, StoreError> {
        self.write().await.map(Some)
    }

    /// One process owns a SQLite file: nobody else needs to hear of changes.
    async fn netmaps_recorded(&self, _tx: &mut Tx) -> Result<(), StoreError> {
        Ok(())
    }
}

super::sql::sql_store!(SqliteStore, Sqlite);
