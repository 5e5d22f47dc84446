//! `affinity recommend`: recommendations for a list of customers, to CSV or JSON lines, for
//! a mailing or an offline check. Every answer is the one the API gives
//! (`GET /v1/customers/{id}/recommendations`): the same [`Serving::for_customer`] reads each
//! customer's current history from the store, folds it in, leaves out what they bought and
//! flags a popularity fallback.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use affinity_model::model::Model;
use affinity_service::answers::{Options, Recommendations};
use affinity_service::catalog::CatalogView;
use affinity_service::http::extract::K;
use affinity_service::loader::{ModelCache, Serving};
use affinity_service::settings::{DEFAULT_K, Settings};
use affinity_store::{
    BlobKey, CustomerId, DataCounts, ModelStatus, ModelVersion, ModelVersionId, Stores, TenantId,
};
use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use serde::Serialize;

/// Arguments of `affinity recommend`.
#[derive(clap::Args)]
pub struct RecommendArgs {
    /// File of customer ids: one per line, or a CSV with a `customer_id` column.
    #[arg(long, required_unless_present = "customer")]
    customers: Option<PathBuf>,
    /// A customer id (repeat for more; after the file's).
    #[arg(long = "customer")]
    customer: Vec<String>,
    /// Items per customer (1..=100).
    #[arg(long, default_value_t = DEFAULT_K, value_parser = parse_k)]
    k: usize,
    /// csv: customer_id, rank, item_id, score, reason (in words), fallback; jsonl (also
    /// with --json): one API answer per customer, with `customer_id`.
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    format: Format,
    /// Write to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Answer from this model artifact (`affinity train --out`) instead of the live model;
    /// histories and the catalog still come from the store.
    #[arg(long)]
    model: Option<PathBuf>,
}

/// Output formats.
#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Csv,
    Jsonl,
}

/// `k` as the API accepts it.
fn parse_k(s: &str) -> Result<usize, String> {
    let v: i64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    K::try_from(v).map(K::get).map_err(|e| e.to_string())
}

/// One JSON line: the customer and the API's answer for them.
#[derive(Serialize)]
struct Line<'a> {
    customer_id: &'a str,
    #[serde(flatten)]
    answer: &'a Recommendations,
}

/// Runs the command; the global `--json` means `--format jsonl`.
pub async fn run(
    stores: &Stores,
    tenant: &TenantId,
    settings: &Settings,
    args: RecommendArgs,
    json: bool,
) -> Result<()> {
    let mut customers = match &args.customers {
        Some(path) => read_customers(path)?,
        None => Vec::new(),
    };
    for c in &args.customer {
        customers.push(CustomerId::parse(c.as_str()).with_context(|| format!("--customer {c:?}"))?);
    }
    if customers.is_empty() {
        bail!("no customers to recommend for: the file lists none");
    }
    let serving = match &args.model {
        Some(path) => from_file(stores, tenant, path).await?,
        None => ModelCache::new(stores.clone(), Duration::from_secs(3600))
            .get(tenant)
            .await
            .context("load the live model (train one with `affinity train`, or pass --model)")?,
    };
    let history = settings.limits.history;
    let options = Options {
        k: args.k,
        category: None,
        in_stock: true,
        exclude: Vec::new(),
    };
    let sink: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let format = if json { Format::Jsonl } else { args.format };
    let mut out = Output::new(format, sink)?;
    let bar = crate::bar(Some(customers.len() as u64), "customers");
    bar.set_message("recommending");
    for customer in &customers {
        let answer = serving
            .for_customer(
                stores.records.as_ref(),
                tenant,
                customer,
                &options,
                false,
                history,
            )
            .await
            .with_context(|| format!("recommend for {customer}"))?;
        out.write(customer.as_str(), &answer)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    out.finish()
}

/// CSV columns, one row per recommended item.
const CSV_HEADER: [&str; 6] = [
    "customer_id",
    "rank",
    "item_id",
    "score",
    "reason",
    "fallback",
];

/// Where answers go, in the chosen format.
enum Output {
    Csv(Box<csv::Writer<Box<dyn Write>>>),
    Jsonl(Box<dyn Write>),
}

impl Output {
    /// Starts the output (the CSV header, so even an empty answer is a valid file).
    fn new(format: Format, sink: Box<dyn Write>) -> Result<Self> {
        Ok(match format {
            Format::Csv => {
                let mut w = csv::Writer::from_writer(sink);
                w.write_record(CSV_HEADER)?;
                Output::Csv(Box::new(w))
            }
            Format::Jsonl => Output::Jsonl(sink),
        })
    }

    fn write(&mut self, customer: &str, answer: &Recommendations) -> Result<()> {
        match self {
            Output::Csv(w) => {
                let fallback = match answer.fallback {
                    Some(f) => serde_json::to_value(f)?
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_default(),
                    None => String::new(),
                };
                for (rank, item) in answer.items.iter().enumerate() {
                    w.write_record([
                        customer,
                        &(rank + 1).to_string(),
                        &item.item_id,
                        &item.score.to_string(),
                        &item.explanation,
                        &fallback,
                    ])?;
                }
            }
            Output::Jsonl(w) => {
                serde_json::to_writer(
                    &mut *w,
                    &Line {
                        customer_id: customer,
                        answer,
                    },
                )?;
                w.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        match self {
            Output::Csv(mut w) => w.flush()?,
            Output::Jsonl(mut w) => w.flush()?,
        }
        Ok(())
    }
}

/// Customer ids from a file: a CSV with a `customer_id` column when the first line has a
/// comma or is `customer_id`, otherwise one id per line (blank lines skipped). Errors name
/// the file and line.
fn read_customers(path: &Path) -> Result<Vec<CustomerId>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let is_csv = first.contains(',') || first.trim().trim_matches('"') == "customer_id";
    let mut out = Vec::new();
    if is_csv {
        let mut r = csv::ReaderBuilder::new()
            .flexible(false)
            .from_reader(text.as_bytes());
        let col = r
            .headers()
            .with_context(|| format!("{}: header", path.display()))?
            .iter()
            .position(|h| h.trim() == "customer_id")
            .with_context(|| format!("{}: no `customer_id` column", path.display()))?;
        for row in r.records() {
            let row = row.with_context(|| format!("read {}", path.display()))?;
            let line = row.position().map_or(0, |p| p.line());
            let id = row.get(col).unwrap_or("").trim();
            out.push(
                CustomerId::parse(id)
                    .with_context(|| format!("{}:{line}: `customer_id`", path.display()))?,
            );
        }
    } else {
        for (n, l) in text.lines().enumerate() {
            let id = l.trim();
            if id.is_empty() {
                continue;
            }
            out.push(
                CustomerId::parse(id)
                    .with_context(|| format!("{}:{}: customer id", path.display(), n + 1))?,
            );
        }
    }
    Ok(out)
}

/// A model artifact on disk, verified and decoded, served with the tenant's catalog.
async fn from_file(stores: &Stores, tenant: &TenantId, path: &Path) -> Result<Arc<Serving>> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let checksum = affinity_model::artifact::digest(&bytes);
    let model = tokio::task::spawn_blocking(move || Model::from_bytes(&bytes))
        .await
        .context("decode the model artifact")?
        .with_context(|| format!("{} is not a usable model artifact", path.display()))?;
    let items = stores
        .records
        .list_items(tenant)
        .await
        .context("list the catalog")?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.afm".into());
    let version = ModelVersion {
        // The version the trainer wrote into the artifact's manifest.
        version: ModelVersionId::parse(model.manifest.model_version.as_str())
            .with_context(|| format!("{}: model version in the manifest", path.display()))?,
        created_at: chrono::DateTime::from_timestamp(model.manifest.trained_at, 0)
            .unwrap_or_else(chrono::Utc::now),
        status: ModelStatus::Candidate,
        artifact_key: BlobKey::parse(name.as_str())
            .with_context(|| format!("{}: file name as an artifact key", path.display()))?,
        checksum,
        params: serde_json::Value::Null,
        metrics: serde_json::Value::Null,
        data_counts: DataCounts {
            purchases: 0,
            customers: 0,
            items: model.items.len() as u64,
        },
        reason: Some(format!("read from {}", path.display())),
    };
    let catalog = Arc::new(CatalogView::build(&model, &items));
    Ok(Arc::new(Serving::new(Arc::new(model), version, catalog)))
}
