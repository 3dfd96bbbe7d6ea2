//! `coordinator.toml`: parsed into validated types; unknown keys and bad
//! values are errors naming FILE:LINE:COL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer};

use crate::maintenance::Schedule;
use crate::store::{Prefixes, Retention, StoreLocation};

/// The coordinator's configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Address the HTTPS API listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// CA, admin token hash and (by default) the SQLite database live here.
    pub data_dir: PathBuf,
    /// Where the state is kept: `sqlite://PATH` or `postgres://…`. Unset:
    /// SQLite in `data_dir/state.db`. Coordinators sharing one PostgreSQL
    /// database serve the same mesh (they must share the CA material too).
    #[serde(default)]
    pub store: Option<StoreLocation>,
    /// URLs nodes use to reach this coordinator (written into join tokens).
    pub public_urls: Vec<String>,
    /// Public URLs of the other coordinators sharing this one's PostgreSQL
    /// store: join tokens list them after `public_urls`, so nodes can fail
    /// over to them.
    #[serde(default)]
    pub peer_urls: Vec<String>,
    /// Extra DNS names or IPs for the server certificate; the hosts of
    /// `public_urls` are always included.
    #[serde(default)]
    pub server_names: Vec<String>,
    #[serde(default)]
    pub overlay: OverlayConfig,
    /// Seconds between stream heartbeats.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    /// Seconds `nodes revoke` waits for former peers to ack.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_secs: u64,
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
}

/// `[maintenance]`: the periodic pass that deletes ended join tokens and
/// revoked nodes once their retention has passed (see
/// [`crate::maintenance`]). With a PostgreSQL store one coordinator runs
/// each pass.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Seconds between passes (each coordinator adds up to a tenth as
    /// jitter, so coordinators do not align).
    #[serde(deserialize_with = "at_least_one_second")]
    pub interval_secs: u64,
    /// Seconds an expired, used-up or revoked join token is kept.
    pub token_retention_secs: u64,
    /// Seconds a revoked node keeps its row, and so its overlay addresses,
    /// name and key, before they can be handed out again. Long by default:
    /// an address not reused soon after a revocation keeps flow logs and
    /// firewall records unambiguous.
    pub revoked_node_retention_secs: u64,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            interval_secs: 60,
            token_retention_secs: 7 * DAY,
            revoked_node_retention_secs: 30 * DAY,
        }
    }
}

impl MaintenanceConfig {
    /// The driver's schedule.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            interval: Duration::from_secs(self.interval_secs),
            retention: Retention {
                tokens: Duration::from_secs(self.token_retention_secs),
                revoked_nodes: Duration::from_secs(self.revoked_node_retention_secs),
            },
        }
    }
}

const DAY: u64 = 24 * 60 * 60;

/// Rejects 0 while deserializing, so the error carries the value's
/// position like any other bad value.
fn at_least_one_second<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let secs = u64::deserialize(d)?;
    if secs == 0 {
        return Err(serde::de::Error::invalid_value(
            serde::de::Unexpected::Unsigned(0),
            &"at least 1 (seconds)",
        ));
    }
    Ok(secs)
}

/// Prefixes overlay addresses are allocated from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayConfig {
    pub ipv4: Ipv4Net,
    pub ipv6: Ipv6Net,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        let p = Prefixes::default();
        Self {
            ipv4: p.v4,
            ipv6: p.v6,
        }
    }
}

/// The SQLite file used when `store` is unset.
pub const DEFAULT_DB_FILE: &str = "state.db";

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8443))
}

fn default_heartbeat() -> u64 {
    10
}

fn default_ack_timeout() -> u64 {
    5
}

/// Why the configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{message}")]
    Parse { path: String, message: String },
}

impl CoordinatorConfig {
    /// Parses TOML text; `path` is used in messages.
    pub fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError::Parse {
            path: path.to_string(),
            message,
        };
        let cfg: Self =
            toml::from_str(text).map_err(|e| err(segmesh_config::toml_error_message(text, &e)))?;
        if cfg.public_urls.is_empty() {
            return Err(err(" public_urls: at least one URL is required".into()));
        }
        for u in &cfg.public_urls {
            segmesh_config::client::parse_url(u).map_err(|e| err(format!(" public_urls: {e}")))?;
        }
        for u in &cfg.peer_urls {
            segmesh_config::client::parse_url(u).map_err(|e| err(format!(" peer_urls: {e}")))?;
        }
        if !cfg.peer_urls.is_empty() && !cfg.store_location().is_postgres() {
            return Err(err(
                " peer_urls: coordinators can only share a postgres:// store".into(),
            ));
        }
        if cfg.heartbeat_secs == 0 {
            return Err(err(" heartbeat_secs must be at least 1".into()));
        }
        Ok(cfg)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// SANs for the server certificate: the URL hosts plus `server_names`.
    pub fn certificate_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .public_urls
            .iter()
            .filter_map(|u| segmesh_config::client::parse_url(u).ok().map(|(h, _)| h))
            .chain(self.server_names.iter().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The configured store, or the default SQLite file in `data_dir`.
    pub fn store_location(&self) -> StoreLocation {
        self.store
            .clone()
            .unwrap_or_else(|| StoreLocation::Sqlite(self.data_dir.join(DEFAULT_DB_FILE)))
    }

    /// Every coordinator URL a join token carries: this one's, then its
    /// peers', without repeats.
    pub fn token_urls(&self) -> Vec<String> {
        let mut urls = self.public_urls.clone();
        for u in &self.peer_urls {
            if !urls.contains(u) {
                urls.push(u.clone());
            }
        }
        urls
    }

    pub fn prefixes(&self) -> Prefixes {
        Prefixes {
            v4: self.overlay.ipv4,
            v6: self.overlay.ipv6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_reports_positions() {
        let text = "data_dir = \"/tmp/x\"\npublic_urls = [\"https://10.0.0.1:8443\"]\nserver_names = [\"coord.example\"]\n";
        let cfg = CoordinatorConfig::parse("c.toml", text).unwrap();
        assert_eq!(cfg.listen.port(), 8443);
        assert_eq!(cfg.certificate_names(), ["10.0.0.1", "coord.example"]);
        assert_eq!(cfg.prefixes(), Prefixes::default());
        let err = CoordinatorConfig::parse("c.toml", &text.replace("data_dir", "data_dri"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.toml:1:1: "), "{err}");
        let err = CoordinatorConfig::parse(
            "c.toml",
            "data_dir = \"/x\"\npublic_urls = [\"http://a\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("https://host"), "{err}");
        let bad_net = format!("{text}[overlay]\nipv4 = \"100.80.0.0/33\"\nipv6 = \"fd00::/64\"\n");
        let err = CoordinatorConfig::parse("c.toml", &bad_net)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.toml:5:"), "{err}");
    }

    #[test]
    fn store_defaults_to_sqlite_and_rejects_unknown_schemes() {
        let text = "data_dir = \"/tmp/x\"\npublic_urls = [\"https://10.0.0.1:8443\"]\n";
        let cfg = CoordinatorConfig::parse("c.toml", text).unwrap();
        assert_eq!(
            cfg.store_location(),
            StoreLocation::Sqlite("/tmp/x/state.db".into())
        );
        let pg = format!("store = \"postgres://seg@127.0.0.1:5432/segmesh\"\n{text}");
        let cfg = CoordinatorConfig::parse("c.toml", &pg).unwrap();
        assert!(matches!(cfg.store_location(), StoreLocation::Postgres(_)));
        let bad = format!("store = \"mysql://db/segmesh\"\n{text}");
        let err = CoordinatorConfig::parse("c.toml", &bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("c.toml:1:") && err.contains("postgres://"),
            "{err}"
        );
    }

    #[test]
    fn peer_urls_go_into_tokens_and_need_a_shared_store() {
        let text = "data_dir = \"/tmp/x\"\npublic_urls = [\"https://10.0.0.1:8443\"]\n\
                    peer_urls = [\"https://10.0.0.2:8443\", \"https://10.0.0.1:8443\"]\n";
        let err = CoordinatorConfig::parse("c.toml", text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("peer_urls") && err.contains("postgres://"),
            "{err}"
        );
        let pg = format!("store = \"postgres://seg@10.0.0.9/segmesh\"\n{text}");
        let cfg = CoordinatorConfig::parse("c.toml", &pg).unwrap();
        assert_eq!(
            cfg.token_urls(),
            ["https://10.0.0.1:8443", "https://10.0.0.2:8443"]
        );
        assert_eq!(
            cfg.certificate_names(),
            ["10.0.0.1"],
            "peers are not our SANs"
        );
        let bad = pg.replace("https://10.0.0.2:8443", "http://10.0.0.2");
        let err = CoordinatorConfig::parse("c.toml", &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("peer_urls"), "{err}");
    }

    #[test]
    fn maintenance_defaults_overrides_and_errors() {
        let text = "data_dir = \"/tmp/x\"\npublic_urls = [\"https://10.0.0.1:8443\"]\n";
        let cfg = CoordinatorConfig::parse("c.toml", text).unwrap();
        assert_eq!(cfg.maintenance, MaintenanceConfig::default());
        let s = cfg.maintenance.schedule();
        assert_eq!(s.interval, Duration::from_secs(60));
        assert_eq!(s.retention.tokens, Duration::from_secs(7 * 86_400));
        assert_eq!(s.retention.revoked_nodes, Duration::from_secs(30 * 86_400));

        let set =
            format!("{text}[maintenance]\ninterval_secs = 5\nrevoked_node_retention_secs = 0\n");
        let m = CoordinatorConfig::parse("c.toml", &set)
            .unwrap()
            .maintenance;
        assert_eq!(
            (
                m.interval_secs,
                m.token_retention_secs,
                m.revoked_node_retention_secs
            ),
            (5, 7 * 86_400, 0),
            "unset keys keep their defaults"
        );

        // (the [maintenance] body, the position, a word the message has)
        let bad = [
            ("interval_secs = 0", "c.toml:4:17: ", "at least 1"),
            ("interval = 10", "c.toml:4:1: ", "interval_secs"),
            ("token_retention_secs = -1", "c.toml:4:24: ", "u64"),
        ];
        for (body, at, says) in bad {
            let text = format!("{text}[maintenance]\n{body}\n");
            let err = CoordinatorConfig::parse("c.toml", &text)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(at) && err.contains(says), "{body}: {err}");
        }
    }
}
