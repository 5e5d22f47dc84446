//! Backend-agnostic conformance checks; each takes a fresh `Harness`.

use std::collections::{BTreeSet, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use affinity_store::import::{self, ImportOptions};
use affinity_store::*;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

use crate::harness::Harness;

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 9, 0, 0).unwrap()
}

pub fn purchase(order: &str, line: u32, customer: &str, item: &str, minutes: i64) -> Purchase {
    Purchase {
        order_id: OrderId::parse(order).unwrap(),
        line,
        customer_id: CustomerId::parse(customer).unwrap(),
        item_id: ItemId::parse(item).unwrap(),
        quantity: NonZeroU32::new(1).unwrap(),
        unit_price_minor: 1299,
        currency: Some(Currency::parse("EUR").unwrap()),
        purchased_at: t0() + chrono::Duration::minutes(minutes),
    }
}

fn item(id: &str, category: &str, in_stock: bool) -> CatalogItem {
    CatalogItem {
        item_id: ItemId::parse(id).unwrap(),
        title: format!("Item {id}"),
        category: Some(Category::parse(category).unwrap()),
        price_minor: 500,
        currency: Some(Currency::parse("EUR").unwrap()),
        in_stock,
        created_at: t0(),
        repurchasable: false,
        attributes: Some(json!({"color": "red"})),
    }
}

fn offer(id: &str, status: OfferStatus) -> OfferRecord {
    OfferRecord {
        offer_id: OfferId::parse(id).unwrap(),
        status,
        document: json!({"discount_pct": 10, "items": ["a", "b"]}),
        updated_at: t0(),
    }
}

fn event(id: &str, customer: &str, offer: &str, kind: OfferEventKind, minutes: i64) -> OfferEvent {
    OfferEvent {
        event_id: EventId::parse(id).unwrap(),
        customer_id: CustomerId::parse(customer).unwrap(),
        offer_id: OfferId::parse(offer).unwrap(),
        kind,
        channel: Channel::parse("email").unwrap(),
        recommendation_id: Some(RecommendationId::parse("rec-1").unwrap()),
        at: t0() + chrono::Duration::minutes(minutes),
    }
}

pub fn model(version: &str, minutes: i64) -> ModelVersion {
    ModelVersion {
        version: ModelVersionId::parse(version).unwrap(),
        created_at: t0() + chrono::Duration::minutes(minutes),
        status: ModelStatus::Candidate,
        artifact_key: BlobKey::parse(format!("models/{version}/artifact.bin")).unwrap(),
        checksum: "ab12".into(),
        params: json!({"factors": 64, "iterations": 15}),
        metrics: json!({"ndcg@10": 0.31}),
        data_counts: DataCounts {
            purchases: 100,
            customers: 10,
            items: 20,
        },
        reason: None,
    }
}

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

async fn stored_count(h: &Harness, t: &TenantId) -> usize {
    h.stores
        .records
        .scan_purchases(t, 4)
        .await
        .unwrap()
        .purchases
        .len()
}

pub async fn purchases_are_idempotent_and_report_per_row(h: &Harness) {
    let t = &h.tenant;
    let s = &h.stores.records;
    let rows = vec![
        purchase("o1", 1, "c1", "a", 0),
        purchase("o1", 2, "c1", "b", 0),
        purchase("#2", 1, "c2", "a", 5),
    ];
    let out = s.put_purchases(t, &rows).await.unwrap();
    assert_eq!(out, vec![WriteOutcome::Inserted; 3]);

    // A retried batch is a no-op reported as duplicates.
    assert_eq!(
        s.put_purchases(t, &rows).await.unwrap(),
        vec![WriteOutcome::Duplicate; 3]
    );

    // Same identity, different content: reported, not overwritten.
    let mut changed = rows[0].clone();
    changed.quantity = NonZeroU32::new(5).unwrap();
    let mut bad = purchase("o9", 1, "c1", "a", 0);
    bad.unit_price_minor = -1;
    let fresh = purchase("o3", 1, "c3", "z", 9);
    let mut fresh_conflicting = fresh.clone();
    fresh_conflicting.item_id = ItemId::parse("y").unwrap();
    let out = s
        .put_purchases(
            t,
            &[
                changed.clone(),
                bad,
                fresh.clone(),
                fresh.clone(),
                fresh_conflicting,
            ],
        )
        .await
        .unwrap();
    assert_eq!(out[0], WriteOutcome::Conflict);
    assert!(
        matches!(&out[1], WriteOutcome::Invalid(r) if r.contains("unit_price_minor")),
        "{:?}",
        out[1]
    );
    assert_eq!(
        out[2..],
        [
            WriteOutcome::Inserted,
            WriteOutcome::Duplicate,
            WriteOutcome::Conflict
        ]
    );
    assert_eq!(
        s.get_purchase(t, &rows[0].order_id, 1)
            .await
            .unwrap()
            .unwrap(),
        rows[0]
    );
    assert_eq!(
        s.get_purchase(t, &fresh.order_id, 1)
            .await
            .unwrap()
            .unwrap(),
        fresh
    );
    assert!(
        s.get_purchase(t, &OrderId::parse("o9").unwrap(), 1)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(stored_count(h, t).await, 4);

    // Sub-millisecond precision is truncated consistently, so a retry still matches.
    let mut precise = purchase("o4", 1, "c1", "a", 1);
    precise.purchased_at += chrono::Duration::nanoseconds(1_500_123);
    assert_eq!(
        s.put_purchases(t, &[precise.clone()]).await.unwrap(),
        vec![WriteOutcome::Inserted]
    );
    assert_eq!(
        s.put_purchases(t, &[precise]).await.unwrap(),
        vec![WriteOutcome::Duplicate]
    );

    // Empty batch.
    assert!(s.put_purchases(t, &[]).await.unwrap().is_empty());
}

pub async fn purchase_history_is_newest_first_and_bounded(h: &Harness) {
    let t = &h.tenant;
    let s = &h.stores.records;
    let mut rows = Vec::new();
    for i in 0..6 {
        rows.push(purchase(
            &format!("o{i}"),
            1,
            "alice",
            &format!("i{i}"),
            i * 10,
        ));
    }
    rows.push(purchase("o0", 2, "alice", "extra", 0)); // same time as o0/1: tie broken by line
    rows.push(purchase("b1", 1, "bob", "i1", 100));
    s.put_purchases(t, &rows).await.unwrap();
    let alice = CustomerId::parse("alice").unwrap();
    let hist = s.customer_history(t, &alice, 3).await.unwrap();
    let got: Vec<&str> = hist.iter().map(|p| p.order_id.as_str()).collect();
    assert_eq!(got, vec!["o5", "o4", "o3"]);
    let all = s.customer_history(t, &alice, 100).await.unwrap();
    assert_eq!(all.len(), 7);
    assert!(
        all.windows(2)
            .all(|w| w[0].purchased_at >= w[1].purchased_at)
    );
    assert_eq!((all[5].order_id.as_str(), all[5].line), ("o0", 2));
    assert!(all.iter().all(|p| p.customer_id == alice));
    assert!(s.customer_history(t, &alice, 0).await.unwrap().is_empty());
    assert!(
        s.customer_history(t, &CustomerId::parse("nobody").unwrap(), 5)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn training_scan_returns_every_purchase_of_the_tenant(h: &Harness) {
    let s = &h.stores.records;
    let (a, b) = (tenant("shop-a"), tenant("shop-b"));
    let rows_a: Vec<Purchase> = (0..120)
        .map(|i| {
            purchase(
                &format!("o{}", i / 3),
                i % 3,
                &format!("c{}", i % 7),
                "x",
                i as i64,
            )
        })
        .collect();
    let rows_b: Vec<Purchase> = (0..30)
        .map(|i| purchase(&format!("o{i}"), 0, "c", "y", 1000))
        .collect();
    s.put_purchases(&a, &rows_a).await.unwrap();
    s.put_purchases(&b, &rows_b).await.unwrap();
    for segments in [1, 4] {
        let scan = s.scan_purchases(&a, segments).await.unwrap();
        assert_eq!(scan.purchases.len(), 120);
        assert_eq!(scan.watermark.count, 120);
        assert_eq!(
            scan.watermark.max_purchased_at,
            Some(t0() + chrono::Duration::minutes(119))
        );
        let ids: HashSet<(String, u32)> = scan
            .purchases
            .iter()
            .map(|p| (p.order_id.to_string(), p.line))
            .collect();
        assert_eq!(ids.len(), 120);
        let mut got = scan.purchases.clone();
        got.sort_by_key(|p| p.purchased_at);
        assert_eq!(got, rows_a);
        // The streaming scan sees the same rows and the same watermark.
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink_seen = Arc::clone(&seen);
        let watermark = s
            .stream_purchases(
                &a,
                segments,
                Box::new(move |r: PurchaseRow<'_>| {
                    sink_seen.lock().unwrap().push((
                        r.customer_id.to_owned(),
                        r.item_id.to_owned(),
                        r.quantity,
                        r.purchased_at_ms,
                    ))
                }),
            )
            .await
            .unwrap();
        assert_eq!(watermark, scan.watermark);
        let mut streamed = seen.lock().unwrap().clone();
        streamed.sort_by_key(|r| r.3);
        let expected: Vec<_> = rows_a
            .iter()
            .map(|p| {
                let r = PurchaseRow::of(p);
                (
                    r.customer_id.to_owned(),
                    r.item_id.to_owned(),
                    r.quantity,
                    r.purchased_at_ms,
                )
            })
            .collect();
        assert_eq!(streamed, expected);
    }
    let empty = s.scan_purchases(&tenant("shop-c"), 2).await.unwrap();
    assert_eq!(empty.watermark, Watermark::default());
    let none = s
        .stream_purchases(
            &tenant("shop-c"),
            2,
            Box::new(|_| panic!("no rows expected")),
        )
        .await
        .unwrap();
    assert_eq!(none, Watermark::default());
}

pub async fn tenants_are_isolated(h: &Harness) {
    let s = &h.stores.records;
    let (a, b) = (tenant("a"), tenant("b"));
    let p = purchase("o1", 1, "c1", "i1", 0);
    let mut q = p.clone();
    q.item_id = ItemId::parse("other").unwrap();
    assert_eq!(
        s.put_purchases(&a, std::slice::from_ref(&p)).await.unwrap(),
        vec![WriteOutcome::Inserted]
    );
    // Same identity in another tenant is a different purchase, not a conflict.
    assert_eq!(
        s.put_purchases(&b, &[q.clone()]).await.unwrap(),
        vec![WriteOutcome::Inserted]
    );
    assert_eq!(
        s.get_purchase(&a, &p.order_id, 1).await.unwrap().unwrap(),
        p
    );
    assert_eq!(
        s.get_purchase(&b, &p.order_id, 1).await.unwrap().unwrap(),
        q
    );
    s.upsert_items(&a, &[item("i1", "shoes", true)])
        .await
        .unwrap();
    assert!(s.list_items(&b).await.unwrap().is_empty());
    s.register_model(&a, &model("v1", 0)).await.unwrap();
    assert!(
        s.get_model(&b, &ModelVersionId::parse("v1").unwrap())
            .await
            .unwrap()
            .is_none()
    );
    s.register_model(&b, &model("v1", 0)).await.unwrap();
    let c1 = CustomerId::parse("c1").unwrap();
    assert_eq!(s.delete_customer_data(&b, &c1).await.unwrap().purchases, 1);
    assert_eq!(s.customer_history(&a, &c1, 10).await.unwrap().len(), 1);
}

pub async fn concurrent_duplicate_writers_store_each_row_once(h: &Harness) {
    let rows: Vec<Purchase> = (0..60)
        .map(|i| purchase(&format!("o{i}"), 1, &format!("c{}", i % 5), "x", i))
        .collect();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let s = Arc::clone(&h.stores.records);
        let t = h.tenant.clone();
        let rows = rows.clone();
        tasks.push(tokio::spawn(async move {
            s.put_purchases(&t, &rows).await.unwrap()
        }));
    }
    let mut inserted = 0;
    for task in tasks {
        let out = task.await.unwrap();
        assert!(
            out.iter()
                .all(|o| matches!(o, WriteOutcome::Inserted | WriteOutcome::Duplicate)),
            "{out:?}"
        );
        inserted += out.iter().filter(|o| **o == WriteOutcome::Inserted).count();
    }
    // Rows are stored exactly once whatever the interleaving; on the embedded store (one
    // writer at a time) the reports are exact too.
    assert!(inserted >= 60);
    if h.backend == "embedded" {
        assert_eq!(inserted, 60);
    }
    let scan = h.stores.records.scan_purchases(&h.tenant, 2).await.unwrap();
    let mut got = scan.purchases;
    got.sort_by_key(|p| p.purchased_at);
    assert_eq!(got, rows);
}

pub async fn catalog_upsert_get_list(h: &Harness) {
    let t = &h.tenant;
    let s = &h.stores.records;
    let mut items: Vec<CatalogItem> = (0..150)
        .map(|i| item(&format!("sku-{i:03}"), "shoes", i % 2 == 0))
        .collect();
    let mut bad = item("bad", "x", true);
    bad.price_minor = -5;
    items.push(bad);
    let out = s.upsert_items(t, &items).await.unwrap();
    assert_eq!(
        out.iter().filter(|o| **o == UpsertOutcome::Written).count(),
        150
    );
    assert!(matches!(out[150], UpsertOutcome::Invalid(_)));
    // Replace one, with a repeated id inside the batch: the last row wins.
    let mut v1 = item("sku-001", "boots", false);
    v1.title = "first".into();
    let mut v2 = v1.clone();
    v2.title = "second".into();
    v2.attributes = None;
    assert_eq!(
        s.upsert_items(t, &[v1, v2.clone()]).await.unwrap(),
        vec![UpsertOutcome::Written; 2]
    );
    // get_items: >100 ids (two BatchGetItem chunks), input order, missing skipped, dups once.
    let mut ids: Vec<ItemId> = (0..150)
        .rev()
        .map(|i| ItemId::parse(format!("sku-{i:03}")).unwrap())
        .collect();
    ids.insert(3, ItemId::parse("missing").unwrap());
    ids.push(ItemId::parse("sku-149").unwrap());
    let got = s.get_items(t, &ids).await.unwrap();
    assert_eq!(got.len(), 150);
    assert_eq!(got[0].item_id.as_str(), "sku-149");
    assert_eq!(got[149].item_id.as_str(), "sku-000");
    assert_eq!(
        got.iter()
            .find(|i| i.item_id.as_str() == "sku-001")
            .unwrap(),
        &v2
    );
    let all = s.list_items(t).await.unwrap();
    assert_eq!(all.len(), 150);
    assert!(all.windows(2).all(|w| w[0].item_id < w[1].item_id));
    assert_eq!(all[2], item("sku-002", "shoes", true));
    assert!(s.get_items(t, &[]).await.unwrap().is_empty());
}

pub async fn customer_flags_and_privacy_deletion(h: &Harness) {
    let t = &h.tenant;
    let s = &h.stores.records;
    let (c1, c2) = (
        CustomerId::parse("c1").unwrap(),
        CustomerId::parse("c2").unwrap(),
    );
    assert!(s.get_customer(t, &c1).await.unwrap().is_none());
    let rec = CustomerRecord {
        customer_id: c1.clone(),
        consent: Consent::NONE,
        tier_override: Some("vip".into()),
        updated_at: t0(),
    };
    s.put_customer(t, &rec).await.unwrap();
    assert_eq!(s.get_customer(t, &c1).await.unwrap().unwrap(), rec);
    let rec2 = CustomerRecord {
        consent: Consent {
            personalization: false,
            marketing: true,
        },
        tier_override: None,
        ..rec.clone()
    };
    s.put_customer(t, &rec2).await.unwrap();
    assert_eq!(s.get_customer(t, &c1).await.unwrap().unwrap(), rec2);
    s.put_customer(
        t,
        &CustomerRecord {
            customer_id: c2.clone(),
            ..rec.clone()
        },
    )
    .await
    .unwrap();

    let rows: Vec<Purchase> = (0..30)
        .map(|i| {
            purchase(
                &format!("o{i}"),
                1,
                if i < 27 { "c1" } else { "c2" },
                "x",
                i,
            )
        })
        .collect();
    s.put_purchases(t, &rows).await.unwrap();
    s.put_offer_events(
        t,
        &[
            event("e1", "c1", "o", OfferEventKind::Shown, 0),
            event("e2", "c1", "o", OfferEventKind::Accepted, 1),
            event("e3", "c2", "o", OfferEventKind::Shown, 2),
        ],
    )
    .await
    .unwrap();

    let counts = s.delete_customer_data(t, &c1).await.unwrap();
    assert_eq!(
        counts,
        DeletionCounts {
            purchases: 27,
            customers: 1,
            offer_events: 2
        }
    );
    assert!(s.customer_history(t, &c1, 100).await.unwrap().is_empty());
    assert!(s.get_customer(t, &c1).await.unwrap().is_none());
    assert!(
        s.events_by_customer(t, &c1, None, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.events_by_offer(t, &OfferId::parse("o").unwrap(), None, 100)
            .await
            .unwrap()
            .len(),
        1
    );
    // The other customer is untouched.
    assert_eq!(s.customer_history(t, &c2, 100).await.unwrap().len(), 3);
    assert!(s.get_customer(t, &c2).await.unwrap().is_some());
    assert_eq!(stored_count(h, t).await, 3);
    // Idempotent.
    assert_eq!(
        s.delete_customer_data(t, &c1).await.unwrap(),
        DeletionCounts::default()
    );

    // Erasure audit records: stored once per id, listed oldest first from a time on.
    let audit = |id: &str, minutes: i64| ErasureAudit {
        audit_id: id.into(),
        customer_hash: "ab".repeat(32),
        actor: "key:k1".into(),
        at: t0() + chrono::Duration::minutes(minutes),
        counts,
    };
    assert!(s.erasures_since(t, t0()).await.unwrap().is_empty());
    s.put_erasure_audit(t, &audit("a2", 10)).await.unwrap();
    s.put_erasure_audit(t, &audit("a1", 5)).await.unwrap();
    s.put_erasure_audit(t, &audit("a1", 5)).await.unwrap();
    let all = s.erasures_since(t, t0()).await.unwrap();
    assert_eq!(all, vec![audit("a1", 5), audit("a2", 10)]);
    let later = s
        .erasures_since(t, t0() + chrono::Duration::minutes(6))
        .await
        .unwrap();
    assert_eq!(later, vec![audit("a2", 10)]);
    let other = TenantId::parse("other-tenant").unwrap();
    assert!(s.erasures_since(&other, t0()).await.unwrap().is_empty());
}

pub async fn offers_and_offer_events(h: &Harness) {
    let t = &h.tenant;
    let s = &h.stores.records;
    let out = s
        .upsert_offers(
            t,
            &[
                offer("b", OfferStatus::Active),
                offer("a", OfferStatus::Paused),
            ],
        )
        .await
        .unwrap();
    assert_eq!(out, vec![UpsertOutcome::Written; 2]);
    let mut a2 = offer("a", OfferStatus::Archived);
    a2.document = json!({"discount_pct": 20});
    s.upsert_offers(t, &[a2.clone()]).await.unwrap();
    assert_eq!(
        s.get_offer(t, &OfferId::parse("a").unwrap())
            .await
            .unwrap()
            .unwrap(),
        a2
    );
    assert!(
        s.get_offer(t, &OfferId::parse("zz").unwrap())
            .await
            .unwrap()
            .is_none()
    );
    let list = s.list_offers(t).await.unwrap();
    assert_eq!(
        list.iter().map(|o| o.offer_id.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );

    let evs = vec![
        event("e1", "c1", "a", OfferEventKind::Shown, 0),
        event("e2", "c1", "a", OfferEventKind::Accepted, 5),
        event("e3", "c1", "b", OfferEventKind::Shown, 10),
        event("e4", "c2", "a", OfferEventKind::Declined, 15),
    ];
    assert_eq!(
        s.put_offer_events(t, &evs).await.unwrap(),
        vec![WriteOutcome::Inserted; 4]
    );
    let mut changed = evs[0].clone();
    changed.kind = OfferEventKind::Declined;
    let out = s
        .put_offer_events(
            t,
            &[
                evs[1].clone(),
                changed,
                event("e5", "c3", "b", OfferEventKind::Shown, 20),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            WriteOutcome::Duplicate,
            WriteOutcome::Conflict,
            WriteOutcome::Inserted
        ]
    );

    let c1 = CustomerId::parse("c1").unwrap();
    let by_c = s.events_by_customer(t, &c1, None, 10).await.unwrap();
    assert_eq!(
        by_c.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(),
        vec!["e3", "e2", "e1"]
    );
    assert_eq!(by_c[2], evs[0], "conflicting write must not overwrite");
    let since = s
        .events_by_customer(t, &c1, Some(t0() + chrono::Duration::minutes(5)), 10)
        .await
        .unwrap();
    assert_eq!(
        since
            .iter()
            .map(|e| e.event_id.as_str())
            .collect::<Vec<_>>(),
        vec!["e3", "e2"]
    );
    assert_eq!(
        s.events_by_customer(t, &c1, None, 1).await.unwrap().len(),
        1
    );
    let by_o = s
        .events_by_offer(t, &OfferId::parse("a").unwrap(), None, 10)
        .await
        .unwrap();
    assert_eq!(
        by_o.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(),
        vec!["e4", "e2", "e1"]
    );
}

pub async fn api_keys_hashed_lookup_revoke_list(h: &Harness) {
    let t = &h.tenant;
    let s = &h.stores.records;
    let k1 = generate_api_key(
        t,
        BTreeSet::from([Scope::Recommend, Scope::Ingest]),
        Some("storefront".into()),
        t0(),
    )
    .unwrap();
    let k2 = generate_api_key(
        t,
        BTreeSet::from([Scope::ModelsAdmin]),
        None,
        t0() + chrono::Duration::seconds(1),
    )
    .unwrap();
    let other = generate_api_key(
        &tenant("other"),
        BTreeSet::from([Scope::OffersDecide, Scope::ProfilesRead]),
        None,
        t0(),
    )
    .unwrap();
    for k in [&k1, &k2, &other] {
        s.create_key(&k.record).await.unwrap();
    }
    let err = s.create_key(&k1.record).await.unwrap_err();
    assert!(
        matches!(err, Error::Conflict(Conflict::AlreadyExists { .. })),
        "{err}"
    );

    let found = s
        .find_key(&KeyHash::of_secret(&k1.secret))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, k1.record);
    assert!(
        s.find_key(&KeyHash::of_secret("wrong"))
            .await
            .unwrap()
            .is_none()
    );

    let list = s.list_keys(t).await.unwrap();
    assert_eq!(list, vec![k1.record.clone(), k2.record.clone()]);

    // Another tenant cannot revoke our key.
    assert!(
        s.revoke_key(&tenant("other"), &k1.record.key_id)
            .await
            .unwrap_err()
            .is_not_found()
    );
    s.revoke_key(t, &k1.record.key_id).await.unwrap();
    assert!(s.find_key(&k1.record.hash).await.unwrap().unwrap().revoked);
    assert!(!s.find_key(&k2.record.hash).await.unwrap().unwrap().revoked);
    assert!(
        s.revoke_key(t, &KeyId::parse("nope").unwrap())
            .await
            .unwrap_err()
            .is_not_found()
    );

    // A storefront key is found by the hash derived from its public id, with its signing
    // key; it is listed beside the server keys.
    let sf = generate_storefront_key(t, Some("web".into()), t0() + chrono::Duration::seconds(2))
        .unwrap();
    s.create_key(&sf.record).await.unwrap();
    let found = s
        .find_key(&storefront_lookup_hash(&sf.record.key_id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.kind, KeyKind::Storefront);
    assert_eq!(
        found.signing_key.as_deref(),
        Some(sf.signing_secret.as_str())
    );
    assert_eq!(found, sf.record);
    assert_eq!(s.list_keys(t).await.unwrap().len(), 3);
}

pub async fn model_registry_and_live_pointer_cas(h: &Harness) {
    let t = &h.tenant;
    let s = &h.stores.records;
    for (v, m) in [("v1", 0), ("v2", 10), ("v3", 20)] {
        s.register_model(t, &model(v, m)).await.unwrap();
    }
    let dup = s.register_model(t, &model("v2", 99)).await.unwrap_err();
    assert!(matches!(
        dup,
        Error::Conflict(Conflict::AlreadyExists { .. })
    ));
    let list = s.list_models(t, 10).await.unwrap();
    assert_eq!(
        list.iter().map(|m| m.version.as_str()).collect::<Vec<_>>(),
        vec!["v3", "v2", "v1"]
    );
    assert_eq!(s.list_models(t, 2).await.unwrap().len(), 2);
    let v = |s: &str| ModelVersionId::parse(s).unwrap();
    assert_eq!(
        s.get_model(t, &v("v1")).await.unwrap().unwrap(),
        model("v1", 0)
    );
    s.set_model_status(
        t,
        &v("v2"),
        ModelStatus::Rejected,
        Some("ndcg below live".into()),
    )
    .await
    .unwrap();
    let m2 = s.get_model(t, &v("v2")).await.unwrap().unwrap();
    assert_eq!(
        (m2.status, m2.reason.as_deref()),
        (ModelStatus::Rejected, Some("ndcg below live"))
    );
    assert!(
        s.set_model_status(t, &v("v9"), ModelStatus::Live, None)
            .await
            .unwrap_err()
            .is_not_found()
    );

    assert!(s.live_pointer(t).await.unwrap().is_none());
    let p = s.swap_live_pointer(t, None, &v("v1")).await.unwrap();
    assert_eq!((p.version.as_str(), p.previous.as_ref()), ("v1", None));
    // Creating again with expected None loses: the pointer exists.
    let err = s.swap_live_pointer(t, None, &v("v3")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Conflict(Conflict::LiveModel { expected: None, actual: Some(a) }) if a == "v1"),
        "{err}"
    );
    // Stale expectation loses too.
    let err = s
        .swap_live_pointer(t, Some(&v("v2")), &v("v3"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(Conflict::LiveModel { .. })));
    // Unknown target.
    assert!(
        s.swap_live_pointer(t, Some(&v("v1")), &v("v9"))
            .await
            .unwrap_err()
            .is_not_found()
    );
    let p = s
        .swap_live_pointer(t, Some(&v("v1")), &v("v3"))
        .await
        .unwrap();
    assert_eq!(p.previous, Some(v("v1")));
    assert_eq!(s.live_pointer(t).await.unwrap().unwrap(), p);
    // Rollback uses the previous version.
    let back = s
        .swap_live_pointer(t, Some(&v("v3")), p.previous.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(
        (back.version.as_str(), back.previous),
        ("v1", Some(v("v3")))
    );
}

pub async fn live_pointer_cas_has_one_winner_under_contention(h: &Harness) {
    let t = &h.tenant;
    let s = &h.stores.records;
    for i in 0..8 {
        s.register_model(t, &model(&format!("c{i}"), i))
            .await
            .unwrap();
    }
    s.swap_live_pointer(t, None, &ModelVersionId::parse("c0").unwrap())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 1..8 {
        let s = Arc::clone(&h.stores.records);
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let from = ModelVersionId::parse("c0").unwrap();
            s.swap_live_pointer(
                &t,
                Some(&from),
                &ModelVersionId::parse(format!("c{i}")).unwrap(),
            )
            .await
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(p) => winners.push(p),
            Err(Error::Conflict(Conflict::LiveModel { .. })) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(
        s.live_pointer(t).await.unwrap().unwrap().version,
        winners[0].version
    );
}

pub async fn retrain_lock_lease_and_jobs(h: &Harness) {
    let t = &h.tenant;
    let s = &h.stores.records;
    let lease = Duration::from_secs(60);
    let a = s.acquire_lock(t, "worker-a", lease).await.unwrap();
    assert_eq!(a.owner, "worker-a");
    match s.acquire_lock(t, "worker-b", lease).await.unwrap_err() {
        Error::Conflict(Conflict::LockHeld { owner, until }) => {
            assert_eq!(owner, "worker-a");
            assert_eq!(until, a.until);
        }
        e => panic!("unexpected {e}"),
    }
    let renewed = s
        .renew_lock(t, "worker-a", Duration::from_secs(120))
        .await
        .unwrap();
    assert!(renewed.until > a.until);
    assert!(matches!(
        s.renew_lock(t, "worker-b", lease).await.unwrap_err(),
        Error::Conflict(Conflict::LockNotOwned { .. })
    ));
    assert!(matches!(
        s.release_lock(t, "worker-b").await.unwrap_err(),
        Error::Conflict(Conflict::LockNotOwned { .. })
    ));
    s.release_lock(t, "worker-a").await.unwrap();
    s.release_lock(t, "worker-a").await.unwrap(); // releasing an absent lock is fine
    // Other tenants have their own lock.
    s.acquire_lock(&tenant("other"), "worker-x", lease)
        .await
        .unwrap();

    // Expiry: a short lease lapses and someone else may take over.
    s.acquire_lock(t, "worker-b", Duration::from_millis(300))
        .await
        .unwrap();
    assert!(s.acquire_lock(t, "worker-c", lease).await.is_err());
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(matches!(
        s.renew_lock(t, "worker-b", lease).await.unwrap_err(),
        Error::Conflict(Conflict::LockNotOwned { .. })
    ));
    s.acquire_lock(t, "worker-c", lease).await.unwrap();
    // The old owner's release is refused now that someone else holds the lock.
    assert!(s.release_lock(t, "worker-b").await.is_err());

    // Jobs: create once; a retried invocation sees the existing record.
    let job = JobRecord {
        job_id: JobId::parse("job-1").unwrap(),
        status: JobStatus::Running,
        started_at: t0(),
        finished_at: None,
        message: None,
    };
    assert_eq!(s.create_job(t, &job).await.unwrap(), JobStart::Created);
    assert_eq!(
        s.create_job(t, &job).await.unwrap(),
        JobStart::Existing(job.clone())
    );
    let done = JobRecord {
        status: JobStatus::Succeeded,
        finished_at: Some(t0() + chrono::Duration::minutes(3)),
        message: Some("v7".into()),
        ..job.clone()
    };
    s.update_job(t, &done).await.unwrap();
    assert_eq!(s.get_job(t, &job.job_id).await.unwrap().unwrap(), done);
    let ghost = JobRecord {
        job_id: JobId::parse("ghost").unwrap(),
        ..job
    };
    assert!(s.update_job(t, &ghost).await.unwrap_err().is_not_found());
    assert!(s.get_job(t, &ghost.job_id).await.unwrap().is_none());
}

pub async fn blobs_put_get_head_list_delete(h: &Harness) {
    let t = &h.tenant;
    let b = &h.stores.blobs;
    let k = |s: &str| BlobKey::parse(s).unwrap();
    b.put(t, &k("models/v1/artifact.bin"), vec![1, 2, 3])
        .await
        .unwrap();
    b.put(t, &k("models/v2/artifact.bin"), vec![9; 1000])
        .await
        .unwrap();
    b.put(t, &k("exports/x.csv"), b"a,b".to_vec())
        .await
        .unwrap();
    b.put(&tenant("other"), &k("models/v1/artifact.bin"), vec![7])
        .await
        .unwrap();
    assert_eq!(
        b.get(t, &k("models/v1/artifact.bin")).await.unwrap(),
        vec![1, 2, 3]
    );
    b.put(t, &k("models/v1/artifact.bin"), vec![4, 5])
        .await
        .unwrap();
    assert_eq!(
        b.get(t, &k("models/v1/artifact.bin")).await.unwrap(),
        vec![4, 5]
    );
    assert_eq!(
        b.head(t, &k("models/v2/artifact.bin"))
            .await
            .unwrap()
            .unwrap()
            .size,
        1000
    );
    assert!(
        b.head(t, &k("models/v3/artifact.bin"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(b.get(t, &k("nope")).await.unwrap_err().is_not_found());
    // Empty, exactly one S3 part, and several parts with a short tail (S3 reads a blob in
    // 8 MiB ranges, several at once): every byte in order.
    let part = affinity_store::S3_PART_BYTES as usize;
    for (name, len) in [
        ("empty", 0),
        ("one-part", part),
        ("parts", 2 * part + 12_345),
    ] {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        b.put(t, &k(&format!("sizes/{name}")), data.clone())
            .await
            .unwrap();
        let got = b.get(t, &k(&format!("sizes/{name}"))).await.unwrap();
        assert!(got == data, "{name}: {} bytes back of {len}", got.len());
        b.delete(t, &k(&format!("sizes/{name}"))).await.unwrap();
    }
    let listed: Vec<(String, u64)> = b
        .list(t, "models/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.key.to_string(), m.size))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("models/v1/artifact.bin".to_string(), 2),
            ("models/v2/artifact.bin".to_string(), 1000)
        ]
    );
    assert_eq!(b.list(t, "").await.unwrap().len(), 3);
    assert!(b.list(t, "../").await.is_err());
    b.delete(t, &k("models/v1/artifact.bin")).await.unwrap();
    b.delete(t, &k("models/v1/artifact.bin")).await.unwrap();
    assert!(
        b.head(t, &k("models/v1/artifact.bin"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        b.get(&tenant("other"), &k("models/v1/artifact.bin"))
            .await
            .unwrap(),
        vec![7]
    );
}

const PURCHASES_CSV: &str = "order_id,line,customer_id,item_id,quantity,unit_price,currency,purchased_at\n\
o1,1,c1,sku-1,2,12.50,EUR,2024-05-01T10:00:00Z\n\
o1,2,c1,sku-2,1,3,EUR,2024-05-01 10:00:00\n\
o2,1,c2,sku-1,1,12.50,,2024-05-02\n\
o3,1,c3,sku-9,-4,1.00,EUR,2024-05-03\n\
o4,1,c3,sku-3,1,1.00,EUR,2024-05-04\n";

pub async fn import_is_all_or_nothing_unless_skipping(h: &Harness) {
    let t = &h.tenant;
    let s = &h.stores.records;
    let calls = AtomicU64::new(0);
    let progress = |n: u64| {
        calls.store(n, Ordering::Relaxed);
    };
    let err = import::import_purchases(
        import::Csv::new(PURCHASES_CSV.as_bytes(), "orders.csv"),
        s.as_ref(),
        t,
        ImportOptions::default(),
        &progress,
    )
    .await
    .unwrap_err();
    match &err {
        Error::BadRow(b) => {
            assert_eq!(
                (b.file.as_str(), b.line, b.field.as_str(), b.value.as_str()),
                ("orders.csv", 5, "quantity", "-4")
            );
        }
        e => panic!("unexpected {e}"),
    }
    assert!(
        err.to_string()
            .starts_with("orders.csv:5: field `quantity`"),
        "{err}"
    );
    assert_eq!(
        stored_count(h, t).await,
        0,
        "nothing may be written from a bad file"
    );
    assert_eq!(calls.load(Ordering::Relaxed), 0);

    let opts = ImportOptions {
        skip_bad_rows: true,
        batch_size: 2,
    };
    let report = import::import_purchases(
        import::Csv::new(PURCHASES_CSV.as_bytes(), "orders.csv"),
        s.as_ref(),
        t,
        opts,
        &progress,
    )
    .await
    .unwrap();
    assert_eq!(
        (
            report.rows_read,
            report.inserted,
            report.duplicates,
            report.conflicts
        ),
        (5, 4, 0, 0)
    );
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(
        (report.skipped[0].line, report.skipped[0].field.as_str()),
        (5, "quantity")
    );
    assert_eq!(calls.load(Ordering::Relaxed), 4);
    let p = s
        .get_purchase(t, &OrderId::parse("o1").unwrap(), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            p.quantity.get(),
            p.unit_price_minor,
            p.currency.map(|c| c.to_string())
        ),
        (2, 1250, Some("EUR".into()))
    );
    assert_eq!(
        s.get_purchase(t, &OrderId::parse("o2").unwrap(), 1)
            .await
            .unwrap()
            .unwrap()
            .currency,
        None
    );

    // Re-import: all duplicates; a changed row is a reported conflict with its line.
    let again = PURCHASES_CSV.replace("o4,1,c3,sku-3,1,1.00", "o4,1,c3,sku-3,1,2.00");
    let report = import::import_purchases(
        import::Csv::new(again.as_bytes(), "orders.csv"),
        s.as_ref(),
        t,
        opts,
        &progress,
    )
    .await
    .unwrap();
    assert_eq!(
        (report.inserted, report.duplicates, report.conflicts),
        (0, 3, 1)
    );
    assert_eq!(report.conflict_lines, vec![6]);
    assert_eq!(stored_count(h, t).await, 4);

    // A file path that does not exist is an input error.
    let missing = import::Csv::open(std::path::Path::new("/nonexistent/x.csv"));
    assert!(matches!(missing, Err(Error::Invalid { .. })));
}

pub async fn import_items_and_offers(h: &Harness) {
    let t = &h.tenant;
    let s = &h.stores.records;
    let noop = |_: u64| {};
    let dir = tempfile::tempdir().unwrap();
    let items_path = dir.path().join("items.csv");
    std::fs::write(
        &items_path,
        "item_id,title,category,price,currency,in_stock,created_at,repurchasable,attributes\n\
         sku-1,Red shoe,shoes,49.90,EUR,true,2024-01-01,no,\"{\"\"color\"\":\"\"red\"\"}\"\n\
         sku-2,Coffee,food,7,EUR,0,2024-02-01,yes,\n",
    )
    .unwrap();
    let report = import::import_items(
        import::Csv::open(&items_path).unwrap(),
        s.as_ref(),
        t,
        ImportOptions::default(),
        &noop,
    )
    .await
    .unwrap();
    assert_eq!((report.rows_read, report.inserted), (2, 2));
    let items = s.list_items(t).await.unwrap();
    assert_eq!(items[0].price_minor, 4990);
    assert_eq!(items[0].attributes, Some(json!({"color": "red"})));
    assert!(!items[1].in_stock && items[1].repurchasable);

    let bad = "item_id,title,attributes\nsku-3,x,[1]\n";
    let err = import::import_items(
        import::Csv::new(bad.as_bytes(), "items.csv"),
        s.as_ref(),
        t,
        ImportOptions::default(),
        &noop,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::BadRow(b) if b.line == 2 && b.field == "attributes"),
        "{err}"
    );
    assert_eq!(s.list_items(t).await.unwrap().len(), 2);

    let offers =
        "offer_id,status,document\nwelcome,active,\"{\"\"discount_pct\"\":10}\"\nold,archived,{}\n";
    let report = import::import_offers(
        import::Csv::new(offers.as_bytes(), "offers.csv"),
        s.as_ref(),
        t,
        ImportOptions::default(),
        &noop,
    )
    .await
    .unwrap();
    assert_eq!(report.inserted, 2);
    let list = s.list_offers(t).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].document, json!({"discount_pct": 10}));
    let bad = "offer_id,status,document\nx,bogus,{}\n";
    let err = import::import_offers(
        import::Csv::new(bad.as_bytes(), "offers.csv"),
        s.as_ref(),
        t,
        ImportOptions::default(),
        &noop,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::BadRow(b) if b.field == "status" && b.value == "bogus"),
        "{err}"
    );
}
