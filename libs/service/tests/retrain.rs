//! The one integration-test binary of affinity-service: the retrain pipeline end to end on
//! the embedded store and on DynamoDB + S3 served by moto (`AFFINITY_TEST_MOTO_URL`, set by
//! scripts/test.sh), with failure injection at every step.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use affinity_model::model::{IndexChoice, Model, Purchase as ModelPurchase, TrainConfig};
use affinity_service::Error;
use affinity_service::demo;
use affinity_service::retrain::{
    self, FailPoint, Faults, Progress, RetrainDeps, RetrainRequest, RetrainSettings, Step,
    TrainParams, Verdict, VersionMetrics, versions,
};
use affinity_store::{
    CatalogItem, Category, Conflict, CustomerId, DynamoOptions, DynamoStore, ItemId, JobId,
    JobStatus, LocalBlobStore, ModelStatus, OrderId, Purchase, S3BlobStore, SqliteStore, Stores,
    TenantId,
};
use chrono::{DateTime, Duration as Days, Utc};

/// Customers the probes ask for (all follow the coffee style of the demo shop: c % 7 == 0).
const PROBES: [&str; 4] = ["cust-00007", "cust-00014", "cust-00021", "cust-00028"];

struct Harness {
    stores: Stores,
    tenant: TenantId,
    dynamo: Option<DynamoStore>,
    /// The peer's SDK configuration and bucket, for tests that read around the store.
    peer: Option<(aws_config::SdkConfig, String)>,
    _dir: Option<tempfile::TempDir>,
}

fn unique(kind: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    format!(
        "r{}-{}-{}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed),
        kind
    )
}

impl Harness {
    async fn embedded() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let records = SqliteStore::open(dir.path().join("affinity.db"))
            .await
            .unwrap();
        let blobs = LocalBlobStore::new(dir.path().join("blobs"));
        Self {
            stores: Stores::new(Arc::new(records), Arc::new(blobs)),
            tenant: TenantId::default(),
            dynamo: None,
            peer: None,
            _dir: Some(dir),
        }
    }

    async fn moto() -> Self {
        let url = match std::env::var("AFFINITY_TEST_MOTO_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => panic!(
                "AFFINITY_TEST_MOTO_URL is not set: run `bash scripts/test.sh` (it starts moto), \
                 or start `moto_server -H 127.0.0.1 -p 5055` and export \
                 AFFINITY_TEST_MOTO_URL=http://127.0.0.1:5055"
            ),
        };
        let sdk = affinity_store::peer_sdk_config(&url, 3).await;
        let dynamo =
            DynamoStore::new(&sdk, DynamoOptions::new(format!("{}-", unique("tbl")))).unwrap();
        dynamo.create_tables().await.unwrap();
        let bucket = unique("bkt");
        let blobs = S3BlobStore::new(&sdk, bucket.clone(), "").unwrap();
        blobs.create_bucket().await.unwrap();
        Self {
            stores: Stores::new(Arc::new(dynamo.clone()), Arc::new(blobs)),
            tenant: TenantId::default(),
            dynamo: Some(dynamo),
            peer: Some((sdk, bucket)),
            _dir: None,
        }
    }

    /// Drops the test's tables so moto stays small.
    async fn teardown(self) {
        if let Some(d) = &self.dynamo {
            d.delete_tables().await.unwrap();
        }
    }

    fn deps(&self) -> RetrainDeps {
        let mut s = settings();
        if self.dynamo.is_some() {
            // moto is one Python process shared by every test binary running at once: a
            // renewal can wait seconds behind other tests' scans, so the short lease that
            // makes crash tests quick on SQLite would lapse here without any crash.
            s.lease = Duration::from_secs(60);
        }
        RetrainDeps::new(self.stores.clone(), s)
    }
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// Small, fast models; a short lease so crashed runs free the lock quickly.
fn settings() -> RetrainSettings {
    let mut s = RetrainSettings {
        train: TrainConfig {
            neighbours: 10,
            index: IndexChoice::Exact,
            ..TrainConfig::default()
        },
        lease: Duration::from_secs(3),
        ..RetrainSettings::default()
    };
    s.train.als.factors = 16;
    s.train.als.iterations = 8;
    s
}

async fn shop(h: &Harness, customers: usize) {
    demo::populate(h.stores.records.as_ref(), &h.tenant, customers, 7, now())
        .await
        .unwrap();
}

/// Purchases after the first model: every even-numbered customer buys again. Coffee
/// customers (c % 7 == 0) buy a new "Cold brew" line; the others two items they never had
/// from the category of their latest purchase. Returns the new item ids.
async fn new_arrivals(h: &Harness, customers: usize) -> Vec<String> {
    let ids: Vec<String> = (0..4).map(|i| format!("sku-new-{i}")).collect();
    let items: Vec<CatalogItem> = ids
        .iter()
        .map(|id| CatalogItem {
            item_id: ItemId::parse(id.as_str()).unwrap(),
            title: format!("Cold brew {id}"),
            category: Some(Category::parse("Cold brew").unwrap()),
            price_minor: 1500,
            currency: None,
            in_stock: true,
            created_at: now(),
            repurchasable: true,
            attributes: None,
        })
        .collect();
    let r = &h.stores.records;
    r.upsert_items(&h.tenant, &items).await.unwrap();
    let catalog = r.list_items(&h.tenant).await.unwrap();
    let mut rows = Vec::new();
    for c in (0..customers).step_by(2) {
        let customer = CustomerId::parse(format!("cust-{c:05}")).unwrap();
        let picks: Vec<ItemId> = if c % 7 == 0 {
            items.iter().map(|i| i.item_id.clone()).collect()
        } else {
            let history = r.customer_history(&h.tenant, &customer, 200).await.unwrap();
            let Some(latest) = history.first() else {
                continue;
            };
            let category = catalog
                .iter()
                .find(|i| i.item_id == latest.item_id)
                .and_then(|i| i.category.clone());
            catalog
                .iter()
                .filter(|i| i.category == category)
                .filter(|i| history.iter().all(|p| p.item_id != i.item_id))
                .take(2)
                .map(|i| i.item_id.clone())
                .collect()
        };
        for (line, item) in picks.into_iter().enumerate() {
            rows.push(Purchase {
                order_id: OrderId::parse(format!("new-{c:05}")).unwrap(),
                line: line as u32 + 1,
                customer_id: customer.clone(),
                item_id: item,
                quantity: NonZeroU32::new(2).unwrap(),
                unit_price_minor: 1500,
                currency: None,
                purchased_at: now() + Days::days(2) + Days::minutes(c as i64),
            });
        }
    }
    r.put_purchases(&h.tenant, &rows).await.unwrap();
    ids
}

/// What the live model recommends to the probe customers (fold-in of their stored
/// history, already-bought items excluded), as item ids.
async fn answers(h: &Harness) -> Vec<Vec<String>> {
    let (_, model) = versions::load_live(&h.stores, &h.tenant)
        .await
        .unwrap()
        .expect("a live model");
    answers_of(h, &model).await
}

async fn answers_of(h: &Harness, model: &Model) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for c in PROBES {
        let history = h
            .stores
            .records
            .customer_history(&h.tenant, &CustomerId::parse(c).unwrap(), 200)
            .await
            .unwrap();
        let purchases: Vec<ModelPurchase> = history
            .iter()
            .filter_map(|p| {
                model
                    .item_index(p.item_id.as_str())
                    .map(|item| ModelPurchase {
                        item,
                        quantity: p.quantity.get() as f32,
                        at: p.purchased_at.timestamp(),
                    })
            })
            .collect();
        let bought: Vec<u32> = purchases.iter().map(|p| p.item).collect();
        out.push(
            model
                .recommend(&purchases, 5, &|j| !bought.contains(&j))
                .iter()
                .map(|s| model.items.id(s.item).to_owned())
                .collect(),
        );
    }
    out
}

fn request(h: &Harness, job: &str) -> RetrainRequest {
    RetrainRequest {
        job_id: Some(JobId::parse(job).unwrap()),
        ..RetrainRequest::new(h.tenant.clone())
    }
}

/// True if another owner can take the lock now (it then gives it back).
async fn lock_is_free(h: &Harness) -> bool {
    let r = &h.stores.records;
    match r
        .acquire_lock(&h.tenant, "probe", Duration::from_secs(5))
        .await
    {
        Ok(_) => {
            r.release_lock(&h.tenant, "probe").await.unwrap();
            true
        }
        Err(affinity_store::Error::Conflict(Conflict::LockHeld { .. })) => false,
        Err(e) => panic!("{e}"),
    }
}

/// Runs until the lock of a crashed run has lapsed (bounded), returning the outcome.
async fn run_when_free(deps: &RetrainDeps, req: RetrainRequest) -> retrain::Outcome {
    for _ in 0..150 {
        match retrain::run_once(deps, req.clone()).await {
            Err(Error::RetrainRunning { .. }) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => return other.unwrap(),
        }
    }
    panic!("the crashed run's lock never expired");
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = crate::Harness::embedded().await;
                    crate::$name(&h).await;
                }
            )*
        }
        mod moto {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = crate::Harness::moto().await;
                    crate::$name(&h).await;
                    h.teardown().await;
                }
            )*
        }
    };
}

on_both_backends!(
    ingest_retrain_recommendations_change_and_rollback_restores,
    bad_candidate_is_rejected_and_force_promotes_it,
    erasure_leaves_no_row_or_blob_holding_the_customer,
);

/// Every place `needle` appears in the backend's raw records and blobs, read around the
/// store's API: every row of every SQLite table and every file under the blob folder, or
/// every item of every DynamoDB table and every object of the bucket.
async fn raw_places_holding(h: &Harness, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let (Some(dynamo), Some((sdk, bucket))) = (&h.dynamo, &h.peer) {
        let ddb = aws_sdk_dynamodb::Client::new(sdk);
        for spec in affinity_store::dynamo::schema::tables() {
            let table = dynamo.table_name(spec.id).to_owned();
            let items = ddb
                .scan()
                .table_name(&table)
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await
                .unwrap();
            for item in items {
                if format!("{item:?}").contains(needle) {
                    found.push(format!("table {table}: {item:?}"));
                }
            }
        }
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(sdk)
                .force_path_style(true)
                .build(),
        );
        let objects = s3
            .list_objects_v2()
            .bucket(bucket)
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .unwrap();
        for page in objects {
            for o in page.contents() {
                let key = o.key().unwrap().to_owned();
                let body = s3
                    .get_object()
                    .bucket(bucket)
                    .key(&key)
                    .send()
                    .await
                    .unwrap();
                let bytes = body.body.collect().await.unwrap().into_bytes();
                if String::from_utf8_lossy(&bytes).contains(needle) {
                    found.push(format!("object {key}"));
                }
            }
        }
    } else {
        let dir = h._dir.as_ref().unwrap().path();
        let db = rusqlite::Connection::open(dir.join("affinity.db")).unwrap();
        let tables: Vec<String> = db
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(tables.len() >= 10, "{tables:?}");
        for table in tables {
            let mut st = db.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
            let columns = st.column_count();
            let mut rows = st.query([]).unwrap();
            while let Some(row) = rows.next().unwrap() {
                for c in 0..columns {
                    let text = match row.get_ref(c).unwrap() {
                        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                            String::from_utf8_lossy(t).into_owned()
                        }
                        _ => continue,
                    };
                    if text.contains(needle) {
                        found.push(format!("table {table} column {c}: {text}"));
                    }
                }
            }
        }
        let mut stack = vec![dir.join("blobs")];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).into_iter().flatten() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if String::from_utf8_lossy(&std::fs::read(&path).unwrap()).contains(needle) {
                    found.push(format!("file {}", path.display()));
                }
            }
        }
    }
    found
}

/// `DELETE /v1/customers/{id}` on a shop with two model versions (two insight snapshots),
/// offer events and a consent record: afterwards no row and no blob holds the id, the
/// answer counted what went, and a repeat counts nothing.
async fn erasure_leaves_no_row_or_blob_holding_the_customer(h: &Harness) {
    use affinity_service::http::routes;
    use affinity_service::http::state::AppState;
    use affinity_service::settings::Settings;
    use tower::ServiceExt;

    let shop = demo::populate(h.stores.records.as_ref(), &h.tenant, 200, 11, now())
        .await
        .unwrap();
    let deps = h.deps();
    for job in ["erase-1", "erase-2"] {
        let mut req = request(h, job);
        req.force = true;
        retrain::run_once(&deps, req).await.unwrap();
    }
    let gone = shop.lapsed_customer.clone();
    let stayed = shop.example_customer.clone();
    let key = affinity_store::generate_api_key(
        &h.tenant,
        [
            affinity_store::Scope::CustomersManage,
            affinity_store::Scope::OffersDecide,
        ]
        .into(),
        None,
        Utc::now(),
    )
    .unwrap();
    h.stores.records.create_key(&key.record).await.unwrap();
    let router = routes::router(AppState::new(h.stores.clone(), &Settings::for_tests()));
    let call = |method: &str, uri: String, body: Option<serde_json::Value>| {
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", key.secret));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(axum::body::Body::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            ))
            .unwrap();
        let router = router.clone();
        async move {
            let res = router.oneshot(req).await.unwrap();
            let status = res.status();
            let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            )
        }
    };
    let (s, b) = call(
        "POST",
        "/v1/offers/events".into(),
        Some(
            serde_json::json!({"events": [{"event_id": "erase-ev", "customer_id": gone,
            "offer_id": "win-back", "kind": "shown", "channel": "email"}]}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(
        "PUT",
        format!("/v1/customers/{gone}/consent"),
        Some(serde_json::json!({"personalization": true, "marketing": false})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let before = raw_places_holding(h, &gone).await;
    assert!(
        before.iter().any(|p| p.contains("crm")) && before.len() > 4,
        "the customer should be stored in rows and snapshots first: {before:?}"
    );

    let (s, erased) = call("DELETE", format!("/v1/customers/{gone}"), None).await;
    assert_eq!(s, 200, "{erased}");
    assert!(erased["purchases"].as_u64().unwrap() > 0, "{erased}");
    assert_eq!(erased["offer_events"], 1, "{erased}");
    assert_eq!(erased["customer_records"], 1, "{erased}");
    assert_eq!(erased["insight_snapshots"], 2, "{erased}");
    let after = raw_places_holding(h, &gone).await;
    assert!(after.is_empty(), "still holding {gone}: {after:?}");
    // Only that customer went.
    assert!(!raw_places_holding(h, &stayed).await.is_empty());

    let (s, again) = call("DELETE", format!("/v1/customers/{gone}"), None).await;
    assert_eq!(s, 200, "{again}");
    for kind in [
        "purchases",
        "offer_events",
        "customer_records",
        "insight_snapshots",
    ] {
        assert_eq!(again[kind], 0, "{kind}: {again}");
    }
    let audits = h
        .stores
        .records
        .erasures_since(&h.tenant, chrono::DateTime::UNIX_EPOCH)
        .await
        .unwrap();
    assert_eq!(audits.len(), 2);
}

/// Ingest, retrain, new purchases, retrain again: answers change, versions are listed
/// with metrics, rollback brings the old answers back and promote moves forward again.
async fn ingest_retrain_recommendations_change_and_rollback_restores(h: &Harness) {
    let customers = 300;
    shop(h, customers).await;
    let deps = h.deps();
    let first = retrain::run_once(&deps, request(h, "job-first"))
        .await
        .unwrap();
    assert_eq!(first.verdict, Verdict::Promoted, "{}", first.reason);
    assert_eq!(first.live.as_ref(), Some(&first.version));
    assert!(first.evaluation.live.is_none());
    assert!(first.evaluation.candidate.recall > first.evaluation.popularity.recall);
    assert!(first.counts.purchases > 1000);
    let before = answers(h).await;

    let new_items = new_arrivals(h, customers).await;
    let second = retrain::run_once(&deps, request(h, "job-second"))
        .await
        .unwrap();
    assert_eq!(second.verdict, Verdict::Promoted, "{}", second.reason);
    assert_eq!(second.replaced.as_ref(), Some(&first.version));
    let live = second
        .evaluation
        .live
        .as_ref()
        .expect("live model compared");
    assert_eq!(live.version, first.version.as_str());
    let after = answers(h).await;
    assert_ne!(
        before, after,
        "recommendations changed with the new purchases"
    );
    // Probes with odd numbers did not buy the new arrivals: the new model offers them.
    let odd = [0usize, 2]; // cust-00007, cust-00021
    assert!(
        odd.iter()
            .any(|&p| after[p].iter().any(|i| new_items.contains(i))),
        "new arrivals recommended to coffee buyers: {after:?}"
    );
    assert!(
        before.iter().flatten().all(|i| !new_items.contains(i)),
        "the old model cannot know the new items"
    );

    assert!(matches!(
        second.evaluation.holdout,
        affinity_model::eval::Holdout::Since { .. }
    ));
    assert!(
        second.evaluation.customers >= 100,
        "even customers bought since"
    );
    let registry = versions::list(&h.stores, &h.tenant, 10).await.unwrap();
    assert_eq!(registry.versions.len(), 2);
    assert_eq!(registry.versions[0].entry.version, second.version);
    assert!(registry.versions[0].live);
    assert_eq!(registry.versions[0].entry.status, ModelStatus::Live);
    assert_eq!(registry.versions[1].entry.status, ModelStatus::Retired);
    let m = VersionMetrics::of(&registry.versions[0].entry).unwrap();
    // JSON keeps the figures (to the last bit or so: serde_json's float parsing).
    assert_eq!(m.evaluation.customers, second.evaluation.customers);
    assert!((m.evaluation.candidate.recall - second.evaluation.candidate.recall).abs() < 1e-12);
    assert!((m.evaluation.popularity.ndcg - second.evaluation.popularity.ndcg).abs() < 1e-12);
    assert_eq!(m.gate.verdict, Verdict::Promoted);
    assert!(m.evaluation.candidate.recall > 0.0 && m.evaluation.candidate.ndcg > 0.0);
    // The recorded recall@k curve agrees with the gate's figures at the gate's k.
    let curve = m.curve.as_ref().expect("a recall@k curve is recorded");
    let ks: Vec<usize> = curve.points.iter().map(|p| p.k).collect();
    assert_eq!(ks, retrain::CURVE_KS.to_vec());
    let at10 = curve.points.iter().find(|p| p.k == m.evaluation.k).unwrap();
    assert!((at10.candidate - m.evaluation.candidate.recall).abs() < 1e-12);
    assert!((at10.popularity - m.evaluation.popularity.recall).abs() < 1e-12);
    assert!(
        curve
            .points
            .windows(2)
            .all(|w| w[0].candidate <= w[1].candidate)
    );
    assert_eq!(
        registry.versions[0].entry.data_counts.purchases,
        second.counts.purchases
    );
    let job = versions::job(&h.stores, &h.tenant, &second.job_id)
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Succeeded);

    let back = versions::rollback(&h.stores, &h.tenant).await.unwrap();
    assert_eq!(back.version, first.version);
    assert_eq!(
        answers(h).await,
        before,
        "rollback restores the old answers"
    );
    let shown = versions::show(&h.stores, &h.tenant, &second.version)
        .await
        .unwrap();
    assert!(!shown.live && shown.entry.status == ModelStatus::Retired);
    versions::promote(&h.stores, &h.tenant, &second.version, false)
        .await
        .unwrap();
    assert_eq!(answers(h).await, after);
    assert!(lock_is_free(h).await);
}

/// A 1-factor, 1-iteration candidate fails the gate and changes nothing; with `force` it
/// goes live and the registry says it was forced.
async fn bad_candidate_is_rejected_and_force_promotes_it(h: &Harness) {
    shop(h, 300).await;
    let deps = h.deps();
    let good = retrain::run_once(&deps, request(h, "good")).await.unwrap();
    assert_eq!(good.verdict, Verdict::Promoted, "{}", good.reason);
    // Without new purchases there is nothing to judge a retrain on: refused as such.
    let idle = retrain::run_once(&deps, request(h, "idle")).await.unwrap();
    assert_eq!(idle.verdict, Verdict::Rejected);
    assert!(
        idle.reason.contains("only 0 customers bought since"),
        "{}",
        idle.reason
    );
    new_arrivals(h, 300).await;
    let before = answers(h).await;
    let bad_params = TrainParams {
        factors: Some(1),
        iterations: Some(1),
        ..TrainParams::default()
    };
    let bad = retrain::run_once(
        &deps,
        RetrainRequest {
            params: bad_params.clone(),
            ..request(h, "bad")
        },
    )
    .await
    .unwrap();
    assert_eq!(bad.verdict, Verdict::Rejected);
    assert!(bad.reason.contains("below live"), "{}", bad.reason);
    assert_eq!(bad.live.as_ref(), Some(&good.version));
    assert_eq!(answers(h).await, before, "live model unchanged");
    let entry = versions::show(&h.stores, &h.tenant, &bad.version)
        .await
        .unwrap();
    assert_eq!(entry.entry.status, ModelStatus::Rejected);
    assert_eq!(entry.entry.reason.as_deref(), Some(bad.reason.as_str()));
    // A rejected version needs force to be promoted by hand, too.
    let refused = versions::promote(&h.stores, &h.tenant, &bad.version, false).await;
    assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");

    let forced = retrain::run_once(
        &deps,
        RetrainRequest {
            params: bad_params,
            force: true,
            ..request(h, "forced")
        },
    )
    .await
    .unwrap();
    assert_eq!(forced.verdict, Verdict::Forced);
    assert!(forced.forced && forced.reason.starts_with("forced over the gate"));
    assert_eq!(forced.live.as_ref(), Some(&forced.version));
    let entry = versions::show(&h.stores, &h.tenant, &forced.version)
        .await
        .unwrap();
    assert!(entry.live);
    let m = VersionMetrics::of(&entry.entry).unwrap();
    assert!(m.gate.forced && m.gate.verdict == Verdict::Forced);
    assert_ne!(answers(h).await, before);
    versions::rollback(&h.stores, &h.tenant).await.unwrap();
    assert_eq!(answers(h).await, before);
}

/// Kills (or fails) the pipeline at `point`, then checks the live model, the lock and a
/// retry of the same job.
async fn killed_at(point: FailPoint) {
    let h = Harness::embedded().await;
    let customers = 250;
    shop(&h, customers).await;
    let mut deps = h.deps();
    // A generous gate: this test is about crash safety, not about the gate's verdict.
    deps.settings.gate.tolerance = 0.5;
    let first = retrain::run_once(&deps, request(&h, "first"))
        .await
        .unwrap();
    assert_eq!(first.verdict, Verdict::Promoted, "{}", first.reason);
    let before = answers(&h).await;
    new_arrivals(&h, customers).await;

    let faulty = deps.clone().with_faults(Faults::at(point));
    let err = retrain::run_once(&faulty, request(&h, "second"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Injected { .. }), "{point:?}: {err}");

    let step = point.step();
    let pointer = h
        .stores
        .records
        .live_pointer(&h.tenant)
        .await
        .unwrap()
        .unwrap();
    if step == Step::Release {
        // The flip happened before the release step: the new version serves.
        assert_ne!(pointer.version, first.version);
    } else {
        assert_eq!(
            pointer.version, first.version,
            "{point:?}: live pointer moved"
        );
        assert_eq!(answers(&h).await, before, "{point:?}: answers changed");
    }
    let job = h
        .stores
        .records
        .get_job(&h.tenant, &JobId::parse("second").unwrap())
        .await
        .unwrap();
    match point {
        FailPoint::Error(Step::Lock) | FailPoint::Crash(Step::Lock) => {
            assert!(job.is_none());
            assert!(lock_is_free(&h).await);
        }
        FailPoint::Error(_) => {
            let job = job.unwrap();
            assert_eq!(job.status, JobStatus::Failed);
            assert!(job.message.unwrap().contains("injected failure"));
            assert!(lock_is_free(&h).await, "{point:?}: lock not released");
        }
        FailPoint::Crash(_) => {
            // A killed run leaves its job running and its lock to expire.
            assert_eq!(job.unwrap().status, JobStatus::Running);
        }
    }

    // Lambda retries the same job: it completes, without training again once the version
    // was registered, and never flips twice.
    let iterations = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&iterations);
    let retry_deps = deps.clone().with_progress(Arc::new(move |p| {
        if matches!(p, Progress::Iteration { .. }) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }));
    let retried = run_when_free(&retry_deps, request(&h, "second")).await;
    let registered_before = matches!(step, Step::Flip | Step::Release);
    assert_eq!(retried.resumed, registered_before, "{point:?}");
    if registered_before {
        assert_eq!(
            iterations.load(Ordering::Relaxed),
            0,
            "{point:?}: trained twice"
        );
    }
    assert_eq!(retried.verdict, Verdict::Promoted, "{}", retried.reason);
    let pointer = h
        .stores
        .records
        .live_pointer(&h.tenant)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pointer.version, retried.version);
    assert_eq!(
        pointer.previous.as_ref(),
        Some(&first.version),
        "{point:?}: flipped twice"
    );
    let versions = h.stores.records.list_models(&h.tenant, 10).await.unwrap();
    assert_eq!(versions.len(), 2, "{point:?}: one version per job");
    assert_eq!(
        h.stores
            .records
            .get_job(&h.tenant, &JobId::parse("second").unwrap())
            .await
            .unwrap()
            .unwrap()
            .status,
        JobStatus::Succeeded
    );
    assert!(lock_is_free(&h).await);
    // And a delivery of the same job once more is answered from the registry.
    let again = retrain::run_once(&deps, request(&h, "second"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.version, retried.version);
}

macro_rules! every_fail_point {
    ($($name:ident => $step:ident),* $(,)?) => {
        mod killed {
            use super::*;
            $(
                mod $name {
                    use super::*;
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn error() {
                        killed_at(FailPoint::Error(Step::$step)).await;
                    }
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn crash() {
                        killed_at(FailPoint::Crash(Step::$step)).await;
                    }
                }
            )*
            #[test]
            fn every_step_is_covered() {
                let covered = [$(Step::$step),*];
                assert_eq!(covered.len(), Step::ALL.len());
                assert!(Step::ALL.iter().all(|s| covered.contains(s)));
            }
        }
    };
}

every_fail_point!(
    lock => Lock,
    scan => Scan,
    interactions => Interactions,
    tune => Tune,
    fit => Fit,
    evaluate => Evaluate,
    gate => Gate,
    train => Train,
    insight => Insight,
    artifact => Artifact,
    register => Register,
    flip => Flip,
    release => Release,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_run_is_refused_with_a_clear_message() {
    let h = Harness::embedded().await;
    shop(&h, 150).await;
    h.stores
        .records
        .acquire_lock(&h.tenant, "other-job#1", Duration::from_secs(60))
        .await
        .unwrap();
    let err = retrain::run_once(&h.deps(), request(&h, "refused"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::RetrainRunning { .. }));
    assert!(
        msg.contains("already running") && msg.contains("other-job#1"),
        "{msg}"
    );
    let job = versions::job(&h.stores, &h.tenant, &JobId::parse("refused").unwrap())
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert!(job.message.unwrap().starts_with("refused: "));
    assert!(
        h.stores
            .records
            .live_pointer(&h.tenant)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuning_chooses_on_validation_and_records_the_trials() {
    let h = Harness::embedded().await;
    shop(&h, 300).await;
    let out = retrain::run_once(
        &h.deps(),
        RetrainRequest {
            tune: Some(retrain::TuneRequest { budget_seconds: 60 }),
            ..request(&h, "tuned")
        },
    )
    .await
    .unwrap();
    let entry = versions::show(&h.stores, &h.tenant, &out.version)
        .await
        .unwrap();
    let params: retrain::VersionParams = serde_json::from_value(entry.entry.params).unwrap();
    let tuning = params.tuning.expect("tuning recorded");
    assert!(!tuning.trials.is_empty());
    let best = tuning
        .trials
        .iter()
        .max_by(|a, b| a.validation.ndcg.total_cmp(&b.validation.ndcg))
        .unwrap();
    assert_eq!(
        params.config.als, best.als,
        "the best validation trial is used"
    );
    // The base configuration is always among the trials.
    assert!(tuning.trials.iter().any(|t| t.als == settings().train.als));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_event_path_runs_the_same_pipeline() {
    let h = Harness::embedded().await;
    shop(&h, 600).await;
    let event = serde_json::json!({
        "version": "0", "id": "evt-1234", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "123456789012", "time": "2026-11-02T02:00:00Z",
        "region": "eu-west-1", "resources": [], "detail": {}
    });
    let out = retrain::invocation::handle(&h.deps(), event.clone(), &h.tenant, "req-1")
        .await
        .unwrap();
    assert_eq!(out["verdict"], "promoted", "{out:#}");
    assert_eq!(out["job_id"], "evt-evt-1234");
    // EventBridge delivers the same event twice: the second is answered, not retrained.
    let again = retrain::invocation::handle(&h.deps(), event, &h.tenant, "req-2")
        .await
        .unwrap();
    assert_eq!(again["replayed"], true);
    assert_eq!(again["version"], out["version"]);
    // While another run holds the lock, an invocation is skipped, not failed (no retries).
    h.stores
        .records
        .acquire_lock(&h.tenant, "someone#1", Duration::from_secs(60))
        .await
        .unwrap();
    let skipped = retrain::invocation::handle(&h.deps(), serde_json::json!({}), &h.tenant, "req-3")
        .await
        .unwrap();
    assert_eq!(skipped["status"], "skipped");
}

#[path = "../../store/tests/conformance/fault_proxy.rs"]
#[allow(dead_code)]
mod fault_proxy;

/// A store whose DynamoDB calls go through a proxy that loses the response of the first
/// conditional write of the live pointer (the write happens; the caller sees a dropped
/// connection and retries), with the harness's bucket.
async fn losing_the_pointer_response(h: &Harness) -> (Stores, fault_proxy::FaultProxy) {
    let url = std::env::var("AFFINITY_TEST_MOTO_URL").unwrap();
    let proxy = fault_proxy::FaultProxy::start(
        &url,
        fault_proxy::FaultConfig {
            // The pointer row is the control table's item whose sort key is "live".
            drop_first_containing: Some(("PutItem", r#""sk":{"S":"live"}"#, 1)),
            ..Default::default()
        },
    )
    .await;
    let table = h
        .dynamo
        .as_ref()
        .unwrap()
        .table_name(affinity_store::dynamo::schema::TableId::Purchases)
        .to_owned();
    let prefix = table.trim_end_matches("purchases").to_owned();
    let sdk = affinity_store::peer_sdk_config(&proxy.url, 1).await;
    let faulty = DynamoStore::new(&sdk, DynamoOptions::new(prefix)).unwrap();
    (Stores::new(Arc::new(faulty), h.stores.blobs.clone()), proxy)
}

/// Retrain and promote on DynamoDB, with the response of the pointer swap lost: each
/// reports success exactly when the pointer moved. The lost response is retried, the write
/// token recognises the retry's own write, and the answer names the version that is live.
/// A promote whose expectation went stale meanwhile (another writer moved the pointer) is
/// still a conflict, and a gate-rejected run says it did not move the pointer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrain_and_promote_report_success_exactly_when_the_pointer_moved() {
    let h = Harness::moto().await;
    shop(&h, 300).await;
    let live = |h: &Harness| {
        let records = h.stores.records.clone();
        let tenant = h.tenant.clone();
        async move {
            records
                .live_pointer(&tenant)
                .await
                .unwrap()
                .map(|p| p.version)
        }
    };

    // The first retrain: its pointer write's response is lost.
    let (faulty, proxy) = losing_the_pointer_response(&h).await;
    let mut s = h.deps().settings.clone();
    s.lease = Duration::from_secs(60);
    let deps = RetrainDeps::new(faulty.clone(), s.clone());
    let first = run_when_free(&deps, request(&h, "lost-1")).await;
    assert_eq!(
        proxy.stats.get(&proxy.stats.dropped),
        1,
        "the fault was injected"
    );
    assert_eq!(first.live.as_ref(), Some(&first.version), "{first:?}");
    assert_eq!(live(&h).await, Some(first.version.clone()));
    let job = versions::job(&h.stores, &h.tenant, &JobId::parse("lost-1").unwrap())
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");

    // A forced second retrain, response lost again: success, and the pointer moved.
    let (faulty, proxy) = losing_the_pointer_response(&h).await;
    let deps = RetrainDeps::new(faulty.clone(), s.clone());
    let second = run_when_free(
        &deps,
        RetrainRequest {
            force: true,
            ..request(&h, "lost-2")
        },
    )
    .await;
    assert_eq!(proxy.stats.get(&proxy.stats.dropped), 1);
    assert_eq!(second.live.as_ref(), Some(&second.version));
    assert_eq!(second.replaced.as_ref(), Some(&first.version));
    assert_eq!(live(&h).await, Some(second.version.clone()));

    // Promote the first version back, response lost: success, and it is live.
    let (faulty, proxy) = losing_the_pointer_response(&h).await;
    let p = versions::promote(&faulty, &h.tenant, &first.version, false)
        .await
        .unwrap();
    assert_eq!(proxy.stats.get(&proxy.stats.dropped), 1);
    assert_eq!(p.version, first.version);
    assert_eq!(live(&h).await, Some(first.version.clone()));

    // Not moved, not reported as moved: a stale expectation is a conflict and the pointer
    // stays where the other writer put it.
    let records = h.stores.records.clone();
    let stale = records
        .swap_live_pointer(&h.tenant, Some(&second.version), &second.version)
        .await;
    assert!(
        matches!(
            stale,
            Err(affinity_store::Error::Conflict(Conflict::LiveModel { .. }))
        ),
        "{stale:?}"
    );
    assert_eq!(live(&h).await, Some(first.version.clone()));

    // A run the gate rejects (no purchase since the live model to judge it on) reports that
    // the pointer did not move.
    let (faulty, _proxy) = losing_the_pointer_response(&h).await;
    let deps = RetrainDeps::new(faulty, s);
    let rejected = run_when_free(&deps, request(&h, "rejected")).await;
    assert_eq!(rejected.verdict, Verdict::Rejected, "{rejected:?}");
    assert_ne!(rejected.live.as_ref(), Some(&rejected.version));
    assert_eq!(live(&h).await, Some(first.version.clone()));
    h.teardown().await;
}
