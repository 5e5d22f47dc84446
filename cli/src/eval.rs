//! `affinity eval`: train on the data team's own train CSV and score their test CSV under
//! the full-ranking protocol of `bench/quality`, so a split they trust gets the same
//! numbers the benchmark reports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use affinity_model::als::AlsParams;
use affinity_model::eval::{self, ExternalTest, Metrics};
use affinity_model::interactions::{Event, InteractionsBuilder, Weighting};
use affinity_model::model::{IndexChoice, Stage, TrainConfig, Trainer, popularity_metrics};
use affinity_store::import::parse_timestamp;
use anyhow::{Context, Result, bail};
use serde::Serialize;

/// Arguments of `affinity eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// Training interactions: CSV with `customer_id`, `item_id` and optionally `quantity`
    /// and `purchased_at` (other columns, e.g. a purchases export's, are ignored).
    #[arg(long)]
    train: PathBuf,
    /// Held-out interactions, same columns; each customer's train items are excluded and
    /// every item seen in train is ranked.
    #[arg(long)]
    test: PathBuf,
    /// Cut-off of the metrics.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Embedding dimension.
    #[arg(long)]
    factors: Option<usize>,
    /// L2 regularisation.
    #[arg(long)]
    reg: Option<f32>,
    /// Confidence scale.
    #[arg(long)]
    alpha: Option<f32>,
    /// ALS alternations.
    #[arg(long)]
    iterations: Option<usize>,
    /// Popularity weighting of unobserved pairs (0 = uniform).
    #[arg(long)]
    neg_exp: Option<f32>,
    /// Half-life of the time decay in days; 0 turns decay off (the default when the train
    /// file has no `purchased_at` column).
    #[arg(long)]
    half_life_days: Option<f64>,
}

/// What `--json` prints.
#[derive(Serialize)]
struct Report {
    k: usize,
    train_rows: usize,
    test: ExternalTest,
    fit_seconds: f64,
    params: AlsParams,
    affinity: Metrics,
    popularity: Metrics,
}

/// One interaction row.
struct Row {
    customer: String,
    item: String,
    quantity: f32,
    at: Option<i64>,
}

/// Reads a CSV of interactions; errors name the file, line and column.
fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let name = path.display().to_string();
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("open {name}"))?;
    let headers = rdr
        .headers()
        .with_context(|| format!("{name}: read the header row"))?
        .clone();
    let col: HashMap<&str, usize> = headers.iter().enumerate().map(|(i, h)| (h, i)).collect();
    let need = |c: &str| {
        col.get(c)
            .copied()
            .with_context(|| format!("{name}: missing column `{c}` (have: {headers:?})"))
    };
    let (ci, ii) = (need("customer_id")?, need("item_id")?);
    let (qi, ti) = (
        col.get("quantity").copied(),
        col.get("purchased_at").copied(),
    );
    let mut out = Vec::new();
    for (n, rec) in rdr.records().enumerate() {
        let line = n + 2;
        let rec = rec.with_context(|| format!("{name}:{line}: malformed CSV row"))?;
        let field = |i: usize, c: &str| -> Result<String> {
            match rec.get(i) {
                Some(v) if !v.is_empty() => Ok(v.to_owned()),
                _ => bail!("{name}:{line}: field `{c}` is empty"),
            }
        };
        let quantity = match qi.and_then(|i| rec.get(i)).filter(|v| !v.is_empty()) {
            None => 1.0,
            Some(v) => match v.parse::<u32>() {
                Ok(q) if q >= 1 => q as f32,
                _ => bail!("{name}:{line}: field `quantity` = {v:?}: must be an integer >= 1"),
            },
        };
        let at = match ti.and_then(|i| rec.get(i)).filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(
                parse_timestamp(v)
                    .with_context(|| {
                        format!("{name}:{line}: field `purchased_at` = {v:?}: not a timestamp (RFC 3339, `YYYY-MM-DD HH:MM:SS` or `YYYY-MM-DD`)")
                    })?
                    .timestamp(),
            ),
        };
        out.push(Row {
            customer: field(ci, "customer_id")?,
            item: field(ii, "item_id")?,
            quantity,
            at,
        });
    }
    Ok(out)
}

/// Runs the evaluation and prints it.
pub fn run(args: EvalArgs, json: bool) -> Result<()> {
    if !(1..=1000).contains(&args.k) {
        bail!("--k must be between 1 and 1000");
    }
    let train_rows = read_rows(&args.train)?;
    let test_rows = read_rows(&args.test)?;
    if train_rows.is_empty() {
        bail!("{}: no rows", args.train.display());
    }
    let timed = train_rows.iter().all(|r| r.at.is_some());
    let half_life = match args.half_life_days {
        Some(d) if d > 0.0 => Some(d),
        Some(_) => None,
        None if timed => TrainConfig::default().weighting.half_life_days,
        None => None,
    };
    let weighting = Weighting {
        half_life_days: half_life,
    };
    let mut b = InteractionsBuilder::new();
    for r in &train_rows {
        b.push(Event {
            customer: &r.customer,
            item: &r.item,
            quantity: r.quantity,
            at: r.at.unwrap_or(0),
        })
        .with_context(|| format!("{}: customer {:?}", args.train.display(), r.customer))?;
    }
    let data = b.build(&weighting)?;
    let defaults = TrainConfig::default();
    let als = AlsParams {
        factors: args.factors.unwrap_or(defaults.als.factors),
        regularization: args.reg.unwrap_or(defaults.als.regularization),
        alpha: args.alpha.unwrap_or(defaults.als.alpha),
        iterations: args.iterations.unwrap_or(defaults.als.iterations),
        neg_exponent: args.neg_exp.unwrap_or(defaults.als.neg_exponent),
        ..defaults.als.clone()
    };
    als.validate().context("training parameters")?;
    let config = TrainConfig {
        als: als.clone(),
        weighting,
        // Offline scoring is a full ranking: no neighbour lists or ANN graph needed.
        neighbours: 1,
        index: IndexChoice::Exact,
    };
    let (split, stats) = eval::split_from_pairs(
        &data,
        test_rows
            .iter()
            .map(|r| (r.customer.as_str(), r.item.as_str())),
    );
    if stats.pairs == 0 {
        bail!(
            "{}: none of its {} rows can be scored against the train file ({} unknown customers, {} already in train)",
            args.test.display(),
            stats.rows,
            stats.unknown_customer_rows,
            stats.in_train_rows
        );
    }
    let bar = crate::bar(Some(als.iterations as u64), "iterations");
    bar.set_message("fitting");
    let t = Instant::now();
    let progress = |s| {
        if let Stage::Iteration { n, .. } = s {
            bar.set_position(n as u64);
        }
    };
    let model = Trainer::new(&config)
        .version("eval")
        .trained_at(data.watermark)
        .progress(&progress)
        .train(&data, &Default::default())?;
    let fit_seconds = t.elapsed().as_secs_f64();
    bar.set_message("scoring");
    let affinity = model.evaluate(&split, args.k);
    let popularity = popularity_metrics(&split, args.k);
    bar.finish_and_clear();
    let report = Report {
        k: args.k,
        train_rows: train_rows.len(),
        test: stats,
        fit_seconds,
        params: als,
        affinity,
        popularity,
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let t = &report.test;
    println!(
        "train: {} rows, {} customers, {} items; fit {:.2}s",
        report.train_rows,
        data.n_customers(),
        data.n_items(),
        report.fit_seconds
    );
    println!(
        "test: {} rows -> {} pairs over {} customers ({} unknown customers, {} unseen items counted as misses, {} already in train, {} duplicates)",
        t.rows,
        t.pairs,
        t.customers,
        t.unknown_customer_rows,
        t.unknown_item_rows,
        t.in_train_rows,
        t.duplicate_rows
    );
    let k = report.k;
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "system",
        format!("recall@{k}"),
        format!("ndcg@{k}"),
        format!("hit@{k}"),
        format!("precision@{k}"),
        "coverage"
    );
    for (name, m) in [
        ("affinity", &report.affinity),
        ("popularity", &report.popularity),
    ] {
        println!(
            "{:<12} {:>10.4} {:>10.4} {:>10.4} {:>12.4} {:>10.4}",
            name, m.recall, m.ndcg, m.hit_rate, m.precision, m.coverage
        );
    }
    Ok(())
}
