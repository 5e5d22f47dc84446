//! `affinity serve [--addr] [--demo]`: the HTTP API on this machine, optionally on a fresh
//! demo shop with a development key and example requests that make sense to a person.

use std::net::SocketAddr;

use affinity_service::settings::Settings;
use affinity_service::state::AppState;
use affinity_service::{demo, host, routes, telemetry};
use affinity_store::{Scope, Stores, TenantId, generate_api_key};
use anyhow::{Context, Result};

/// Runs the server until Ctrl-C.
pub async fn run(
    stores: Stores,
    tenant: &TenantId,
    addr: Option<SocketAddr>,
    with_demo: bool,
) -> Result<()> {
    let mut settings = Settings::from_env().context("read settings")?;
    if let Some(a) = addr {
        settings.addr = a;
    }
    if with_demo {
        let shop = populate(&stores, tenant).await?;
        let outcome = crate::retrain_now(
            &stores,
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
        let scopes = [
            Scope::Recommend,
            Scope::Offers,
            Scope::Ingest,
            Scope::ModelsAdmin,
        ];
        let key = generate_api_key(
            tenant,
            scopes.into(),
            Some("development key (affinity serve --demo)".into()),
            chrono::Utc::now(),
        )?;
        stores
            .records
            .create_key(&key.record)
            .await
            .context("store the development key")?;
        print_examples(&settings.addr, &key.secret, &shop, live.as_str());
    }
    telemetry::init(&settings);
    let state = AppState::new(stores, &settings);
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("bind {}", settings.addr))?;
    println!(
        "serving on http://{} (Ctrl-C stops)",
        listener.local_addr()?
    );
    host::serve_on(routes::router(state), listener).await?;
    Ok(())
}

async fn populate(stores: &Stores, tenant: &TenantId) -> Result<demo::DemoShop> {
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
    Ok(shop)
}

fn print_examples(addr: &SocketAddr, key: &str, shop: &demo::DemoShop, version: &str) {
    let base = format!("http://{addr}");
    let auth = format!("-H 'Authorization: Bearer {key}'");
    println!("\nmodel {version} is live. Development key (all scopes, shown once):\n\n  {key}\n");
    println!("Try:");
    println!("  # customers who bought this coffee also bought (in stock only, with reasons)");
    println!(
        "  curl -s {auth} '{base}/v1/items/{}/similar?k=5'",
        shop.example_item
    );
    println!("  # the same, only mugs");
    println!(
        "  curl -s {auth} '{base}/v1/items/{}/similar?k=3&category=Mugs'",
        shop.example_item
    );
    println!("  # a basket: coffee + brewing gear");
    println!(
        "  curl -s {auth} -H 'Content-Type: application/json' -d '{{\"items\":[\"{}\",\"{}\"],\"k\":5}}' '{base}/v1/baskets/similar'",
        shop.example_basket[0], shop.example_basket[1]
    );
    println!("  # recommended for a steady customer (already-bought items left out)");
    println!(
        "  curl -s {auth} '{base}/v1/customers/{}/recommendations?k=5'",
        shop.example_customer
    );
    println!("  # a valuable customer who stopped buying");
    println!(
        "  curl -s {auth} '{base}/v1/customers/{}/recommendations?k=5'",
        shop.lapsed_customer
    );
    println!(
        "  # ...their profile (gold tier, high churn risk, CLV) and next best offers: a win-back"
    );
    println!(
        "  curl -s {auth} '{base}/v1/customers/{}/profile'",
        shop.lapsed_customer
    );
    println!(
        "  curl -s {auth} '{base}/v1/customers/{}/offers?channel=email&limit=3'",
        shop.lapsed_customer
    );
    println!("  # next best offers for an email send, and who should hear about this coffee");
    println!(
        "  curl -s {auth} -H 'Content-Type: application/json' -d '{{\"customer_ids\":[\"{}\",\"{}\"],\"channel\":\"email\"}}' '{base}/v1/offers/batch'",
        shop.example_customer, shop.lapsed_customer
    );
    println!(
        "  curl -s {auth} '{base}/v1/items/{}/audience?limit=10'",
        shop.example_item
    );
    println!("  # how many customers an offer would reach before it goes live, by tier");
    println!(
        "  curl -s {auth} -H 'Content-Type: application/json' -d '{{\"offer_id\":\"coffee-10\",\"channel\":\"email\"}}' '{base}/v1/offers/dry-run'"
    );
    println!("  # a new purchase counts at once");
    println!(
        "  curl -s {auth} -H 'Content-Type: application/json' -d '{{\"purchases\":[{{\"order_id\":\"web-1\",\"customer_id\":\"new-shopper\",\"item_id\":\"{}\",\"purchased_at\":\"{}\"}}]}}' '{base}/v1/purchases'",
        shop.example_item,
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    );
    println!("  curl -s {auth} '{base}/v1/customers/new-shopper/recommendations?k=5'");
    println!("  # the live model, and the API description");
    println!("  curl -s {auth} '{base}/v1/models/live'");
    println!("  curl -s '{base}/v1/openapi.json'\n");
}
