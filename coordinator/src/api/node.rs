//! Node routes: enrollment (token), and over mTLS the netmap stream, acks
//! and endpoint reports.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use segmesh_config::NodeName;
use segmesh_config::control::{
    AckRequest, EndpointsReport, EnrollRequest, EnrollResponse, RotateKeyRequest,
    RotateKeyResponse, Rotation, StreamMessage, decode_secret,
};
use sha2::{Digest as _, Sha256};

use super::auth::{JsonBody, NodeAuth};
use super::{ApiError, ConnInfo, Ctx};
use crate::distribute::Distributor;
use crate::store;

/// POST /v1/enroll: token secret + WireGuard key + CSR + local endpoints.
pub async fn enroll(
    State(ctx): State<Arc<Ctx>>,
    Extension(info): Extension<ConnInfo>,
    JsonBody(req): JsonBody<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    let secret = decode_secret(&req.secret).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let now = ctx.clock.now();
    let store_req = store::EnrollRequest {
        secret_sha256: Sha256::digest(secret).into(),
        name: req.name.clone(),
        public_key: req.public_key,
        endpoints: req.endpoints.endpoints(Some(info.remote.ip())),
    };
    let ca = Arc::clone(&ctx.ca);
    let csr = req.csr_pem.clone();
    let sign = move |name: &NodeName| {
        ca.sign_client(&csr, name, now.unix)
            .map_err(|e| e.to_string())
    };
    let (node, cert) = ctx
        .store
        .enroll(&store_req, &ctx.settings.prefixes, &sign, now.unix)
        .await?;
    ctx.metrics.enrollments.fetch_add(1, Ordering::Relaxed);
    tracing::info!(node = %node.name, remote = %info.remote, "node enrolled");
    ctx.dist
        .node_changed(&node.name, Vec::new(), now.instant)
        .await?;
    let netmap = ctx
        .dist
        .expected(&node.name)
        .await
        .ok_or_else(|| ApiError::Internal(format!("no netmap for new node {}", node.name)))?;
    Ok(Json(EnrollResponse {
        name: node.name.clone(),
        addresses: node.addresses(),
        cert_pem: cert.cert_pem,
        ca_pem: ctx.ca.cert_pem().to_string(),
        netmap,
    }))
}

/// Forgets the stream in the distributor when the response body is dropped
/// (client gone, coordinator shutting down).
pub(super) struct StreamGuard {
    pub(super) dist: Arc<Distributor>,
    pub(super) name: NodeName,
    pub(super) conn: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let dist = Arc::clone(&self.dist);
        let name = self.name.clone();
        let conn = self.conn;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { dist.unsubscribe(&name, conn).await });
        }
    }
}

/// `GET /v1/stream?since=V` query.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// The netmap version the node has in force. When it is the current
    /// one, the stream does not start with a full netmap: a node failing
    /// over to another coordinator (which sends the same versions) resumes
    /// without a resync.
    pub since: Option<u64>,
}

/// GET /v1/stream: newline-delimited JSON, the current netmap first (unless
/// `since` names it), then every new version, with heartbeats in between.
/// Ends when the node is revoked or opens a newer stream.
pub async fn stream(
    State(ctx): State<Arc<Ctx>>,
    Query(query): Query<StreamQuery>,
    NodeAuth(node, info): NodeAuth,
) -> Result<Response, ApiError> {
    let (guard, rx) = open_feed(&ctx, &node.name, &info, query.since, "stream").await?;
    let beat = ctx.settings.heartbeat;
    let clock = Arc::clone(&ctx.clock);
    let body = futures_util::stream::unfold((rx, guard), move |(mut rx, guard)| {
        let clock = Arc::clone(&clock);
        async move {
            let item = match tokio::time::timeout(beat, rx.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) => return None,
                Err(_) => heartbeat_line(clock.as_ref()),
            };
            Some((Ok::<_, Infallible>(item), (rx, guard)))
        }
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .header("cache-control", "no-store")
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Opens a node's netmap feed (GET /v1/stream, GET /v1/session): the
/// current netmap is queued first unless `since` names it, and then the
/// node has that version in force (e.g. from its enrollment answer, or
/// acked to another coordinator), which is an ack. The guard forgets the
/// feed when dropped.
pub(super) async fn open_feed(
    ctx: &Ctx,
    name: &NodeName,
    info: &ConnInfo,
    since: Option<u64>,
    kind: &'static str,
) -> Result<(StreamGuard, tokio::sync::mpsc::Receiver<Bytes>), ApiError> {
    let now = ctx.clock.now();
    let (conn, rx, resumed) = ctx
        .dist
        .subscribe(name, now.instant, since)
        .await
        .ok_or_else(|| ApiError::Forbidden(format!("node {name} has no netmap")))?;
    tracing::info!(node = %name, remote = %info.remote, resumed, kind, "netmap feed opened");
    if let Some(v) = since.filter(|_| resumed) {
        ctx.dist.ack(name, v, now).await?;
    }
    let guard = StreamGuard {
        dist: Arc::clone(&ctx.dist),
        name: name.clone(),
        conn,
    };
    Ok((guard, rx))
}

/// One heartbeat line: sent when a feed has been quiet for a while, so
/// both ends notice a dead connection.
pub(super) fn heartbeat_line(clock: &dyn crate::clock::Clock) -> Bytes {
    let msg = StreamMessage::Heartbeat {
        at: clock.now().unix,
    };
    let mut v = serde_json::to_vec(&msg).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// POST /v1/ack: the node applied `version`.
pub async fn ack(
    State(ctx): State<Arc<Ctx>>,
    NodeAuth(node, _): NodeAuth,
    JsonBody(req): JsonBody<AckRequest>,
) -> Result<StatusCode, ApiError> {
    ctx.dist
        .ack(&node.name, req.version, ctx.clock.now())
        .await?;
    tracing::debug!(node = %node.name, netmap_version = req.version, "ack");
    Ok(StatusCode::NO_CONTENT)
}

/// POST /v1/endpoints: the node's local addresses and listen port; the
/// observed source address is added.
pub async fn endpoints(
    State(ctx): State<Arc<Ctx>>,
    NodeAuth(node, info): NodeAuth,
    JsonBody(report): JsonBody<EndpointsReport>,
) -> Result<StatusCode, ApiError> {
    record_endpoints(&ctx, &node.name, &info, &report).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stores a node's endpoints (plus the address its connection came from)
/// and, when they changed, pushes its peers' new netmaps.
pub(super) async fn record_endpoints(
    ctx: &Ctx,
    name: &NodeName,
    info: &ConnInfo,
    report: &EndpointsReport,
) -> Result<(), ApiError> {
    let eps = report.endpoints(Some(info.remote.ip()));
    if ctx.store.set_endpoints(name, &eps).await? {
        tracing::info!(node = %name, endpoints = ?eps, "endpoints changed");
        ctx.dist
            .node_changed(name, Vec::new(), ctx.clock.now().instant)
            .await?;
    }
    Ok(())
}

/// POST /v1/rotate-key: the node replaces its WireGuard key. Its peers get
/// the new key marked as a rotation of the old one; the reply waits (up to
/// the ack timeout) until they applied it, so the node can switch at once.
/// Asking again for the key the node already has is answered like the first
/// time: a node that crashed before reading the reply retries safely.
pub async fn rotate_key(
    State(ctx): State<Arc<Ctx>>,
    NodeAuth(node, _): NodeAuth,
    JsonBody(req): JsonBody<RotateKeyRequest>,
) -> Result<Json<RotateKeyResponse>, ApiError> {
    let now = ctx.clock.now();
    let version = |m: Option<segmesh_config::NetMap>| m.map_or(0, |m| m.version);
    if node.public_key == req.public_key {
        tracing::info!(node = %node.name, "key rotation repeated; already in force");
        return Ok(Json(RotateKeyResponse {
            version: version(ctx.dist.expected(&node.name).await),
            peers_acked: 0,
            peers_total: 0,
            elapsed_ms: 0,
        }));
    }
    let change = store::Change::new(format!("node:{}", node.name), now.unix);
    let (old, _) = ctx
        .store
        .rotate_key(&node.name, &req.public_key, &change)
        .await?;
    let rotation = Rotation {
        old,
        new: req.public_key,
    };
    let mut pushed = ctx
        .dist
        .node_changed(&node.name, vec![rotation], now.instant)
        .await?;
    // The rotating node itself is not waited for: it applies its own new
    // netmap after this reply.
    pushed.remove(&node.name);
    let peers = ctx
        .dist
        .wait_acks(&pushed, now.instant, ctx.settings.ack_timeout)
        .await;
    tracing::info!(
        node = %node.name,
        acked = peers.acked,
        total = peers.total,
        ms = peers.elapsed_ms,
        "WireGuard key rotated"
    );
    Ok(Json(RotateKeyResponse {
        version: version(ctx.dist.expected(&node.name).await),
        peers_acked: peers.acked,
        peers_total: peers.total,
        elapsed_ms: peers.elapsed_ms,
    }))
}
