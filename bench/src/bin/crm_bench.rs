//! CRM benchmark driver (called by `bench/clv`):
//!
//! - `bgnbd-summary FILE`: fits the BG/NBD on a lifetimes-style summary CSV (`ID,frequency,
//!   recency,T`) and prints `{"system": "affinity", "r", "alpha", "a", "b", ...}`.
//! - `offers`: next best offers for a batch of customers against live offers on a seeded
//!   synthetic shop, timed in process (engine preparation and the batch separately).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use affinity_model::crm::bgnbd::{self, Rft};
use affinity_model::crm::offers::{
    CustomerView, EngineConfig, EventKind, Intervals, Offer, OfferEngine, OfferRequest, OfferStats,
    PastEvent,
};
use affinity_model::crm::profile::CustomerProfile;
use affinity_model::crm::rfm::RfmScore;
use affinity_model::interactions::{Event, InteractionsBuilder, Weighting};
use affinity_model::model::{IndexChoice, Purchase, TrainConfig, Trainer};
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::json;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fit BG/NBD on a summary CSV with columns frequency, recency, T.
    BgnbdSummary { file: PathBuf },
    /// Time batch next-best-offers on a synthetic shop.
    Offers {
        #[arg(long, default_value_t = 1000)]
        customers: usize,
        #[arg(long, default_value_t = 50)]
        offers: usize,
        #[arg(long, default_value_t = 20)]
        runs: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::BgnbdSummary { file } => bgnbd_summary(&file),
        Cmd::Offers {
            customers,
            offers,
            runs,
            seed,
        } => offers_bench(customers, offers, runs, seed),
    }
}

fn bgnbd_summary(file: &PathBuf) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("empty file")?.split(',').collect();
    let col = |n: &str| {
        header
            .iter()
            .position(|h| h.trim() == n)
            .with_context(|| format!("{}: no column {n}", file.display()))
    };
    let (fi, ri, ti) = (col("frequency")?, col("recency")?, col("T")?);
    let mut data = Vec::new();
    for (n, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        let get = |i: usize, name: &str| -> Result<f64> {
            f.get(i)
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("{}:{}: field {name}", file.display(), n + 2))
        };
        data.push(Rft {
            frequency: get(fi, "frequency")? as u32,
            recency: get(ri, "recency")?,
            t: get(ti, "T")?,
        });
    }
    let t0 = Instant::now();
    let fit = bgnbd::fit(&data)?;
    let secs = t0.elapsed().as_secs_f64();
    let p = fit.params;
    println!(
        "{}",
        json!({"system": "affinity", "r": p.r, "alpha": p.alpha, "a": p.a, "b": p.b,
               "customers": fit.customers, "mean_log_likelihood": fit.mean_log_likelihood,
               "iterations": fit.iterations, "fit_seconds": secs})
    );
    Ok(())
}

fn offers_bench(n_customers: usize, n_offers: usize, runs: usize, seed: u64) -> Result<()> {
    if n_customers == 0 || n_offers == 0 || runs == 0 {
        bail!("--customers, --offers and --runs must be positive");
    }
    if n_customers > 20_000 {
        bail!("--customers is at most 20000 (the synthetic shop's size)");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Shop: 40 categories x 50 items, 20,000 customers each favouring two categories.
    let (cats, per_cat, shoppers) = (40usize, 50usize, 20_000usize);
    let now = 1_800_000_000i64;
    let mut b = InteractionsBuilder::new();
    let mut categories = HashMap::new();
    for c in 0..cats {
        for j in 0..per_cat {
            categories.insert(format!("c{c}-{j}"), format!("cat{c}"));
        }
    }
    let mut histories: Vec<Vec<(String, i64)>> = Vec::with_capacity(shoppers);
    for s in 0..shoppers {
        let fav = [rng.random_range(0..cats), rng.random_range(0..cats)];
        let n = 2 + rng.random_range(0..20);
        let mut h = Vec::with_capacity(n);
        for _ in 0..n {
            let c = if rng.random::<f32>() < 0.8 {
                fav[rng.random_range(0..2)]
            } else {
                rng.random_range(0..cats)
            };
            let j = ((rng.random::<f32>().powi(2)) * per_cat as f32) as usize;
            let item = format!("c{c}-{}", j.min(per_cat - 1));
            let at = now - rng.random_range(0..400) * 86_400;
            b.push(Event {
                customer: &format!("s{s}"),
                item: &item,
                quantity: 1.0,
                at,
            })?;
            h.push((item, at));
        }
        histories.push(h);
    }
    let data = b.build(&Weighting::default())?;
    let config = TrainConfig {
        index: IndexChoice::Exact,
        ..TrainConfig::default()
    };
    let t0 = Instant::now();
    let model = Trainer::new(&config)
        .version("bench")
        .trained_at(now)
        .train(&data, &categories)?;
    eprintln!(
        "trained {} items x {} factors in {:.1}s",
        model.items.len(),
        model.factors(),
        t0.elapsed().as_secs_f64()
    );

    // Offers: a mix of kinds over categories and items, with rules that bite.
    let kinds = [
        "discount",
        "bundle",
        "points_multiplier",
        "new_arrival",
        "retention",
        "replenishment",
    ];
    let tiers = ["gold", "silver", "bronze"];
    let mut offers = Vec::with_capacity(n_offers);
    for o in 0..n_offers {
        let kind = kinds[o % kinds.len()];
        let c = rng.random_range(0..cats);
        let items: Vec<String> = (0..3)
            .map(|k| format!("c{c}-{}", (o + k * 7) % per_cat))
            .collect();
        let mut doc = json!({
            "kind": kind,
            "value": rng.random_range(2.0..40.0),
            "cost": rng.random_range(0.0..0.5),
            "caps": {"max_per_customer": 3, "cooldown_days": 7},
        });
        match kind {
            "bundle" | "new_arrival" => doc["items"] = json!(items),
            "retention" => doc["eligibility"] = json!({"churn_risk": {"min": 0.4}}),
            _ => doc["categories"] = json!([format!("cat{c}")]),
        }
        if o % 5 == 0 {
            doc["eligibility"] = json!({"tiers": [tiers[o % 3]], "channels": ["email", "web"]});
        }
        offers.push((
            Offer::parse(&format!("offer-{o}"), &doc)?,
            OfferStats::default(),
        ));
    }
    let triples: Vec<(u32, u32, i64)> = histories
        .iter()
        .enumerate()
        .flat_map(|(s, h)| {
            let model = &model;
            h.iter()
                .filter_map(move |(i, at)| model.item_index(i).map(|i| (s as u32, i, *at)))
        })
        .collect();
    let t0 = Instant::now();
    let intervals = Intervals::compute(&model, &triples, &EngineConfig::default().repurchase);
    let engine = OfferEngine::new(
        &model,
        offers,
        (0..model.items.len()).map(|i| i % 3 == 0).collect(),
        intervals,
        EngineConfig::default(),
    )?;
    let prepare_ms = t0.elapsed().as_secs_f64() * 1e3;

    // The batch: customers with their histories, profiles and a few past offer events.
    let mut profiles = Vec::with_capacity(n_customers);
    let mut purchases = Vec::with_capacity(n_customers);
    let mut events = Vec::with_capacity(n_customers);
    for history in histories.iter().take(n_customers) {
        let churn: f64 = rng.random();
        profiles.push(CustomerProfile {
            frequency: 3,
            recency: 100.0,
            t: 300.0,
            days_since_last: 30.0,
            total_spend: 200.0,
            monetary_value: 50.0,
            rfm: RfmScore {
                r: rng.random_range(1..=5),
                f: rng.random_range(1..=5),
                m: rng.random_range(1..=5),
            },
            tier: tiers[rng.random_range(0..3)].into(),
            p_alive: Some(1.0 - churn),
            churn_risk: Some(churn),
            expected_purchases: Some(1.0),
            clv: Some(rng.random_range(0.0..800.0)),
        });
        purchases.push(
            history
                .iter()
                .filter_map(|(i, at)| {
                    model.item_index(i).map(|item| Purchase {
                        item,
                        quantity: 1.0,
                        at: *at,
                    })
                })
                .collect::<Vec<_>>(),
        );
        events.push(
            (0..rng.random_range(0..5))
                .map(|_| PastEvent {
                    offer: format!("offer-{}", rng.random_range(0..n_offers)),
                    kind: EventKind::Shown,
                    at: now - rng.random_range(0..30) * 86_400,
                })
                .collect::<Vec<_>>(),
        );
    }
    let views: Vec<CustomerView<'_>> = (0..n_customers)
        .map(|i| CustomerView {
            profile: &profiles[i],
            purchases: &purchases[i],
            events: &events[i],
        })
        .collect();
    let req = OfferRequest {
        channel: "email".into(),
        now,
        k: 3,
        allow_same_category: false,
    };
    let first = engine.batch(&views, &req); // warm-up, and the answer the runs must repeat
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        let got = engine.batch(&views, &req);
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        if got != first {
            bail!("batch answers changed between runs");
        }
    }
    times.sort_by(f64::total_cmp);
    let t0 = Instant::now();
    for v in &views {
        std::hint::black_box(engine.next_best_offers(v, &req));
    }
    let sequential_ms = t0.elapsed().as_secs_f64() * 1e3;
    // The fold-in alone (the same parallel split), to show what the offer policy adds.
    let mut fold = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        let v: Vec<Vec<f32>> = purchases
            .par_iter()
            .map(|p| model.fold_in(&model.weigh(p)))
            .collect();
        std::hint::black_box(v);
        fold.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    fold.sort_by(f64::total_cmp);
    let with_offer = first.iter().filter(|o| !o.is_empty()).count();
    let offered: usize = first.iter().map(Vec::len).sum();
    println!(
        "{}",
        json!({
            "system": "affinity", "benchmark": "batch_next_best_offers",
            "customers": n_customers, "live_offers": n_offers, "k": req.k,
            "factors": model.factors(), "threads": rayon::current_num_threads(),
            "batch_ms_median": times[times.len() / 2], "batch_ms_min": times[0],
            "batch_ms_max": times[times.len() - 1], "runs": runs,
            "sequential_ms": sequential_ms, "fold_in_only_ms_median": fold[fold.len() / 2], "prepare_ms": prepare_ms,
            "customers_with_an_offer": with_offer, "offers_returned": offered,
        })
    );
    Ok(())
}
