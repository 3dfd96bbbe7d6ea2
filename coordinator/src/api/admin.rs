//! The admin API (bearer admin token) and `/metrics`.
//!
//! Every change goes through the store (which audits it in the same
//! transaction) and then through the distributor.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use rand_core::{OsRng, RngCore as _};
use segmesh_config::compile::Compiler;
use segmesh_config::control::JoinToken;
use segmesh_config::explain::{Explanation, explain as explain_flow, run_tests};
use segmesh_config::identity::validate_label;
use segmesh_config::policy::Endpoint;
use segmesh_config::{Labels, NodeName, Policy, PortSpec};
use sha2::{Digest as _, Sha256};

pub use super::admin_types::*;
use super::auth::{AdminAuth, JsonBody};
use super::{ApiError, ConnInfo, Ctx};
use crate::distribute::netmap_digest;
use crate::metrics::Gauges;
use crate::store::{
    AuditEntry, Change, NewToken, NodeRecord, PolicyRecord, StoreError, TokenRecord,
};

fn actor(info: &ConnInfo) -> String {
    format!("admin@{}", info.remote.ip())
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

fn check_labels(labels: &Labels) -> Result<(), ApiError> {
    labels
        .iter()
        .try_for_each(|(k, v)| validate_label(k, v).map_err(bad))
}

pub async fn create_token(
    State(ctx): State<Arc<Ctx>>,
    _: AdminAuth,
    Extension(info): Extension<ConnInfo>,
    JsonBody(req): JsonBody<CreateToken>,
) -> Result<Json<CreatedToken>, ApiError> {
    check_labels(&req.labels)?;
    if let Some(p) = &req.name_prefix {
        NodeName::new(format!("{p}-1")).map_err(|_| bad(format!("invalid name prefix {p:?}")))?;
    }
    if req.uses == 0 || req.ttl_secs == 0 {
        return Err(bad("a token needs at least one use and a positive TTL"));
    }
    let ttl = i64::try_from(req.ttl_secs).map_err(bad)?;
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let now = ctx.clock.now();
    let new = NewToken {
        secret_sha256: Sha256::digest(secret).into(),
        name_prefix: req.name_prefix,
        labels: req.labels,
        expires_at: now.unix.saturating_add(ttl),
        uses: req.uses,
    };
    let record = ctx
        .store
        .create_token(new, &Change::new(actor(&info), now.unix))
        .await?;
    let token = JoinToken::new(
        ctx.settings.public_urls.clone(),
        &secret,
        ctx.ca.fingerprint(),
    );
    tracing::info!(token_id = record.id, "join token created");
    Ok(Json(CreatedToken {
        token: token.encode(),
        record,
    }))
}

pub async fn list_tokens(
    State(ctx): State<Arc<Ctx>>,
    _: AdminAuth,
) -> Result<Json<Vec<TokenRecord>>, ApiError> {
    Ok(Json(ctx.store.list_tokens().await?))
}

pub async fn revoke_token(
    State(ctx): State<Arc<Ctx>>,
    _: AdminAuth,
    Extension(info): Extension<ConnInfo>,
    Path(id): Path<i64>,
) -> Result<Json<TokenRecord>, ApiError> {
    let change = Change::new(actor(&info), ctx.clock.now().unix);
    Ok(Json(ctx.store.revoke_token(id, &change).await?))
}

pub async fn list_nodes(
    State(ctx): State<Arc<Ctx>>,
    _: AdminAuth,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    ctx.dist.flush_acks().await;
    let connected = ctx.dist.connected().await;
    let nodes = ctx.store.list_nodes().await?;
    Ok(Json(
        nodes
            .into_iter()
            .map(|node| NodeView {
                connected: connected.get(&node.name).copied().unwrap_or(false),
                node,
            })
            .collect(),
    ))
}

fn node_name(s: &str) -> Result<NodeName, ApiError> {
    NodeName::new(s).map_err(bad)
}

pub async fn label_node(
    State(ctx): State<Arc<Ctx>>,
    _: AdminAuth,
    Extension(info): Extension<ConnInfo>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<LabelRequest>,
) -> Result<Json<NodeRecord>, ApiError> {
    let name = node_name(&name)?;
    check_labels(&req.set)?;
    let now = ctx.clock.now();
    let change = Change::new(actor(&info), now.unix);
    let node = ctx
        .store
        .label_node(&name, &req.set, &req.remove, &change)
        .await?;
    let pushed = ctx
        .dist
        .node_changed(&name, Vec::new(), now.instant)
        .await?;
    tracing::info!(node = %name, pushed = pushed.len(), "labels changed");
    Ok(Json(node))
}

pub async fn revoke_node(
    State(ctx): State<Arc<Ctx>>,
    _: AdminAuth,
    Extension(info): Extension<ConnInfo>,
    Path(name): Path<String>,
) -> Result<Json<RevokeReport>, ApiError> {
    let name = node_name(&name)?;
    let now = ctx.clock.now();
    let node = ctx
        .store
        .revoke_node(&name, &Change::new(actor(&info), now.unix))
        .await?;
    let pushed = ctx
        .dist
        .node_changed(&name, Vec::new(), now.instant)
        .await?;
    let peers = ctx
        .dist
        .wait_acks(&pushed, now.instant, ctx.settings.ack_timeout)
        .await;
    tracing::info!(node = %name, acked = peers.acked, total = peers.total, ms = peers.elapsed_ms, "node revoked");
    Ok(Json(RevokeReport { node, peers }))
}

pub async fn get_policy(
    State(ctx): State<Arc<Ctx>>,
    _: AdminAuth,
) -> Result<Json<PolicyRecord>, ApiError> {
    ctx.store
        .policy()
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("no policy has been applied yet".into()))
}

pub async fn apply_policy(
    State(ctx): State<Arc<Ctx>>,
    _: AdminAuth,
    Extension(info): Extension<ConnInfo>,
    JsonBody(req): JsonBody<ApplyPolicy>,
) -> Result<Json<ApplyReport>, ApiError> {
    #[allow(clippy::disallowed_methods)] // phase timings for the log
    let t0 = std::time::Instant::now();
    let (old, generation) = ctx.dist.compiler().await;
    let inv = old.inventory();
    let policy = Policy::parse_with_inventory(&req.path, &req.text, &inv).map_err(bad)?;
    let outcomes = run_tests(&policy, Some(&inv));
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| {
            let got = o.got.map_or_else(
                || o.error.clone().unwrap_or_default(),
                |g| g.as_str().to_string(),
            );
            format!("  {}: expected {}, got {got}", o.test, o.expect.as_str())
        })
        .collect();
    if !failed.is_empty() {
        return Err(ApiError::Conflict(format!(
            "policy not applied: {} of {} tests failed against the live inventory:\n{}",
            failed.len(),
            outcomes.len(),
            failed.join("\n")
        )));
    }
    let tests = outcomes
        .iter()
        .map(|o| serde_json::to_value(o).unwrap_or_default())
        .collect();
    let checked = t0.elapsed();
    let new = Compiler::new(&inv, &policy);
    let limit = (!req.dry_run).then_some(APPLY_DIFF_LIMIT);
    let diff = diff(&inv, &old, &new, limit);
    let diffed = t0.elapsed();
    if req.dry_run {
        return Ok(Json(ApplyReport {
            applied: false,
            version: None,
            tests,
            diff,
            pushed: 0,
        }));
    }
    let now = ctx.clock.now();
    let details =
        serde_json::json!({ "path": req.path, "diff": diff, "diff_limit": APPLY_DIFF_LIMIT });
    let rec = ctx
        .store
        .apply_policy(&req.text, details, &Change::new(actor(&info), now.unix))
        .await?;
    let stored = t0.elapsed();
    let pushed = ctx
        .dist
        .policy_changed(new, generation, now.instant)
        .await?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    tracing::info!(
        policy_version = rec.version,
        pushed = pushed.len(),
        check_ms = ms(checked),
        diff_ms = ms(diffed - checked),
        store_ms = ms(stored - diffed),
        publish_ms = ms(t0.elapsed() - stored),
        "policy applied"
    );
    Ok(Json(ApplyReport {
        applied: true,
        version: Some(rec.version),
        tests,
        diff,
        pushed: pushed.len(),
    }))
}

pub async fn explain(
    State(ctx): State<Arc<Ctx>>,
    _: AdminAuth,
    JsonBody(req): JsonBody<ExplainRequest>,
) -> Result<Json<Explanation>, ApiError> {
    let (inv, policy) = ctx.dist.snapshot().await;
    let from = Endpoint::parse_cli(&req.from).map_err(bad)?;
    let to = Endpoint::parse_cli(&req.to).map_err(bad)?;
    let port: PortSpec = req.port.parse().map_err(bad)?;
    Ok(Json(
        explain_flow(Some(&inv), &policy, &from, &to, &port).map_err(bad)?,
    ))
}

pub async fn audit(
    State(ctx): State<Arc<Ctx>>,
    _: AdminAuth,
) -> Result<Json<AuditReport>, ApiError> {
    ctx.dist.flush_acks().await;
    let mut nodes = Vec::new();
    for n in ctx
        .store
        .list_nodes()
        .await?
        .into_iter()
        .filter(|n| !n.revoked)
    {
        let Some(expected) = ctx.dist.expected(&n.name).await else {
            continue;
        };
        let acked = ctx.store.acked_netmap(n.id).await?;
        let status = match &acked {
            None => "never_acked",
            Some((_, digest)) if *digest == netmap_digest(&expected) => "ok",
            Some((v, _)) if *v < expected.version => "stale",
            _ => "mismatch",
        };
        nodes.push(NodeAudit {
            node: n.name,
            expected_version: expected.version,
            acked_version: acked.map_or(0, |(v, _)| v),
            status: status.into(),
        });
    }
    Ok(Json(AuditReport {
        clean: nodes.iter().all(|n| n.status == "ok"),
        nodes,
    }))
}

pub async fn audit_log(
    State(ctx): State<Arc<Ctx>>,
    _: AdminAuth,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    Ok(Json(ctx.store.audit_log(q.limit.unwrap_or(1000)).await?))
}

/// GET /metrics (Prometheus text; no secrets, no auth).
/// How long `/healthz` waits for the store.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// GET /healthz (no auth): 200 when the store answers, 503 when it does
/// not. With PostgreSQL this is what a load balancer or orchestrator uses to
/// take a coordinator out of service while its database is unreachable.
pub async fn healthz(State(ctx): State<Arc<Ctx>>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    // Bounded: a pool waiting to reconnect must not hold the probe for its
    // whole acquire timeout; a slow store counts as unhealthy.
    let ping = tokio::time::timeout(HEALTH_TIMEOUT, ctx.store.ping()).await;
    match ping.unwrap_or_else(|_| Err(StoreError::Invalid("no answer within 2 s".into()))) {
        Ok(()) => (axum::http::StatusCode::OK, "ok\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check: store unreachable");
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "unhealthy: store unreachable\n",
            )
                .into_response()
        }
    }
}

pub async fn metrics(State(ctx): State<Arc<Ctx>>) -> Result<String, ApiError> {
    let nodes = ctx.store.list_nodes().await?;
    let revoked = nodes.iter().filter(|n| n.revoked).count();
    let streams = ctx.dist.connected().await.values().filter(|c| **c).count();
    Ok(ctx.metrics.render(Gauges {
        nodes: nodes.len() - revoked,
        revoked_nodes: revoked,
        streams,
    }))
}
