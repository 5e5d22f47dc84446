//! One router, two hosts: under Lambda (`AWS_LAMBDA_RUNTIME_API` set) the router runs in
//! `lambda_http::run`; anywhere else it is served over TCP with `axum::serve`.

use std::net::SocketAddr;

use axum::Router;

use crate::error::{Error, Result};
use crate::settings::Settings;

/// Runs `router` on the host the environment says, until it stops.
pub async fn serve(router: Router, settings: &Settings) -> Result<()> {
    if settings.on_lambda {
        tracing::info!("serving under the Lambda runtime");
        lambda_http::run(router)
            .await
            .map_err(|e| Error::runtime("lambda runtime", e))
    } else {
        let listener = tokio::net::TcpListener::bind(settings.addr)
            .await
            .map_err(|e| Error::runtime("bind", format!("{}: {e}", settings.addr)))?;
        serve_on(router, listener).await
    }
}

/// Serves `router` on an already bound listener (tests and `affinity serve` bind port 0 or a
/// chosen port first, so they know the address before serving).
pub async fn serve_on(router: Router, listener: tokio::net::TcpListener) -> Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "serving over TCP");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| Error::runtime("serve", e))
}
