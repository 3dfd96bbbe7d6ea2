//! Request authentication: the admin bearer token, node client
//! certificates, and JSON bodies that fail with a clear 400.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};

use super::{ApiError, ConnInfo, Ctx};
use crate::ca::client_identity;
use crate::store::NodeRecord;

/// Compares two digests without an early exit.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Proof that the request carried the admin token.
#[derive(Debug)]
pub struct AdminAuth;

impl FromRequestParts<Arc<Ctx>> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::Unauthorized("admin token required (Authorization: Bearer)".into())
            })?;
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        if ct_eq(&digest, &ctx.admin_token_sha256) {
            Ok(AdminAuth)
        } else {
            Err(ApiError::Unauthorized("admin token is not valid".into()))
        }
    }
}

/// An authenticated, non-revoked node: its client certificate verified
/// against the CA at the TLS layer, its CN names an enrolled node, and its
/// serial is the one issued to that node.
#[derive(Debug)]
pub struct NodeAuth(pub NodeRecord, pub ConnInfo);

impl FromRequestParts<Arc<Ctx>> for NodeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<Self, ApiError> {
        let info = parts
            .extensions
            .get::<ConnInfo>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("connection info missing".into()))?;
        let cert = info
            .client_cert
            .as_ref()
            .ok_or_else(|| ApiError::Unauthorized("client certificate required".into()))?;
        let (name, serial) = client_identity(cert).map_err(ApiError::Unauthorized)?;
        let node = ctx
            .store
            .node(&name)
            .await?
            .ok_or_else(|| ApiError::Unauthorized(format!("node {name} is not enrolled")))?;
        if node.revoked {
            return Err(ApiError::Forbidden(format!("node {name} is revoked")));
        }
        if node.cert_serial != serial {
            return Err(ApiError::Forbidden(format!(
                "this certificate is no longer valid for node {name}"
            )));
        }
        Ok(NodeAuth(node, info))
    }
}

/// A JSON body; any parse error is a 400 naming line, column and field.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("cannot read request body: {e}")))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
    }
}
