//! Edge parsing: JSON, query and path extractors whose rejections are the API's JSON
//! errors (never axum's plain-text ones), and the validated newtypes requests are made of.

use std::fmt;

use affinity_store::ItemId;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, clip};
use crate::settings::MAX_K;
use crate::state::AppState;

/// Longest rejection detail echoed back (it may quote hostile input).
const MAX_DETAIL: usize = 300;

fn detail(text: String) -> String {
    if text.chars().count() <= MAX_DETAIL {
        text
    } else {
        let mut s: String = text.chars().take(MAX_DETAIL).collect();
        s.push('…');
        s
    }
}

/// A JSON body; malformed, mistyped, oversized or non-JSON bodies become JSON 4xx errors.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(json_rejection(r, state.limits.max_body_bytes)),
        }
    }
}

fn json_rejection(r: JsonRejection, max_body: usize) -> ApiError {
    let status = r.status();
    let text = detail(r.body_text());
    match r {
        JsonRejection::JsonDataError(_) => ApiError::InvalidBody(text),
        JsonRejection::JsonSyntaxError(_) => ApiError::MalformedJson(text),
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::UnsupportedMediaType("send `Content-Type: application/json`".into())
        }
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { max: max_body },
        _ => ApiError::MalformedJson(text),
    }
}

/// A query string parsed into `T` (which rejects unknown parameters).
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(r) => Err(query_rejection(r)),
        }
    }
}

fn query_rejection(r: QueryRejection) -> ApiError {
    ApiError::InvalidQuery(detail(r.body_text()))
}

/// Path parameters; undecodable segments become a JSON 400.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(r) => Err(path_rejection(r)),
        }
    }
}

fn path_rejection(r: PathRejection) -> ApiError {
    let text = detail(r.body_text());
    match r.into_response().status() {
        s if s.is_server_error() => ApiError::Internal(text),
        _ => ApiError::InvalidPath(text),
    }
}

/// How many items to return: 1..=[`MAX_K`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct K(usize);

impl K {
    /// The value.
    pub fn get(self) -> usize {
        self.0
    }
}

/// Why a `k` was refused.
#[derive(Debug)]
pub struct BadK(i64);

impl fmt::Display for BadK {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "k = {} is outside 1..={MAX_K}", self.0)
    }
}

impl TryFrom<i64> for K {
    type Error = BadK;
    fn try_from(v: i64) -> Result<Self, BadK> {
        if (1..=MAX_K as i64).contains(&v) {
            Ok(K(v as usize))
        } else {
            Err(BadK(v))
        }
    }
}

/// Parses an item id from a path or list, naming the field on failure.
pub fn item_id(field: &str, raw: &str) -> Result<ItemId, ApiError> {
    ItemId::parse(raw).map_err(|e| ApiError::field(field, store_reason(e)))
}

/// The reason text of a store validation error, without repeating the field name.
pub fn store_reason(e: affinity_store::Error) -> String {
    match e {
        affinity_store::Error::Invalid { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// Splits a comma-separated exclude list into at most `max` item ids.
pub fn exclude_list(raw: Option<&str>, max: usize) -> Result<Vec<ItemId>, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(Vec::new());
    };
    let parts: Vec<&str> = raw.split(',').collect();
    if parts.len() > max {
        return Err(ApiError::BatchTooLarge {
            field: "exclude",
            got: parts.len(),
            max,
        });
    }
    parts.iter().map(|p| item_id("exclude", p)).collect()
}

/// Checks a list's length against 1..=max.
pub fn batch_len(field: &'static str, len: usize, max: usize) -> Result<(), ApiError> {
    if len == 0 {
        Err(ApiError::EmptyBatch { field })
    } else if len > max {
        Err(ApiError::BatchTooLarge {
            field,
            got: len,
            max,
        })
    } else {
        Ok(())
    }
}

/// Quotes a hostile value safely in messages.
pub fn quoted(s: &str) -> String {
    format!("{:?}", clip(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_is_range_checked() {
        assert_eq!(K::try_from(1).unwrap().get(), 1);
        assert_eq!(K::try_from(MAX_K as i64).unwrap().get(), MAX_K);
        assert!(K::try_from(0).is_err());
        assert!(K::try_from(-5).is_err());
        assert!(K::try_from(MAX_K as i64 + 1).is_err());
        assert!(serde_json::from_str::<K>("2.5").is_err());
        assert!(serde_json::from_str::<K>("\"3\"").is_err());
    }

    #[test]
    fn exclude_lists_are_bounded_and_validated() {
        assert!(exclude_list(None, 3).unwrap().is_empty());
        assert_eq!(exclude_list(Some("a,b"), 3).unwrap().len(), 2);
        assert!(matches!(
            exclude_list(Some("a,b,c,d"), 3),
            Err(ApiError::BatchTooLarge { .. })
        ));
        assert!(exclude_list(Some("a,,b"), 3).is_err());
        assert!(batch_len("rows", 0, 3).is_err());
        assert!(batch_len("rows", 3, 3).is_ok());
    }
}
