//! The service's errors: [`Error`] for the library (store and model errors with the step
//! that failed) and [`ApiError`] for HTTP answers, mapped to a status and a JSON body
//! `{"error": {"code", "message"}}` in exactly one place ([`ApiError::status_and_code`]).

use affinity_store::Scope;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What can fail in the application layer.
#[derive(Debug, Error)]
pub enum Error {
    /// A storage call failed.
    #[error("{step}: {source}")]
    Store {
        /// What the service was doing.
        step: &'static str,
        /// The store's error.
        #[source]
        source: affinity_store::Error,
    },
    /// Training or artifact handling failed.
    #[error("{step}: {source}")]
    Model {
        /// What the service was doing.
        step: &'static str,
        /// The model's error.
        #[source]
        source: affinity_model::Error,
    },
    /// A setting in the environment is malformed.
    #[error("setting {name}: {reason}")]
    Setting {
        /// Variable name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No model has been promoted for the tenant yet.
    #[error("no live model for tenant {tenant}")]
    NoModel {
        /// The tenant.
        tenant: String,
    },
    /// An I/O or runtime failure outside the store (binding a port, a worker thread).
    #[error("{step}: {message}")]
    Runtime {
        /// What the service was doing.
        step: &'static str,
        /// What went wrong.
        message: String,
    },
    /// Another retrain of the tenant holds the lock: single flight (HTTP 409).
    #[error(
        "a retrain of tenant `{tenant}` is already running (lock held by {holder} until {until}); try again when it has finished"
    )]
    RetrainRunning {
        /// Tenant whose lock is held.
        tenant: String,
        /// Owner string of the running job.
        holder: String,
        /// When its lease runs out if it stops renewing it.
        until: chrono::DateTime<chrono::Utc>,
    },
    /// The retrain lock was lost mid-run (lease expired and taken over); nothing was promoted.
    #[error("the retrain lock of tenant `{tenant}` was lost before {step}; nothing was promoted")]
    LockLost {
        /// Tenant whose lock was lost.
        tenant: String,
        /// The step that noticed.
        step: &'static str,
    },
    /// A dependency (another function, a backend) could not be reached; safe to retry
    /// (HTTP 503).
    #[error("{step}: {message}")]
    Unavailable {
        /// What the service was doing.
        step: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A state change was refused because the state moved meanwhile (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// A named thing (model version, job) does not exist (HTTP 404).
    #[error("{what} not found: {key}")]
    NotFound {
        /// Kind of thing.
        what: &'static str,
        /// Its key.
        key: String,
    },
    /// A request parameter was refused (HTTP 400).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The parameter's name.
        field: String,
        /// Why it was refused.
        reason: String,
    },
    /// A failure injected by a test at a pipeline step; `crash` ones skip all cleanup, as
    /// a killed process would.
    #[error("injected failure at step `{step}`{}", if *crash { " (simulated crash)" } else { "" })]
    Injected {
        /// The step.
        step: &'static str,
        /// True to behave like a killed process.
        crash: bool,
    },
    /// A background (blocking) task panicked or was cancelled.
    #[error("{step}: background task failed: {message}")]
    Task {
        /// What the task was doing.
        step: &'static str,
        /// The join error.
        message: String,
    },
    /// Two inputs that must belong together do not (e.g. a CRM snapshot of another model).
    #[error("{0}")]
    Mismatch(String),
    /// A user's input file broke a rule; names the file, line and field.
    #[error("{file}:{line}: field `{field}`: {reason}")]
    BadInput {
        /// The file as given.
        file: String,
        /// 1-based line (the header is line 1).
        line: u64,
        /// Column or flag name.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading an input file failed.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Builds a `Setting` error.
    pub fn setting(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Setting {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// Builds a `Runtime` error.
    pub fn runtime(step: &'static str, message: impl std::fmt::Display) -> Self {
        Error::Runtime {
            step,
            message: message.to_string(),
        }
    }
}

/// Result alias for the service crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds the step name to store and model errors.
pub trait Context<T> {
    /// Names the step that failed.
    fn step(self, step: &'static str) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, affinity_store::Error> {
    fn step(self, step: &'static str) -> Result<T> {
        self.map_err(|source| Error::Store { step, source })
    }
}

impl<T> Context<T> for std::result::Result<T, affinity_model::Error> {
    fn step(self, step: &'static str) -> Result<T> {
        self.map_err(|source| Error::Model { step, source })
    }
}

/// Every answer the HTTP layer gives other than success. Each variant has exactly one
/// status and one machine-readable code; see docs/api.md for the list.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The body is not well-formed JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The JSON is well-formed but does not fit the schema (types, unknown fields, limits).
    #[error("invalid body: {0}")]
    InvalidBody(String),
    /// The query string does not fit the route's parameters.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// A path segment is not a valid value.
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// A value broke a rule (range, length, charset).
    #[error("invalid {field}: {message}")]
    InvalidField {
        /// Name of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A batch had no rows.
    #[error("`{field}` must hold at least one entry")]
    EmptyBatch {
        /// Name of the list.
        field: &'static str,
    },
    /// A batch had too many rows.
    #[error("`{field}` holds {got} entries, at most {max} allowed")]
    BatchTooLarge {
        /// Name of the list.
        field: &'static str,
        /// Rows sent.
        got: usize,
        /// Limit.
        max: usize,
    },
    /// A header is malformed.
    #[error("invalid header {header}: {message}")]
    InvalidHeader {
        /// Header name.
        header: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No `Authorization: Bearer` key was sent.
    #[error("missing API key: send `Authorization: Bearer <key>`")]
    MissingKey,
    /// The key is malformed, unknown or revoked.
    #[error("invalid API key")]
    InvalidKey,
    /// The key lacks the scope the route needs.
    #[error("this key lacks the `{}` scope", .0.as_str())]
    MissingScope(Scope),
    /// The request names another tenant than the key's.
    #[error("this key belongs to another tenant than {0:?}")]
    WrongTenant(String),
    /// A storefront token that cannot be read, names an unknown or revoked key, or asks
    /// for a longer life than allowed.
    #[error("invalid storefront token: {0}")]
    InvalidToken(String),
    /// A storefront token whose signature does not match its content (tampered, or signed
    /// with another key).
    #[error("the storefront token's signature does not match its content")]
    BadSignature,
    /// A storefront token past its expiry.
    #[error("the storefront token expired at {0}; ask the shop's server for a new one")]
    TokenExpired(String),
    /// A storefront token used for another customer than the one it names.
    #[error("this storefront token answers only for the customer it names")]
    CustomerMismatch,
    /// A storefront token on a route storefront tokens never answer.
    #[error("storefront tokens answer only recommendation routes; this one needs a server key")]
    ServerKeyRequired,
    /// The key has used up its allowance on an expensive route for now.
    #[error("rate limit of this key on {route} reached; retry after {retry_after_secs} s")]
    RateLimited {
        /// The limited route group.
        route: &'static str,
        /// Whole seconds until the next request is allowed.
        retry_after_secs: u64,
    },
    /// A record the request names does not exist.
    #[error("{what} not found: {id}")]
    NotFound {
        /// Kind of record.
        what: &'static str,
        /// The id that was asked for (truncated).
        id: String,
    },
    /// No route has this path.
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// The path exists but not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// A conditional write lost.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The body is larger than the limit.
    #[error("request body too large: at most {max} bytes")]
    PayloadTooLarge {
        /// Limit in bytes.
        max: usize,
    },
    /// The body is not `application/json`.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// No model has been promoted for the tenant yet.
    #[error("no model is live for this tenant yet: train one (`affinity train`) first")]
    NoModel,
    /// The backend is throttling or unreachable; the call is safe to retry.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected backend failure; details are in the logs only.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The JSON error document every non-2xx answer carries.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code (e.g. `invalid_field`).
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// The one mapping from error to HTTP status and code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::InvalidBody(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
            ApiError::InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            ApiError::InvalidPath(_) => (StatusCode::BAD_REQUEST, "invalid_path"),
            ApiError::InvalidField { .. } => (StatusCode::BAD_REQUEST, "invalid_field"),
            ApiError::EmptyBatch { .. } => (StatusCode::BAD_REQUEST, "empty_batch"),
            ApiError::BatchTooLarge { .. } => (StatusCode::BAD_REQUEST, "batch_too_large"),
            ApiError::InvalidHeader { .. } => (StatusCode::BAD_REQUEST, "invalid_header"),
            ApiError::MissingKey => (StatusCode::UNAUTHORIZED, "missing_key"),
            ApiError::InvalidKey => (StatusCode::UNAUTHORIZED, "invalid_key"),
            ApiError::MissingScope(_) => (StatusCode::FORBIDDEN, "insufficient_scope"),
            ApiError::WrongTenant(_) => (StatusCode::FORBIDDEN, "wrong_tenant"),
            ApiError::InvalidToken(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            ApiError::BadSignature => (StatusCode::UNAUTHORIZED, "invalid_signature"),
            ApiError::TokenExpired(_) => (StatusCode::UNAUTHORIZED, "token_expired"),
            ApiError::CustomerMismatch => (StatusCode::FORBIDDEN, "customer_mismatch"),
            ApiError::ServerKeyRequired => (StatusCode::FORBIDDEN, "server_key_required"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::RouteNotFound(_) => (StatusCode::NOT_FOUND, "route_not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::NoModel => (StatusCode::SERVICE_UNAVAILABLE, "no_model"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// Builds an `InvalidField` error.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Builds a `NotFound` error, truncating the id so a hostile one cannot flood answers.
    pub fn not_found(what: &'static str, id: &str) -> Self {
        ApiError::NotFound { what, id: clip(id) }
    }
}

/// Shortens user-supplied text quoted back in messages and logs (80 characters and an
/// ellipsis).
pub fn clip(s: &str) -> String {
    clip_to(s, 81)
}

/// Shortens text to at most `max` characters, the last an ellipsis when cut: the one rule
/// for messages, stored job and version text, and CLI tables.
pub fn clip_to(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error; the server log has the details under this request's id".to_owned()
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "backend unavailable");
                self.to_string()
            }
            _ => self.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let ApiError::RateLimited {
            retry_after_secs, ..
        } = self
        {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(retry_after_secs),
            );
        }
        response
    }
}

impl From<affinity_store::Error> for ApiError {
    fn from(e: affinity_store::Error) -> Self {
        use affinity_store::Error as S;
        match e {
            S::NotFound { what, key } => ApiError::not_found(what, &key),
            S::Conflict(c) => ApiError::Conflict(c.to_string()),
            S::Invalid { field, reason } => ApiError::InvalidField {
                field,
                message: reason,
            },
            S::BadRow(row) => ApiError::field(row.field.clone(), row.to_string()),
            e @ S::Throttled { .. } => ApiError::Unavailable(e.to_string()),
            e @ S::Backend { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Store { step, source } => match ApiError::from(source) {
                ApiError::Internal(m) => ApiError::Internal(format!("{step}: {m}")),
                other => other,
            },
            Error::NoModel { .. } => ApiError::NoModel,
            e @ (Error::RetrainRunning { .. } | Error::LockLost { .. }) => {
                ApiError::Conflict(e.to_string())
            }
            Error::Conflict(message) => ApiError::Conflict(message),
            e @ Error::Unavailable { .. } => ApiError::Unavailable(e.to_string()),
            Error::NotFound { what, key } => ApiError::not_found(what, &key),
            Error::Invalid { field, reason } => ApiError::InvalidField {
                field,
                message: reason,
            },
            e @ Error::BadInput { .. } => ApiError::InvalidBody(e.to_string()),
            e @ (Error::Model { .. }
            | Error::Setting { .. }
            | Error::Runtime { .. }
            | Error::Injected { .. }
            | Error::Task { .. }
            | Error::Mismatch(_)
            | Error::Io { .. }) => ApiError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_are_4xx_and_internal_details_stay_in_logs() {
        let cases = [
            ApiError::MalformedJson("x".into()),
            ApiError::InvalidBody("x".into()),
            ApiError::MissingKey,
            ApiError::MissingScope(Scope::Ingest),
            ApiError::not_found("item", &"é".repeat(500)),
        ];
        for c in cases {
            assert!(c.status_and_code().0.is_client_error(), "{c:?}");
        }
        let long = ApiError::not_found("item", &"é".repeat(500)).to_string();
        assert!(long.chars().count() < 120, "{long}");
        let r = ApiError::Internal("secret path /x".into()).into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn store_errors_map_by_kind() {
        let e = ApiError::from(affinity_store::Error::invalid("k", "bad"));
        assert_eq!(e.status_and_code().1, "invalid_field");
        let e = ApiError::from(affinity_store::Error::not_found("model version", "v1"));
        assert_eq!(e.status_and_code().0, StatusCode::NOT_FOUND);
        let e = ApiError::from(affinity_store::Error::Throttled {
            operation: "Query".into(),
            attempts: 3,
        });
        assert_eq!(e.status_and_code().0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
