//! Where the state lives: `sqlite://PATH` or `postgres://…`, parsed once, and
//! opening the matching backend.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{Store, StoreError};

/// A store URL. `Display` hides a PostgreSQL password, so a location can be
/// logged.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `sqlite://PATH` (PATH absolute or relative to the working directory).
    Sqlite(PathBuf),
    /// `postgres://` or `postgresql://` URL, passed to the driver as is.
    Postgres(String),
}

impl FromStr for StoreLocation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(
                    "sqlite:// needs a file path, e.g. sqlite:///var/lib/segmesh/state.db".into(),
                );
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            s.parse::<sqlx::postgres::PgConnectOptions>()
                .map_err(|e| format!("bad PostgreSQL URL: {e}"))?;
            return Ok(Self::Postgres(s.to_string()));
        }
        Err("a store is sqlite://PATH or postgres://USER@HOST:PORT/DB".into())
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            Self::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreLocation({self})")
    }
}

impl<'de> serde::Deserialize<'de> for StoreLocation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The URL with any password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..auth_end].rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// An opened store, with the backend-specific handle where one is needed.
#[derive(Debug, Clone)]
pub enum Opened {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Opened {
    /// The store behind the common trait.
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Self::Sqlite(s) => Arc::new(s.clone()),
            Self::Postgres(s) => Arc::new(s.clone()),
        }
    }
}

/// Opens the store at `loc`, running migrations.
pub async fn open(loc: &StoreLocation) -> Result<Opened, StoreError> {
    Ok(match loc {
        StoreLocation::Sqlite(path) => Opened::Sqlite(SqliteStore::open(path).await?),
        StoreLocation::Postgres(url) => Opened::Postgres(PgStore::connect(url).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let l: StoreLocation = "sqlite:///var/lib/x.db".parse().unwrap();
        assert_eq!(l, StoreLocation::Sqlite("/var/lib/x.db".into()));
        let l: StoreLocation = "postgres://seg:hunter2@db.example:5432/segmesh"
            .parse()
            .unwrap();
        assert_eq!(l.to_string(), "postgres://seg:***@db.example:5432/segmesh");
        assert!(!format!("{l:?}").contains("hunter2"));
        let l: StoreLocation = "postgresql://seg@127.0.0.1/segmesh".parse().unwrap();
        assert_eq!(l.to_string(), "postgresql://seg@127.0.0.1/segmesh");
        for bad in [
            "mysql://x",
            "sqlite://",
            "/tmp/x.db",
            "postgres://h:notaport/db",
        ] {
            assert!(bad.parse::<StoreLocation>().is_err(), "{bad}");
        }
    }
}
