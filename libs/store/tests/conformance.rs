//! The one integration-test binary of affinity-store.
//!
//! `suite` holds backend-agnostic checks; the `conformance!` macro runs each of them unchanged
//! against the embedded backend (SQLite + folder, fresh temp dir per test) and against
//! DynamoDB + S3 served by moto (`AFFINITY_TEST_MOTO_URL`, unique table prefix and bucket per
//! test). `faults` drives the DynamoDB backend through a fault-injecting proxy; `ttl` checks
//! the TTL attributes DynamoDB expires rows by; `layout` the move of customer rows to one
//! partition per customer.

#![allow(clippy::unwrap_used)]

#[path = "conformance/fault_proxy.rs"]
mod fault_proxy;
#[path = "conformance/faults.rs"]
mod faults;
#[path = "conformance/harness.rs"]
mod harness;
#[path = "conformance/layout.rs"]
mod layout;
#[path = "conformance/suite.rs"]
mod suite;
#[path = "conformance/ttl.rs"]
mod ttl;

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = crate::harness::Harness::embedded().await;
                    crate::suite::$name(&h).await;
                }
            )*
        }
        mod moto {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = crate::harness::Harness::moto().await;
                    crate::suite::$name(&h).await;
                    h.teardown().await;
                }
            )*
        }
    };
}

conformance!(
    purchases_are_idempotent_and_report_per_row,
    purchase_history_is_newest_first_and_bounded,
    training_scan_returns_every_purchase_of_the_tenant,
    tenants_are_isolated,
    concurrent_duplicate_writers_store_each_row_once,
    catalog_upsert_get_list,
    customer_flags_and_privacy_deletion,
    offers_and_offer_events,
    api_keys_hashed_lookup_revoke_list,
    model_registry_and_live_pointer_cas,
    live_pointer_cas_has_one_winner_under_contention,
    retrain_lock_lease_and_jobs,
    blobs_put_get_head_list_delete,
    import_is_all_or_nothing_unless_skipping,
    import_items_and_offers,
);
