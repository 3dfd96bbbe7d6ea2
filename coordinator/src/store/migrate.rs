//! `migrate-store`: copies a SQLite deployment's state into an empty
//! PostgreSQL database, in one PostgreSQL transaction, keeping every id and
//! version so node certificates, netmap versions and audit references stay
//! valid. The source is only read.

use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{StoreError, StoreLocation};

/// How a column is read from SQLite and bound for PostgreSQL.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Int,
    OptInt,
    Text,
    OptText,
    Bool,
}

/// A table: name, columns, and whether an identity sequence follows `id`.
type Table = (&'static str, &'static [(&'static str, Kind)], bool);

/// Tables in dependency order, with their columns (the schema both
/// migration folders create).
const TABLES: &[Table] = &[
    (
        "tokens",
        &[
            ("id", Kind::Int),
            ("secret_sha256", Kind::Text),
            ("name_prefix", Kind::OptText),
            ("labels", Kind::Text),
            ("created_at", Kind::Int),
            ("expires_at", Kind::Int),
            ("uses_total", Kind::Int),
            ("uses_left", Kind::Int),
            ("revoked", Kind::Bool),
            ("ended_at", Kind::OptInt),
            ("created_by", Kind::Text),
        ],
        true,
    ),
    (
        "nodes",
        &[
            ("id", Kind::Int),
            ("name", Kind::Text),
            ("labels", Kind::Text),
            ("public_key", Kind::Text),
            ("addr_v4", Kind::Text),
            ("addr_v6", Kind::Text),
            ("endpoints", Kind::Text),
            ("cert_serial", Kind::Text),
            ("revoked", Kind::Bool),
            ("revoked_at", Kind::OptInt),
            ("token_id", Kind::OptInt),
            ("created_at", Kind::Int),
            ("netmap_version", Kind::Int),
            ("acked_version", Kind::Int),
            ("acked_at", Kind::OptInt),
        ],
        true,
    ),
    (
        "policy",
        &[
            ("version", Kind::Int),
            ("text", Kind::Text),
            ("applied_at", Kind::Int),
            ("applied_by", Kind::Text),
        ],
        false,
    ),
    (
        "netmaps",
        &[
            ("node_id", Kind::Int),
            ("version", Kind::Int),
            ("body", Kind::Text),
        ],
        false,
    ),
    (
        "audit_log",
        &[
            ("id", Kind::Int),
            ("at", Kind::Int),
            ("actor", Kind::Text),
            ("action", Kind::Text),
            ("details", Kind::Text),
        ],
        true,
    ),
];

/// Rows copied per table, in `TABLES` order.
pub type CopyReport = Vec<(&'static str, u64)>;

/// `migrate-store --from sqlite://… --to postgres://…`: checks the
/// locations, opens both (running migrations on the target) and copies.
pub async fn between(from: &StoreLocation, to: &StoreLocation) -> Result<CopyReport, StoreError> {
    let StoreLocation::Sqlite(path) = from else {
        return Err(StoreError::Invalid(format!(
            "--from must be a sqlite:// location, not {from}"
        )));
    };
    let StoreLocation::Postgres(url) = to else {
        return Err(StoreError::Invalid(format!(
            "--to must be a postgres:// location, not {to}"
        )));
    };
    // Opening would create an empty database and "migrate" nothing.
    if !path.is_file() {
        return Err(StoreError::NotFound(format!(
            "--from {from}: database file"
        )));
    }
    let source = SqliteStore::open(path).await?;
    let target = PgStore::connect(url).await?;
    sqlite_to_postgres(&source, &target).await
}

/// Copies everything from `from` into `to`. Refused (nothing written) when
/// the target already holds any row: merging two meshes is not a migration.
pub async fn sqlite_to_postgres(
    from: &SqliteStore,
    to: &PgStore,
) -> Result<CopyReport, StoreError> {
    let mut tx = to.pool().begin().await?;
    for (table, _, _) in TABLES {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {table}) AS used");
        let used: bool = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *tx)
            .await?
            .try_get("used")?;
        if used {
            return Err(StoreError::Conflict(format!(
                "the target database is not empty (table {table} has rows); \
                 migrate into a freshly created database"
            )));
        }
    }
    let mut report = Vec::new();
    for (table, cols, identity) in TABLES {
        let names: Vec<&str> = cols.iter().map(|(c, _)| *c).collect();
        let select = format!("SELECT {} FROM {table}", names.join(", "));
        let rows = sqlx::query(sqlx::AssertSqlSafe(select))
            .fetch_all(from.pool())
            .await?;
        let marks: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            marks.join(", ")
        );
        for row in &rows {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(insert.clone()));
            for (col, kind) in cols.iter() {
                q = bind(q, row, col, *kind)?;
            }
            q.execute(&mut *tx).await?;
        }
        if *identity {
            // Later inserts must continue after the copied ids.
            let sql = format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                 COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await?;
        }
        report.push((*table, rows.len() as u64));
    }
    tx.commit().await?;
    Ok(report)
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn bind<'q>(
    q: PgQuery<'q>,
    row: &SqliteRow,
    col: &str,
    kind: Kind,
) -> Result<PgQuery<'q>, StoreError> {
    Ok(match kind {
        Kind::Int => q.bind(row.try_get::<i64, _>(col)?),
        Kind::OptInt => q.bind(row.try_get::<Option<i64>, _>(col)?),
        Kind::Text => q.bind(row.try_get::<String, _>(col)?),
        Kind::OptText => q.bind(row.try_get::<Option<String>, _>(col)?),
        Kind::Bool => q.bind(row.try_get::<bool, _>(col)?),
    })
}
