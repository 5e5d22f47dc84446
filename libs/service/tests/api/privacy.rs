//! Customers' data rights through the router: consent per use obeyed by every route, and
//! erasure that leaves the customer unknown to every route, on this instance and another.

use affinity_service::http::routes;
use affinity_service::http::state::AppState;
use affinity_service::settings::Settings;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::fixture::{App, error_code, get_from};

async fn consent(app: &App, customer: &str, personalization: bool, marketing: bool) {
    let body = json!({"personalization": personalization, "marketing": marketing}).to_string();
    let (s, b) = app
        .call(
            "PUT",
            &format!("/v1/customers/{customer}/consent"),
            Some(&app.keys.all),
            Some(&body),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["consent"]["personalization"], personalization);
    assert_eq!(b["consent"]["marketing"], marketing);
}

/// `DELETE /v1/customers/{customer}` with every scope; the 200 answer.
async fn erase(app: &App, customer: &str) -> Value {
    let (s, b) = app
        .call(
            "DELETE",
            &format!("/v1/customers/{customer}"),
            Some(&app.keys.all),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b
}

fn offer_ids(b: &Value) -> Vec<String> {
    b["offers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["offer_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn audience_ids(app: &App) -> Vec<String> {
    let item = app.shop.example_item.clone();
    let (s, b) = app
        .get(&format!("/v1/items/{item}/audience?limit=1000"))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["customer_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn dry_run_customers(app: &App) -> u64 {
    let (s, b) = app
        .post(
            "/v1/offers/dry-run",
            &json!({"offer_id": "win-back", "channel": "email"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["customers"].as_u64().unwrap()
}

#[tokio::test]
async fn consent_per_use_is_obeyed_by_every_route() {
    let app = App::new().await;
    let lapsed = app.shop.lapsed_customer.clone();
    let steady = app.shop.example_customer.clone();
    let offers_uri = format!("/v1/customers/{lapsed}/offers?channel=email&limit=5");
    let (_, before) = app.get(&offers_uri).await;
    assert_eq!(offer_ids(&before)[0], "win-back", "{before}");
    let examined = dry_run_customers(&app).await;
    assert!(audience_ids(&app).await.contains(&steady));

    // No personalization: popular items, flagged; offers still come (marketing consent).
    consent(&app, &steady, false, true).await;
    let (_, r) = app
        .get(&format!("/v1/customers/{steady}/recommendations?k=5"))
        .await;
    assert_eq!(r["personalized"], false, "{r}");
    assert_eq!(r["fallback"], "opted_out", "{r}");
    assert_eq!(r["items"].as_array().unwrap().len(), 5);
    let (_, p) = app.get(&format!("/v1/customers/{steady}/profile")).await;
    assert_eq!(
        p["consent"],
        json!({"personalization": false, "marketing": true})
    );

    // No marketing: no offer, not in the audience, the batch or the dry-run count.
    consent(&app, &lapsed, true, false).await;
    let (s, b) = app.get(&offers_uri).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(offer_ids(&b).is_empty(), "{b}");
    let (s, b) = app
        .post(
            "/v1/offers/batch",
            &json!({"customer_ids": [lapsed, steady], "channel": "email"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(offer_ids(&b["results"][0]).is_empty(), "{b}");
    assert_eq!(dry_run_customers(&app).await, examined - 1);
    consent(&app, &steady, true, false).await;
    assert!(!audience_ids(&app).await.contains(&steady));
    assert_eq!(dry_run_customers(&app).await, examined - 2);

    // Consent given again: everything back.
    consent(&app, &lapsed, true, true).await;
    let (_, b) = app.get(&offers_uri).await;
    assert_eq!(offer_ids(&b), offer_ids(&before));

    // The body is exactly the two booleans.
    for (body, code) in [
        (json!({"personalization": true}), "invalid_body"),
        (
            json!({"personalization": true, "marketing": "yes"}),
            "invalid_body",
        ),
        (
            json!({"personalization": true, "marketing": true, "extra": 1}),
            "invalid_body",
        ),
    ] {
        let (s, b) = app
            .call(
                "PUT",
                &format!("/v1/customers/{lapsed}/consent"),
                Some(&app.keys.all),
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(error_code(s, &b), code, "{body}");
    }
}

#[tokio::test]
async fn erasure_leaves_the_customer_unknown_to_every_route_and_is_idempotent() {
    let app = App::new().await;
    let gone = app.shop.lapsed_customer.clone();
    // Another instance over the same stores, with the customer's insight already loaded.
    let other = routes::router(AppState::new(app.stores.clone(), &Settings::for_tests()));
    let profile_uri = format!("/v1/customers/{gone}/profile");
    let (s, p) = get_from(&other, &app.keys.all, &profile_uri).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(p["known"], true, "{p}");

    let (s, b) = app
        .post(
            "/v1/offers/events",
            &json!({"events": [{"event_id": "erase-e1", "customer_id": gone,
                "offer_id": "win-back", "kind": "shown", "channel": "email"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    consent(&app, &gone, true, true).await;
    let examined = dry_run_customers(&app).await;
    assert!(audience_ids(&app).await.contains(&gone));

    let erased = erase(&app, &gone).await;
    assert!(erased["purchases"].as_u64().unwrap() > 0, "{erased}");
    assert_eq!(erased["offer_events"], 1, "{erased}");
    assert_eq!(erased["customer_records"], 1, "{erased}");
    assert_eq!(erased["insight_snapshots"], 1, "{erased}");
    assert!(erased["audit_id"].as_str().unwrap().starts_with("er_"));

    // Unknown to every route, here and on the other instance: as a never-seen id.
    let stranger = "never-seen-customer";
    for router in [&app.router, &other] {
        let (_, p) = get_from(router, &app.keys.all, &profile_uri).await;
        let (_, q) = get_from(
            router,
            &app.keys.all,
            &format!("/v1/customers/{stranger}/profile"),
        )
        .await;
        assert_eq!(p["known"], false, "{p}");
        for field in [
            "total_spend",
            "frequency",
            "tier",
            "clv",
            "churn_risk",
            "rfm",
            "due",
        ] {
            assert_eq!(p[field], q[field], "{field}: {p} vs {q}");
        }
        let (_, o) = get_from(
            router,
            &app.keys.all,
            &format!("/v1/customers/{gone}/offers?channel=email&limit=5"),
        )
        .await;
        let (_, n) = get_from(
            router,
            &app.keys.all,
            &format!("/v1/customers/{stranger}/offers?channel=email&limit=5"),
        )
        .await;
        assert_eq!(offer_ids(&o), offer_ids(&n), "{o} vs {n}");
        let (_, r) = get_from(
            router,
            &app.keys.all,
            &format!("/v1/customers/{gone}/recommendations?k=5"),
        )
        .await;
        assert_eq!(r["personalized"], false, "{r}");
        assert_eq!(r["fallback"], "unknown_customer", "{r}");
    }
    assert!(!audience_ids(&app).await.contains(&gone));
    assert_eq!(dry_run_customers(&app).await, examined - 1);
    let serving = crate::fixture::serving(&app).await;
    let snapshot = crate::fixture::snapshot(&app, &serving).await;
    assert!(snapshot.profiles.get(&gone).is_none());

    // A repeat: the same success, nothing left to remove.
    let again = erase(&app, &gone).await;
    for kind in [
        "purchases",
        "offer_events",
        "customer_records",
        "insight_snapshots",
    ] {
        assert_eq!(again[kind], 0, "{kind}: {again}");
    }
    // Both requests left an audit record, keyed by a hash, never the id.
    let audits = app
        .stores
        .records
        .erasures_since(&app.tenant, chrono::DateTime::UNIX_EPOCH)
        .await
        .unwrap();
    assert_eq!(audits.len(), 2);
    for a in &audits {
        assert_eq!(a.customer_hash.len(), 64);
        assert!(!a.customer_hash.contains(&gone));
        assert!(a.actor.starts_with("key:"), "{}", a.actor);
    }
    assert_eq!(audits[0].customer_hash, audits[1].customer_hash);
}

/// A retrain that read a customer's purchases just before an erasure deleted them, and
/// stores its insight after the erasure's rewrite pass, must not bring the customer back:
/// it matches the erasure audit records (keyed hash) once its snapshot is stored.
#[tokio::test]
async fn insight_written_after_an_erasure_leaves_the_erased_customer_out() {
    let app = App::new().await;
    let gone = app.shop.lapsed_customer.clone();
    let serving = crate::fixture::serving(&app).await;
    // The erasure's audit record, as the API writes it, while the rows are still there (the
    // retrain read them before they were deleted).
    let hasher = affinity_service::customer_data::CustomerHasher::new(Some(vec![7; 32]));
    app.stores
        .records
        .put_erasure_audit(
            &app.tenant,
            &affinity_store::ErasureAudit {
                audit_id: "er_race".into(),
                customer_hash: hasher.full(&gone),
                actor: "key:test".into(),
                at: chrono::Utc::now(),
                counts: affinity_store::DeletionCounts::default(),
            },
        )
        .await
        .unwrap();
    let written =
        affinity_service::crm::write_snapshot(&app.stores, &app.tenant, &serving.model, &hasher)
            .await
            .unwrap();
    assert!(written.profiles.get(&gone).is_none());
    let stored = affinity_service::crm::read_snapshot(
        &app.stores,
        &app.tenant,
        serving.version.version.as_str(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(stored.profiles.get(&gone).is_none());
    // Everyone else is still there.
    assert!(stored.profiles.get(&app.shop.example_customer).is_some());
}
