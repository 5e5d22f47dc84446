//! `affinity`: try the engine on a demo shop, import your own CSVs, retrain through the
//! promotion gate, inspect model versions, promote and roll back, write a model report,
//! score your own split, serve the HTTP API, manage API keys.

mod customers;
mod eval;
mod insight;
mod keys;
mod recommend;
mod serve;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use affinity_model::model::Model;
use affinity_service::retrain::{
    self, Outcome, Progress, RetrainDeps, RetrainRequest, RetrainSettings, TrainParams,
    TuneRequest, VersionMetrics, VersionParams, versions,
};
use affinity_service::{clv, demo};
use affinity_store::import::{self, ImportOptions};
use affinity_store::{Backend, JobId, JobRecord, ModelVersionId, Stores, TenantId};
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

#[derive(clap::Args)]
struct TrainArgs {
    /// Promote even if the gate rejects the candidate (recorded in the registry).
    #[arg(long)]
    force: bool,
    /// Idempotency key: re-running with the same id never trains or flips twice.
    #[arg(long)]
    job_id: Option<String>,
    /// Search hyperparameters first, for at most this many seconds.
    #[arg(long)]
    tune_budget: Option<u64>,
    /// Embedding dimension.
    #[arg(long)]
    factors: Option<usize>,
    /// ALS iterations.
    #[arg(long)]
    iterations: Option<usize>,
    /// L2 regularisation.
    #[arg(long)]
    regularization: Option<f32>,
    /// Confidence scale.
    #[arg(long)]
    alpha: Option<f32>,
    /// Half-life of a purchase's weight, in days.
    #[arg(long)]
    half_life_days: Option<f64>,
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// Versions, newest first, with their holdout metrics and gate decisions.
    List {
        /// At most this many.
        #[arg(long, default_value_t = versions::DEFAULT_LIST_LIMIT)]
        limit: usize,
    },
    /// One version in full: parameters, data, metrics, gate decision.
    Show {
        /// Version id.
        version: String,
    },
    /// Make a version live (its artifact is verified first).
    Promote {
        /// Version id.
        version: String,
        /// Allow a version the gate rejected.
        #[arg(long)]
        force: bool,
    },
    /// Put the previously live version back.
    Rollback,
}

#[derive(Subcommand)]
enum JobsCmd {
    /// A retrain job's status and message.
    Show {
        /// Job id.
        job_id: String,
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
        // Answered above, before a store is opened.
        Cmd::Clv { .. } => {}
        Cmd::Train { train, out } => {
            let outcome = retrain_now(&stores, request(&tenant, train)?).await?;
            if let Some(path) = out {
                let bytes = stores.blobs.get(&tenant, &outcome.artifact_key).await?;
                std::fs::write(&path, &bytes)
                    .with_context(|| format!("write {}", path.display()))?;
            }
            print_outcome(&outcome, cli.json)?;
        }
        Cmd::Serve { addr, demo } => serve::run(stores, &tenant, addr, demo).await?,
        Cmd::Recommend(args) => recommend::run(&stores, &tenant, args, cli.json).await?,
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
        Cmd::Customers { cmd } => customers::run(&stores, &tenant, cmd, cli.json).await?,
        Cmd::Profile { customer } => {
            insight::profile(&stores, &tenant, &customer, cli.json).await?
        }
        Cmd::Offers {
            cmd:
                OffersCmd::DryRun {
                    offer_id,
                    file,
                    channel,
                },
        } => {
            insight::dry_run(
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
        Cmd::Models { cmd } => models(&stores, &tenant, cmd, cli.json).await?,
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
            let outcome = retrain_now(&stores, RetrainRequest::new(tenant.clone())).await?;
            print_outcome(&outcome, cli.json)?;
            let (_, model) = versions::load_live(&stores, &tenant)
                .await?
                .context("no model is live: see `affinity models list`")?;
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

fn request(tenant: &TenantId, a: TrainArgs) -> Result<RetrainRequest> {
    Ok(RetrainRequest {
        tenant: tenant.clone(),
        job_id: a.job_id.map(JobId::parse).transpose().context("--job-id")?,
        force: a.force,
        params: TrainParams {
            factors: a.factors,
            iterations: a.iterations,
            regularization: a.regularization,
            alpha: a.alpha,
            half_life_days: a.half_life_days,
            ..TrainParams::default()
        },
        tune: a
            .tune_budget
            .map(|budget_seconds| TuneRequest { budget_seconds }),
    })
}

/// Runs the retrain pipeline with a progress bar on stderr.
pub(crate) async fn retrain_now(stores: &Stores, request: RetrainRequest) -> Result<Outcome> {
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
    let deps =
        RetrainDeps::new(stores.clone(), RetrainSettings::from_env()?).with_progress(progress);
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

fn print_outcome(o: &Outcome, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(o)?);
        return Ok(());
    }
    let what = if o.replayed {
        "job already finished"
    } else if o.resumed {
        "job resumed"
    } else {
        "retrained"
    };
    println!(
        "{what}: version {} {} ({} purchases, {} customers, {} items)",
        o.version,
        o.verdict.as_str(),
        o.counts.purchases,
        o.counts.customers,
        o.counts.items
    );
    println!("gate: {}", o.reason);
    let e = &o.evaluation;
    let k = e.k;
    let mut t = table(&[
        "model",
        &format!("recall@{k}"),
        &format!("NDCG@{k}"),
        &format!("hit rate@{k}"),
        "coverage",
    ]);
    let mut row = |name: String, m: &affinity_model::eval::Metrics| {
        t.add_row(vec![
            name,
            f4(m.recall),
            f4(m.ndcg),
            f4(m.hit_rate),
            f4(m.coverage),
        ]);
    };
    row(format!("candidate {}", o.version), &e.candidate);
    if let Some(l) = &e.live {
        row(format!("live {}", l.version), &l.metrics);
    }
    row("popularity".into(), &e.popularity);
    if e.customers == 0 {
        println!("holdout: no customers to evaluate on");
    } else {
        println!("holdout: {} customers\n{t}", e.customers);
    }
    match &o.live {
        Some(v) => println!("live now: {v}"),
        None => println!("no model is live"),
    }
    if !o.timings.is_empty() {
        let steps: Vec<String> = o
            .timings
            .iter()
            .map(|s| format!("{} {:.2}s", s.step, s.seconds))
            .collect();
        println!("steps: {}", steps.join(", "));
    }
    Ok(())
}

async fn models(stores: &Stores, tenant: &TenantId, cmd: ModelsCmd, json: bool) -> Result<()> {
    match cmd {
        ModelsCmd::List { limit } => {
            let reg = versions::list(stores, tenant, limit).await?;
            if json {
                println!("{}", serde_json::to_string(&reg)?);
                return Ok(());
            }
            if reg.versions.is_empty() {
                println!("no model versions yet: run `affinity train`");
                return Ok(());
            }
            let mut t = table(&[
                "version",
                "status",
                "created",
                "recall@10",
                "NDCG@10",
                "vs live",
                "popularity",
                "purchases",
                "reason",
            ]);
            for v in &reg.versions {
                let e = &v.entry;
                let m = VersionMetrics::of(e).ok();
                let status = if v.live {
                    "live *".to_owned()
                } else {
                    e.status.as_str().to_owned()
                };
                let metric = |f: fn(&VersionMetrics) -> Option<String>| {
                    m.as_ref().and_then(f).unwrap_or_else(|| "-".into())
                };
                t.add_row(vec![
                    e.version.to_string(),
                    status,
                    e.created_at.format("%Y-%m-%d %H:%M").to_string(),
                    metric(|m| Some(f4(m.evaluation.candidate.recall))),
                    metric(|m| Some(f4(m.evaluation.candidate.ndcg))),
                    metric(|m| {
                        m.evaluation
                            .live
                            .as_ref()
                            .map(|l| format!("{} / {}", f4(l.metrics.recall), f4(l.metrics.ndcg)))
                    }),
                    metric(|m| Some(f4(m.evaluation.popularity.recall))),
                    e.data_counts.purchases.to_string(),
                    affinity_service::error::clip_to(e.reason.as_deref().unwrap_or(""), 70),
                ]);
            }
            println!("{t}");
        }
        ModelsCmd::Show { version } => {
            let v = versions::show(stores, tenant, &ModelVersionId::parse(version)?).await?;
            if json {
                println!("{}", serde_json::to_string(&v)?);
                return Ok(());
            }
            let e = &v.entry;
            let mut t = table(&["field", "value"]);
            t.add_row(vec!["version".into(), e.version.to_string()]);
            t.add_row(vec![
                "status".into(),
                if v.live {
                    "live (serving now)".to_owned()
                } else {
                    e.status.as_str().to_owned()
                },
            ]);
            t.add_row(vec!["created".into(), e.created_at.to_rfc3339()]);
            t.add_row(vec!["artifact".into(), e.artifact_key.to_string()]);
            t.add_row(vec!["sha256".into(), e.checksum.clone()]);
            t.add_row(vec![
                "data".into(),
                format!(
                    "{} purchases, {} customers, {} items",
                    e.data_counts.purchases, e.data_counts.customers, e.data_counts.items
                ),
            ]);
            if let Ok(p) = serde_json::from_value::<VersionParams>(e.params.clone()) {
                let a = &p.config.als;
                t.add_row(vec!["job".into(), p.job_id.clone()]);
                t.add_row(vec![
                    "parameters".into(),
                    format!(
                        "{} factors, {} iterations, regularization {}, alpha {}, half-life {}",
                        a.factors,
                        a.iterations,
                        a.regularization,
                        a.alpha,
                        p.config
                            .weighting
                            .half_life_days
                            .map_or("none".into(), |d| format!("{d} days"))
                    ),
                ]);
                if let Some(tu) = &p.tuning {
                    t.add_row(vec![
                        "tuning".into(),
                        format!("{} configurations in {:.1}s", tu.tried, tu.seconds),
                    ]);
                }
            }
            if let Ok(m) = VersionMetrics::of(e) {
                let ev = &m.evaluation;
                let line = |x: &affinity_model::eval::Metrics| {
                    format!(
                        "recall {} NDCG {} hit rate {} coverage {}",
                        f4(x.recall),
                        f4(x.ndcg),
                        f4(x.hit_rate),
                        f4(x.coverage)
                    )
                };
                t.add_row(vec![
                    "holdout".into(),
                    format!("{} customers, {:?}, k = {}", ev.customers, ev.holdout, ev.k),
                ]);
                t.add_row(vec!["candidate".into(), line(&ev.candidate)]);
                if let Some(l) = &ev.live {
                    t.add_row(vec![format!("live {}", l.version), line(&l.metrics)]);
                }
                t.add_row(vec!["popularity".into(), line(&ev.popularity)]);
                t.add_row(vec![
                    "gate".into(),
                    format!(
                        "{}{} (tolerance {}%)",
                        m.gate.verdict.as_str(),
                        if m.gate.forced {
                            ", force requested"
                        } else {
                            ""
                        },
                        m.gate.tolerance * 100.0
                    ),
                ]);
            }
            t.add_row(vec!["reason".into(), e.reason.clone().unwrap_or_default()]);
            println!("{t}");
        }
        ModelsCmd::Promote { version, force } => {
            let p =
                versions::promote(stores, tenant, &ModelVersionId::parse(version)?, force).await?;
            print_pointer("promoted", &p, json)?;
        }
        ModelsCmd::Rollback => {
            let p = versions::rollback(stores, tenant).await?;
            print_pointer("rolled back", &p, json)?;
        }
    }
    Ok(())
}

fn print_pointer(what: &str, p: &affinity_store::LivePointer, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(p)?);
    } else {
        println!(
            "{what}: {} is live (previous: {})",
            p.version,
            p.previous.as_ref().map_or("none", |v| v.as_str())
        );
    }
    Ok(())
}

fn print_job(job: &JobRecord, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(job)?);
        return Ok(());
    }
    let mut t = table(&["field", "value"]);
    t.add_row(vec!["job".into(), job.job_id.to_string()]);
    t.add_row(vec!["status".into(), job.status.as_str().to_owned()]);
    t.add_row(vec!["started".into(), job.started_at.to_rfc3339()]);
    t.add_row(vec![
        "finished".into(),
        job.finished_at.map_or("-".into(), |f| f.to_rfc3339()),
    ]);
    t.add_row(vec![
        "message".into(),
        job.message.clone().unwrap_or_default(),
    ]);
    println!("{t}");
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
    let short = |i: u32| {
        let t = title(i);
        t.split(" (").next().unwrap_or(&t).to_owned()
    };
    // The same reasons the API returns, worded for a person.
    let why = |r: &affinity_model::model::Reason| -> String {
        use affinity_model::model::Reason;
        match *r {
            Reason::AlsoBought {
                anchor,
                shared_buyers,
                similarity,
            } => format!(
                "{shared_buyers} customers bought it with {} (similarity {similarity:.2})",
                short(anchor)
            ),
            Reason::SimilarTaste { anchor, similarity } => {
                format!("close to {} (similarity {similarity:.2})", short(anchor))
            }
            Reason::ForYou {
                because_of: Some(p),
                similarity,
            } => format!(
                "because they bought {} (similarity {similarity:.2})",
                short(p)
            ),
            Reason::ForYou {
                because_of: None, ..
            } => "matches their purchase history".to_owned(),
            Reason::Popular { category: Some(c) } => format!(
                "popular in {}",
                model
                    .categories
                    .get(c as usize)
                    .map_or("its category", |s| s.as_str())
            ),
            Reason::Popular { category: None } => "popular overall".to_owned(),
        }
    };
    let print = |heading: String, res: Vec<affinity_model::model::Scored>| {
        println!("\n{heading}");
        for s in res {
            println!("  {:<40} {}", title(s.item), why(&s.reason));
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
