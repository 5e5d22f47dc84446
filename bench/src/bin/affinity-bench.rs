//! Benchmark driver: writes the shared splits, generates synthetic shops and measures
//! Affinity on them. The executables under `bench/` call it next to the peers.

use std::path::{Path, PathBuf};
use std::time::Instant;

use affinity_bench::{peak_rss_mb, r4, read_pairs, write_pairs};
use affinity_model::als::{self, AlsParams};
use affinity_model::eval::{self, Holdout, Split};
use affinity_model::interactions::{Event, Interactions, InteractionsBuilder, Weighting};
use affinity_model::model::{IndexChoice, TrainConfig};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rand::{Rng, SeedableRng};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Hyper {
    #[arg(long, default_value_t = 64)]
    factors: usize,
    #[arg(long, default_value_t = 20.0)]
    reg: f32,
    #[arg(long, default_value_t = 2.0)]
    alpha: f32,
    #[arg(long, default_value_t = 15)]
    iterations: usize,
    #[arg(long, default_value_t = 0.0)]
    reg_exp: f32,
    /// Popularity weighting of unobserved pairs (eALS); 0 is uniform.
    #[arg(long, default_value_t = 0.0)]
    neg_exp: f32,
    /// Conjugate-gradient steps per row and sweep.
    #[arg(long, default_value_t = 3)]
    cg_steps: usize,
    /// Seed of the factor initialisation.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

impl Hyper {
    fn params(&self) -> AlsParams {
        AlsParams {
            factors: self.factors,
            regularization: self.reg,
            alpha: self.alpha,
            iterations: self.iterations,
            reg_exponent: self.reg_exp,
            cg_steps: self.cg_steps,
            neg_exponent: self.neg_exp,
            seed: self.seed,
            ..AlsParams::default()
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// MovieLens-100k quality protocol: split (seed 42), write train/test, fit, score.
    Quality {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        hyper: Hyper,
        /// Choose factors/regularisation/alpha on a validation split of train (seed 7).
        #[arg(long)]
        tune: bool,
    },
    /// Seeded synthetic shop: power-law popularity, planted co-purchase groups.
    Synth {
        #[arg(long, default_value_t = 200_000)]
        customers: usize,
        #[arg(long, default_value_t = 30_000)]
        items: usize,
        #[arg(long, default_value_t = 4_000_000)]
        purchases: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Fit on `dir/train.tsv` with a fixed thread count; recall@10 on `dir/test.tsv`.
    TrainSpeed {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[command(flatten)]
        hyper: Hyper,
        /// Also time loading a verified artifact of this many items (0 skips it).
        #[arg(long, default_value_t = 100_000)]
        load_items: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Quality {
            data,
            out,
            hyper,
            tune,
        } => quality(&data, &out, &hyper, tune),
        Cmd::Synth {
            customers,
            items,
            purchases,
            seed,
            out,
        } => synth(customers, items, purchases, seed, &out),
        Cmd::TrainSpeed {
            dir,
            threads,
            hyper,
            load_items,
        } => {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build_global()?;
            train_speed(&dir, threads, &hyper, load_items)
        }
    }
}

fn quality(data: &Path, out: &Path, hyper: &Hyper, tune: bool) -> Result<()> {
    let text = std::fs::read_to_string(data).with_context(|| format!("read {}", data.display()))?;
    let mut b = InteractionsBuilder::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        anyhow::ensure!(
            f.len() >= 4,
            "{}:{}: expected 4 columns",
            data.display(),
            n + 1
        );
        let at = f[3]
            .parse::<f64>()
            .with_context(|| format!("line {}: timestamp", n + 1))? as i64;
        b.push(Event {
            customer: f[0],
            item: f[1],
            quantity: 1.0,
            at,
        })?;
    }
    let full = b.build(&Weighting {
        half_life_days: None,
    })?;
    let split = eval::split(
        &full,
        Holdout::Random {
            fraction: 0.2,
            seed: 42,
        },
    );
    std::fs::create_dir_all(out)?;
    write_split(out, &full, &split)?;
    let mut params = hyper.params();
    if tune {
        let t = Instant::now();
        let grid = affinity_model::tune::grid(
            &params,
            &[128],
            &[20.0, 25.0, 30.0, 40.0],
            &[3.0, 5.0, 8.0],
            &[1.0],
            &[0.0, 0.1, 0.25],
        );
        let base = TrainConfig {
            neighbours: 1,
            index: IndexChoice::Exact,
            weighting: Weighting {
                half_life_days: None,
            },
            ..TrainConfig::default()
        };
        let (trials, best) =
            affinity_model::tune::search(&split.train, &base, &grid, &[7, 8, 9], 10, &|| true)?;
        for tr in &trials {
            eprintln!(
                "tune: factors={} reg={} alpha={} reg_exp={} neg_exp={} -> val recall@10={:.4} ndcg@10={:.4}",
                tr.als.factors,
                tr.als.regularization,
                tr.als.alpha,
                tr.als.reg_exponent,
                tr.als.neg_exponent,
                tr.validation.recall,
                tr.validation.ndcg
            );
        }
        params = best.context("no tuning trial ran")?;
        eprintln!(
            "tune: chose {params:?} in {:.1}s",
            t.elapsed().as_secs_f64()
        );
    }
    let t = Instant::now();
    let f = als::fit(&split.train, &params, &|_| {})?;
    let fit_seconds = t.elapsed().as_secs_f64();
    let m = evaluate(&split, &f, &params);
    eprintln!("affinity: {m:?} peak_rss_mb={:.0}", peak_rss_mb());
    println!(
        "{}",
        serde_json::json!({"system": "affinity", "recall_at_10": r4(m.recall), "ndcg_at_10": r4(m.ndcg), "fit_seconds": r4(fit_seconds), "params": params})
    );
    Ok(())
}

/// Scores the split the way the service does: fold-in of each customer's train history.
fn evaluate(split: &Split, f: &als::AlsFactors, params: &AlsParams) -> eval::Metrics {
    let d = params.factors;
    let g = als::weighted_gram(&f.item, &f.negative_weights, d);
    let cands = eval::trained_items(&split.train);
    let recs = eval::rank_all(&split.train, &split.test, &cands, 10, &|rows, out| {
        let hists: Vec<Vec<(u32, f32)>> = rows
            .iter()
            .map(|&u| {
                let (c, v) = split.train.user_items.row(u);
                c.iter().copied().zip(v.iter().copied()).collect()
            })
            .collect();
        let users = als::fold_in_many(&f.item, &g, &f.negative_weights, params, &hists);
        eval::dot_block(&users, &f.item, d, out);
    });
    eval::metrics(&recs, &split.test, 10, cands.iter().filter(|&&c| c).count())
}

fn write_split(out: &Path, full: &Interactions, split: &Split) -> Result<()> {
    let train = &split.train;
    let mut pairs = Vec::with_capacity(train.nnz());
    for u in 0..train.n_customers() {
        for &i in train.user_items.row(u).0 {
            pairs.push((full.customers.id(u as u32), full.items.id(i)));
        }
    }
    write_pairs(&out.join("train.tsv"), pairs.into_iter())?;
    let mut test = Vec::new();
    for (u, t) in split.test.iter().enumerate() {
        for &i in t {
            test.push((full.customers.id(u as u32), full.items.id(i)));
        }
    }
    write_pairs(&out.join("test.tsv"), test.into_iter())
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

fn synth(customers: usize, items: usize, purchases: usize, seed: u64, out: &Path) -> Result<()> {
    anyhow::ensure!(
        customers > 0 && items >= 100 && purchases >= customers,
        "sizes too small"
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // Items fall into co-purchase groups of 50; a customer shops mostly in 1-3 groups.
    let group = 50usize;
    let n_groups = items.div_ceil(group);
    let global = zipf_cdf(items, 1.0);
    let within = zipf_cdf(group, 0.8);
    let group_pop = zipf_cdf(n_groups, 0.9);
    // Customer activity: power law over customers, every customer at least one purchase.
    let activity = zipf_cdf(customers, 0.6);
    let mut counts = vec![1usize; customers];
    for _ in customers..purchases {
        counts[draw(&activity, &mut rng)] += 1;
    }
    let mut pairs = std::collections::BTreeSet::new();
    for (c, &n) in counts.iter().enumerate() {
        let k = 1 + draw(&zipf_cdf(3, 1.0), &mut rng);
        let groups: Vec<usize> = (0..k).map(|_| draw(&group_pop, &mut rng)).collect();
        for _ in 0..n {
            let item = if rng.random::<f64>() < 0.75 {
                let g = groups[rng.random_range(0..groups.len())];
                (g * group + draw(&within, &mut rng)).min(items - 1)
            } else {
                draw(&global, &mut rng)
            };
            pairs.insert((c as u32, item as u32));
        }
    }
    // Hold out 20% of each customer's items, seeded, as in the quality protocol.
    let mut b = InteractionsBuilder::new();
    for &(c, i) in &pairs {
        b.push(Event {
            customer: &format!("c{c}"),
            item: &format!("i{i}"),
            quantity: 1.0,
            at: 0,
        })?;
    }
    let full = b.build(&Weighting {
        half_life_days: None,
    })?;
    let split = eval::split(
        &full,
        Holdout::Random {
            fraction: 0.2,
            seed,
        },
    );
    std::fs::create_dir_all(out)?;
    write_split(out, &full, &split)?;
    eprintln!(
        "synth: {} customers, {} items, {} distinct pairs ({} purchases drawn), {} in train",
        full.n_customers(),
        full.n_items(),
        full.nnz(),
        purchases,
        split.train.nnz()
    );
    Ok(())
}

fn load_split(dir: &Path) -> Result<Split> {
    let train = read_pairs(&dir.join("train.tsv"))?;
    let test = read_pairs(&dir.join("test.tsv"))?;
    let mut b = InteractionsBuilder::new();
    for (u, i) in &train {
        b.push(Event {
            customer: u,
            item: i,
            quantity: 1.0,
            at: 0,
        })?;
    }
    let train = b.build(&Weighting {
        half_life_days: None,
    })?;
    let mut held = vec![Vec::new(); train.n_customers()];
    for (u, i) in &test {
        if let (Some(u), Some(i)) = (train.customers.get(u), train.items.get(i)) {
            held[u as usize].push(i);
        }
    }
    for t in &mut held {
        t.sort_unstable();
    }
    Ok(Split { train, test: held })
}

fn train_speed(dir: &Path, threads: usize, hyper: &Hyper, load_items: usize) -> Result<()> {
    let split = load_split(dir)?;
    let params = hyper.params();
    let t = Instant::now();
    let f = als::fit(&split.train, &params, &|i| {
        eprintln!("iteration {i} at {:.1}s", t.elapsed().as_secs_f64())
    })?;
    let fit_seconds = t.elapsed().as_secs_f64();
    let peak = peak_rss_mb();
    let m = evaluate(&split, &f, &params);
    let mut line = serde_json::json!({"system": "affinity", "fit_seconds": r4(fit_seconds), "peak_rss_mb": peak.round(), "recall_at_10": r4(m.recall), "factors": params.factors, "iterations": params.iterations, "threads": threads});
    if load_items > 0 {
        let (mb, load_ms) = artifact_load(load_items, params.factors)?;
        line["artifact_items"] = load_items.into();
        line["artifact_mb"] = r4(mb).into();
        line["artifact_load_ms"] = r4(load_ms).into();
    }
    println!("{line}");
    Ok(())
}

/// Builds a model of `items` items (seeded co-purchase groups, 3 ALS sweeps: load time
/// depends on sizes, not quality) with the default neighbours and index choice, saves the
/// artifact and returns its size in MB and the median time of five verified loads (file in
/// the page cache, as on a warm Lambda disk).
fn artifact_load(items: usize, factors: usize) -> Result<(f64, f64)> {
    let t = Instant::now();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut b = InteractionsBuilder::new();
    let group = 50usize;
    for c in 0..items * 2 {
        let g = rng.random_range(0..items.div_ceil(group));
        for _ in 0..5 {
            let i = (g * group + rng.random_range(0..group)).min(items - 1);
            b.push(Event {
                customer: &format!("c{c}"),
                item: &format!("i{i}"),
                quantity: 1.0,
                at: 0,
            })?;
        }
    }
    let data = b.build(&Weighting {
        half_life_days: None,
    })?;
    let config = TrainConfig {
        als: AlsParams {
            factors,
            iterations: 3,
            ..AlsParams::default()
        },
        ..TrainConfig::default()
    };
    let model = affinity_model::model::Trainer::new(&config)
        .version("load-time")
        .train(&data, &Default::default())?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("model.afm");
    model.save(&path)?;
    let mb = std::fs::metadata(&path)?.len() as f64 / 1e6;
    eprintln!(
        "artifact: {} items x {factors} factors, {mb:.1} MB, built in {:.1}s",
        model.items.len(),
        t.elapsed().as_secs_f64()
    );
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            affinity_model::model::Model::load(&path).map(|_| t.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<affinity_model::Result<_>>()?;
    times.sort_by(f64::total_cmp);
    eprintln!("artifact loads (ms): {times:?}");
    Ok((mb, times[2]))
}
