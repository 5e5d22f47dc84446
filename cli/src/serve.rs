//! `affinity serve [--addr] [--demo]`: the HTTP API on this machine, optionally on a fresh
//! demo shop with a development key and example requests that make sense to a person.

use std::net::SocketAddr;

use affinity_service::http::state::AppState;
use affinity_service::settings::Settings;
use affinity_service::{
    demo,
    http::{host, routes, telemetry},
};
use affinity_store::{Scope, Stores, TenantId, generate_api_key};
use anyhow::{Context, Result};

/// Runs the server until Ctrl-C.
pub async fn run(
    stores: Stores,
    tenant: &TenantId,
    mut settings: Settings,
    addr: Option<SocketAddr>,
    with_demo: bool,
) -> Result<()> {
    if let Some(a) = addr {
        settings.addr = a;
    }
    // Bound first, so the printed examples name the real address (port 0 picks a free one)
    // and a port already in use fails before minutes of demo training.
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("bind {}", settings.addr))?;
    let bound = listener.local_addr()?;
    if with_demo {
        populate(&stores, tenant).await?;
        let outcome = crate::retrain_now(
            &stores,
            &settings.retrain,
            affinity_service::retrain::RetrainRequest::new(tenant.clone()),
        )
        .await
        .context("train the demo model")?;
        let live = outcome.live.clone().with_context(|| {
            format!(
                "the demo model was not promoted: {} (see `affinity models list`)",
                outcome.reason
            )
        })?;
        let key = generate_api_key(
            tenant,
            Scope::ALL.into(),
            Some("development key (affinity serve --demo)".into()),
            chrono::Utc::now(),
        )?;
        stores
            .records
            .create_key(&key.record)
            .await
            .context("store the development key")?;
        print_examples(&bound, &key.secret, live.as_str());
    }
    telemetry::init(&settings);
    let state = AppState::new(stores, &settings);
    println!("serving on http://{bound} (Ctrl-C stops)");
    host::serve_on(routes::router(state), listener).await?;
    Ok(())
}

async fn populate(stores: &Stores, tenant: &TenantId) -> Result<()> {
    let spin = crate::bar(None, "");
    spin.set_message("writing the demo shop");
    let shop = demo::populate(
        stores.records.as_ref(),
        tenant,
        3000,
        42,
        chrono::Utc::now(),
    )
    .await?;
    spin.finish_and_clear();
    println!(
        "demo shop: {} items, {} customers, {} purchase lines",
        shop.items, shop.customers, shop.purchases
    );
    Ok(())
}

/// The README, whose tour block is the one list of example requests: `serve --demo` prints
/// it and CI runs it against the demo server, so neither can drift from the other.
const README: &str = include_str!("../../README.md");

/// The lines of the README's tour block (between `<!-- tour:begin` and `<!-- tour:end -->`,
/// inside its ```` ```sh ```` fence): `#` comments and one-line curl commands using `$KEY`
/// and `$AFFINITY`.
pub fn tour(readme: &str) -> Option<Vec<&str>> {
    let (_, after) = readme.split_once("<!-- tour:begin")?;
    let (block, _) = after.split_once("<!-- tour:end -->")?;
    let (_, fenced) = block.split_once("```sh\n")?;
    let (body, _) = fenced.split_once("```")?;
    Some(body.lines().filter(|l| !l.trim().is_empty()).collect())
}

fn print_examples(addr: &SocketAddr, key: &str, version: &str) {
    let base = format!("http://{addr}");
    println!("\nmodel {version} is live. Development key (all scopes, shown once):\n\n  {key}\n");
    println!("Try (the README's tour; in a shell: KEY={key} AFFINITY={base}):");
    for line in tour(README).unwrap_or_default() {
        println!(
            "  {}",
            line.replace("$KEY", key).replace("$AFFINITY", &base)
        );
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_tour_is_comments_and_one_line_curl_commands() {
        let lines = tour(README).unwrap();
        let commands: Vec<&&str> = lines.iter().filter(|l| !l.starts_with('#')).collect();
        assert!(commands.len() >= 10, "{lines:?}");
        for (i, l) in lines.iter().enumerate() {
            if !l.starts_with('#') {
                assert!(l.starts_with("curl -s "), "{l}");
                assert!(l.contains("\"$AFFINITY/v1/"), "{l}");
                assert!(!l.ends_with('\\'), "one command per line: {l}");
                assert!(
                    i > 0 && lines[i - 1].starts_with('#'),
                    "{l} needs a `#` line"
                );
            }
        }
    }
}
