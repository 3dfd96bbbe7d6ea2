//! GET /v1/session: a node's control session on one connection.
//!
//! An HTTP/1.1 upgrade (`Upgrade: segmesh-session/1`) to newline-delimited
//! JSON both ways: the coordinator sends what GET /v1/stream sends (netmaps,
//! deltas, heartbeats); the node sends [`NodeMessage`]s (acks, endpoint
//! reports) instead of POSTing each on a second connection. One connection
//! per node halves the coordinator's open files (10,000 nodes fit under a
//! 20,000 descriptor limit) and an ack costs a line, not a request on a
//! kept-alive connection that the server closes when idle (and so, after a
//! quiet spell, a new TLS handshake per node and change).

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use segmesh_config::NodeName;
use segmesh_config::client::SESSION_PROTOCOL;
use segmesh_config::control::NodeMessage;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::auth::NodeAuth;
use super::node::{StreamQuery, heartbeat_line, open_feed, record_endpoints};
use super::{ApiError, ConnInfo, Ctx};

/// A node line longer than this ends the session (acks and endpoint reports
/// are a few hundred bytes).
const MAX_NODE_LINE: usize = 64 << 10;

/// GET /v1/session?since=V: answers 101 and runs the session in a task.
pub async fn session(
    State(ctx): State<Arc<Ctx>>,
    Query(query): Query<StreamQuery>,
    NodeAuth(node, info): NodeAuth,
    mut req: Request,
) -> Result<Response, ApiError> {
    let wants = req.headers().get(header::UPGRADE).is_some_and(|v| {
        v.as_bytes()
            .eq_ignore_ascii_case(SESSION_PROTOCOL.as_bytes())
    });
    if !wants {
        return Err(ApiError::BadRequest(format!(
            "GET /v1/session needs `Connection: upgrade` and `Upgrade: {SESSION_PROTOCOL}`"
        )));
    }
    let on_upgrade = req
        .extensions_mut()
        .remove::<OnUpgrade>()
        .ok_or_else(|| ApiError::BadRequest("this connection cannot be upgraded".into()))?;
    let (guard, rx) = open_feed(&ctx, &node.name, &info, query.since, "session").await?;
    let name = node.name.clone();
    tokio::spawn(async move {
        let _guard = guard;
        match on_upgrade.await {
            Ok(upgraded) => {
                let reason = run(&ctx, &name, &info, rx, TokioIo::new(upgraded)).await;
                tracing::info!(node = %name, remote = %info.remote, reason, "session ended");
            }
            Err(e) => tracing::debug!(node = %name, error = %e, "session upgrade failed"),
        }
    });
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(SESSION_PROTOCOL));
    Ok(resp)
}

/// Forwards queued lines (or a heartbeat every `heartbeat`) to the node and
/// handles what the node sends, until either side ends. Returns why.
async fn run<S: AsyncRead + AsyncWrite>(
    ctx: &Ctx,
    name: &NodeName,
    info: &ConnInfo,
    mut rx: mpsc::Receiver<Bytes>,
    io: S,
) -> &'static str {
    let (mut read, mut write) = tokio::io::split(io);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let beat = ctx.settings.heartbeat;
    loop {
        // Lines already read are handled before reading more.
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).take(pos).collect();
            if !line.iter().all(u8::is_ascii_whitespace) {
                handle(ctx, name, info, &line).await;
            }
        }
        if buf.len() > MAX_NODE_LINE {
            tracing::warn!(node = %name, bytes = buf.len(), "session line too long; closing");
            return "line too long";
        }
        buf.reserve(4096);
        let out = tokio::select! {
            queued = tokio::time::timeout(beat, rx.recv()) => match queued {
                Ok(Some(line)) => line,
                // Revoked, replaced by a newer session, or shutting down.
                Ok(None) => return "closed by the coordinator",
                Err(_) => heartbeat_line(ctx.clock.as_ref()),
            },
            n = read.read_buf(&mut buf) => match n {
                Ok(0) => return "closed by the node",
                Ok(_) => continue,
                Err(_) => return "read failed",
            },
        };
        if write.write_all(&out).await.is_err() || write.flush().await.is_err() {
            return "write failed";
        }
    }
}

/// One line from the node. A bad line is logged and skipped: the session
/// (and the node's netmap updates) go on.
async fn handle(ctx: &Ctx, name: &NodeName, info: &ConnInfo, line: &[u8]) {
    match serde_json::from_slice::<NodeMessage>(line) {
        Ok(NodeMessage::Ack { version }) => {
            match ctx.dist.ack(name, version, ctx.clock.now()).await {
                Ok(()) => tracing::debug!(node = %name, netmap_version = version, "ack"),
                Err(e) => {
                    tracing::warn!(node = %name, netmap_version = version, error = %e, "ack refused")
                }
            }
        }
        Ok(NodeMessage::Endpoints { endpoints }) => {
            if let Err(e) = record_endpoints(ctx, name, info, &endpoints).await {
                tracing::warn!(node = %name, error = %e, "endpoint report not recorded");
            }
        }
        Err(e) => tracing::warn!(node = %name, error = %e, "undecodable session line; skipped"),
    }
}
