//! API errors: every failure becomes `{"error": {"code", "message"}}` with a
//! fitting status, mapped here and nowhere else.

use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::manager::ManagerError;
use crate::s3fs::{CredentialsError, StoreError};

/// The error body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A machine-readable code and a human-readable message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// E.g. `InvalidName`, `SpecConflict`, `BackendUnreachable`.
    pub code: String,
    /// What went wrong, naming the object.
    pub message: String,
}

/// An error the API returns.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message sent to the client.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<ManagerError> for ApiError {
    fn from(err: ManagerError) -> Self {
        use StatusCode as S;
        let message = err.to_string();
        let (status, code) = match &err {
            ManagerError::InvalidName(_) => (S::BAD_REQUEST, "InvalidName"),
            ManagerError::InvalidSpec(_) => (S::BAD_REQUEST, "InvalidSpec"),
            ManagerError::NotFound { .. } => (S::NOT_FOUND, "NotFound"),
            ManagerError::Conflict { .. } => (S::CONFLICT, "SpecConflict"),
            ManagerError::Busy { .. } => (S::CONFLICT, "Busy"),
            ManagerError::WaitTimeout { .. } => (S::REQUEST_TIMEOUT, "WaitTimeout"),
            ManagerError::NotReady => (S::SERVICE_UNAVAILABLE, "NotReady"),
            ManagerError::Store { source, .. } => match source {
                StoreError::EndpointNotAllowed { .. } => (S::FORBIDDEN, "EndpointNotAllowed"),
                StoreError::Credentials(CredentialsError::NotAllowed { .. }) => {
                    (S::FORBIDDEN, "CredentialsNotAllowed")
                }
                StoreError::Credentials(CredentialsError::Timeout { .. }) => {
                    (S::GATEWAY_TIMEOUT, "MountTimeout")
                }
                StoreError::Credentials(_) => (S::BAD_REQUEST, "InvalidCredentials"),
                StoreError::Config { .. } => (S::BAD_REQUEST, "InvalidSpec"),
                StoreError::BucketNotFound { .. } => (S::BAD_GATEWAY, "BucketNotFound"),
                StoreError::AccessDenied { .. } => (S::BAD_GATEWAY, "BackendAccessDenied"),
                StoreError::Unreachable { .. } => (S::BAD_GATEWAY, "BackendUnreachable"),
                StoreError::Timeout { .. } => (S::GATEWAY_TIMEOUT, "BackendTimeout"),
            },
            ManagerError::Egress { .. } => (S::FORBIDDEN, "EndpointNotAllowed"),
            ManagerError::Nfs { source, .. } => match source {
                crate::nfs::NfsError::ResolveTimeout { .. } => {
                    (S::GATEWAY_TIMEOUT, "BackendTimeout")
                }
                _ => (S::BAD_GATEWAY, "BackendUnreachable"),
            },
            ManagerError::Timeout { .. } => (S::GATEWAY_TIMEOUT, "MountTimeout"),
            ManagerError::AlreadyMounted { .. } => (S::CONFLICT, "AlreadyMounted"),
            ManagerError::MountInProgress { .. } => (S::CONFLICT, "MountInProgress"),
            ManagerError::Sys { source, .. } => match source {
                // The kernel refused the backend's mount (server said no,
                // export missing, connection refused): the backend's reason.
                crate::sys::SysError::Mount { fstype, .. } if fstype.starts_with("nfs") => {
                    (S::BAD_GATEWAY, "MountRefused")
                }
                _ => (S::INTERNAL_SERVER_ERROR, "MountFailed"),
            },
            ManagerError::Directory { .. } => (S::INTERNAL_SERVER_ERROR, "MountFailed"),
            ManagerError::Root { .. } => (S::SERVICE_UNAVAILABLE, "RootNotShared"),
            ManagerError::State(_) => (S::INTERNAL_SERVER_ERROR, "StateWriteFailed"),
            ManagerError::Internal(_) => (S::INTERNAL_SERVER_ERROR, "Internal"),
        };
        ApiError::new(status, code, message)
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                format!("request body exceeds {} bytes", crate::api::MAX_BODY_BYTES),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidBody",
                rejection.body_text(),
            )
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidQuery",
            rejection.body_text(),
        )
    }
}
