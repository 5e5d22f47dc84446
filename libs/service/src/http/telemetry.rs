//! Logs: JSON lines on Lambda, pretty locally; one line per request with request id,
//! route, status, latency and model version. Customer ids appear only as a keyed hash
//! ([`crate::customer_data::CustomerHasher`]), never in clear.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, Settings};

/// Installs the global subscriber (JSON lines on standard output for CloudWatch, or pretty
/// lines on standard error, which leaves standard output to a binary's answer); a second call
/// (tests, embedding) is a no-op.
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
        LogFormat::Pretty => builder.compact().with_writer(std::io::stderr).try_init(),
    };
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
    State(state): State<crate::http::state::AppState>,
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
