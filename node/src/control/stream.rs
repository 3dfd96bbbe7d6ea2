//! The coordinator session client: mTLS to the coordinator (one upgraded
//! connection, see `GET /v1/session`), apply each netmap
//! that passes validation and peer pinning, cache it, ack its version;
//! reconnect with backoff and jitter, trying every coordinator URL.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand_core::{OsRng, RngCore as _};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use segmesh_config::client::{HttpsClient, LineSink, LineStream, ServerTrust, tls_config};
use segmesh_config::control::{EndpointsReport, NodeMessage, Rotation, StreamMessage, apply_delta};
use segmesh_config::{NetMap, PublicKey};
use tokio::sync::{mpsc, oneshot};

use super::backoff::Backoff;
use super::cache::{CacheError, NetmapCache};
use super::files::{ControlState, FileError, StateDir, read_secret};
use super::pin::check_pins;
use super::rotate::{self, RotateError, RotateReport, public_of};

/// With no line (netmap or heartbeat) for this long, the stream is
/// considered dead and reopened (the coordinator's heartbeat is 10 s).
const DEFAULT_IDLE: Duration = Duration::from_secs(35);
/// Opening the stream (TCP, TLS, HTTP) may take this long; a coordinator
/// host that drops packets must not hold rotation requests for minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the control client could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("TLS material in the state directory: {0}")]
    Tls(String),
}

/// What the control client asks of the data plane; each is answered once
/// it is in force.
#[derive(Debug)]
pub enum PlaneCommand {
    /// Install this netmap.
    Apply(NetMap),
    /// Switch to this WireGuard private key (a rotation the coordinator
    /// accepted); netmaps that follow carry its public key.
    RotateKey(Box<[u8; 32]>),
}

/// A `rotate-key` request from the control socket, with where to answer.
pub type RotateRequest = oneshot::Sender<Result<RotateReport, String>>;

/// What happened on the stream, for callers that want to observe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    Connected(String),
    Applied(u64),
    Refused(String),
    Disconnected(String),
}

/// The coordinator client of an enrolled node.
#[derive(Debug)]
pub struct ControlClient {
    dir: StateDir,
    state: ControlState,
    public_key: PublicKey,
    clients: Vec<HttpsClient>,
    requests: Option<mpsc::Receiver<RotateRequest>>,
    cache: NetmapCache,
    current: Option<NetMap>,
    endpoints: EndpointsReport,
    idle: Duration,
    backoff: Backoff,
}

impl ControlClient {
    /// Loads the state directory, including the cached netmap (refused when
    /// its integrity check fails).
    pub fn load(dir: &StateDir, endpoints: EndpointsReport) -> Result<Self, ControlError> {
        let state = dir.load_control()?;
        let secret = dir.load_private_key()?;
        let public_key = public_of(&secret);
        let tls_err = |e: &dyn std::fmt::Display| ControlError::Tls(e.to_string());
        let ca_pem = std::fs::read(dir.ca_cert()).map_err(|e| tls_err(&e))?;
        let ca = CertificateDer::pem_slice_iter(&ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err(&e))?;
        let chain = CertificateDer::pem_file_iter(dir.tls_cert())
            .map_err(|e| tls_err(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err(&e))?;
        let key = PrivateKeyDer::from_pem_slice(&read_secret(&dir.tls_key())?)
            .map_err(|e| tls_err(&e))?;
        let tls = Arc::new(
            tls_config(&ServerTrust::Ca(ca), Some((chain, key))).map_err(|e| tls_err(&e))?,
        );
        let clients = state
            .urls
            .iter()
            .map(|u| HttpsClient::new(u, Arc::clone(&tls)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err(&e))?;
        let cache = NetmapCache::new(dir.clone(), &secret);
        let current = cache.load()?;
        Ok(Self {
            dir: dir.clone(),
            state,
            public_key,
            clients,
            requests: None,
            cache,
            current,
            endpoints,
            idle: DEFAULT_IDLE,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
        })
    }

    /// Overrides the dead-stream timeout (tests use short heartbeats).
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// Serves `rotate-key` requests (from the control socket) while running.
    pub fn with_rotation_requests(mut self, rx: mpsc::Receiver<RotateRequest>) -> Self {
        self.requests = Some(rx);
        self
    }

    /// The netmap to start the data plane with (the cache), if any.
    pub fn current(&self) -> Option<&NetMap> {
        self.current.as_ref()
    }

    pub fn state(&self) -> &ControlState {
        &self.state
    }

    /// Runs until `shutdown` resolves. `apply` installs a netmap in the data
    /// plane and returns once it is in force; only then is it cached and
    /// acked. `events` observes the stream.
    pub async fn run<A, Fut>(
        &mut self,
        mut apply: A,
        events: Option<tokio::sync::mpsc::UnboundedSender<StreamEvent>>,
        shutdown: impl Future<Output = ()>,
    ) where
        A: FnMut(PlaneCommand) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        tokio::pin!(shutdown);
        let emit = |e: StreamEvent| {
            if let Some(tx) = &events {
                let _ = tx.send(e);
            }
        };
        let mut requests = self.requests.take();
        let mut next = 0usize;
        loop {
            let client = self.clients[next % self.clients.len()].clone();
            next += 1;
            let reason = tokio::select! {
                () = &mut shutdown => return,
                r = self.session(&client, &mut apply, &emit, &mut requests) => r,
            };
            tracing::warn!(coordinator = client.url(), reason = %reason, "coordinator stream ended");
            emit(StreamEvent::Disconnected(reason));
            let delay = tokio::time::sleep(self.backoff.next_delay(OsRng.next_u64()));
            tokio::pin!(delay);
            // Rotation requests are answered while disconnected too: the
            // coordinator may be reachable for a request even when the
            // stream is not, and if not, the user hears so at once.
            loop {
                tokio::select! {
                    () = &mut shutdown => return,
                    () = &mut delay => break,
                    Some(req) = next_request(&mut requests) => self.serve_rotation(req, &mut apply).await,
                }
            }
        }
    }

    /// One connection: open the stream, report endpoints, then apply and
    /// ack netmaps until the stream ends. Returns why it ended.
    async fn session<A, Fut>(
        &mut self,
        client: &HttpsClient,
        apply: &mut A,
        emit: &impl Fn(StreamEvent),
        requests: &mut Option<mpsc::Receiver<RotateRequest>>,
    ) -> String
    where
        A: FnMut(PlaneCommand) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        // Resume from the version in force: a coordinator that holds the
        // same version starts with a heartbeat instead of a full netmap, so
        // a failover or restart does not resend every node's netmap.
        let path = match &self.current {
            Some(m) => format!("/v1/session?since={}", m.version),
            None => "/v1/session".to_string(),
        };
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, client.session(&path)).await;
        let (mut stream, mut sink): (LineStream, LineSink) = match opened {
            Ok(Ok(Ok(s))) => s,
            Ok(Ok(Err(resp))) => {
                return format!(
                    "refused ({}): {}",
                    resp.status,
                    String::from_utf8_lossy(&resp.body)
                );
            }
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return format!("no answer in {CONNECT_TIMEOUT:?}"),
        };
        self.backoff.reset();
        tracing::info!(coordinator = client.url(), node = %self.state.name, "coordinator stream open");
        emit(StreamEvent::Connected(client.url().to_string()));
        let report = NodeMessage::Endpoints {
            endpoints: self.endpoints.clone(),
        };
        if let Err(e) = sink.send(&report).await {
            return e.to_string();
        }
        loop {
            let read = tokio::select! {
                r = tokio::time::timeout(self.idle, stream.next_line()) => r,
                Some(req) = next_request(requests) => {
                    self.serve_rotation(req, apply).await;
                    continue;
                }
            };
            let line = match read {
                Err(_) => return "no heartbeat".into(),
                Ok(Err(e)) => return e.to_string(),
                Ok(Ok(None)) => return "closed by the coordinator".into(),
                Ok(Ok(Some(line))) => line,
            };
            let (map, rotations) = match serde_json::from_slice::<StreamMessage>(&line) {
                Ok(StreamMessage::Heartbeat { .. }) => continue,
                Ok(StreamMessage::Netmap { netmap, rotations }) => (netmap, rotations),
                Ok(StreamMessage::Delta {
                    base_version,
                    version,
                    remove,
                    upsert,
                    rotations,
                }) => match &self.current {
                    Some(cur) if cur.version == base_version => {
                        (apply_delta(cur, version, &remove, &upsert), rotations)
                    }
                    // We refused or missed the base: a new stream starts
                    // with a full netmap.
                    cur => {
                        return format!(
                            "delta on version {base_version} but this node holds {:?}; resyncing",
                            cur.as_ref().map(|m| m.version)
                        );
                    }
                },
                Err(e) => return format!("undecodable message: {e}"),
            };
            let version = map.version;
            match self.accept(map, &rotations, apply).await {
                Ok(()) => {
                    emit(StreamEvent::Applied(version));
                    // On the session itself: no request, no second
                    // connection (the coordinator logs a refused ack).
                    if let Err(e) = sink.send(&NodeMessage::Ack { version }).await {
                        return e.to_string();
                    }
                }
                Err(why) => {
                    tracing::error!(netmap_version = version, error = %why, "netmap refused; keeping the previous one");
                    emit(StreamEvent::Refused(why));
                }
            }
        }
    }

    /// Validates, pins, applies and caches one netmap.
    async fn accept<A, Fut>(
        &mut self,
        map: NetMap,
        rotations: &[Rotation],
        apply: &mut A,
    ) -> Result<(), String>
    where
        A: FnMut(PlaneCommand) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        map.validate().map_err(|e| e.to_string())?;
        if map.node.public_key != self.public_key {
            self.adopt_pending(&map.node.public_key, apply).await?;
        }
        if let Some(cur) = &self.current {
            if map.version < cur.version {
                return Err(format!(
                    "netmap version {} is older than the applied {}",
                    map.version, cur.version
                ));
            }
            check_pins(cur, &map, rotations).map_err(|e| e.to_string())?;
        }
        apply(PlaneCommand::Apply(map.clone())).await?;
        if let Err(e) = self.cache.save(&map) {
            tracing::error!(error = %e, "cannot write the netmap cache");
        }
        tracing::info!(
            netmap_version = map.version,
            peers = map.peers.len(),
            "netmap applied"
        );
        self.current = Some(map);
        Ok(())
    }
}

/// The next rotation request, or never when there is no request channel
/// (or it closed).
async fn next_request(rx: &mut Option<mpsc::Receiver<RotateRequest>>) -> Option<RotateRequest> {
    match rx {
        Some(r) => match r.recv().await {
            Some(req) => Some(req),
            None => {
                *rx = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

impl ControlClient {
    /// Answers one `rotate-key` request.
    async fn serve_rotation<A, Fut>(&mut self, reply: RotateRequest, apply: &mut A)
    where
        A: FnMut(PlaneCommand) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let result = self.rotate(apply).await;
        match &result {
            Ok(r) => tracing::info!(
                public_key = %r.new_key,
                peers_acked = r.peers_acked,
                peers_total = r.peers_total,
                ms = r.peers_ms,
                "WireGuard key rotated"
            ),
            Err(e) => tracing::error!(error = %e, "key rotation failed"),
        }
        let _ = reply.send(result.map_err(|e| e.to_string()));
    }

    /// Rotates the key through the coordinator (see `rotate`'s module doc).
    pub async fn rotate<A, Fut>(&mut self, apply: &mut A) -> Result<RotateReport, RotateError>
    where
        A: FnMut(PlaneCommand) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let secret = rotate::pending_or_new(&self.dir)?;
        let new = public_of(&secret);
        // Fresh connections: a failed connect then proves the request never
        // left, so "unreachable" really means nothing changed.
        let clients: Vec<HttpsClient> = self.clients.iter().map(HttpsClient::fresh).collect();
        let reply = match rotate::request(&clients, new).await {
            Ok(r) => r,
            Err(e) => {
                if matches!(e, RotateError::Refused { .. } | RotateError::Unreachable(_)) {
                    rotate::discard_pending(&self.dir);
                }
                return Err(e);
            }
        };
        let old = self.public_key;
        self.switch_key(&secret, apply).await?;
        Ok(RotateReport {
            old_key: old,
            new_key: new,
            netmap_version: reply.version,
            peers_acked: reply.peers_acked,
            peers_total: reply.peers_total,
            peers_ms: reply.elapsed_ms,
        })
    }

    /// A netmap for a key other than ours is accepted only when it is our
    /// pending key: the coordinator took a rotation whose answer this node
    /// never saw (lost reply, or a crash before the commit).
    async fn adopt_pending<A, Fut>(&mut self, key: &PublicKey, apply: &mut A) -> Result<(), String>
    where
        A: FnMut(PlaneCommand) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let pending = rotate::pending(&self.dir).map_err(|e| e.to_string())?;
        let Some(secret) = pending.filter(|s| public_of(s) == *key) else {
            return Err("netmap is for another WireGuard key".into());
        };
        tracing::info!(public_key = %key, "the coordinator holds the pending key; completing the rotation");
        self.switch_key(&secret, apply)
            .await
            .map_err(|e| e.to_string())
    }

    /// Switches the data plane to `secret`, then commits it on disk. The
    /// peers already hold the new key, so every millisecond on the old one
    /// is lost traffic: the disk syncs come second. A crash in between
    /// leaves the pending key, which the next netmap resolves.
    async fn switch_key<A, Fut>(
        &mut self,
        secret: &[u8; 32],
        apply: &mut A,
    ) -> Result<(), RotateError>
    where
        A: FnMut(PlaneCommand) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        apply(PlaneCommand::RotateKey(Box::new(*secret)))
            .await
            .map_err(RotateError::DataPlane)?;
        self.public_key = public_of(secret);
        self.cache = rotate::commit(&self.dir, secret, self.current.as_mut())?;
        Ok(())
    }
}
