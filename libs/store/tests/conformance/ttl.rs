//! TTL on DynamoDB (moto): the tables the schema marks with a TTL attribute get TTL enabled,
//! and offer events carry `expires_at` = event time + retention only when a retention is set.

use std::time::Duration;

use affinity_store::dynamo::schema::{self, TableId};
use affinity_store::*;
use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};
use chrono::{TimeZone, Utc};

use crate::harness::{moto_url, unique};

fn event(id: &str) -> OfferEvent {
    OfferEvent {
        event_id: EventId::parse(id).unwrap(),
        customer_id: CustomerId::parse("c1").unwrap(),
        offer_id: OfferId::parse("o1").unwrap(),
        kind: OfferEventKind::Shown,
        channel: Channel::parse("email").unwrap(),
        recommendation_id: None,
        at: Utc.with_ymd_and_hms(2024, 5, 1, 8, 30, 0).unwrap(),
    }
}

/// The raw `expires_at` of a stored offer event (None when the row has no TTL attribute).
async fn stored_expiry(
    client: &aws_sdk_dynamodb::Client,
    store: &DynamoStore,
    id: &str,
) -> Option<i64> {
    let out = client
        .get_item()
        .table_name(store.table_name(TableId::OfferEvents))
        .key("pk", AttributeValue::S(format!("default#{id}")))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    let item = out.item().expect("event row stored");
    item.get(schema::attr::EXPIRES_AT)
        .map(|v| v.as_n().unwrap().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_events_carry_a_ttl_only_with_a_retention_and_tables_have_ttl_enabled() {
    let sdk = peer_sdk_config(&moto_url(), 3).await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let prefix = format!("{}-", unique("ttl"));
    let retention = Duration::from_secs(400 * 86_400);
    let expiring = DynamoStore::new(
        &sdk,
        DynamoOptions {
            offer_event_retention: Some(retention),
            ..DynamoOptions::new(prefix.clone())
        },
    )
    .unwrap();
    let keeping = DynamoStore::new(&sdk, DynamoOptions::new(prefix)).unwrap();
    expiring.create_tables().await.unwrap();

    // create_tables enables TTL exactly where the schema names a TTL attribute.
    for spec in schema::tables() {
        let d = client
            .describe_time_to_live()
            .table_name(expiring.table_name(spec.id))
            .send()
            .await
            .unwrap();
        let desc = d.time_to_live_description();
        let enabled = desc
            .and_then(|t| t.time_to_live_status())
            .is_some_and(|s| *s == TimeToLiveStatus::Enabled);
        assert_eq!(enabled, spec.ttl_attribute.is_some(), "{}", spec.suffix);
        if let Some(attr) = spec.ttl_attribute {
            assert_eq!(desc.and_then(|t| t.attribute_name()), Some(attr));
        }
    }

    let t = TenantId::default();
    let out = expiring
        .put_offer_events(&t, &[event("e-expiring")])
        .await
        .unwrap();
    assert_eq!(out, vec![WriteOutcome::Inserted]);
    let out = keeping
        .put_offer_events(&t, &[event("e-kept")])
        .await
        .unwrap();
    assert_eq!(out, vec![WriteOutcome::Inserted]);

    let at = event("x").at.timestamp();
    assert_eq!(
        stored_expiry(&client, &expiring, "e-expiring").await,
        Some(at + 400 * 86_400)
    );
    assert_eq!(stored_expiry(&client, &keeping, "e-kept").await, None);
    // Both read back as the same event through the trait.
    let c = CustomerId::parse("c1").unwrap();
    let seen = keeping.events_by_customer(&t, &c, None, 10).await.unwrap();
    assert_eq!(seen.len(), 2);

    expiring.delete_tables().await.unwrap();
}
