//! Logs: JSON lines on Lambda, pretty locally; one line per request with request id,
//! route, status, latency and model version. Customer ids appear only as a keyed hash
//! ([`CustomerHasher`]), never in clear.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, Settings};

/// Installs the global subscriber; a second call (tests, embedding) is a no-op.
pub fn init(settings: &Settings) {
    let filter =
        EnvFilter::try_new(&settings.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match settings.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            // CloudWatch stamps every line itself.
            .without_time()
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// Turns customer ids into a keyed hash (HMAC-SHA256, 16 hex chars) for logs: the same
/// customer correlates across lines, but the id cannot be read or brute-forced without the
/// key.
#[derive(Clone)]
pub struct CustomerHasher {
    key: Vec<u8>,
}

impl std::fmt::Debug for CustomerHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CustomerHasher { .. }")
    }
}

impl CustomerHasher {
    /// Uses the configured key, or a random one (hashes then correlate within one process only).
    pub fn new(key: Option<Vec<u8>>) -> Self {
        let key = key.unwrap_or_else(|| {
            let mut k = vec![0u8; 32];
            rand::rng().fill_bytes(&mut k);
            k
        });
        Self { key }
    }

    /// The log-safe stand-in for a customer id.
    pub fn tag(&self, customer: &str) -> String {
        let mut full = self.full(customer);
        full.truncate(16);
        full
    }

    /// The whole keyed hash (64 hex chars): what an erasure audit record keeps, so a later
    /// question "was this customer erased?" can be answered without storing the id.
    pub fn full(&self, customer: &str) -> String {
        // HMAC accepts keys of any length, so this cannot fail; fall back to a constant tag.
        match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mut mac) => {
                mac.update(customer.as_bytes());
                hex::encode(mac.finalize().into_bytes())
            }
            Err(_) => "unhashable".into(),
        }
    }
}

/// Set by handlers on their response so the request log line names the model that answered.
#[derive(Clone, Debug)]
pub struct ModelVersionTag(pub String);

/// Set by handlers that concern one customer: the keyed hash, never the id.
#[derive(Clone, Debug)]
pub struct CustomerTag(pub String);

/// Request id: Lambda's when running there, else the caller's `x-request-id`, else a new one.
fn request_id(req: &Request) -> String {
    if let Some(ctx) = req.extensions().get::<lambda_http::Context>() {
        return ctx.request_id.clone();
    }
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// Middleware: a span per request, one log line when it is answered, and its latency and
/// 5xx count as metrics (per route template).
pub async fn log_requests(
    State(state): State<crate::state::AppState>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let id = request_id(&req);
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("request", request_id = %id, route = %route);
    let mut res = next.run(req).instrument(span.clone()).await;
    let latency_us = start.elapsed().as_micros() as u64;
    let status = res.status().as_u16();
    let model = res
        .extensions()
        .get::<ModelVersionTag>()
        .map(|m| m.0.as_str())
        .unwrap_or("-");
    let customer = res
        .extensions()
        .get::<CustomerTag>()
        .map(|c| c.0.as_str())
        .unwrap_or("-");
    span.in_scope(|| {
        tracing::info!(
            %method,
            status,
            latency_us,
            model_version = model,
            customer = customer,
            "answered"
        );
    });
    state.metrics.request(
        &route,
        latency_us as f64 / 1e3,
        res.status().is_server_error(),
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_tags_are_keyed_and_stable() {
        let a = CustomerHasher::new(Some(vec![1; 32]));
        let b = CustomerHasher::new(Some(vec![2; 32]));
        assert_eq!(a.tag("jane@example.com"), a.tag("jane@example.com"));
        assert_ne!(a.tag("jane@example.com"), b.tag("jane@example.com"));
        assert_ne!(a.tag("jane@example.com"), a.tag("john@example.com"));
        assert_eq!(a.tag("x").len(), 16);
        assert!(!a.tag("jane@example.com").contains("jane"));
    }
}
