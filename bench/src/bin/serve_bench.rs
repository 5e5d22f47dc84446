//! Driver of `bench/serve`: builds a large synthetic shop and model, measures in-process
//! latency of the serving path, and the cold start of the `affinity-api` binary.
//!
//!   serve-bench prepare --dir D [--items 100000] [--factors 64] ...   (prints one JSON line)
//!   serve-bench cold-start --bin PATH --dir D --port P                 (prints one JSON line)

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use affinity_model::interactions::{Event, InteractionsBuilder};
use affinity_model::model::{Stage, TrainConfig, Trainer};
use affinity_service::answers::Options;
use affinity_service::loader::ModelCache;
use affinity_service::training;
use affinity_store::{
    Backend, CatalogItem, Category, CustomerId, ItemId, OrderId, Purchase, Scope, Stores, TenantId,
    generate_api_key,
};
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Synthesize a shop, train, store it under --dir, measure in-process latency.
    Prepare(PrepareArgs),
    /// Start the API binary on --dir and time process start to the first answer.
    ColdStart {
        #[arg(long)]
        bin: PathBuf,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Read the model from a DynamoDB/S3 peer at this endpoint instead of the local disk
        /// (the tables and bucket `stage-aws` wrote).
        #[arg(long, requires_all = ["prefix", "bucket"])]
        aws_endpoint: Option<String>,
        /// Table prefix on the peer.
        #[arg(long)]
        prefix: Option<String>,
        /// Bucket on the peer.
        #[arg(long)]
        bucket: Option<String>,
    },
    /// Copy the live model of --dir (artifact, registry entry, pointer, catalog, keys) into
    /// a DynamoDB/S3 peer, as a deployed stack would hold it.
    StageAws {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        bucket: String,
        /// Also copy the catalog. Off by default: moto's Query slows with table size and
        /// takes minutes for 100k items on loopback, which says nothing about DynamoDB.
        #[arg(long)]
        catalog: bool,
    },
}

/// The shop `prepare` synthesizes and how long it measures.
#[derive(clap::Args)]
struct PrepareArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    items: usize,
    #[arg(long, default_value_t = 64)]
    factors: usize,
    #[arg(long, default_value_t = 150_000)]
    customers: usize,
    #[arg(long, default_value_t = 12)]
    per_customer: usize,
    #[arg(long, default_value_t = 6)]
    iterations: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Queries per in-process measurement (recommendations use a quarter).
    #[arg(long, default_value_t = 20_000)]
    queries: usize,
}

/// Where the API under test reads its model.
struct Peer<'a> {
    endpoint: &'a str,
    prefix: &'a str,
    bucket: &'a str,
}

/// Item ids are fixed-width so a load generator can draw them from a pattern.
fn item_id(i: usize) -> String {
    format!("i{i:06}")
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

fn time_each(n: usize, mut f: impl FnMut(usize)) -> Vec<u64> {
    let mut t = Vec::with_capacity(n);
    for q in 0..n {
        let s = Instant::now();
        f(q);
        t.push(s.elapsed().as_nanos() as u64);
    }
    t.sort_unstable();
    t
}

async fn prepare(args: &PrepareArgs) -> Result<()> {
    let PrepareArgs {
        ref dir,
        items,
        factors,
        customers,
        per_customer,
        iterations,
        seed,
        queries,
    } = *args;
    std::fs::create_dir_all(dir)?;
    let groups = (items / 1000).max(1);
    let group_size = items / groups;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let t0 = Instant::now();
    // Power-law popularity inside each group, a favourite group per customer, 20% strays.
    let mut b = InteractionsBuilder::new();
    for i in 0..items {
        b.add_item(&item_id(i));
    }
    let mut histories: Vec<Vec<usize>> = Vec::new();
    for c in 0..customers {
        let g = rng.random_range(0..groups);
        let n = 1 + (per_customer as f64 * 2.0 * rng.random::<f64>().powi(2)) as usize;
        let mut h = Vec::with_capacity(n);
        for k in 0..n {
            let i = if rng.random::<f64>() < 0.8 {
                g * group_size + ((rng.random::<f64>().powi(3)) * group_size as f64) as usize
            } else {
                ((rng.random::<f64>().powi(4)) * items as f64) as usize
            }
            .min(items - 1);
            h.push(i);
            b.push(Event {
                customer: &format!("c{c}"),
                item: &item_id(i),
                quantity: 1.0,
                at: 1_750_000_000 + (c * 37 + k * 3600) as i64,
            })?;
        }
        if histories.len() < 2000 && h.len() >= 5 {
            histories.push(h);
        }
    }
    let data = b.build(&Default::default())?;
    eprintln!(
        "synthetic shop: {} items, {} customers, {} purchases ({:.1}s)",
        data.n_items(),
        data.n_customers(),
        data.events,
        t0.elapsed().as_secs_f64()
    );
    let categories: HashMap<String, String> = (0..items)
        .map(|i| (item_id(i), format!("group-{:03}", i / group_size)))
        .collect();
    let mut config = TrainConfig::default();
    config.als.factors = factors;
    config.als.iterations = iterations;
    let t1 = Instant::now();
    let progress = |s| {
        if let Stage::Iteration { n, of } = s {
            eprintln!(
                "  ALS iteration {n}/{of} ({:.0}s)",
                t1.elapsed().as_secs_f64()
            );
        }
    };
    let model = Trainer::new(&config)
        .version("bench-v1")
        .trained_at(1_760_000_000)
        .progress(&progress)
        .train(&data, &categories)?;
    eprintln!(
        "trained {} factors in {:.1}s",
        factors,
        t1.elapsed().as_secs_f64()
    );

    let backend = Backend::Embedded {
        db_path: dir.join("affinity.db"),
        blob_dir: dir.join("blobs"),
    };
    let stores = Stores::open(&backend).await?;
    let tenant = TenantId::default();
    let now = chrono::Utc::now();
    let catalog: Vec<CatalogItem> = (0..items)
        .map(|i| -> Result<CatalogItem> {
            Ok(CatalogItem {
                item_id: ItemId::parse(item_id(i))?,
                title: format!("Item {i}"),
                category: Some(Category::parse(format!("group-{:03}", i / group_size))?),
                price_minor: 100 + (i % 5000) as i64,
                currency: None,
                // One item in fifty is out of stock, so the filter does real work.
                in_stock: i % 50 != 7,
                created_at: now,
                repurchasable: false,
                attributes: None,
            })
        })
        .collect::<Result<_>>()?;
    for chunk in catalog.chunks(5000) {
        stores.records.upsert_items(&tenant, chunk).await?;
    }
    let version = training::publish(&stores, &tenant, &model, serde_json::json!({})).await?;
    let key = generate_api_key(
        &tenant,
        BTreeSet::from([Scope::Recommend]),
        Some("bench".into()),
        now,
    )?;
    stores.records.create_key(&key.record).await?;
    std::fs::write(dir.join("key.txt"), &key.secret)?;
    eprintln!(
        "stored catalog, model {} and a key under {}",
        version.version,
        dir.display()
    );

    // In-process: the serving path exactly as a handler runs it, model loaded from the store.
    let cache = ModelCache::new(stores.clone(), Duration::from_secs(3600));
    let serving = cache.get(&tenant).await?;
    let ids: Vec<ItemId> = (0..items)
        .map(|i| ItemId::parse(item_id(i)))
        .collect::<Result<_, _>>()?;
    let opts = Options::default();
    let mut pick = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let mut sink = 0usize;
    let similar = time_each(queries, |_| {
        let i = pick.random_range(0..items);
        sink += serving.similar(&ids[i], &opts).map_or(0, |r| r.items.len());
    });
    let basket = time_each(queries / 4, |_| {
        let b: Vec<ItemId> = (0..3)
            .map(|_| ids[pick.random_range(0..items)].clone())
            .collect();
        sink += serving.basket(&b, &opts).map_or(0, |r| r.items.len());
    });
    let customer = CustomerId::parse("bench-customer")?;
    let purchases: Vec<Vec<Purchase>> = histories
        .iter()
        .map(|h| {
            h.iter()
                .enumerate()
                .map(|(n, &i)| -> Result<Purchase> {
                    Ok(Purchase {
                        order_id: OrderId::parse(format!("o{n}"))?,
                        line: 1,
                        customer_id: customer.clone(),
                        item_id: ids[i].clone(),
                        quantity: NonZeroU32::MIN,
                        unit_price_minor: 100,
                        currency: None,
                        purchased_at: now - chrono::Duration::days(n as i64),
                    })
                })
                .collect()
        })
        .collect::<Result<_>>()?;
    if purchases.is_empty() {
        bail!("no customer with five purchases to fold in");
    }
    let recommend = time_each(queries / 4, |q| {
        let h = &purchases[q % purchases.len()];
        sink += serving
            .recommend(Some(h), &opts, false)
            .map_or(0, |r| r.items.len());
    });
    eprintln!("answered {sink} items in total");
    println!(
        "{}",
        serde_json::json!({
            "similar_p50_us": percentile(&similar, 50.0),
            "similar_p99_us": percentile(&similar, 99.0),
            "basket_p50_us": percentile(&basket, 50.0),
            "basket_p99_us": percentile(&basket, 99.0),
            "recommend_p50_us": percentile(&recommend, 50.0),
            "recommend_p99_us": percentile(&recommend, 99.0),
            "items": items,
            "factors": factors,
            "purchases": data.events,
            "histories": purchases.len(),
        })
    );
    Ok(())
}

/// One HTTP/1.1 GET over a fresh connection; the status code, or None if it failed.
fn get_status(port: u16, path: &str, key: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cold_start(bin: &Path, dir: &Path, port: u16, runs: usize, peer: Option<Peer>) -> Result<()> {
    let key = std::fs::read_to_string(dir.join("key.txt")).context("key.txt (run prepare)")?;
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let mut cmd = Command::new(bin);
        match &peer {
            None => cmd
                .env("AFFINITY_BACKEND", "embedded")
                .env("AFFINITY_DATA_DIR", dir),
            Some(p) => cmd
                .env("AFFINITY_BACKEND", "aws")
                .env("AFFINITY_TABLE_PREFIX", p.prefix)
                .env("AFFINITY_BUCKET", p.bucket)
                .env("AWS_ENDPOINT_URL", p.endpoint)
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .env("AWS_REGION", "us-east-1"),
        };
        let mut child = cmd
            .env("AFFINITY_ADDR", format!("127.0.0.1:{port}"))
            .env("AFFINITY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let answered = loop {
            if let Some(status) = get_status(port, "/v1/items/i000001/similar?k=10", &key) {
                break status;
            }
            if start.elapsed() > Duration::from_secs(120) {
                break 0;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        let _ = child.kill();
        let _ = child.wait();
        if answered != 200 {
            bail!("the API answered {answered} instead of 200");
        }
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({"cold_start_ms": times[times.len() / 2], "cold_start_runs_ms": times})
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Prepare(args) => prepare(&args).await,
        Cmd::ColdStart {
            bin,
            dir,
            port,
            runs,
            aws_endpoint,
            prefix,
            bucket,
        } => {
            let peer = match (&aws_endpoint, &prefix, &bucket) {
                (Some(endpoint), Some(prefix), Some(bucket)) => Some(Peer {
                    endpoint,
                    prefix,
                    bucket,
                }),
                _ => None,
            };
            cold_start(&bin, &dir, port, runs, peer)
        }
        Cmd::StageAws {
            dir,
            endpoint,
            prefix,
            bucket,
            catalog,
        } => stage_aws(&dir, &endpoint, &prefix, &bucket, catalog).await,
    }
}

async fn stage_aws(
    dir: &Path,
    endpoint: &str,
    prefix: &str,
    bucket: &str,
    catalog: bool,
) -> Result<()> {
    use std::sync::Arc;
    let local = Stores::open(&Backend::Embedded {
        db_path: dir.join("affinity.db"),
        blob_dir: dir.join("blobs"),
    })
    .await?;
    let sdk = affinity_store::peer_sdk_config(endpoint, 3).await;
    let dynamo = affinity_store::DynamoStore::new(
        &sdk,
        affinity_store::DynamoOptions::new(prefix.to_owned()),
    )?;
    dynamo.create_tables().await?;
    let s3 = affinity_store::S3BlobStore::new(&sdk, bucket.to_owned(), "")?;
    s3.create_bucket().await?;
    let remote = Stores::new(Arc::new(dynamo), Arc::new(s3));
    let t = TenantId::default();
    let pointer = local
        .records
        .live_pointer(&t)
        .await?
        .context("no live model in --dir (run prepare)")?;
    let version = local
        .records
        .get_model(&t, &pointer.version)
        .await?
        .context("live version missing")?;
    let bytes = local.blobs.get(&t, &version.artifact_key).await?;
    let artifact_bytes = bytes.len();
    remote.blobs.put(&t, &version.artifact_key, bytes).await?;
    remote.records.register_model(&t, &version).await?;
    remote
        .records
        .swap_live_pointer(&t, None, &version.version)
        .await?;
    let items = if catalog {
        local.records.list_items(&t).await?
    } else {
        Vec::new()
    };
    for chunk in items.chunks(500) {
        remote.records.upsert_items(&t, chunk).await?;
    }
    for key in local.records.list_keys(&t).await? {
        remote.records.create_key(&key).await?;
    }
    println!(
        "{}",
        serde_json::json!({"staged_version": version.version.as_str(), "artifact_bytes": artifact_bytes, "items": items.len()})
    );
    Ok(())
}
