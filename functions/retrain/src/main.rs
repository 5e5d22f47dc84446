//! `affinity-retrain`: the scheduled / on-demand retrain function. On Lambda
//! (`AWS_LAMBDA_RUNTIME_API` set) it serves EventBridge events and direct invocations;
//! elsewhere it runs once with the JSON payload given as its argument (default `{}`).

use affinity_service::config::{self, Config};
use affinity_service::http::telemetry;
use affinity_service::retrain::{RetrainDeps, invocation, new_job_id};
use affinity_store::{Stores, TenantId};
use lambda_runtime::{Error, LambdaEvent, service_fn};

/// Retrains a shop's model through the promotion gate. Every setting is a flag or its
/// environment variable; on Lambda, the function's environment sets them.
#[derive(clap::Parser)]
#[command(name = "affinity-retrain", version)]
struct Args {
    /// Tenant (shop) an invocation without one retrains.
    #[arg(long, env = "AFFINITY_TENANT", default_value = "default")]
    tenant: String,
    /// The invocation's JSON payload when run outside Lambda.
    #[arg(default_value = "{}")]
    payload: String,
    #[command(flatten)]
    config: Config,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("affinity-retrain: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Error> {
    let args: Args = config::parse_args()?;
    let settings = args.config.settings()?;
    telemetry::init(&settings);
    let tenant = TenantId::parse(args.tenant)?;
    let stores = Stores::open(&settings.backend).await?;
    let deps = RetrainDeps::new(stores, settings.retrain);
    if settings.on_lambda {
        let (deps, tenant) = (&deps, &tenant);
        // Lambda keeps the request id across retries of an async invocation: the job id.
        return lambda_runtime::run(service_fn(
            move |e: LambdaEvent<serde_json::Value>| async move {
                let job = format!("req-{}", e.context.request_id);
                invocation::handle(deps, e.payload, tenant, &job)
                    .await
                    .map_err(Error::from)
            },
        ))
        .await;
    }
    let payload = serde_json::from_str(&args.payload)?;
    let out = invocation::handle(&deps, payload, &tenant, new_job_id("local")?.as_str()).await?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
