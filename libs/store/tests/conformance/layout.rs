//! The customers table's key layout on DynamoDB (moto): layout 1 kept every customer of a
//! tenant under one partition key (the tenant), layout 2 gives each customer its own
//! (`<tenant>#<customer>`). Rows of layout 1 stay readable, writable and erasable until
//! `rekey_customers` moves them; the move is idempotent and leaves a marker.

use affinity_store::dynamo::schema::TableId;
use affinity_store::*;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{TimeZone, Utc};

use crate::harness::{moto_url, unique};

/// A row as layout 1 wrote it (what an older deployment left in the table).
async fn put_layout_1(
    client: &aws_sdk_dynamodb::Client,
    store: &DynamoStore,
    customer: &str,
    opted_out: bool,
) {
    client
        .put_item()
        .table_name(store.table_name(TableId::Customers))
        .item("pk", AttributeValue::S("default".into()))
        .item("sk", AttributeValue::S(customer.into()))
        .item("opt_out", AttributeValue::Bool(opted_out))
        .item("updated_at", AttributeValue::N("1714552200000".into()))
        .send()
        .await
        .unwrap();
}

/// The partition keys under which `customer` has a row.
async fn stored_under(
    client: &aws_sdk_dynamodb::Client,
    store: &DynamoStore,
    customer: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for pk in ["default".to_string(), format!("default#{customer}")] {
        let got = client
            .get_item()
            .table_name(store.table_name(TableId::Customers))
            .key("pk", AttributeValue::S(pk.clone()))
            .key("sk", AttributeValue::S(customer.into()))
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        if got.item().is_some() {
            out.push(pk);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_of_the_old_layout_are_read_written_erased_and_moved() {
    let sdk = peer_sdk_config(&moto_url(), 3).await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let prefix = format!("{}-", unique("layout"));
    let store = DynamoStore::new(&sdk, DynamoOptions::new(prefix.clone())).unwrap();
    store.create_tables().await.unwrap();
    let t = TenantId::default();
    let id = |c: &str| CustomerId::parse(c).unwrap();

    for (c, out) in [("old-out", true), ("old-in", false), ("old-erased", true)] {
        put_layout_1(&client, &store, c, out).await;
    }
    // Read through the old layout before the move.
    let got = store
        .get_customer(&t, &id("old-out"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.consent, Consent::NONE);
    // A write lands in the new layout and takes the old row away.
    store
        .put_customer(
            &t,
            &CustomerRecord {
                customer_id: id("old-in"),
                consent: Consent {
                    personalization: true,
                    marketing: false,
                },
                tier_override: None,
                updated_at: Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        stored_under(&client, &store, "old-in").await,
        ["default#old-in"]
    );
    // An erasure removes the old-layout row too.
    let erased = store
        .delete_customer_data(&t, &id("old-erased"))
        .await
        .unwrap();
    assert_eq!(erased.customers, 1);
    assert!(stored_under(&client, &store, "old-erased").await.is_empty());

    // The move: one row left in the old layout, moved; the rest stays as it is.
    assert_eq!(store.rekey_customers(&t).await.unwrap(), 1);
    assert_eq!(
        stored_under(&client, &store, "old-out").await,
        ["default#old-out"]
    );
    assert_eq!(store.rekey_customers(&t).await.unwrap(), 0);
    // A fresh store (another instance) reads the marker: no look at the old layout.
    let other = DynamoStore::new(&sdk, DynamoOptions::new(prefix)).unwrap();
    let got = other
        .get_customer(&t, &id("old-out"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.consent, Consent::NONE);
    let got = other
        .get_customer(&t, &id("old-in"))
        .await
        .unwrap()
        .unwrap();
    assert!(got.consent.personalization && !got.consent.marketing);
    assert!(
        other
            .get_customer(&t, &id("never"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(other.rekey_customers(&t).await.unwrap(), 0);
    // Another tenant's rows are not touched by this tenant's move.
    let t2 = TenantId::parse("other-shop").unwrap();
    assert!(
        other
            .get_customer(&t2, &id("old-out"))
            .await
            .unwrap()
            .is_none()
    );
    store.delete_tables().await.unwrap();
}
