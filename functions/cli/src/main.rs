//! `affinity`: try the engine on a demo shop, import your own CSVs, train a model.

use std::path::PathBuf;
use std::time::Duration;

use affinity_model::model::{Model, Stage, TrainConfig};
use affinity_service::{clv, demo, training};
use affinity_store::import::{self, ImportOptions};
use affinity_store::{Backend, BlobKey, Stores, TenantId};
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
    /// Fit BG/NBD and Gamma-Gamma on a transactions CSV: parameters and per-customer
    /// P(alive), expected purchases and CLV (no store needed).
    Clv {
        /// The CSV file (one row per purchase, with a header).
        file: PathBuf,
        /// Column with the customer id.
        #[arg(long, default_value = "customer_id")]
        customer_col: String,
        /// Column with the purchase date or timestamp.
        #[arg(long, default_value = "date")]
        date_col: String,
        /// Column with the amount; without it there is no Gamma-Gamma and no CLV.
        #[arg(long)]
        amount_col: Option<String>,
        /// Period and time unit: H (hour), D (day) or W (week, Monday to Sunday).
        #[arg(long, default_value = "D")]
        freq: String,
        /// End of observation (default: the latest transaction).
        #[arg(long)]
        observation_end: Option<String>,
        /// Horizon of expected purchases, in --freq units (default: one month of them).
        #[arg(long)]
        horizon: Option<f64>,
        /// CLV horizon in months.
        #[arg(long, default_value_t = 12)]
        months: u32,
        /// CLV discount rate per month.
        #[arg(long, default_value_t = 0.01)]
        discount: f64,
        /// Print at most this many customers in the table (all with --json).
        #[arg(long, default_value_t = 20)]
        top: usize,
    },
    /// Train a model on the tenant's purchases and store the artifact.
    Train {
        /// Also write the artifact to this path.
        #[arg(long)]
        out: Option<PathBuf>,
    },
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
    if let Cmd::Clv {
        file,
        customer_col,
        date_col,
        amount_col,
        freq,
        observation_end,
        horizon,
        months,
        discount,
        top,
    } = &cli.cmd
    {
        let unit = freq.parse().context("--freq")?;
        let observation_end = observation_end
            .as_deref()
            .map(|s| {
                clv::parse_time(s).with_context(|| {
                    format!("--observation-end: {s:?} is not a date (use 2024-05-01 or 2024-05-01T12:30:00Z)")
                })
            })
            .transpose()?;
        if horizon.is_some_and(|h| !(h.is_finite() && h > 0.0)) {
            anyhow::bail!("--horizon must be a positive number");
        }
        if !(discount.is_finite() && *discount > -1.0) {
            anyhow::bail!("--discount must be above -1");
        }
        let columns = clv::Columns {
            customer: customer_col.clone(),
            date: date_col.clone(),
            amount: amount_col.clone(),
        };
        let tx = clv::read_transactions(file, &columns)?;
        let opts = clv::Options {
            unit,
            observation_end,
            horizon: *horizon,
            months: *months,
            monthly_discount: *discount,
        };
        let report = clv::analyse(&tx, &opts, amount_col.is_some())
            .with_context(|| format!("{}", file.display()))?;
        if cli.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print_clv(&report, *top);
        }
        return Ok(());
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
        // Answered above, before a store is opened.
        Cmd::Clv { .. } => {}
        Cmd::Train { out } => {
            let model = train(&stores, &tenant).await?;
            let key = save(&stores, &tenant, &model, out).await?;
            report(&model, &key, cli.json)?;
        }
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
    }
    Ok(())
}

fn print_clv(r: &clv::Report, top: usize) {
    let p = &r.bgnbd.params;
    println!(
        "{} transactions, {} customers, unit {}, observation end {}",
        r.transactions,
        r.customers.len(),
        r.freq,
        r.observation_end
    );
    println!(
        "BG/NBD:      r = {:.4}  alpha = {:.4}  a = {:.4}  b = {:.4}  (mean log-likelihood {:.4}{})",
        p.r,
        p.alpha,
        p.a,
        p.b,
        r.bgnbd.mean_log_likelihood,
        if r.bgnbd.at_boundary {
            ", at a boundary: no dropout seen"
        } else {
            ""
        }
    );
    if let Some(g) = &r.gamma_gamma {
        println!(
            "Gamma-Gamma: p = {:.4}  q = {:.4}  v = {:.4}  ({} repeat customers)",
            g.params.p, g.params.q, g.params.v, g.customers
        );
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    let mut rows: Vec<&clv::Row> = r.customers.iter().collect();
    rows.sort_by(|a, b| {
        b.clv
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&a.clv.unwrap_or(f64::NEG_INFINITY))
            .then(
                b.expected_purchases
                    .unwrap_or(0.0)
                    .total_cmp(&a.expected_purchases.unwrap_or(0.0)),
            )
    });
    println!(
        "{:<20} {:>5} {:>9} {:>9} {:>8} {:>10} {:>10}",
        "customer",
        "freq",
        "recency",
        "T",
        "P(alive)",
        format!("E[{:.0}{}]", r.horizon, r.freq),
        "CLV"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    for row in rows.iter().take(top) {
        println!(
            "{:<20} {:>5} {:>9.2} {:>9.2} {:>8.3} {:>10} {:>10}",
            row.customer,
            row.frequency,
            row.recency,
            row.t,
            row.p_alive,
            opt(row.expected_purchases),
            opt(row.clv)
        );
    }
    if rows.len() > top {
        println!(
            "... {} more (by CLV, then expected purchases; --json for all)",
            rows.len() - top
        );
    }
}

fn bar(len: Option<u64>, unit: &str) -> ProgressBar {
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

async fn train(stores: &Stores, tenant: &TenantId) -> Result<Model> {
    let config = TrainConfig::default();
    let bar = bar(Some(config.als.iterations as u64), "iterations");
    bar.set_message("training");
    let version = format!("v{}", chrono::Utc::now().format("%Y%m%d-%H%M%S"));
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

async fn save(
    stores: &Stores,
    tenant: &TenantId,
    model: &Model,
    out: Option<PathBuf>,
) -> Result<String> {
    let bytes = model.to_bytes()?;
    let digest = affinity_model::artifact::digest(&bytes);
    let key = format!("models/{}.afm", &digest[..32]);
    if let Some(path) = out {
        std::fs::write(&path, &bytes).with_context(|| format!("write {}", path.display()))?;
    }
    stores
        .blobs
        .put(tenant, &BlobKey::parse(key.as_str())?, bytes)
        .await?;
    Ok(key)
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
