//! Retrain benchmark driver: a seeded synthetic shop written straight into the embedded
//! (SQLite) store through the bulk write path, then `retrain::run_once` timed end to end.
//! `bench/retrain` calls it.
//!
//! The shop: power-law customer activity and item popularity, items in co-purchase groups of
//! 50 (ten groups to a category), each customer shopping mostly in one to three groups,
//! orders of one to four lines spread over two years. Purchases of the last seven days are
//! the "recent" part: `generate` writes the history only; `run` first retrains on the
//! history (no model live yet), then appends the recent week and retrains again, so the
//! second run is the steady-state one: evaluated against the live model on what it has not
//! seen, gated, flipped.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use affinity_bench::{peak_rss_mb, r4};
use affinity_service::retrain::{
    self, Outcome, Progress, RetrainDeps, RetrainRequest, RetrainSettings, Step,
};
use affinity_store::{
    CatalogItem, Category, CustomerId, ItemId, OrderId, Purchase, RecordStore, SqliteStore, Stores,
    TenantId, WriteOutcome,
};
use anyhow::{Context, Result};
use chrono::{DateTime, Duration, Utc};
use clap::{Parser, Subcommand};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Shape {
    /// Purchase lines in total (history + recent week).
    #[arg(long, default_value_t = 20_000_000)]
    purchases: usize,
    /// Customers.
    #[arg(long, default_value_t = 1_000_000)]
    customers: usize,
    /// Catalog items.
    #[arg(long, default_value_t = 50_000)]
    items: usize,
    /// Seed of everything.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the catalog and the purchase history (all but the last week) into
    /// `dir/affinity.db`; does nothing if `dir` already holds this shape.
    Generate {
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        shape: Shape,
    },
    /// Retrain on the history, append the recent week, retrain again; prints per-step
    /// times and one JSON line.
    Run {
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        shape: Shape,
    },
}

/// Written next to the database once generation finished.
const MARKER: &str = "shop.json";
/// Rows per write transaction.
const BATCH: usize = 50_000;
/// The shop's "now": fixed so the data is the same on every machine.
fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Generate { dir, shape } => generate(&dir, &shape).await,
        Cmd::Run { dir, shape } => run(&dir, &shape).await,
    }
}

fn tenant() -> TenantId {
    TenantId::default()
}

async fn open(dir: &Path) -> Result<Stores> {
    let records = SqliteStore::open(dir.join("affinity.db")).await?;
    let blobs = affinity_store::LocalBlobStore::new(dir.join("blobs"));
    Ok(Stores::new(Arc::new(records), Arc::new(blobs)))
}

async fn generate(dir: &Path, shape: &Shape) -> Result<()> {
    let marker = dir.join(MARKER);
    if let Ok(text) = std::fs::read_to_string(&marker)
        && serde_json::from_str::<Shape>(&text).ok().as_ref() == Some(shape)
    {
        eprintln!("generate: {} already holds this shop", dir.display());
        return Ok(());
    }
    anyhow::ensure!(
        !dir.join("affinity.db").exists(),
        "{} holds another shop; remove it first",
        dir.display()
    );
    std::fs::create_dir_all(dir)?;
    let stores = open(dir).await?;
    let t = Instant::now();
    stores
        .records
        .upsert_items(&tenant(), &catalog(shape)?)
        .await?;
    let written = write_purchases(stores.records.as_ref(), shape, Part::History).await?;
    eprintln!(
        "generate: {written} purchase lines (history) in {:.0}s",
        t.elapsed().as_secs_f64()
    );
    std::fs::write(&marker, serde_json::to_string(shape)?)?;
    Ok(())
}

fn catalog(shape: &Shape) -> Result<Vec<CatalogItem>> {
    (0..shape.items)
        .map(|i| {
            Ok(CatalogItem {
                item_id: ItemId::parse(format!("i{i:06}"))?,
                title: format!("Item {i}"),
                category: Some(Category::parse(format!("cat{:03}", i / 500))?),
                price_minor: 500 + (i as i64 * 37) % 9000,
                currency: None,
                in_stock: i % 23 != 7,
                created_at: now() - Duration::days(800),
                repurchasable: i % 5 == 0,
                attributes: None,
            })
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    /// Everything before the last week.
    History,
    /// The last week.
    Recent,
}

/// Cumulative distribution of a Zipf law over `n` ranks.
fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|r| {
            acc += 1.0 / (r as f64).powf(s);
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    cdf
}

fn draw(cdf: &[f64], rng: &mut impl Rng) -> usize {
    let u: f64 = rng.random();
    cdf.partition_point(|&c| c < u).min(cdf.len() - 1)
}

/// Generates the whole shop deterministically and writes the rows of `part`.
async fn write_purchases(store: &dyn RecordStore, shape: &Shape, part: Part) -> Result<u64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(shape.seed);
    let group = 50usize;
    let n_groups = shape.items.div_ceil(group);
    let global = zipf_cdf(shape.items, 1.0);
    let within = zipf_cdf(group, 0.8);
    let group_pop = zipf_cdf(n_groups, 0.9);
    let k_groups = zipf_cdf(3, 1.0);
    let activity = zipf_cdf(shape.customers, 0.6);
    let mut counts = vec![1u32; shape.customers];
    for _ in shape.customers..shape.purchases {
        counts[draw(&activity, &mut rng)] += 1;
    }
    let span = 730 * 86_400i64;
    let recent_from = now() - Duration::days(7);
    let (mut batch, mut written) = (Vec::with_capacity(BATCH), 0u64);
    let started = Instant::now();
    for (c, &n) in counts.iter().enumerate() {
        let k = 1 + draw(&k_groups, &mut rng);
        let groups: Vec<usize> = (0..k).map(|_| draw(&group_pop, &mut rng)).collect();
        let customer = CustomerId::parse(format!("c{c:07}"))?;
        let mut left = n as usize;
        let mut order = 0u32;
        while left > 0 {
            let lines = (1 + rng.random_range(0..4usize)).min(left);
            left -= lines;
            order += 1;
            let at = now() - Duration::seconds(rng.random_range(0..span));
            let order_id = OrderId::parse(format!("o{c:07}-{order:04}"))?;
            for line in 0..lines {
                let item = if rng.random::<f64>() < 0.75 {
                    let g = groups[rng.random_range(0..groups.len())];
                    (g * group + draw(&within, &mut rng)).min(shape.items - 1)
                } else {
                    draw(&global, &mut rng)
                };
                let quantity = 1 + u32::from(rng.random::<f64>() < 0.1);
                let keep = match part {
                    Part::History => at < recent_from,
                    Part::Recent => at >= recent_from,
                };
                if keep {
                    batch.push(Purchase {
                        order_id: order_id.clone(),
                        line: line as u32 + 1,
                        customer_id: customer.clone(),
                        item_id: ItemId::parse(format!("i{item:06}"))?,
                        quantity: NonZeroU32::new(quantity).context("quantity")?,
                        unit_price_minor: 500 + (item as i64 * 37) % 9000,
                        currency: None,
                        purchased_at: at,
                    });
                }
            }
        }
        if batch.len() >= BATCH {
            written += flush(store, &mut batch).await?;
            if written % 1_000_000 < BATCH as u64 {
                eprintln!(
                    "generate: {written} lines, {:.0}s",
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    written += flush(store, &mut batch).await?;
    Ok(written)
}

async fn flush(store: &dyn RecordStore, batch: &mut Vec<Purchase>) -> Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let out = store.put_purchases(&tenant(), batch).await?;
    let bad = out
        .iter()
        .filter(|o| matches!(o, WriteOutcome::Invalid(_) | WriteOutcome::Conflict))
        .count();
    anyhow::ensure!(bad == 0, "{bad} generated rows were refused");
    let n = out
        .iter()
        .filter(|o| matches!(o, WriteOutcome::Inserted))
        .count();
    batch.clear();
    Ok(n as u64)
}

/// CPU seconds (user + system, all threads) this process has used: `/proc/self/stat`
/// fields 14 and 15, in clock ticks of 1/100 s (USER_HZ on Linux).
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// Resets `VmHWM` to the current RSS (Linux `clear_refs` 5), so the next reading is the
/// peak since now.
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak RSS ({e}): per-step peaks are cumulative");
    }
}

/// One step as the probe saw it.
#[derive(Clone, Debug)]
struct StepUse {
    step: Step,
    cpu_seconds: f64,
    peak_rss_mb: f64,
}

/// Per-step CPU time and peak RSS, sampled at step boundaries through the pipeline's
/// progress sink (wall times come from the pipeline itself).
#[derive(Default)]
struct Probe {
    open: Mutex<Option<(Step, f64)>>,
    done: Mutex<Vec<StepUse>>,
}

impl Probe {
    fn enter(&self, next: Option<Step>) {
        let cpu = cpu_seconds();
        let peak = peak_rss_mb();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((step, at)) = open.take() {
            self.done
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(StepUse {
                    step,
                    cpu_seconds: cpu - at,
                    peak_rss_mb: peak,
                });
        }
        reset_peak_rss();
        *open = next.map(|s| (s, cpu_seconds()));
    }

    fn take(&self) -> Vec<StepUse> {
        self.enter(None);
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn report(label: &str, o: &Outcome, wall: f64, used: &[StepUse]) {
    eprintln!(
        "{label}: {} {} in {wall:.1}s ({} purchases, {} customers, {} items); holdout {} customers, candidate recall@10 {:.4} NDCG@10 {:.4}, popularity {:.4} / {:.4}{}",
        o.version,
        o.verdict.as_str(),
        o.counts.purchases,
        o.counts.customers,
        o.counts.items,
        o.evaluation.customers,
        o.evaluation.candidate.recall,
        o.evaluation.candidate.ndcg,
        o.evaluation.popularity.recall,
        o.evaluation.popularity.ndcg,
        o.evaluation
            .live
            .as_ref()
            .map(|l| format!(", live {:.4} / {:.4}", l.metrics.recall, l.metrics.ndcg))
            .unwrap_or_default()
    );
    for s in &o.timings {
        let u = used.iter().find(|u| u.step == s.step);
        eprintln!(
            "  {:<13} {:>8.2}s wall {:>8.2}s cpu {:>7.0} MB peak RSS",
            s.step.as_str(),
            s.seconds,
            u.map_or(0.0, |u| u.cpu_seconds),
            u.map_or(0.0, |u| u.peak_rss_mb),
        );
    }
}

/// The 1, 5 and 15 minute load averages: other work on the machine slows every step.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Per step: wall seconds, CPU seconds, peak RSS in MB.
fn steps_json(o: &Outcome, used: &[StepUse]) -> serde_json::Value {
    o.timings
        .iter()
        .map(|s| {
            let u = used.iter().find(|u| u.step == s.step);
            (
                s.step.as_str().to_owned(),
                serde_json::json!({
                    "wall_s": r4(s.seconds),
                    "cpu_s": r4(u.map_or(0.0, |u| u.cpu_seconds)),
                    "peak_rss_mb": u.map_or(0.0, |u| u.peak_rss_mb).round(),
                }),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn run_peak(used: &[StepUse]) -> f64 {
    used.iter()
        .map(|u| u.peak_rss_mb)
        .fold(0.0, f64::max)
        .round()
}

async fn run(dir: &Path, shape: &Shape) -> Result<()> {
    let marker = std::fs::read_to_string(dir.join(MARKER)).with_context(|| {
        format!(
            "{} holds no generated shop: run generate first",
            dir.display()
        )
    })?;
    anyhow::ensure!(
        serde_json::from_str::<Shape>(&marker)? == *shape,
        "{} holds a shop of another shape",
        dir.display()
    );
    let stores = open(dir).await?;
    let load_start = load_average();
    let probe = Arc::new(Probe::default());
    let sink = Arc::clone(&probe);
    let deps = RetrainDeps::new(stores.clone(), RetrainSettings::default()).with_progress(
        Arc::new(move |p| {
            if let Progress::Step(step) = p {
                sink.enter(Some(step));
            }
        }),
    );
    let threads = rayon::current_num_threads();

    let (t, cpu) = (Instant::now(), cpu_seconds());
    let first = retrain::run_once(&deps, RetrainRequest::new(tenant())).await?;
    let first_wall = t.elapsed().as_secs_f64();
    let first_cpu = cpu_seconds() - cpu;
    let first_used = probe.take();
    report(
        "first retrain (no live model)",
        &first,
        first_wall,
        &first_used,
    );

    let t = Instant::now();
    let recent = write_purchases(stores.records.as_ref(), shape, Part::Recent).await?;
    eprintln!(
        "appended the last week: {recent} purchase lines in {:.0}s (not timed)",
        t.elapsed().as_secs_f64()
    );

    probe.take();
    let (t, cpu) = (Instant::now(), cpu_seconds());
    let second = retrain::run_once(&deps, RetrainRequest::new(tenant())).await?;
    let wall = t.elapsed().as_secs_f64();
    let second_cpu = cpu_seconds() - cpu;
    let used = probe.take();
    report(
        "steady-state retrain (against the live model)",
        &second,
        wall,
        &used,
    );
    println!(
        "{}",
        serde_json::json!({
            "system": "affinity",
            "purchases": second.counts.purchases,
            "customers": second.counts.customers,
            "items": second.counts.items,
            "wall_seconds": r4(wall),
            "cpu_seconds": r4(second_cpu),
            "peak_rss_mb": run_peak(&used),
            "load_average_start": load_start,
            "load_average_end": load_average(),
            "threads": threads,
            "verdict": second.verdict.as_str(),
            "holdout_customers": second.evaluation.customers,
            "recall_at_10": r4(second.evaluation.candidate.recall),
            "live_recall_at_10": second.evaluation.live.as_ref().map(|l| r4(l.metrics.recall)),
            "popularity_recall_at_10": r4(second.evaluation.popularity.recall),
            "steps": steps_json(&second, &used),
            "first_run": {
                "purchases": first.counts.purchases,
                "wall_seconds": r4(first_wall),
                "cpu_seconds": r4(first_cpu),
                "peak_rss_mb": run_peak(&first_used),
                "steps": steps_json(&first, &first_used),
            },
        })
    );
    Ok(())
}
