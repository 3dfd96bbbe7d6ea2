//! The one place where errors become HTTP statuses.
//!
//! Client mistakes get their message; internal failures (database, IO) are
//! logged with their cause and answered with a bare "internal error", so a
//! client never learns paths, SQL or library internals.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use segmesh_config::control::ErrorBody;

use crate::store::{StoreError, TokenRefusal};

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input; nothing was changed.
    #[error("{0}")]
    BadRequest(String),
    /// No or wrong credentials (admin token, client certificate).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed (revoked node, refused token).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with current state (name taken, failing policy tests).
    #[error("{0}")]
    Conflict(String),
    /// Logged; the client only sees "internal error".
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(cause) = &self {
            tracing::error!(error = %cause, "request failed");
        }
        let body = ErrorBody {
            error: self.to_string(),
        };
        (self.status(), Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Self::NotFound(e.to_string()),
            StoreError::Conflict(_) | StoreError::Exhausted(_) => Self::Conflict(e.to_string()),
            StoreError::Invalid(_) | StoreError::Sign(_) => Self::BadRequest(e.to_string()),
            StoreError::Token(TokenRefusal::Unknown) => Self::Unauthorized(e.to_string()),
            StoreError::Token(_) => Self::Forbidden(e.to_string()),
            StoreError::Db(_) | StoreError::Migrate(_) | StoreError::Corrupt(_) => {
                Self::Internal(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internals_do_not_leak() {
        let e: ApiError = StoreError::Corrupt("/var/lib/x: bad row".into()).into();
        assert_eq!(e.to_string(), "internal error");
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let e: ApiError = StoreError::Token(TokenRefusal::Expired).into();
        assert_eq!(e.to_string(), "join token has expired");
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
    }
}
