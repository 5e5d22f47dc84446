//! Fault injection against the DynamoDB backend: moto behind `fault_proxy`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use affinity_store::*;

use crate::fault_proxy::{FaultConfig, FaultProxy};
use crate::harness::{moto_url, unique};
use crate::suite::purchase;

/// Two stores on one fresh set of tables: one through the proxy, one straight to moto (to
/// count what really landed).
async fn stores(
    config: FaultConfig,
    sdk_attempts: u32,
    retry: RetryPolicy,
) -> (DynamoStore, DynamoStore, FaultProxy) {
    let url = moto_url();
    let proxy = FaultProxy::start(&url, config).await;
    let prefix = format!("{}-", unique("flt"));
    let direct = DynamoStore::new(
        &peer_sdk_config(&url, 3).await,
        DynamoOptions::new(prefix.clone()),
    )
    .unwrap();
    direct.create_tables().await.unwrap();
    let options = DynamoOptions {
        retry,
        concurrency: 8,
        ..DynamoOptions::new(prefix)
    };
    let faulty =
        DynamoStore::new(&peer_sdk_config(&proxy.url, sdk_attempts).await, options).unwrap();
    (faulty, direct, proxy)
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(50),
    }
}

fn ten_thousand() -> Vec<Purchase> {
    (0..10_000u32)
        .map(|i| {
            purchase(
                &format!("order-{}", i / 4),
                i % 4,
                &format!("cust-{}", i % 997),
                &format!("item-{}", i % 301),
                i64::from(i),
            )
        })
        .collect()
}

async fn write_through_faults(sdk_attempts: u32, seed: u64) {
    let config = FaultConfig {
        throttle: 0.10,
        partial_forward: 0.15,
        report_unprocessed: 0.15,
        partial_get: 0.3,
        drop_response: 0.05,
        seed,
        ..Default::default()
    };
    let (faulty, direct, proxy) = stores(config, sdk_attempts, fast_retry(12)).await;
    let tenant = TenantId::default();
    let rows = ten_thousand();
    let started = std::time::Instant::now();
    let mut inserted = 0usize;
    for chunk in rows.chunks(1000) {
        let out = faulty.put_purchases(&tenant, chunk).await.unwrap();
        assert_eq!(out.len(), chunk.len());
        assert!(
            out.iter().all(|o| *o == WriteOutcome::Inserted),
            "every row is new: {:?}",
            WriteSummary::of(&out)
        );
        inserted += out.len();
    }
    assert_eq!(inserted, 10_000);
    eprintln!(
        "sdk_attempts={sdk_attempts}: wrote 10,000 through faults in {:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();

    // Count what moto holds, bypassing the proxy.
    let scan = direct.scan_purchases(&tenant, 2).await.unwrap();
    assert_eq!(scan.watermark.count, 10_000, "none lost, none doubled");
    let ids: HashSet<(String, u32)> = scan
        .purchases
        .iter()
        .map(|p| (p.order_id.to_string(), p.line))
        .collect();
    assert_eq!(ids.len(), 10_000);
    let mut got = scan.purchases;
    got.sort_by_key(|p| p.purchased_at);
    assert_eq!(got, rows, "stored content equals what was written");

    eprintln!(
        "sdk_attempts={sdk_attempts}: direct scan and compare in {:?}",
        started.elapsed()
    );
    // The faults really happened.
    let st = &proxy.stats;
    let (thr, part, unp, drop, gets) = (
        st.get(&st.throttled),
        st.get(&st.partial_forwards),
        st.get(&st.unprocessed_rewrites),
        st.get(&st.dropped),
        st.get(&st.partial_gets),
    );
    eprintln!(
        "sdk_attempts={sdk_attempts}: requests={} throttled={thr} partial={part} unprocessed={unp} dropped={drop} partial_gets={gets}",
        st.get(&st.requests)
    );
    assert!(thr > 0 && part > 0 && unp > 0 && drop > 0 && gets > 0);

    // A retried import of a quarter of the rows through the faults: all duplicates, still
    // 10,000 rows. (A quarter keeps moto's share of the test time down.)
    // Stored rows found only on a retry of UnprocessedKeys must still count as duplicates.
    let gets_before = st.get(&st.partial_gets);
    let out = faulty.put_purchases(&tenant, &rows[..2500]).await.unwrap();
    assert_eq!(WriteSummary::of(&out).duplicates, 2500);
    assert!(st.get(&st.partial_gets) > gets_before);
    let recount = direct.scan_purchases(&tenant, 1).await.unwrap();
    assert_eq!(recount.watermark.count, 10_000);
    direct.delete_tables().await.unwrap();
}

/// SDK retry disabled: our retry layer alone absorbs throttles, partial batches and drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_purchases_through_faults_with_our_retry_only() {
    write_through_faults(1, 7).await;
}

/// SDK standard retry on as well: both layers retrying still give exact counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_purchases_through_faults_with_sdk_retry_too() {
    write_through_faults(3, 11).await;
}

/// The first BatchWriteItem lands in moto but its response is lost (a timeout): the retry
/// must not double count, and the row is reported Inserted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_retried_after_timeout_does_not_double_count() {
    for sdk_attempts in [1, 3] {
        let config = FaultConfig {
            drop_first: Some(("BatchWriteItem", 2)),
            ..Default::default()
        };
        let (faulty, direct, proxy) = stores(config, sdk_attempts, fast_retry(5)).await;
        let t = TenantId::default();
        let rows: Vec<Purchase> = (0..40)
            .map(|i| purchase(&format!("o{i}"), 1, "c", "x", i))
            .collect();
        let out = faulty.put_purchases(&t, &rows).await.unwrap();
        assert_eq!(out, vec![WriteOutcome::Inserted; 40]);
        assert_eq!(proxy.stats.get(&proxy.stats.dropped), 2);
        assert_eq!(
            direct.scan_purchases(&t, 1).await.unwrap().watermark.count,
            40
        );

        // Offer events use conditional puts: a lost response must still read as one insert.
        let config = FaultConfig {
            drop_first: Some(("PutItem", 1)),
            ..Default::default()
        };
        let proxy2 = FaultProxy::start(&moto_url(), config).await;
        let options = DynamoOptions {
            table_prefix: direct
                .table_name(dynamo::schema::TableId::Purchases)
                .trim_end_matches("purchases")
                .to_string(),
            retry: fast_retry(5),
            concurrency: 1,
            offer_event_retention: None,
        };
        let faulty2 =
            DynamoStore::new(&peer_sdk_config(&proxy2.url, sdk_attempts).await, options).unwrap();
        let ev = OfferEvent {
            event_id: EventId::parse("evt-1").unwrap(),
            customer_id: CustomerId::parse("c").unwrap(),
            offer_id: OfferId::parse("o").unwrap(),
            kind: OfferEventKind::Shown,
            channel: Channel::parse("sms").unwrap(),
            recommendation_id: None,
            at: crate::suite::t0(),
        };
        assert_eq!(
            faulty2
                .put_offer_events(&t, std::slice::from_ref(&ev))
                .await
                .unwrap(),
            vec![WriteOutcome::Inserted]
        );
        assert_eq!(proxy2.stats.get(&proxy2.stats.dropped), 1);
        assert_eq!(
            faulty2.put_offer_events(&t, &[ev]).await.unwrap(),
            vec![WriteOutcome::Duplicate]
        );
        assert_eq!(
            direct
                .events_by_customer(&t, &CustomerId::parse("c").unwrap(), None, 10)
                .await
                .unwrap()
                .len(),
            1
        );
        direct.delete_tables().await.unwrap();
    }
}

/// Permanent throttling ends in `Error::Throttled` (HTTP 503 for callers), not a hang or a
/// silent partial success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_throttling_surfaces_as_throttled() {
    let config = FaultConfig {
        throttle: 1.0,
        ..Default::default()
    };
    let (faulty, direct, proxy) = stores(config, 1, fast_retry(4)).await;
    let err = faulty
        .put_purchases(&TenantId::default(), &[purchase("o", 1, "c", "x", 0)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Throttled { attempts: 4, .. }),
        "{err}"
    );
    assert_eq!(proxy.stats.get(&proxy.stats.throttled), 4);
    let err = faulty
        .get_purchase(&TenantId::default(), &OrderId::parse("o").unwrap(), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Throttled { .. }));
    direct.delete_tables().await.unwrap();
}

/// Parallel scans under throttling still return every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_scan_survives_throttling() {
    let config = FaultConfig {
        throttle: 0.3,
        seed: 3,
        ..Default::default()
    };
    let (faulty, direct, _proxy) = stores(config, 1, fast_retry(12)).await;
    let t = TenantId::default();
    let rows: Vec<Purchase> = (0..500)
        .map(|i| purchase(&format!("o{i}"), 1, "c", "x", i))
        .collect();
    direct.put_purchases(&t, &rows).await.unwrap();
    let scan = faulty.scan_purchases(&t, 4).await.unwrap();
    assert_eq!(scan.watermark.count, 500);
    let store: Arc<dyn RecordStore> = Arc::new(faulty);
    assert_eq!(
        store
            .customer_history(&t, &CustomerId::parse("c").unwrap(), 10)
            .await
            .unwrap()
            .len(),
        10
    );
    direct.delete_tables().await.unwrap();
}

/// Registration and the live-pointer swap are conditional writes: when the write happened
/// but its response was lost, the retry meets its own write. The write token makes that a
/// success (the pointer did move), while another writer's state is still a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_whose_response_was_lost_report_success() {
    for sdk_attempts in [1, 3] {
        let drop_first_put = || FaultConfig {
            drop_first: Some(("PutItem", 1)),
            ..Default::default()
        };
        let (faulty, direct, proxy) = stores(drop_first_put(), sdk_attempts, fast_retry(5)).await;
        let t = TenantId::default();
        let (v1, v2) = (crate::suite::model("v1", 0), crate::suite::model("v2", 1));
        faulty.register_model(&t, &v1).await.unwrap();
        assert_eq!(proxy.stats.get(&proxy.stats.dropped), 1);
        assert!(direct.get_model(&t, &v1.version).await.unwrap().is_some());
        direct.register_model(&t, &v2).await.unwrap();
        // A real second registration is still refused.
        assert!(matches!(
            faulty.register_model(&t, &v1).await,
            Err(Error::Conflict(Conflict::AlreadyExists { .. }))
        ));

        // The pointer's first set and a later swap, each with its response lost.
        let prefix = direct
            .table_name(dynamo::schema::TableId::Purchases)
            .trim_end_matches("purchases")
            .to_string();
        for (expected, new) in [(None, &v1.version), (Some(&v1.version), &v2.version)] {
            let proxy = FaultProxy::start(&moto_url(), drop_first_put()).await;
            let options = DynamoOptions {
                retry: fast_retry(5),
                ..DynamoOptions::new(prefix.clone())
            };
            let faulty =
                DynamoStore::new(&peer_sdk_config(&proxy.url, sdk_attempts).await, options)
                    .unwrap();
            let moved = faulty.swap_live_pointer(&t, expected, new).await.unwrap();
            assert_eq!(&moved.version, new);
            assert_eq!(proxy.stats.get(&proxy.stats.dropped), 1);
            assert_eq!(
                &direct.live_pointer(&t).await.unwrap().unwrap().version,
                new
            );
        }
        // A stale expectation is still a conflict, and the pointer stays.
        let err = faulty
            .swap_live_pointer(&t, Some(&v1.version), &v1.version)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Conflict(Conflict::LiveModel { .. })),
            "{err}"
        );
        assert_eq!(
            direct.live_pointer(&t).await.unwrap().unwrap().version,
            v2.version
        );
        direct.delete_tables().await.unwrap();
    }
}

/// The job and lock rows with their first write's response lost: a job is still reported
/// Created (its write token), not mistaken for an earlier run of itself; the lock is held
/// by the caller (its owner condition recognises the retry), and stays refused to others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_and_lock_writes_whose_response_was_lost_report_success() {
    for (needle, sdk_attempts) in [
        (r#""S":"job#"#, 1),
        (r#""S":"job#"#, 3),
        (r#""sk":{"S":"lock"}"#, 1),
        (r#""sk":{"S":"lock"}"#, 3),
    ] {
        let config = FaultConfig {
            drop_first_containing: Some(("PutItem", needle, 1)),
            ..Default::default()
        };
        let (faulty, direct, proxy) = stores(config, sdk_attempts, fast_retry(5)).await;
        let t = TenantId::default();
        let job = JobRecord {
            job_id: JobId::parse("job-lost").unwrap(),
            status: JobStatus::Running,
            started_at: chrono::Utc::now(),
            finished_at: None,
            message: None,
        };
        assert!(matches!(
            faulty.create_job(&t, &job).await.unwrap(),
            JobStart::Created
        ));
        let lock = faulty
            .acquire_lock(&t, "me", std::time::Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(lock.owner, "me");
        assert_eq!(proxy.stats.get(&proxy.stats.dropped), 1, "{needle}");
        // The stored state is exactly one job and a lock held by the caller.
        assert!(direct.get_job(&t, &job.job_id).await.unwrap().is_some());
        assert!(matches!(
            direct.create_job(&t, &job).await.unwrap(),
            JobStart::Existing(_)
        ));
        assert!(matches!(
            direct
                .acquire_lock(&t, "someone-else", std::time::Duration::from_secs(60))
                .await,
            Err(Error::Conflict(Conflict::LockHeld { .. }))
        ));
        direct.delete_tables().await.unwrap();
    }
}
