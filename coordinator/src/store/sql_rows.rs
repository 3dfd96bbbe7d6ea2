//! Row decoding and transaction helpers shared by both SQL backends: how
//! stored text becomes typed records (corrupt data is an error, never a
//! panic), the audit row written inside each change, name choice and address
//! allocation inside the enrolling transaction.
//!
//! Written once as a macro and expanded in each backend module with that
//! backend's concrete sqlx types: the queries are text-identical on SQLite
//! and PostgreSQL (`$n` placeholders, standard SQL), and a macro keeps them
//! one copy without sqlx's higher-ranked generic bounds.

/// Expands to the helper functions for database type `$db`.
macro_rules! sql_rows {
    ($db:ty) => {
        type DbRow = <$db as sqlx::Database>::Row;
        type Tx = sqlx::Transaction<'static, $db>;

        fn parse<T: std::str::FromStr>(row: &DbRow, col: &str) -> Result<T, StoreError>
        where
            T::Err: std::fmt::Display,
        {
            let s: String = sqlx::Row::try_get(row, col)?;
            s.parse()
                .map_err(|e| $crate::store::sql_rows::corrupt(col, e))
        }

        fn json<T: serde::de::DeserializeOwned>(row: &DbRow, col: &str) -> Result<T, StoreError> {
            let s: String = sqlx::Row::try_get(row, col)?;
            serde_json::from_str(&s).map_err(|e| $crate::store::sql_rows::corrupt(col, e))
        }

        fn u64_col(row: &DbRow, col: &str) -> Result<u64, StoreError> {
            let v: i64 = sqlx::Row::try_get(row, col)?;
            u64::try_from(v).map_err(|e| $crate::store::sql_rows::corrupt(col, e))
        }

        fn node_row(row: &DbRow) -> Result<NodeRecord, StoreError> {
            use sqlx::Row as _;
            Ok(NodeRecord {
                id: row.try_get("id")?,
                name: parse(row, "name")?,
                labels: json(row, "labels")?,
                public_key: parse(row, "public_key")?,
                addr_v4: parse(row, "addr_v4")?,
                addr_v6: parse(row, "addr_v6")?,
                endpoints: json(row, "endpoints")?,
                cert_serial: row.try_get("cert_serial")?,
                revoked: row.try_get("revoked")?,
                revoked_at: row.try_get("revoked_at")?,
                created_at: row.try_get("created_at")?,
                netmap_version: u64_col(row, "netmap_version")?,
                acked_version: u64_col(row, "acked_version")?,
                acked_at: row.try_get("acked_at")?,
            })
        }

        fn token_row(row: &DbRow) -> Result<TokenRecord, StoreError> {
            use sqlx::Row as _;
            let count = |c: &str| -> Result<u32, StoreError> {
                let v: i64 = row.try_get(c)?;
                u32::try_from(v).map_err(|e| $crate::store::sql_rows::corrupt(c, e))
            };
            Ok(TokenRecord {
                id: row.try_get("id")?,
                name_prefix: row.try_get("name_prefix")?,
                labels: json(row, "labels")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                uses_total: count("uses_total")?,
                uses_left: count("uses_left")?,
                revoked: row.try_get("revoked")?,
                ended_at: row.try_get("ended_at")?,
                created_by: row.try_get("created_by")?,
            })
        }

        fn policy_row(row: &DbRow) -> Result<PolicyRecord, StoreError> {
            use sqlx::Row as _;
            Ok(PolicyRecord {
                version: u64_col(row, "version")?,
                text: row.try_get("text")?,
                applied_at: row.try_get("applied_at")?,
                applied_by: row.try_get("applied_by")?,
            })
        }

        fn audit_row(row: &DbRow) -> Result<AuditEntry, StoreError> {
            use sqlx::Row as _;
            Ok(AuditEntry {
                id: row.try_get("id")?,
                at: row.try_get("at")?,
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                details: json(row, "details")?,
            })
        }

        async fn audit_tx(
            tx: &mut Tx,
            action: &str,
            details: &serde_json::Value,
            change: &Change,
        ) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO audit_log (at, actor, action, details) VALUES ($1, $2, $3, $4)",
            )
            .bind(change.at)
            .bind(&change.actor)
            .bind(action)
            .bind(details.to_string())
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        async fn node_tx(tx: &mut Tx, name: &NodeName) -> Result<NodeRecord, StoreError> {
            let row = sqlx::query("SELECT * FROM nodes WHERE name = $1")
                .bind(name.as_str())
                .fetch_optional(&mut **tx)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("node {name}")))?;
            node_row(&row)
        }

        /// Picks the node's name: the requested one (which must carry the
        /// token's prefix) or `<prefix>-<n>` with the lowest free `n`.
        async fn choose_name(
            tx: &mut Tx,
            requested: Option<&NodeName>,
            prefix: Option<&str>,
        ) -> Result<NodeName, StoreError> {
            let taken: std::collections::BTreeSet<String> = sqlx::query("SELECT name FROM nodes")
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(|r| sqlx::Row::try_get::<String, _>(r, "name"))
                .collect::<Result<_, _>>()?;
            $crate::store::sql_rows::pick_name(&taken, requested, prefix)
        }

        async fn allocate(
            tx: &mut Tx,
            prefixes: &Prefixes,
        ) -> Result<(std::net::Ipv4Addr, std::net::Ipv6Addr), StoreError> {
            let rows = sqlx::query("SELECT addr_v4, addr_v6 FROM nodes")
                .fetch_all(&mut **tx)
                .await?;
            let mut v4 = std::collections::BTreeSet::new();
            let mut v6 = std::collections::BTreeSet::new();
            for r in &rows {
                v4.insert(parse::<std::net::Ipv4Addr>(r, "addr_v4")?);
                v6.insert(parse::<std::net::Ipv6Addr>(r, "addr_v6")?);
            }
            $crate::store::sql_rows::allocate_from(prefixes, &v4, &v6)
        }
    };
}
pub(super) use sql_rows;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use segmesh_config::NodeName;

use super::alloc::{next_v4, next_v6};
use super::{Prefixes, StoreError};

pub(super) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

pub(super) use crate::ca::hex;

/// The name rule of [`choose_name`](sql_rows), given the names in use.
pub(super) fn pick_name(
    taken: &BTreeSet<String>,
    requested: Option<&NodeName>,
    prefix: Option<&str>,
) -> Result<NodeName, StoreError> {
    match (requested, prefix) {
        (Some(name), Some(p)) if !name.as_str().starts_with(p) => Err(StoreError::Invalid(
            format!("this token only enrolls names starting with {p:?}, not {name}"),
        )),
        (Some(name), _) if taken.contains(name.as_str()) => Err(StoreError::Conflict(format!(
            "a node named {name} is already enrolled"
        ))),
        (Some(name), _) => Ok(name.clone()),
        (None, Some(p)) => (1..)
            .map(|n| format!("{p}-{n}"))
            .find(|n| !taken.contains(n))
            .ok_or_else(|| StoreError::Invalid("no free name".into()))
            .and_then(|n| NodeName::new(n).map_err(|e| StoreError::Invalid(e.to_string()))),
        (None, None) => Err(StoreError::Invalid(
            "this token has no name prefix: give the node a name (--name)".into(),
        )),
    }
}

/// The lowest free address of each prefix, given the addresses in use.
pub(super) fn allocate_from(
    prefixes: &Prefixes,
    v4: &BTreeSet<Ipv4Addr>,
    v6: &BTreeSet<Ipv6Addr>,
) -> Result<(Ipv4Addr, Ipv6Addr), StoreError> {
    let a4 = next_v4(prefixes.v4, v4).ok_or(StoreError::Exhausted(prefixes.v4.to_string()))?;
    let a6 = next_v6(prefixes.v6, v6).ok_or(StoreError::Exhausted(prefixes.v6.to_string()))?;
    Ok((a4, a6))
}
