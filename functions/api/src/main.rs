//! `affinity-api`: the HTTP function. Under Lambda (`AWS_LAMBDA_RUNTIME_API` set) it runs
//! the router with `lambda_http`; elsewhere it serves it on `AFFINITY_ADDR`.

use affinity_service::http::state::AppState;
use affinity_service::http::{host, routes, telemetry};
use affinity_service::settings::Settings;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        tracing_error(&e);
        std::process::exit(1);
    }
}

async fn run() -> affinity_service::Result<()> {
    let settings = Settings::from_env()?;
    telemetry::init(&settings);
    let state = AppState::open(&settings).await?;
    host::serve(routes::router(state), &settings).await
}

fn tracing_error(e: &affinity_service::Error) {
    eprintln!("affinity-api: {e}");
}
