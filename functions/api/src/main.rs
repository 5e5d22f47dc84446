//! `affinity-api`: the HTTP function. Under Lambda (`AWS_LAMBDA_RUNTIME_API` set) it runs
//! the router with `lambda_http`; elsewhere it serves it on `AFFINITY_ADDR`.

use affinity_service::config::{self, Config};
use affinity_service::http::state::AppState;
use affinity_service::http::{host, routes, telemetry};

/// The API of a shop's recommendations and offers. Every setting is a flag or its
/// environment variable; on Lambda, the function's environment sets them.
#[derive(clap::Parser)]
#[command(name = "affinity-api", version)]
struct Args {
    #[command(flatten)]
    config: Config,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("affinity-api: {e}");
        std::process::exit(1);
    }
}

async fn run() -> affinity_service::Result<()> {
    let args: Args = config::parse_args()?;
    let settings = args.config.settings()?;
    telemetry::init(&settings);
    let state = AppState::open(&settings).await?;
    host::serve(routes::router(state), &settings).await
}
