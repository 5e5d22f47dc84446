//! Edge parsing: JSON, query and path extractors whose rejections are the API's JSON
//! errors (never axum's plain-text ones), the validated newtypes requests are made of, and
//! the OpenAPI schemas ([`Id`], [`ChannelName`], [`ExcludedId`]) that declare those
//! newtypes' rules in the document, so a client (or schemathesis) knows what is accepted.

use std::borrow::Cow;
use std::fmt;

use affinity_store::ItemId;
use affinity_store::ids::{ID_PATTERN, MAX_ID_CHARS};
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{RefOr, schema};
use utoipa::{PartialSchema, ToSchema};

use crate::error::{ApiError, clip};
use crate::http::state::AppState;
use crate::settings::MAX_K;

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
///
/// Read as JSON Schema (and so the OpenAPI document) reads it: every body is an object
/// (serde would also build a struct from an array of its fields), and a number with a zero
/// fraction such as `5.0` is an integer where an integer is expected.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let mut value = match Json::<serde_json::Value>::from_request(req, state).await {
            Ok(Json(v)) => v,
            Err(r) => return Err(json_rejection(r, state.limits.max_body_bytes)),
        };
        if !value.is_object() {
            return Err(ApiError::InvalidBody(
                "the body must be a JSON object".to_owned(),
            ));
        }
        integral_numbers(&mut value);
        serde_path_to_error::deserialize(value)
            .map(ApiJson)
            .map_err(|e| {
                let path = e.path().to_string();
                ApiError::InvalidBody(detail(if path == "." {
                    e.inner().to_string()
                } else {
                    format!("{path}: {}", e.inner())
                }))
            })
    }
}

/// Rewrites numbers with a zero fraction (`5.0`) as integers, in place, so integer fields
/// accept every JSON Schema integer; float fields accept integers anyway.
fn integral_numbers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                // |f| < 2^53: exactly representable, so the cast is exact.
                *v = serde_json::Value::from(f as i64);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(integral_numbers),
        _ => {}
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

/// Longest channel name (`affinity_store::Channel`).
pub const MAX_CHANNEL_CHARS: usize = 64;

fn id_schema(max: usize, pattern: String, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(pattern))
        .description(Some(description))
        .into()
}

/// OpenAPI schema of an ordinary id (customer, item, order, offer, event, model version, job,
/// category): what `affinity_store::ids` enforces, spelled by [`ID_PATTERN`].
pub struct Id;

impl PartialSchema for Id {
    fn schema() -> RefOr<Schema> {
        id_schema(
            MAX_ID_CHARS,
            ID_PATTERN.to_owned(),
            "1..=128 characters; no control, format (zero-width, bidi), line or paragraph \
             separator characters; no white space at either end (docs/data-model.md)",
        )
    }
}

impl ToSchema for Id {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Id")
    }
}

/// OpenAPI schema of a channel name (email, sms, web, ...): an id of at most 64 characters.
pub struct ChannelName;

impl PartialSchema for ChannelName {
    fn schema() -> RefOr<Schema> {
        id_schema(
            MAX_CHANNEL_CHARS,
            ID_PATTERN.to_owned(),
            "A channel (email, sms, web, app, ...): an id of 1..=64 characters",
        )
    }
}

impl ToSchema for ChannelName {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ChannelName")
    }
}

/// The id rule for a member of a comma-separated list: [`ID_PATTERN`] with `,` refused too,
/// since the comma separates the members.
pub fn excluded_id_pattern() -> String {
    ID_PATTERN.replace("[^", "[^,")
}

/// OpenAPI schema of an item id inside the comma-separated `exclude` query parameter.
pub struct ExcludedId;

impl PartialSchema for ExcludedId {
    fn schema() -> RefOr<Schema> {
        id_schema(
            MAX_ID_CHARS,
            excluded_id_pattern(),
            "An item id (see `Id`) without commas, which separate the list",
        )
    }
}

impl ToSchema for ExcludedId {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ExcludedId")
    }
}

/// The schema of a batch whose rows are parsed one by one: 1..=`max` rows, each one either
/// a `T` or any other JSON value, because a row that is not a valid `T` does not fail the
/// request: it is answered `invalid` in its row result (and the others are written).
pub fn lenient_rows<T: ToSchema>(max: usize) -> schema::Array {
    let any = ObjectBuilder::new()
        .schema_type(schema::SchemaType::AnyValue)
        .description(Some(
            "Any other value: the row is reported `invalid` in its result, the request succeeds",
        ));
    schema::ArrayBuilder::new()
        .items(
            schema::AnyOfBuilder::new()
                .item(RefOr::Ref(schema::Ref::from_schema_name(T::name())))
                .item(any),
        )
        .min_items(Some(1))
        .max_items(Some(max))
        .build()
}

/// A string schema allowing exactly `values` (an enum the handler parses from a string).
pub fn string_enum<const N: usize>(values: [&str; N]) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .into()
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
    fn integral_floats_become_integers_and_others_stay() {
        let mut v = serde_json::json!({"k": 90.0, "x": [1.5, -2.0, 1e300], "s": "3.0"});
        integral_numbers(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"k": 90, "x": [1.5, -2, 1e300], "s": "3.0"})
        );
        assert_eq!(
            serde_json::from_value::<K>(v["k"].clone()).unwrap().get(),
            90
        );
    }

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
    fn excluded_id_pattern_is_the_id_rule_without_commas() {
        let id = regex::Regex::new(ID_PATTERN).unwrap();
        let excluded = regex::Regex::new(&excluded_id_pattern()).unwrap();
        for s in [
            "sku-1",
            "a b",
            "#1001",
            "a,b",
            ",",
            "a,",
            " a",
            "a\u{200B}",
            "",
            "🙂",
        ] {
            let want = id.is_match(s) && !s.contains(',');
            assert_eq!(excluded.is_match(s), want, "{s:?}");
            // A one-member list is accepted exactly when its member matches.
            if !s.is_empty() && !s.contains(',') {
                assert_eq!(
                    exclude_list(Some(s), 10).is_ok(),
                    excluded.is_match(s),
                    "{s:?}"
                );
            }
        }
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
