//! [`Store`] on SQLite: WAL, migrations at open, one transaction per method.
//!
//! Write transactions start with `BEGIN IMMEDIATE`, so two writers queue on
//! SQLite's write lock (with a busy timeout) instead of failing when a read
//! transaction tries to upgrade.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use segmesh_config::{Labels, NodeName, PublicKey};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, SqlSafeStr, Sqlite, Transaction};

use super::sqlite_rows::{
    allocate, audit_tx, choose_name, corrupt, hex, json, node_row, node_tx, to_json, token_row,
    u64_col,
};
use super::{
    AuditEntry, CertSigner, Change, EnrollRequest, IssuedCert, NetmapRecord, NewToken, NodeRecord,
    PolicyRecord, Prefixes, Store, StoreError, TokenRecord, TokenRefusal, UnixTime,
};

const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "init",
    include_str!("../../migrations/sqlite/0001_init.sql"),
)];

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
        let migrations = MIGRATIONS
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
        Migrator::with_migrations(migrations).run(&pool).await?;
        Ok(Self { pool })
    }

    async fn write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_token(
        &self,
        new: NewToken,
        change: &Change,
    ) -> Result<TokenRecord, StoreError> {
        let mut tx = self.write().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO tokens (secret_sha256, name_prefix, labels, created_at, expires_at, \
             uses_total, uses_left, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(hex(&new.secret_sha256))
        .bind(&new.name_prefix)
        .bind(to_json(&new.labels))
        .bind(change.at)
        .bind(new.expires_at)
        .bind(i64::from(new.uses))
        .bind(i64::from(new.uses))
        .bind(&change.actor)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        let details = serde_json::json!({
            "token": id, "labels": new.labels, "name_prefix": new.name_prefix,
            "expires_at": new.expires_at, "uses": new.uses,
        });
        audit_tx(&mut tx, "token.create", &details, change).await?;
        let row = sqlx::query("SELECT * FROM tokens WHERE id = ?")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let rec = token_row(&row)?;
        tx.commit().await?;
        Ok(rec)
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        sqlx::query("SELECT * FROM tokens ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(token_row)
            .collect()
    }

    async fn revoke_token(&self, id: i64, change: &Change) -> Result<TokenRecord, StoreError> {
        let mut tx = self.write().await?;
        let row = sqlx::query("UPDATE tokens SET revoked = 1 WHERE id = ? RETURNING *")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
        audit_tx(
            &mut tx,
            "token.revoke",
            &serde_json::json!({ "token": id }),
            change,
        )
        .await?;
        let rec = token_row(&row)?;
        tx.commit().await?;
        Ok(rec)
    }

    async fn enroll(
        &self,
        req: &EnrollRequest,
        prefixes: &Prefixes,
        sign: CertSigner<'_>,
        at: UnixTime,
    ) -> Result<(NodeRecord, IssuedCert), StoreError> {
        let mut tx = self.write().await?;
        let token = sqlx::query("SELECT * FROM tokens WHERE secret_sha256 = ?")
            .bind(hex(&req.secret_sha256))
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::Token(TokenRefusal::Unknown))?;
        let token = token_row(&token)?;
        if token.revoked {
            return Err(StoreError::Token(TokenRefusal::Revoked));
        }
        if token.expires_at <= at {
            return Err(StoreError::Token(TokenRefusal::Expired));
        }
        if token.uses_left == 0 {
            return Err(StoreError::Token(TokenRefusal::UsedUp));
        }
        let key_taken = sqlx::query("SELECT 1 FROM nodes WHERE public_key = ?")
            .bind(req.public_key.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if key_taken.is_some() {
            return Err(StoreError::Conflict(
                "this WireGuard public key is already enrolled".into(),
            ));
        }
        let name = choose_name(&mut tx, req.name.as_ref(), token.name_prefix.as_deref()).await?;
        let (a4, a6) = allocate(&mut tx, prefixes).await?;
        let cert = sign(&name).map_err(StoreError::Sign)?;
        sqlx::query(
            "INSERT INTO nodes (name, labels, public_key, addr_v4, addr_v6, endpoints, \
             cert_serial, token_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(name.as_str())
        .bind(to_json(&token.labels))
        .bind(req.public_key.to_string())
        .bind(a4.to_string())
        .bind(a6.to_string())
        .bind(to_json(&req.endpoints))
        .bind(&cert.serial_hex)
        .bind(token.id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE tokens SET uses_left = uses_left - 1 WHERE id = ?")
            .bind(token.id)
            .execute(&mut *tx)
            .await?;
        let details = serde_json::json!({
            "node": name, "token": token.id, "labels": token.labels,
            "addresses": [a4.to_string(), a6.to_string()], "public_key": req.public_key,
        });
        let change = Change::new(format!("token:{}", token.id), at);
        audit_tx(&mut tx, "node.enroll", &details, &change).await?;
        let node = node_tx(&mut tx, &name).await?;
        tx.commit().await?;
        Ok((node, cert))
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        sqlx::query("SELECT * FROM nodes ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(node_row)
            .collect()
    }

    async fn node(&self, name: &NodeName) -> Result<Option<NodeRecord>, StoreError> {
        sqlx::query("SELECT * FROM nodes WHERE name = ?")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(node_row)
            .transpose()
    }

    async fn label_node(
        &self,
        name: &NodeName,
        set: &Labels,
        remove: &[String],
        change: &Change,
    ) -> Result<NodeRecord, StoreError> {
        let mut tx = self.write().await?;
        let node = node_tx(&mut tx, name).await?;
        let before = node.labels.clone();
        let mut labels = node.labels;
        for k in remove {
            labels.remove(k);
        }
        labels.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        sqlx::query("UPDATE nodes SET labels = ? WHERE id = ?")
            .bind(to_json(&labels))
            .bind(node.id)
            .execute(&mut *tx)
            .await?;
        let details = serde_json::json!({ "node": name, "before": before, "after": labels });
        audit_tx(&mut tx, "node.label", &details, change).await?;
        let node = node_tx(&mut tx, name).await?;
        tx.commit().await?;
        Ok(node)
    }

    async fn revoke_node(
        &self,
        name: &NodeName,
        change: &Change,
    ) -> Result<NodeRecord, StoreError> {
        let mut tx = self.write().await?;
        let node = node_tx(&mut tx, name).await?;
        sqlx::query("UPDATE nodes SET revoked = 1 WHERE id = ?")
            .bind(node.id)
            .execute(&mut *tx)
            .await?;
        let details = serde_json::json!({ "node": name, "public_key": node.public_key });
        audit_tx(&mut tx, "node.revoke", &details, change).await?;
        let node = node_tx(&mut tx, name).await?;
        tx.commit().await?;
        Ok(node)
    }

    async fn set_endpoints(
        &self,
        name: &NodeName,
        endpoints: &[SocketAddr],
    ) -> Result<bool, StoreError> {
        let res = sqlx::query("UPDATE nodes SET endpoints = ? WHERE name = ? AND endpoints != ?")
            .bind(to_json(&endpoints))
            .bind(name.as_str())
            .bind(to_json(&endpoints))
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    async fn rotate_key(
        &self,
        name: &NodeName,
        new_key: &PublicKey,
        change: &Change,
    ) -> Result<(PublicKey, NodeRecord), StoreError> {
        let mut tx = self.write().await?;
        let node = node_tx(&mut tx, name).await?;
        if node.revoked {
            return Err(StoreError::Invalid(format!("node {name} is revoked")));
        }
        let taken = sqlx::query("SELECT 1 FROM nodes WHERE public_key = ?")
            .bind(new_key.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(StoreError::Conflict(
                "this WireGuard public key is already enrolled".into(),
            ));
        }
        sqlx::query("UPDATE nodes SET public_key = ? WHERE id = ?")
            .bind(new_key.to_string())
            .bind(node.id)
            .execute(&mut *tx)
            .await?;
        let details = serde_json::json!({ "node": name, "old": node.public_key, "new": new_key });
        audit_tx(&mut tx, "node.rotate_key", &details, change).await?;
        let updated = node_tx(&mut tx, name).await?;
        tx.commit().await?;
        Ok((node.public_key, updated))
    }

    async fn policy(&self) -> Result<Option<PolicyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM policy ORDER BY version DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(PolicyRecord {
                version: u64_col(&r, "version")?,
                text: r.try_get("text")?,
                applied_at: r.try_get("applied_at")?,
                applied_by: r.try_get("applied_by")?,
            })
        })
        .transpose()
    }

    async fn apply_policy(
        &self,
        text: &str,
        details: serde_json::Value,
        change: &Change,
    ) -> Result<PolicyRecord, StoreError> {
        let mut tx = self.write().await?;
        let version: i64 = sqlx::query(
            "INSERT INTO policy (version, text, applied_at, applied_by) \
             SELECT COALESCE(MAX(version), 0) + 1, ?, ?, ? FROM policy RETURNING version",
        )
        .bind(text)
        .bind(change.at)
        .bind(&change.actor)
        .fetch_one(&mut *tx)
        .await?
        .try_get("version")?;
        let mut details = details;
        if let Some(obj) = details.as_object_mut() {
            obj.insert("policy_version".into(), version.into());
        }
        audit_tx(&mut tx, "policy.apply", &details, change).await?;
        tx.commit().await?;
        Ok(PolicyRecord {
            version: u64::try_from(version).map_err(|e| corrupt("version", e))?,
            text: text.to_string(),
            applied_at: change.at,
            applied_by: change.actor.clone(),
        })
    }

    async fn record_netmaps(&self, maps: &[NetmapRecord]) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        for m in maps {
            let v = i64::try_from(m.version).map_err(|e| StoreError::Invalid(e.to_string()))?;
            let res = sqlx::query(
                "UPDATE nodes SET netmap_version = ? WHERE id = ? AND netmap_version < ?",
            )
            .bind(v)
            .bind(m.node_id)
            .bind(v)
            .execute(&mut *tx)
            .await?;
            if res.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!(
                    "netmap version {} for node {} is not newer than the last one",
                    m.version, m.node_id
                )));
            }
            sqlx::query("INSERT INTO netmaps (node_id, version, body) VALUES (?, ?, ?)")
                .bind(m.node_id)
                .bind(v)
                .bind(&m.body)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn ack_netmap(&self, node_id: i64, version: u64, at: UnixTime) -> Result<(), StoreError> {
        let v = i64::try_from(version).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut tx = self.write().await?;
        let res = sqlx::query(
            "UPDATE nodes SET acked_version = ?, acked_at = ? \
             WHERE id = ? AND acked_version <= ? AND netmap_version >= ?",
        )
        .bind(v)
        .bind(at)
        .bind(node_id)
        .bind(v)
        .bind(v)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::Invalid(format!(
                "version {version} was never sent or is older than the last ack"
            )));
        }
        sqlx::query("DELETE FROM netmaps WHERE node_id = ? AND version < ?")
            .bind(node_id)
            .bind(v)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn ack_netmaps(&self, acks: &[(i64, u64)], at: UnixTime) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        for (node_id, version) in acks {
            let v = i64::try_from(*version).map_err(|e| StoreError::Invalid(e.to_string()))?;
            let res = sqlx::query(
                "UPDATE nodes SET acked_version = ?, acked_at = ? \
                 WHERE id = ? AND acked_version <= ? AND netmap_version >= ?",
            )
            .bind(v)
            .bind(at)
            .bind(node_id)
            .bind(v)
            .bind(v)
            .execute(&mut *tx)
            .await?;
            if res.rows_affected() > 0 {
                sqlx::query("DELETE FROM netmaps WHERE node_id = ? AND version < ?")
                    .bind(node_id)
                    .bind(v)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn latest_netmap(&self, node_id: i64) -> Result<Option<(u64, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT version, body FROM netmaps WHERE node_id = ? ORDER BY version DESC LIMIT 1",
        )
        .bind(node_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((u64_col(&r, "version")?, r.try_get("body")?)))
            .transpose()
    }

    async fn acked_netmap(&self, node_id: i64) -> Result<Option<(u64, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT m.version, m.body FROM netmaps m JOIN nodes n ON n.id = m.node_id \
             WHERE m.node_id = ? AND m.version = n.acked_version",
        )
        .bind(node_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((u64_col(&r, "version")?, r.try_get("body")?)))
            .transpose()
    }

    async fn audit(
        &self,
        action: &str,
        details: serde_json::Value,
        change: &Change,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        audit_tx(&mut tx, action, &details, change).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM (SELECT * FROM audit_log ORDER BY id DESC LIMIT ?) ORDER BY id",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    details: json(r, "details")?,
                })
            })
            .collect()
    }
}
