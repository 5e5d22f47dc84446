//! Bulk-import throughput of affinity-store: a seeded synthetic purchase CSV imported into
//! the embedded store (SQLite) and into DynamoDB served by moto. Driven by `bench/import`.
//!
//! Usage: import_throughput [--rows-embedded N] [--rows-moto N] [--moto-url URL] [--seed S]
//! Prints one JSON line per target: {"system": "...", "rows": N, "seconds": s, "rows_per_second": r}.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use affinity_store::import::{Csv, ImportOptions, import_purchases};
use affinity_store::{DynamoOptions, DynamoStore, SqliteStore, TenantId, peer_sdk_config};
use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Args {
    rows_embedded: u64,
    rows_moto: u64,
    moto_url: Option<String>,
    seed: u64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        rows_embedded: 200_000,
        rows_moto: 20_000,
        moto_url: None,
        seed: 42,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rows-embedded" => a.rows_embedded = val()?.parse()?,
            "--rows-moto" => a.rows_moto = val()?.parse()?,
            "--moto-url" => a.moto_url = Some(val()?),
            "--seed" => a.seed = val()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

/// Writes `rows` purchases: orders of 1-4 lines, Zipf-like item popularity, 2 years of time.
fn write_csv(path: &Path, rows: u64, seed: u64) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w = BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        w,
        "order_id,line,customer_id,item_id,quantity,unit_price_minor,currency,purchased_at"
    )?;
    let customers = (rows / 8).max(1);
    let (mut written, mut order) = (0u64, 0u64);
    let start = 1_672_531_200i64; // 2023-01-01
    while written < rows {
        order += 1;
        let lines = rng.random_range(1..=4u32);
        let customer = rng.random_range(0..customers);
        let at = start + rng.random_range(0..2 * 365 * 86_400i64);
        let ts = chrono::DateTime::from_timestamp(at, 0).context("timestamp")?;
        for line in 1..=lines {
            if written == rows {
                break;
            }
            // Power-law popularity: low ids are bought far more often.
            let u: f64 = rng.random_range(0.0..1.0);
            let item = (u.powf(3.0) * 20_000.0) as u64;
            let qty = rng.random_range(1..=3u32);
            let price = 100 + (item * 37) % 9_900;
            writeln!(
                w,
                "ord-{order},{line},cust-{customer},item-{item},{qty},{price},EUR,{}",
                ts.format("%Y-%m-%dT%H:%M:%SZ")
            )?;
            written += 1;
        }
    }
    w.flush()?;
    Ok(())
}

fn report(system: &str, rows: u64, secs: f64, extra: &str) {
    let rps = rows as f64 / secs;
    eprintln!("{system}: {rows} rows in {secs:.2} s = {rps:.0} rows/s {extra}");
    // Written by hand so "system" comes first, like the other benchmark drivers' lines.
    println!(
        "{{\"system\": {}, \"rows\": {rows}, \"seconds\": {secs:.3}, \"rows_per_second\": {rps:.0}}}",
        serde_json::Value::from(system)
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    let tenant = TenantId::default();
    let progress = |_: u64| {};

    if args.rows_embedded > 0 {
        let csv = dir.path().join("purchases-embedded.csv");
        write_csv(&csv, args.rows_embedded, args.seed)?;
        let store = SqliteStore::open(dir.path().join("affinity.db")).await?;
        let t = Instant::now();
        let r = import_purchases(
            Csv::open(&csv)?,
            &store,
            &tenant,
            ImportOptions::default(),
            &progress,
        )
        .await?;
        let secs = t.elapsed().as_secs_f64();
        if r.inserted != args.rows_embedded {
            bail!(
                "embedded import inserted {} of {} rows",
                r.inserted,
                args.rows_embedded
            );
        }
        report(
            "affinity_embedded",
            r.inserted,
            secs,
            "(SQLite file, batches of 1000)",
        );
    }

    if args.rows_moto > 0 {
        let url = args
            .moto_url
            .clone()
            .context("--moto-url is required when --rows-moto > 0")?;
        let csv = dir.path().join("purchases-moto.csv");
        write_csv(&csv, args.rows_moto, args.seed)?;
        let sdk = peer_sdk_config(&url, 3).await;
        let prefix = format!("bench-{}-", std::process::id());
        let store = DynamoStore::new(&sdk, DynamoOptions::new(prefix))?;
        store.create_tables().await?;
        let t = Instant::now();
        let r = import_purchases(
            Csv::open(&csv)?,
            &store,
            &tenant,
            ImportOptions::default(),
            &progress,
        )
        .await;
        let secs = t.elapsed().as_secs_f64();
        store.delete_tables().await?;
        let r = r?;
        if r.inserted != args.rows_moto {
            bail!(
                "moto import inserted {} of {} rows",
                r.inserted,
                args.rows_moto
            );
        }
        report(
            "affinity_dynamodb_moto",
            r.inserted,
            secs,
            "(BatchGetItem + BatchWriteItem via moto on loopback)",
        );
    }
    Ok(())
}
