//! Row decoding and transaction helpers of the SQLite store: how stored
//! text becomes typed records (corrupt data is an error, never a panic),
//! the audit row written inside each change, name choice and address
//! allocation inside the enrolling transaction.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use segmesh_config::NodeName;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

use super::alloc::{next_v4, next_v6};
use super::{Change, NodeRecord, Prefixes, StoreError, TokenRecord};

pub(super) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(super) fn parse<T: FromStr>(row: &SqliteRow, col: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    let s: String = row.try_get(col)?;
    s.parse().map_err(|e| corrupt(col, e))
}

pub(super) fn json<T: serde::de::DeserializeOwned>(
    row: &SqliteRow,
    col: &str,
) -> Result<T, StoreError> {
    let s: String = row.try_get(col)?;
    serde_json::from_str(&s).map_err(|e| corrupt(col, e))
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

pub(super) fn u64_col(row: &SqliteRow, col: &str) -> Result<u64, StoreError> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|e| corrupt(col, e))
}

pub(super) fn node_row(row: &SqliteRow) -> Result<NodeRecord, StoreError> {
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
        created_at: row.try_get("created_at")?,
        netmap_version: u64_col(row, "netmap_version")?,
        acked_version: u64_col(row, "acked_version")?,
        acked_at: row.try_get("acked_at")?,
    })
}

pub(super) fn token_row(row: &SqliteRow) -> Result<TokenRecord, StoreError> {
    let count = |c: &str| -> Result<u32, StoreError> {
        let v: i64 = row.try_get(c)?;
        u32::try_from(v).map_err(|e| corrupt(c, e))
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
        created_by: row.try_get("created_by")?,
    })
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) async fn audit_tx(
    tx: &mut Transaction<'static, Sqlite>,
    action: &str,
    details: &serde_json::Value,
    change: &Change,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO audit_log (at, actor, action, details) VALUES (?, ?, ?, ?)")
        .bind(change.at)
        .bind(&change.actor)
        .bind(action)
        .bind(details.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(super) async fn node_tx(
    tx: &mut Transaction<'static, Sqlite>,
    name: &NodeName,
) -> Result<NodeRecord, StoreError> {
    let row = sqlx::query("SELECT * FROM nodes WHERE name = ?")
        .bind(name.as_str())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("node {name}")))?;
    node_row(&row)
}

/// Picks the node's name: the requested one (which must carry the token's
/// prefix) or `<prefix>-<n>` with the lowest free `n`.
pub(super) async fn choose_name(
    tx: &mut Transaction<'static, Sqlite>,
    requested: Option<&NodeName>,
    prefix: Option<&str>,
) -> Result<NodeName, StoreError> {
    let taken: BTreeSet<String> = sqlx::query("SELECT name FROM nodes")
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("name"))
        .collect::<Result<_, _>>()?;
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

pub(super) async fn allocate(
    tx: &mut Transaction<'static, Sqlite>,
    prefixes: &Prefixes,
) -> Result<(Ipv4Addr, Ipv6Addr), StoreError> {
    let rows = sqlx::query("SELECT addr_v4, addr_v6 FROM nodes")
        .fetch_all(&mut **tx)
        .await?;
    let mut v4 = BTreeSet::new();
    let mut v6 = BTreeSet::new();
    for r in &rows {
        v4.insert(parse::<Ipv4Addr>(r, "addr_v4")?);
        v6.insert(parse::<Ipv6Addr>(r, "addr_v6")?);
    }
    let a4 = next_v4(prefixes.v4, &v4).ok_or(StoreError::Exhausted(prefixes.v4.to_string()))?;
    let a6 = next_v6(prefixes.v6, &v6).ok_or(StoreError::Exhausted(prefixes.v6.to_string()))?;
    Ok((a4, a6))
}
