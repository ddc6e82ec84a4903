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

/// Every error code the API answers with; each owns its HTTP status (this
/// is the only mapping of codes to statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The dataset name is not 1-63 characters of `[a-z0-9._-]`.
    InvalidName,
    /// The mount spec does not parse or validate; the message names the field.
    InvalidSpec,
    /// A query parameter is not understood.
    InvalidQuery,
    /// The request body cannot be read.
    InvalidBody,
    /// The credentials file cannot be used (missing, not a regular file, too large, malformed).
    InvalidCredentials,
    /// No valid bearer token (TCP listener).
    Unauthorized,
    /// The caller may not do this (see the policy).
    Forbidden,
    /// The endpoint or server is one the agent does not connect to.
    EndpointNotAllowed,
    /// The credentials file is outside the credentials directory.
    CredentialsNotAllowed,
    /// No such dataset, or no such route.
    NotFound,
    /// `?wait=STATE` timed out.
    WaitTimeout,
    /// Another spec already has the name.
    SpecConflict,
    /// The dataset is in use; `?force=true` detaches it lazily.
    Busy,
    /// Something not the agent's is mounted at the path.
    AlreadyMounted,
    /// Something that is not a directory (a symlink, a file) is at the path.
    PathOccupied,
    /// The dataset does not read through a node cache (nothing to warm).
    NoNodeCache,
    /// A warm-up of the dataset is running already.
    WarmupRunning,
    /// An earlier mount call for the name is still inside the kernel.
    MountInProgress,
    /// Too many mount calls (of any dataset) are stuck inside the kernel.
    TooManyHungMounts,
    /// The caller has too many PUTs in flight.
    TooManyRequests,
    /// The request body is over the limit.
    PayloadTooLarge,
    /// The mount failed inside the agent.
    MountFailed,
    /// The desired state cannot be written; nothing was changed.
    StateWriteFailed,
    /// A bug or an unexpected failure.
    Internal,
    /// The S3 server has no such bucket.
    BucketNotFound,
    /// The S3 server refused the credentials.
    BackendAccessDenied,
    /// The backend cannot be reached, or failed.
    BackendUnreachable,
    /// The NFS server refused the mount.
    MountRefused,
    /// The agent is still starting.
    NotReady,
    /// The root is not a shared mount.
    RootNotShared,
    /// The backend did not answer in time.
    BackendTimeout,
    /// The mount did not finish within the deadline.
    MountTimeout,
}

impl ErrorCode {
    /// Every code, in the order of their declaration (the `contract` test
    /// checks that none is missing, and that api/openapi.yaml lists each).
    pub const ALL: &[ErrorCode] = &[
        ErrorCode::InvalidName,
        ErrorCode::InvalidSpec,
        ErrorCode::InvalidQuery,
        ErrorCode::InvalidBody,
        ErrorCode::InvalidCredentials,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::EndpointNotAllowed,
        ErrorCode::CredentialsNotAllowed,
        ErrorCode::NotFound,
        ErrorCode::WaitTimeout,
        ErrorCode::SpecConflict,
        ErrorCode::Busy,
        ErrorCode::AlreadyMounted,
        ErrorCode::PathOccupied,
        ErrorCode::NoNodeCache,
        ErrorCode::WarmupRunning,
        ErrorCode::MountInProgress,
        ErrorCode::TooManyHungMounts,
        ErrorCode::TooManyRequests,
        ErrorCode::PayloadTooLarge,
        ErrorCode::MountFailed,
        ErrorCode::StateWriteFailed,
        ErrorCode::Internal,
        ErrorCode::BucketNotFound,
        ErrorCode::BackendAccessDenied,
        ErrorCode::BackendUnreachable,
        ErrorCode::MountRefused,
        ErrorCode::NotReady,
        ErrorCode::RootNotShared,
        ErrorCode::BackendTimeout,
        ErrorCode::MountTimeout,
    ];

    /// The HTTP status of this code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidName => StatusCode::BAD_REQUEST,
            ErrorCode::InvalidSpec => StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery => StatusCode::BAD_REQUEST,
            ErrorCode::InvalidBody => StatusCode::BAD_REQUEST,
            ErrorCode::InvalidCredentials => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::EndpointNotAllowed => StatusCode::FORBIDDEN,
            ErrorCode::CredentialsNotAllowed => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::WaitTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::SpecConflict => StatusCode::CONFLICT,
            ErrorCode::Busy => StatusCode::CONFLICT,
            ErrorCode::AlreadyMounted | ErrorCode::PathOccupied => StatusCode::CONFLICT,
            ErrorCode::NoNodeCache | ErrorCode::WarmupRunning => StatusCode::CONFLICT,
            ErrorCode::MountInProgress => StatusCode::CONFLICT,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyHungMounts => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::MountFailed => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::StateWriteFailed => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::BucketNotFound => StatusCode::BAD_GATEWAY,
            ErrorCode::BackendAccessDenied => StatusCode::BAD_GATEWAY,
            ErrorCode::BackendUnreachable => StatusCode::BAD_GATEWAY,
            ErrorCode::MountRefused => StatusCode::BAD_GATEWAY,
            ErrorCode::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::RootNotShared => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::MountTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The code as the error body spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidName => "InvalidName",
            ErrorCode::InvalidSpec => "InvalidSpec",
            ErrorCode::InvalidQuery => "InvalidQuery",
            ErrorCode::InvalidBody => "InvalidBody",
            ErrorCode::InvalidCredentials => "InvalidCredentials",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::EndpointNotAllowed => "EndpointNotAllowed",
            ErrorCode::CredentialsNotAllowed => "CredentialsNotAllowed",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::WaitTimeout => "WaitTimeout",
            ErrorCode::SpecConflict => "SpecConflict",
            ErrorCode::Busy => "Busy",
            ErrorCode::AlreadyMounted => "AlreadyMounted",
            ErrorCode::PathOccupied => "PathOccupied",
            ErrorCode::NoNodeCache => "NoNodeCache",
            ErrorCode::WarmupRunning => "WarmupRunning",
            ErrorCode::MountInProgress => "MountInProgress",
            ErrorCode::TooManyHungMounts => "TooManyHungMounts",
            ErrorCode::TooManyRequests => "TooManyRequests",
            ErrorCode::PayloadTooLarge => "PayloadTooLarge",
            ErrorCode::MountFailed => "MountFailed",
            ErrorCode::StateWriteFailed => "StateWriteFailed",
            ErrorCode::Internal => "Internal",
            ErrorCode::BucketNotFound => "BucketNotFound",
            ErrorCode::BackendAccessDenied => "BackendAccessDenied",
            ErrorCode::BackendUnreachable => "BackendUnreachable",
            ErrorCode::MountRefused => "MountRefused",
            ErrorCode::NotReady => "NotReady",
            ErrorCode::RootNotShared => "RootNotShared",
            ErrorCode::BackendTimeout => "BackendTimeout",
            ErrorCode::MountTimeout => "MountTimeout",
        }
    }
}

/// An error the API returns.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message sent to the client.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        if status.is_server_error() {
            tracing::warn!(code = self.code.as_str(), message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_string(),
                message: self.message,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if matches!(
            self.code,
            ErrorCode::TooManyRequests | ErrorCode::TooManyHungMounts | ErrorCode::NotReady
        ) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

/// The `Retry-After` of answers that say "later" (429, 503).
const RETRY_AFTER_SECONDS: &str = "1";

impl From<ManagerError> for ApiError {
    fn from(err: ManagerError) -> Self {
        let message = err.to_string();
        let code = match &err {
            ManagerError::InvalidName(_) => ErrorCode::InvalidName,
            ManagerError::InvalidSpec(_) => ErrorCode::InvalidSpec,
            ManagerError::NotFound { .. } => ErrorCode::NotFound,
            ManagerError::Conflict { .. } => ErrorCode::SpecConflict,
            ManagerError::Busy { .. } => ErrorCode::Busy,
            ManagerError::WaitTimeout { .. } => ErrorCode::WaitTimeout,
            ManagerError::NotReady => ErrorCode::NotReady,
            ManagerError::Store { source, .. } => match source {
                StoreError::EndpointNotAllowed { .. } => ErrorCode::EndpointNotAllowed,
                StoreError::Credentials(CredentialsError::NotAllowed { .. }) => {
                    ErrorCode::CredentialsNotAllowed
                }
                StoreError::Credentials(CredentialsError::Timeout { .. }) => {
                    ErrorCode::MountTimeout
                }
                StoreError::Credentials(_) => ErrorCode::InvalidCredentials,
                StoreError::Config { .. } => ErrorCode::InvalidSpec,
                StoreError::BucketNotFound { .. } => ErrorCode::BucketNotFound,
                StoreError::AccessDenied { .. } => ErrorCode::BackendAccessDenied,
                StoreError::Unreachable { .. } => ErrorCode::BackendUnreachable,
                StoreError::Timeout { .. } => ErrorCode::BackendTimeout,
            },
            ManagerError::Egress { .. } => ErrorCode::EndpointNotAllowed,
            ManagerError::Nfs { source, .. } => match source {
                crate::nfs::NfsError::ResolveTimeout { .. } => ErrorCode::BackendTimeout,
                _ => ErrorCode::BackendUnreachable,
            },
            ManagerError::Timeout { .. } => ErrorCode::MountTimeout,
            ManagerError::AlreadyMounted { .. } => ErrorCode::AlreadyMounted,
            ManagerError::PathOccupied { .. } => ErrorCode::PathOccupied,
            ManagerError::NoNodeCache { .. } => ErrorCode::NoNodeCache,
            ManagerError::WarmupRunning { .. } => ErrorCode::WarmupRunning,
            ManagerError::NoWarmup { .. } => ErrorCode::NotFound,
            ManagerError::MountInProgress { .. } => ErrorCode::MountInProgress,
            ManagerError::TooManyHungMounts { .. } => ErrorCode::TooManyHungMounts,
            ManagerError::Sys { source, .. } => match source {
                // The kernel refused the backend's mount (server said no,
                // export missing, connection refused): the backend's reason.
                crate::sys::SysError::Mount { fstype, .. } if fstype.starts_with("nfs") => {
                    ErrorCode::MountRefused
                }
                _ => ErrorCode::MountFailed,
            },
            ManagerError::Directory { .. } => ErrorCode::MountFailed,
            ManagerError::Root { .. } => ErrorCode::RootNotShared,
            ManagerError::State(_) => ErrorCode::StateWriteFailed,
            ManagerError::Internal(_) => ErrorCode::Internal,
        };
        ApiError::new(code, message)
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body exceeds {} bytes", crate::api::MAX_BODY_BYTES),
            )
        } else {
            ApiError::new(ErrorCode::InvalidBody, rejection.body_text())
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::new(ErrorCode::InvalidQuery, rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[ErrorCode] = ErrorCode::ALL;

    #[test]
    fn answers_that_say_later_say_when() {
        let later = [
            ErrorCode::TooManyRequests,
            ErrorCode::TooManyHungMounts,
            ErrorCode::NotReady,
        ];
        for &code in ALL {
            let response = ApiError::new(code, "x").into_response();
            let retry = response.headers().get(axum::http::header::RETRY_AFTER);
            if later.contains(&code) {
                assert_eq!(retry.map(|v| v.to_str().unwrap()), Some("1"), "{code:?}");
            } else {
                assert!(retry.is_none(), "{code:?}");
            }
        }
    }

    #[test]
    fn every_code_is_an_error_status_and_spelled_once() {
        let mut spelled = std::collections::HashSet::new();
        for code in ALL {
            let status = code.status();
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{code:?}"
            );
            assert!(spelled.insert(code.as_str()), "{code:?} spelled twice");
            assert_eq!(format!("{code:?}"), code.as_str());
        }
    }
}
