//! The HTTPS API: node routes (enroll, stream, ack, endpoints), the admin API
//! and `/metrics`.
//!
//! Handlers take an injected [`Ctx`] (store, CA, clock, distributor), so they
//! are testable with `tower::ServiceExt::oneshot` and no socket; [`run`]
//! serves them over TLS on an already-bound listener. Client certificates
//! are optional at the TLS layer (enrollment has none) and required per
//! route by the [`auth::NodeAuth`] extractor.

pub mod admin;
pub mod admin_types;
pub mod auth;
pub mod error;
pub mod node;
pub mod session;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use ipnet::IpNet;
use rustls_pki_types::CertificateDer;

use crate::ca::Ca;
use crate::clock::Clock;
use crate::distribute::Distributor;
use crate::metrics::Metrics;
use crate::store::{Prefixes, Store};

pub use error::ApiError;
pub use tls::{run, server_tls_config};

/// Settings the handlers need.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where nodes reach this coordinator and then its peers (those sharing
    /// the PostgreSQL store); written into join tokens.
    pub public_urls: Vec<String>,
    pub prefixes: Prefixes,
    /// Interval of stream heartbeats.
    pub heartbeat: Duration,
    /// How long `nodes revoke` waits for peers' acks.
    pub ack_timeout: Duration,
}

impl Settings {
    /// The overlay prefixes nodes route into their tunnel.
    pub fn overlay(&self) -> Vec<IpNet> {
        vec![IpNet::V4(self.prefixes.v4), IpNet::V6(self.prefixes.v6)]
    }
}

/// Everything a handler needs, injected.
#[derive(Debug)]
pub struct Ctx {
    pub store: Arc<dyn Store>,
    pub ca: Arc<Ca>,
    pub clock: Arc<dyn Clock>,
    pub dist: Arc<Distributor>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// SHA-256 of the admin token; the token itself is not kept.
    pub admin_token_sha256: [u8; 32],
}

/// What the TLS layer learned about a connection; inserted into every
/// request's extensions by [`run`] (tests insert it themselves).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// The verified client certificate, if the client sent one.
    pub client_cert: Option<CertificateDer<'static>>,
}

/// All routes.
pub fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/v1/enroll", post(node::enroll))
        .route("/v1/stream", get(node::stream))
        .route("/v1/session", get(session::session))
        .route("/v1/ack", post(node::ack))
        .route("/v1/endpoints", post(node::endpoints))
        .route("/v1/rotate-key", post(node::rotate_key))
        .route(
            "/v1/admin/tokens",
            get(admin::list_tokens).post(admin::create_token),
        )
        .route("/v1/admin/tokens/{id}/revoke", post(admin::revoke_token))
        .route("/v1/admin/nodes", get(admin::list_nodes))
        .route("/v1/admin/nodes/{name}/labels", post(admin::label_node))
        .route("/v1/admin/nodes/{name}/revoke", post(admin::revoke_node))
        .route(
            "/v1/admin/policy",
            get(admin::get_policy).post(admin::apply_policy),
        )
        .route("/v1/admin/explain", post(admin::explain))
        .route("/v1/admin/audit", get(admin::audit))
        .route("/v1/admin/audit-log", get(admin::audit_log))
        .route("/metrics", get(admin::metrics))
        .route("/healthz", get(admin::healthz))
        .fallback(|| async { ApiError::NotFound("no such API route".into()) })
        .with_state(ctx)
}

#[cfg(test)]
mod tests;
