//! Wiring a coordinator together from its configuration: data dir, CA,
//! admin token, store, distributor, TLS. Used by `segmesh-coordinator serve`
//! and by the API tests, so both run the same code.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rand_core::{OsRng, RngCore as _};
use sha2::{Digest as _, Sha256};

use crate::api::{Ctx, Settings, server_tls_config};
use crate::ca::{Ca, CaError, read_private, write_private};
use crate::clock::Clock;
use crate::config::CoordinatorConfig;
use crate::distribute::Distributor;
use crate::metrics::Metrics;
use crate::store::{Opened, StoreError};

/// Admin token file (plaintext, 0600, for the admin to copy and delete).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// What the coordinator keeps of the admin token.
const ADMIN_HASH_FILE: &str = "admin.token.sha256";

/// Why the coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}: not a 64-digit hex SHA-256")]
    AdminHash(PathBuf),
}

/// A coordinator ready to serve.
#[derive(Debug)]
pub struct Prepared {
    pub ctx: Arc<Ctx>,
    pub tls: Arc<rustls::ServerConfig>,
    /// Set on first start: where the new admin token was written.
    pub admin_token_created: Option<PathBuf>,
    pub ca_created: bool,
    /// The change-feed task (PostgreSQL only); aborted on stop.
    pub feed: Option<tokio::task::JoinHandle<()>>,
    /// The maintenance task (see [`crate::maintenance`]); aborted on stop.
    pub maintenance: tokio::task::JoinHandle<()>,
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Loads the admin token hash, creating token and hash on first start.
fn admin_token(dir: &Path) -> Result<([u8; 32], Option<PathBuf>), StartError> {
    let hash_path = dir.join(ADMIN_HASH_FILE);
    if hash_path.exists() {
        let text = read_private(&hash_path)?;
        let hash = parse_hex32(&text).ok_or(StartError::AdminHash(hash_path))?;
        return Ok((hash, None));
    }
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let token = format!("sma1.{}", B64URL.encode(secret));
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let token_path = dir.join(ADMIN_TOKEN_FILE);
    write_private(&token_path, format!("{token}\n").as_bytes())?;
    write_private(&hash_path, crate::ca::hex(&hash).as_bytes())?;
    Ok((hash, Some(token_path)))
}

/// Creates the data dir (0700) and everything in it on first start, then
/// loads CA, admin token hash, store and distributor.
pub async fn prepare(
    cfg: &CoordinatorConfig,
    clock: Arc<dyn Clock>,
) -> Result<Prepared, StartError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let dir = &cfg.data_dir;
    let io = |source| StartError::Io {
        path: dir.clone(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    let now = clock.now();
    let (ca, ca_created) = Ca::load_or_create(dir, now.unix)?;
    let (admin_token_sha256, admin_token_created) = admin_token(dir)?;
    let location = cfg.store_location();
    tracing::info!(store = %location, "opening store");
    let opened = crate::store::open(&location).await?;
    let store = opened.store();
    let metrics = Arc::new(Metrics::default());
    let settings = Settings {
        public_urls: cfg.token_urls(),
        prefixes: cfg.prefixes(),
        heartbeat: Duration::from_secs(cfg.heartbeat_secs),
        ack_timeout: Duration::from_secs(cfg.ack_timeout_secs),
    };
    let mut dist =
        Distributor::load(Arc::clone(&store), settings.overlay(), Arc::clone(&metrics)).await?;
    if matches!(opened, Opened::Postgres(_)) {
        dist = dist.into_shared();
    }
    let dist = Arc::new(dist);
    // Other coordinators' changes reach this one's nodes through the feed.
    let feed = match &opened {
        Opened::Postgres(pg) => Some(tokio::spawn(crate::feed::follow(
            pg.clone(),
            Arc::clone(&dist),
            Arc::clone(&clock),
        ))),
        Opened::Sqlite(_) => None,
    };
    // Every coordinator runs it; the store lets one pass run at a time.
    let maintenance = tokio::spawn(crate::maintenance::run(
        Arc::clone(&store),
        Arc::clone(&clock),
        cfg.maintenance.schedule(),
    ));
    let (chain, key) = ca.server_identity(&cfg.certificate_names(), now.unix)?;
    let tls = server_tls_config(ca.cert_der(), chain, key)?;
    let ctx = Ctx {
        store,
        ca: Arc::new(ca),
        clock,
        dist,
        metrics,
        settings,
        admin_token_sha256,
    };
    Ok(Prepared {
        ctx: Arc::new(ctx),
        tls: Arc::new(tls),
        admin_token_created,
        ca_created,
        feed,
        maintenance,
    })
}

/// A coordinator serving in a background task (tests, embedding).
#[derive(Debug)]
pub struct Running {
    pub prepared_ctx: Arc<Ctx>,
    pub local_addr: std::net::SocketAddr,
    pub admin_token_created: Option<PathBuf>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    feed: Option<tokio::task::JoinHandle<()>>,
    maintenance: tokio::task::JoinHandle<()>,
}

/// Prepares a coordinator and serves it on `listener` in a task.
pub async fn spawn(
    cfg: &CoordinatorConfig,
    listener: tokio::net::TcpListener,
    clock: Arc<dyn Clock>,
) -> Result<Running, StartError> {
    let local_addr = listener.local_addr().map_err(|source| StartError::Io {
        path: PathBuf::from("listener"),
        source,
    })?;
    let prepared = prepare(cfg, clock).await?;
    let router = crate::api::router(Arc::clone(&prepared.ctx));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(crate::api::run(listener, prepared.tls, router, async {
        let _ = rx.await;
    }));
    Ok(Running {
        prepared_ctx: prepared.ctx,
        local_addr,
        admin_token_created: prepared.admin_token_created,
        stop: Some(tx),
        task,
        feed: prepared.feed,
        maintenance: prepared.maintenance,
    })
}

impl Running {
    /// Stops accepting, closes every connection and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
        self.prepared_ctx.dist.disconnect_all().await;
        if let Some(feed) = self.feed.take() {
            feed.abort();
        }
        self.maintenance.abort();
    }
}
