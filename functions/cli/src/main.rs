//! `affinity`: try the engine on a demo shop, import your own CSVs, train a model, serve
//! the HTTP API, manage API keys.

mod eval;
mod keys;
mod serve;

use std::path::PathBuf;
use std::time::Duration;

use affinity_model::model::{Model, Stage, TrainConfig};
use affinity_service::{demo, training};
use affinity_store::import::{self, ImportOptions};
use affinity_store::{Backend, Stores, TenantId};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "affinity",
    version,
    about = "Recommendations and next-best offers from purchase history"
)]
struct Cli {
    /// Tenant (shop) to work on.
    #[arg(
        long,
        global = true,
        default_value = "default",
        env = "AFFINITY_TENANT"
    )]
    tenant: String,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Purchases,
    Items,
    Offers,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a demo shop in the embedded store, train on it and show real answers.
    Demo {
        /// Number of demo customers.
        #[arg(long, default_value_t = 3000)]
        customers: usize,
        /// Seed of the demo data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Import a CSV file (columns in docs/data-model.md) into the configured store.
    Import {
        /// What the file holds.
        kind: Kind,
        /// The CSV file.
        file: PathBuf,
        /// Write the good rows and report bad ones instead of refusing the whole file.
        #[arg(long)]
        skip_bad_rows: bool,
    },
    /// Train on your own train CSV and score your test CSV (full ranking, as `bench/quality`).
    Eval(eval::EvalArgs),
    /// Train a model on the tenant's purchases, store the artifact and make it live.
    Train {
        /// Also write the artifact to this path.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Serve the HTTP API on this machine.
    Serve {
        /// Address to listen on (default AFFINITY_ADDR or 127.0.0.1:8080).
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        /// First fill the store with the demo shop, train on it and print a development key.
        #[arg(long)]
        demo: bool,
    },
    /// Create, revoke or list API keys.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a key; its secret is printed once.
    Create {
        /// Comma-separated scopes: recommend, offers, ingest, models-admin.
        #[arg(long, required = true, num_args = 1..)]
        scopes: Vec<String>,
        /// A label to tell keys apart.
        #[arg(long)]
        label: Option<String>,
    },
    /// Revoke a key by its id.
    Revoke {
        /// The key id (the part after `aff_` in the secret).
        key_id: String,
    },
    /// List the tenant's keys.
    List,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Cmd::Eval(args) = cli.cmd {
        // Files in, numbers out: no store involved.
        return eval::run(args, cli.json);
    }
    let tenant = TenantId::parse(cli.tenant.clone()).context("--tenant")?;
    let stores = Stores::open(&Backend::from_env()?)
        .await
        .context("open store")?;
    match cli.cmd {
        Cmd::Import {
            kind,
            file,
            skip_bad_rows,
        } => {
            let bar = bar(None, "rows");
            let progress = |n: u64| bar.set_position(n);
            let opts = ImportOptions {
                skip_bad_rows,
                ..ImportOptions::default()
            };
            let r = stores.records.as_ref();
            let report = match kind {
                Kind::Purchases => {
                    import::import_purchases_file(&file, r, &tenant, opts, &progress).await
                }
                Kind::Items => import::import_items_file(&file, r, &tenant, opts, &progress).await,
                Kind::Offers => {
                    import::import_offers_file(&file, r, &tenant, opts, &progress).await
                }
            }?;
            bar.finish_and_clear();
            if cli.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{}: {} rows read, {} written, {} already there, {} conflicts, {} skipped",
                    file.display(),
                    report.rows_read,
                    report.inserted,
                    report.duplicates,
                    report.conflicts,
                    report.skipped.len()
                );
                for s in report.skipped.iter().take(20) {
                    println!("  skipped line {} field {}: {}", s.line, s.field, s.reason);
                }
            }
        }
        Cmd::Train { out } => {
            let model = train(&stores, &tenant).await?;
            let key = save(&stores, &tenant, &model, out).await?;
            report(&model, &key, cli.json)?;
        }
        Cmd::Serve { addr, demo } => serve::run(stores, &tenant, addr, demo).await?,
        Cmd::Keys { cmd } => match cmd {
            KeysCmd::Create { scopes, label } => {
                keys::create(&stores, &tenant, &scopes, label, cli.json).await?
            }
            KeysCmd::Revoke { key_id } => keys::revoke(&stores, &tenant, &key_id, cli.json).await?,
            KeysCmd::List => keys::list(&stores, &tenant, cli.json).await?,
        },
        Cmd::Demo { customers, seed } => {
            let spin = bar(None, "");
            spin.set_message("writing the demo shop");
            let shop = demo::populate(
                stores.records.as_ref(),
                &tenant,
                customers,
                seed,
                chrono::Utc::now(),
            )
            .await?;
            spin.finish_and_clear();
            println!(
                "demo shop: {} items, {} customers, {} purchase lines",
                shop.items, shop.customers, shop.purchases
            );
            let model = train(&stores, &tenant).await?;
            let key = save(&stores, &tenant, &model, None).await?;
            report(&model, &key, cli.json)?;
            show_examples(&stores, &tenant, &model, &shop).await?;
        }
        Cmd::Eval(_) => unreachable!("handled before the store is opened"),
    }
    Ok(())
}

/// A progress bar (with a length) or a spinner.
pub(crate) fn bar(len: Option<u64>, unit: &str) -> ProgressBar {
    let b = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let template = match len {
        Some(_) => format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit}"),
        None => format!("{{spinner}} {{msg}} {{pos}} {unit}"),
    };
    if let Ok(style) = ProgressStyle::with_template(&template) {
        b.set_style(style);
    }
    b.enable_steady_tick(Duration::from_millis(120));
    b
}

/// Trains on the tenant's purchases with a progress bar.
pub(crate) async fn train(stores: &Stores, tenant: &TenantId) -> Result<Model> {
    let config = TrainConfig::default();
    let bar = bar(Some(config.als.iterations as u64), "iterations");
    bar.set_message("training");
    let version = format!("v{}", chrono::Utc::now().format("%Y%m%d-%H%M%S-%3f"));
    let model =
        training::train_tenant(
            stores.records.as_ref(),
            tenant,
            &config,
            &version,
            &|s| match s {
                Stage::Iteration { n, .. } => bar.set_position(n as u64),
                Stage::Neighbours => bar.set_message("neighbour lists"),
                Stage::Index => bar.set_message("vector index"),
            },
        )
        .await?;
    bar.finish_and_clear();
    Ok(model)
}

/// Stores the artifact, registers the version and makes it live (no gate yet).
async fn save(
    stores: &Stores,
    tenant: &TenantId,
    model: &Model,
    out: Option<PathBuf>,
) -> Result<String> {
    if let Some(path) = out {
        model
            .save(&path)
            .with_context(|| format!("write {}", path.display()))?;
    }
    let version = training::publish(stores, tenant, model, serde_json::json!({})).await?;
    Ok(version.artifact_key.as_str().to_owned())
}

fn report(model: &Model, key: &str, json: bool) -> Result<()> {
    let m = &model.manifest;
    if json {
        println!(
            "{}",
            serde_json::json!({"model_version": m.model_version, "artifact": key, "counts": m.counts, "data_watermark": m.data_watermark})
        );
    } else {
        println!(
            "trained {}: {} customers x {} items ({} purchases), {} factors; artifact {key}",
            m.model_version,
            m.counts.customers,
            m.counts.items,
            m.counts.purchases,
            model.factors()
        );
    }
    Ok(())
}

async fn show_examples(
    stores: &Stores,
    tenant: &TenantId,
    model: &Model,
    shop: &demo::DemoShop,
) -> Result<()> {
    let catalog = stores.records.list_items(tenant).await?;
    let title = |i: u32| {
        let id = model.items.id(i);
        catalog
            .iter()
            .find(|c| c.item_id.as_str() == id)
            .map(|c| {
                format!(
                    "{} ({})",
                    c.title,
                    c.category.as_ref().map_or("-", |c| c.as_str())
                )
            })
            .unwrap_or_else(|| id.to_owned())
    };
    let print = |heading: String, res: Vec<affinity_model::model::Scored>| {
        println!("\n{heading}");
        for s in res {
            println!("  {:<40} {:?}", title(s.item), s.reason);
        }
    };
    if let Some(i) = model.item_index(&shop.example_item) {
        print(
            format!("customers who bought {} also bought:", title(i)),
            model.similar(i, 5, &|_| true),
        );
    }
    let basket: Vec<u32> = shop
        .example_basket
        .iter()
        .filter_map(|b| model.item_index(b))
        .collect();
    let names: Vec<String> = basket.iter().map(|&b| title(b)).collect();
    print(
        format!("for a basket of {}:", names.join(" + ")),
        model.basket(&basket, 5, &|_| true),
    );
    let customer = affinity_store::CustomerId::parse(shop.example_customer.as_str())?;
    let history = stores
        .records
        .customer_history(tenant, &customer, 200)
        .await?;
    let purchases: Vec<affinity_model::model::Purchase> = history
        .iter()
        .filter_map(|p| {
            model
                .item_index(p.item_id.as_str())
                .map(|item| affinity_model::model::Purchase {
                    item,
                    quantity: p.quantity.get() as f32,
                    at: p.purchased_at.timestamp(),
                })
        })
        .collect();
    let bought: Vec<u32> = purchases.iter().map(|p| p.item).collect();
    print(
        format!(
            "recommended for {} ({} past purchases):",
            shop.example_customer,
            purchases.len()
        ),
        model.recommend(&purchases, 5, &|j| !bought.contains(&j)),
    );
    Ok(())
}
