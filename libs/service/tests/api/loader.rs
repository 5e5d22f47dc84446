//! The model loader: cold start through the live pointer, re-check interval, atomic swap,
//! and failed loads that keep the current model serving.

use std::time::Duration;

use affinity_service::Error;
use affinity_service::loader::ModelCache;
use affinity_store::{
    BlobKey, DataCounts, ModelStatus, ModelVersion, ModelVersionId, Stores, TenantId,
};

use affinity_model::index::{HnswParams, VectorIndex};
use affinity_model::model::IndexChoice;

use crate::fixture::{now, small_config, train_and_publish, train_and_publish_with};

async fn shop() -> (Stores, TenantId) {
    let stores = Stores::memory().unwrap();
    let tenant = TenantId::default();
    affinity_service::demo::populate(stores.records.as_ref(), &tenant, 150, 11, now())
        .await
        .unwrap();
    (stores, tenant)
}

/// Registers `bytes` as a version and points the live pointer at it.
async fn publish_raw(
    stores: &Stores,
    tenant: &TenantId,
    version: &str,
    bytes: Vec<u8>,
    checksum: String,
) {
    let key = BlobKey::parse(format!("models/{version}.afm")).unwrap();
    stores.blobs.put(tenant, &key, bytes).await.unwrap();
    let v = ModelVersion {
        version: ModelVersionId::parse(version).unwrap(),
        created_at: chrono::Utc::now(),
        status: ModelStatus::Candidate,
        artifact_key: key,
        checksum,
        params: serde_json::json!({}),
        metrics: serde_json::json!({}),
        data_counts: DataCounts::default(),
        reason: None,
    };
    stores.records.register_model(tenant, &v).await.unwrap();
    let live = stores
        .records
        .live_pointer(tenant)
        .await
        .unwrap()
        .map(|p| p.version);
    stores
        .records
        .swap_live_pointer(tenant, live.as_ref(), &v.version)
        .await
        .unwrap();
}

#[tokio::test]
async fn no_pointer_means_no_model() {
    let (stores, tenant) = shop().await;
    let cache = ModelCache::new(stores, Duration::ZERO);
    assert!(matches!(
        cache.get(&tenant).await,
        Err(Error::NoModel { .. })
    ));
}

#[tokio::test]
async fn cold_start_then_swap_when_the_pointer_moves() {
    let (stores, tenant) = shop().await;
    train_and_publish(&stores, &tenant, "v1").await;
    let cache = ModelCache::new(stores.clone(), Duration::ZERO);
    let first = cache.get(&tenant).await.unwrap();
    assert_eq!(first.version.version.as_str(), "v1");
    train_and_publish(&stores, &tenant, "v2").await;
    let next = cache.get(&tenant).await.unwrap();
    assert_eq!(next.version.version.as_str(), "v2");
    // The answer in flight keeps its own model: the old Arc is still whole.
    assert_eq!(first.version.version.as_str(), "v1");
    assert!(first.model.items.len() > 100);
}

#[tokio::test]
async fn the_pointer_is_not_rechecked_before_the_interval() {
    let (stores, tenant) = shop().await;
    train_and_publish(&stores, &tenant, "v1").await;
    let cache = ModelCache::new(stores.clone(), Duration::from_secs(3600));
    assert_eq!(
        cache.get(&tenant).await.unwrap().version.version.as_str(),
        "v1"
    );
    train_and_publish(&stores, &tenant, "v2").await;
    for _ in 0..3 {
        assert_eq!(
            cache.get(&tenant).await.unwrap().version.version.as_str(),
            "v1"
        );
    }
    // A fresh instance (cold start) sees the new pointer at once.
    let cold = ModelCache::new(stores, Duration::from_secs(3600));
    assert_eq!(
        cold.get(&tenant).await.unwrap().version.version.as_str(),
        "v2"
    );
}

#[tokio::test]
async fn failed_loads_keep_the_current_model() {
    let (stores, tenant) = shop().await;
    train_and_publish(&stores, &tenant, "v1").await;
    let cache = ModelCache::new(stores.clone(), Duration::ZERO);
    assert_eq!(
        cache.get(&tenant).await.unwrap().version.version.as_str(),
        "v1"
    );
    let good = cache.current(&tenant).unwrap().model.to_bytes().unwrap();

    // Bytes that do not match the registry's checksum (corrupted in the blob store).
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    publish_raw(
        &stores,
        &tenant,
        "v-corrupt",
        flipped,
        affinity_model::artifact::digest(&good),
    )
    .await;
    assert_eq!(
        cache.get(&tenant).await.unwrap().version.version.as_str(),
        "v1"
    );

    // Checksum right, content not an artifact: the artifact loader refuses it.
    let junk = b"not a model".to_vec();
    let sum = affinity_model::artifact::digest(&junk);
    publish_raw(&stores, &tenant, "v-junk", junk, sum).await;
    assert_eq!(
        cache.get(&tenant).await.unwrap().version.version.as_str(),
        "v1"
    );

    // The blob is missing altogether.
    publish_raw(&stores, &tenant, "v-missing", Vec::new(), "00".repeat(32)).await;
    stores
        .blobs
        .delete(&tenant, &BlobKey::parse("models/v-missing.afm").unwrap())
        .await
        .unwrap();
    assert_eq!(
        cache.get(&tenant).await.unwrap().version.version.as_str(),
        "v1"
    );

    // A good version afterwards is picked up.
    train_and_publish(&stores, &tenant, "v3").await;
    assert_eq!(
        cache.get(&tenant).await.unwrap().version.version.as_str(),
        "v3"
    );
}

/// Trains with `factors` and makes it live (a smaller or larger artifact than the fixture's).
async fn publish_with_factors(stores: &Stores, tenant: &TenantId, version: &str, factors: usize) {
    let mut config = crate::fixture::small_config();
    config.als.factors = factors;
    let model = affinity_service::training::train_tenant(
        stores.records.as_ref(),
        tenant,
        &config,
        version,
        &|_| {},
    )
    .await
    .unwrap();
    affinity_service::training::publish(stores, tenant, &model, serde_json::json!({}))
        .await
        .unwrap();
}

/// The three ways a live artifact is unusable at a cold start.
const BREAKAGES: [&str; 3] = ["deleted", "truncated", "over the size limit"];

/// Breaks `version`'s artifact as `breakage` says (the size limit through the returned
/// settings), and returns a router over the store with a recommend key, the key, and the
/// artifact's good bytes for the repair.
async fn broken(
    stores: &Stores,
    tenant: &TenantId,
    version: &str,
    breakage: &str,
) -> (axum::Router, String, affinity_store::ModelVersion, Vec<u8>) {
    use affinity_service::http::state::AppState;
    use affinity_service::settings::Settings;
    let v = stores
        .records
        .get_model(tenant, &ModelVersionId::parse(version).unwrap())
        .await
        .unwrap()
        .unwrap();
    let good = stores.blobs.get(tenant, &v.artifact_key).await.unwrap();
    let mut settings = Settings::for_tests();
    match breakage {
        "deleted" => stores.blobs.delete(tenant, &v.artifact_key).await.unwrap(),
        "truncated" => stores
            .blobs
            .put(tenant, &v.artifact_key, good[..good.len() / 2].to_vec())
            .await
            .unwrap(),
        _ => settings.max_artifact_bytes = good.len() as u64 - 1,
    }
    let key = affinity_store::generate_api_key(
        tenant,
        [affinity_store::Scope::Recommend].into(),
        None,
        chrono::Utc::now(),
    )
    .unwrap();
    stores.records.create_key(&key.record).await.unwrap();
    let router = affinity_service::http::routes::router(AppState::new(stores.clone(), &settings));
    (router, key.secret, v, good)
}

/// A cold start whose live artifact was deleted, truncated or is over the size limit is
/// answered by the previous version, flagged, through the router: no 5xx; and once the live
/// artifact is whole again, the next pointer check serves it.
#[tokio::test]
async fn a_cold_start_with_an_unusable_live_artifact_serves_the_previous_version_flagged() {
    for breakage in BREAKAGES {
        let (stores, tenant) = shop().await;
        publish_with_factors(&stores, &tenant, "v1", 8).await;
        publish_with_factors(&stores, &tenant, "v2", 32).await;
        let (router, key, v2, good) = broken(&stores, &tenant, "v2", breakage).await;
        let call = |uri: &'static str| crate::fixture::get_from(&router, &key, uri);
        let (s, b) = call("/v1/customers/cust-00001/recommendations?k=5").await;
        assert_eq!(s, 200, "{breakage}: {b}");
        assert_eq!(b["model_version"], "v1", "{breakage}: {b}");
        let why = b["degraded"].as_str().unwrap_or_default();
        assert!(why.contains("v2") && why.contains("v1"), "{breakage}: {b}");
        assert_eq!(b["items"].as_array().unwrap().len(), 5);
        let (s, b) = call("/v1/items/sku-0000/similar?k=3").await;
        assert_eq!(
            (s, &b["model_version"]),
            (axum::http::StatusCode::OK, &"v1".into())
        );

        // Repaired: the next request (pointer re-checked every time in tests) serves v2.
        if breakage != "over the size limit" {
            stores
                .blobs
                .put(&tenant, &v2.artifact_key, good.clone())
                .await
                .unwrap();
            let (s, b) = call("/v1/customers/cust-00001/recommendations?k=5").await;
            assert_eq!(s, 200);
            assert_eq!(b["model_version"], "v2", "{b}");
            assert!(b.get("degraded").is_none(), "{b}");
        }
    }
}

/// With only one version, a cold start whose artifact was deleted, truncated or is over the
/// size limit answers from the popularity list kept beside it: 200, flagged `degraded`,
/// `fallback: model_unavailable`, never personal; once repaired, the next check serves the
/// model again.
#[tokio::test]
async fn a_cold_start_with_no_loadable_version_answers_popularity_flagged() {
    for breakage in BREAKAGES {
        let (stores, tenant) = shop().await;
        publish_with_factors(&stores, &tenant, "v1", 8).await;
        let (router, key, v1, good) = broken(&stores, &tenant, "v1", breakage).await;
        let call = |uri: &'static str| crate::fixture::get_from(&router, &key, uri);
        for uri in [
            "/v1/customers/cust-00001/recommendations?k=5",
            "/v1/customers/nobody-yet/recommendations?k=5",
            "/v1/items/sku-0000/similar?k=3",
        ] {
            let (s, b) = call(uri).await;
            assert_eq!(s, 200, "{breakage} {uri}: {b}");
            assert_eq!(b["model_version"], "v1", "{breakage}: {b}");
            assert_eq!(b["personalized"], false, "{b}");
            let why = b["degraded"].as_str().unwrap_or_default();
            assert!(why.contains("popularity of version v1"), "{breakage}: {b}");
            let items = b["items"].as_array().unwrap();
            assert!(!items.is_empty(), "{b}");
            assert!(
                items
                    .iter()
                    .all(|i| i["reason"]["kind"] == "popular"
                        || i["reason"]["kind"] == "new_in_catalog"),
                "{b}"
            );
        }
        let (_, b) = call("/v1/customers/cust-00001/recommendations?k=5").await;
        assert_eq!(b["fallback"], "model_unavailable", "{b}");

        if breakage != "over the size limit" {
            stores
                .blobs
                .put(&tenant, &v1.artifact_key, good.clone())
                .await
                .unwrap();
            let (s, b) = call("/v1/customers/cust-00001/recommendations?k=5").await;
            assert_eq!(s, 200);
            assert_eq!(b["personalized"], true, "{b}");
            assert!(b.get("degraded").is_none(), "{b}");
        }
    }
}

/// A cold start refuses a corrupt artifact (its checksum); with no earlier version and no
/// popularity list to fall back on, it answers 503 `unavailable` (safe to retry), never 500.
#[tokio::test]
async fn a_cold_start_with_nothing_loadable_answers_503_not_500() {
    let (stores, tenant) = shop().await;
    publish_raw(
        &stores,
        &tenant,
        "v-bad",
        b"garbage".to_vec(),
        "ab".repeat(32),
    )
    .await;
    let err = ModelCache::new(stores, Duration::ZERO)
        .get(&tenant)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    let api = affinity_service::ApiError::from(err);
    assert_eq!(api.status_and_code().1, "unavailable", "{api}");
}

/// The serving graphs of a big catalog on a small one: every norm band gets an HNSW graph
/// (150k items would get them by default).
fn graphs_everywhere() -> affinity_model::model::TrainConfig {
    let mut config = small_config();
    config.index = IndexChoice::Hnsw(HnswParams {
        scan_below: 0,
        ..HnswParams::default()
    });
    config
}

#[tokio::test]
async fn an_hnsw_model_hot_reloads_twice_in_a_row_for_one_tenant_and_for_two() {
    let (stores, first) = shop().await;
    let second = TenantId::parse("second-shop").unwrap();
    affinity_service::demo::populate(stores.records.as_ref(), &second, 120, 12, now())
        .await
        .unwrap();
    let cache = ModelCache::new(stores.clone(), Duration::ZERO);
    let mut held = Vec::new();
    // v1 is the cold start; v2 and v3 are two hot reloads in a row, and the two tenants'
    // graphs load side by side in one process.
    for version in ["v1", "v2", "v3"] {
        for tenant in [&first, &second] {
            train_and_publish_with(&stores, tenant, version, &graphs_everywhere()).await;
        }
        for tenant in [&first, &second] {
            let serving = cache.get(tenant).await.unwrap();
            assert_eq!(serving.version.version.as_str(), version);
            let model = &serving.model;
            let graphs = model.index().hnsw().expect("an HNSW index").graphs();
            assert!(graphs > 0, "{tenant:?} {version}: graphs, not scans, serve");
            // The reloaded graphs answer as a scan of the same vectors does.
            let exact = model.index().hnsw().expect("an HNSW index").exact();
            let customer = model.fold_in(&[(0, 1.0), (3, 1.0), (7, 2.0)]);
            let ids = |hits: Vec<affinity_model::index::Hit>| -> Vec<u32> {
                hits.iter().map(|h| h.id).collect()
            };
            assert_eq!(
                ids(model.index().search(&customer, 10, &|_| true)),
                ids(exact.search(&customer, 10, &|_| true)),
                "{tenant:?} {version}"
            );
            held.push(serving);
        }
    }
    // Every model served along the way is still whole: answers in flight keep their own.
    for serving in &held {
        let index = serving.model.index();
        assert!(index.search(&vec![0.5; index.dim()], 5, &|_| true).len() == 5);
    }
}
