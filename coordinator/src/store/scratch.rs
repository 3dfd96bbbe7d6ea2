//! Throwaway PostgreSQL databases for tests of this crate and the e2e crate.
//!
//! The server is named by [`TEST_PG_ENV`] (a URL whose user may create
//! databases; `scripts/pg-test-cluster` starts one on loopback). Each
//! [`ScratchDb`] is a fresh database with a unique name, dropped again when
//! the value is dropped, so tests never see each other's rows.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

use super::StoreError;

/// The environment variable naming the test server. When it is unset the
/// PostgreSQL variants of tests are skipped (with a note on stderr); when it
/// is set and the server cannot be reached, they fail. CI sets it.
pub const TEST_PG_ENV: &str = "SEGMESH_TEST_PG";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A database created for one test.
#[derive(Debug)]
pub struct ScratchDb {
    admin_url: String,
    name: String,
    /// URL of the new database.
    pub url: String,
}

impl ScratchDb {
    /// A fresh database on the server in [`TEST_PG_ENV`], or `None` when
    /// the variable is unset.
    pub async fn from_env() -> Result<Option<Self>, StoreError> {
        match std::env::var(TEST_PG_ENV) {
            Ok(url) if !url.is_empty() => Self::create(&url).await.map(Some),
            _ => {
                eprintln!("{TEST_PG_ENV} is not set: skipping the PostgreSQL variant");
                Ok(None)
            }
        }
    }

    /// Creates a uniquely named database on the server at `admin_url`.
    pub async fn create(admin_url: &str) -> Result<Self, StoreError> {
        let name = format!(
            "segmesh_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand_core::RngCore::next_u32(&mut rand_core::OsRng)
        );
        let mut conn = PgConnection::connect(admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(Self {
            admin_url: admin_url.to_string(),
            url: with_database(admin_url, &name),
            name,
        })
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on;
        // a short-lived thread with its own runtime does the cleanup.
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// `url` with its database path replaced by `db` (query string kept).
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_is_replaced() {
        use super::with_database as w;
        assert_eq!(w("postgres://u@h:1/postgres", "t"), "postgres://u@h:1/t");
        assert_eq!(w("postgres://u@h:1", "t"), "postgres://u@h:1/t");
        assert_eq!(
            w("postgres://u@h/x?sslmode=disable", "t"),
            "postgres://u@h/t?sslmode=disable"
        );
    }
}
