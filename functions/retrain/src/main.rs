//! `affinity-retrain`: the scheduled / on-demand retrain function. On Lambda
//! (`AWS_LAMBDA_RUNTIME_API` set) it serves EventBridge events and direct invocations;
//! elsewhere it runs once with the JSON payload given as its argument (default `{}`).

use affinity_service::retrain::{RetrainDeps, RetrainSettings, invocation, new_job_id};
use affinity_store::{Backend, Stores, TenantId};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let on_lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
    let logs = tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
    );
    if on_lambda {
        logs.json().without_time().init()
    } else {
        logs.with_writer(std::io::stderr).init()
    }
    let tenant =
        TenantId::parse(std::env::var("AFFINITY_TENANT").unwrap_or_else(|_| "default".into()))?;
    let stores = Stores::open(&Backend::from_env()?).await?;
    let deps = RetrainDeps::new(stores, RetrainSettings::from_env()?);
    if on_lambda {
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
    let payload = serde_json::from_str(&std::env::args().nth(1).unwrap_or_else(|| "{}".into()))?;
    let out = invocation::handle(&deps, payload, &tenant, new_job_id("local")?.as_str()).await?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
