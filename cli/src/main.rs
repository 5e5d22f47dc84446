//! `affinity`: try the engine on a demo shop, import your own CSVs, retrain through the
//! promotion gate, inspect model versions, promote and roll back, write a model report,
//! score your own split, serve the HTTP API, manage API keys.

mod clv;
mod clv_report;
mod crm;
mod customers;
mod eval;
mod examples;
mod keys;
mod models;
mod recommend;
mod serve;

use models::{JobsCmd, ModelsCmd, TrainArgs, print_job, print_outcome, request};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use affinity_service::config::Config;
use affinity_service::demo;
use affinity_service::retrain::{
    self, Outcome, Progress, RetrainDeps, RetrainRequest, RetrainSettings, versions,
};
use affinity_store::import::{self, ImportOptions};
use affinity_store::{JobId, ModelVersionId, Stores, TenantId};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
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
    #[command(flatten)]
    config: Config,
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
    /// A customer's profile from the live model: RFM, tier, P(alive), expected purchases,
    /// CLV, what they are due to buy again.
    Profile {
        /// The customer id.
        customer: String,
    },
    /// Offers: try one before it goes live.
    Offers {
        #[command(subcommand)]
        cmd: OffersCmd,
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
    /// Retrain on the tenant's purchases: evaluate against the live model and popularity,
    /// promote only through the gate, register the version.
    Train {
        #[command(flatten)]
        train: TrainArgs,
        /// Also write the artifact to this path.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Model versions: list, show, promote, roll back.
    Models {
        #[command(subcommand)]
        cmd: ModelsCmd,
    },
    /// Write a model version's report: one self-contained HTML page with plots (metric
    /// history, recall@k against popularity, value tiers, offer response by tier).
    Report {
        /// Version id (default: the live one).
        #[arg(long)]
        version: Option<String>,
        /// Where to write the page (default: report-<version>.html).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Retrain jobs.
    Jobs {
        #[command(subcommand)]
        cmd: JobsCmd,
    },
    /// Recommendations for a list of customers from the live model (or an artifact file),
    /// exactly as the API answers them, to CSV or JSON lines.
    Recommend(recommend::RecommendArgs),
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
    /// Customers' data rights: erase a customer, record their consent.
    Customers {
        #[command(subcommand)]
        cmd: customers::CustomersCmd,
    },
}

#[derive(Subcommand)]
enum OffersCmd {
    /// How many customers an offer would reach (eligible, first offer), by tier.
    DryRun {
        /// A stored offer, whatever its status.
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        offer_id: Option<String>,
        /// A JSON offer document not stored yet.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The channel to evaluate for.
        #[arg(long, default_value = "email")]
        channel: String,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a key; its secret is printed once. A server key needs --scopes; a storefront
    /// key (--storefront) signs customer tokens for browsers and answers recommendations only.
    Create {
        /// Comma-separated scopes: recommend, profiles-read, offers-decide, offers-manage,
        /// ingest, customers-manage, models-admin.
        #[arg(long, num_args = 1.., required_unless_present = "storefront", conflicts_with = "storefront")]
        scopes: Vec<String>,
        /// A storefront key: its signing secret stays on the shop's server, which signs
        /// short-lived tokens naming one customer (`affinity keys sign`, docs/api.md).
        #[arg(long)]
        storefront: bool,
        /// A label to tell keys apart.
        #[arg(long)]
        label: Option<String>,
    },
    /// Sign a storefront token for one customer, as the shop's server does (for trying it
    /// out; production servers sign in their own language, see docs/api.md).
    Sign {
        /// The storefront key's id.
        #[arg(long)]
        key_id: String,
        /// The storefront key's signing secret (hex).
        #[arg(long, env = "AFFINITY_SIGNING_SECRET", hide_env_values = true)]
        secret: String,
        /// The customer the token answers for.
        #[arg(long)]
        customer: String,
        /// Lifetime in seconds (at most 86400).
        #[arg(long, default_value_t = 900)]
        ttl: i64,
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
            clv_report::print(&report, *top);
        }
        return Ok(());
    }
    if let Cmd::Eval(args) = cli.cmd {
        // Files in, numbers out: no store involved.
        return eval::run(args, cli.json);
    }
    let tenant = TenantId::parse(cli.tenant.clone()).context("--tenant")?;
    let settings = cli.config.settings()?;
    let stores = Stores::open(&settings.backend)
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
            let csv = import::Csv::open(&file)?;
            let report = match kind {
                Kind::Purchases => import::import_purchases(csv, r, &tenant, opts, &progress).await,
                Kind::Items => import::import_items(csv, r, &tenant, opts, &progress).await,
                Kind::Offers => import::import_offers(csv, r, &tenant, opts, &progress).await,
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
        Cmd::Train { train, out } => {
            let outcome = retrain_now(&stores, &settings.retrain, request(&tenant, train)?).await?;
            if let Some(path) = out {
                let bytes = stores.blobs.get(&tenant, &outcome.artifact_key).await?;
                std::fs::write(&path, &bytes)
                    .with_context(|| format!("write {}", path.display()))?;
            }
            print_outcome(&outcome, cli.json)?;
        }
        Cmd::Serve { addr, demo } => {
            serve::run(stores, &tenant, settings.clone(), addr, demo).await?
        }
        Cmd::Recommend(args) => recommend::run(&stores, &tenant, &settings, args, cli.json).await?,
        Cmd::Keys { cmd } => match cmd {
            KeysCmd::Create {
                scopes,
                storefront,
                label,
            } => {
                if storefront {
                    keys::create_storefront(&stores, &tenant, label, cli.json).await?
                } else {
                    keys::create(&stores, &tenant, &scopes, label, cli.json).await?
                }
            }
            KeysCmd::Sign {
                key_id,
                secret,
                customer,
                ttl,
            } => keys::sign(&tenant, &key_id, &secret, &customer, ttl, cli.json)?,
            KeysCmd::Revoke { key_id } => keys::revoke(&stores, &tenant, &key_id, cli.json).await?,
            KeysCmd::List => keys::list(&stores, &tenant, cli.json).await?,
        },
        Cmd::Customers { cmd } => {
            customers::run(&stores, &tenant, &settings, cmd, cli.json).await?
        }
        Cmd::Profile { customer } => crm::profile(&stores, &tenant, &customer, cli.json).await?,
        Cmd::Offers {
            cmd:
                OffersCmd::DryRun {
                    offer_id,
                    file,
                    channel,
                },
        } => {
            crm::dry_run(
                &stores,
                &tenant,
                offer_id.as_deref(),
                file.as_deref(),
                &channel,
                cli.json,
            )
            .await?
        }
        Cmd::Eval(_) => unreachable!("handled before the store is opened"),
        Cmd::Models { cmd } => models::run(&stores, &tenant, cmd, cli.json).await?,
        Cmd::Report { version, out } => {
            let version = version
                .map(ModelVersionId::parse)
                .transpose()
                .context("--version")?;
            let report = affinity_service::report::build(&stores, &tenant, version.as_ref())
                .await
                .context("make the report")?;
            // Version ids may hold any printable character; the default name keeps a safe subset.
            let path = out.unwrap_or_else(|| {
                let safe: String = report
                    .version
                    .as_str()
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                PathBuf::from(format!("report-{safe}.html"))
            });
            std::fs::write(&path, &report.html)
                .with_context(|| format!("write {}", path.display()))?;
            if cli.json {
                let out = serde_json::json!({
                    "path": path.display().to_string(),
                    "version": report.version.to_string(),
                });
                println!("{out}");
            } else {
                println!(
                    "wrote the report on {} to {} ({} KiB); open it in a browser",
                    report.version,
                    path.display(),
                    report.html.len().div_ceil(1024)
                );
            }
        }
        Cmd::Jobs {
            cmd: JobsCmd::Show { job_id },
        } => {
            let job = versions::job(&stores, &tenant, &JobId::parse(job_id)?).await?;
            print_job(&job, cli.json)?;
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
            let outcome = retrain_now(
                &stores,
                &settings.retrain,
                RetrainRequest::new(tenant.clone()),
            )
            .await?;
            print_outcome(&outcome, cli.json)?;
            let (_, model) = versions::load_live(&stores, &tenant)
                .await?
                .context("no model is live: see `affinity models list`")?;
            examples::show_examples(&stores, &tenant, &model, &shop).await?;
        }
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

/// Runs the retrain pipeline with a progress bar on stderr.
pub(crate) async fn retrain_now(
    stores: &Stores,
    settings: &RetrainSettings,
    request: RetrainRequest,
) -> Result<Outcome> {
    let bar = Arc::new(bar(Some(1), "iterations"));
    let b = Arc::clone(&bar);
    let progress = Arc::new(move |p: Progress| match p {
        Progress::Step(step) => {
            b.set_message(step.doing());
            b.set_length(1);
            b.set_position(0);
        }
        Progress::Iteration { n, of, .. } => {
            b.set_length(of as u64);
            b.set_position(n as u64);
        }
    });
    let deps = RetrainDeps::new(stores.clone(), settings.clone()).with_progress(progress);
    let outcome = retrain::run_once(&deps, request).await;
    bar.finish_and_clear();
    Ok(outcome?)
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header(header.to_vec());
    t
}

fn f4(x: f64) -> String {
    format!("{x:.4}")
}
