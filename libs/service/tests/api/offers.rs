//! Offers and customer insight through the router on the demo shop: caps and cooldowns
//! across channels, eligibility windows, retention over discount for a churned valuable
//! customer, dry run against a brute-force count, batch against one-at-a-time, and the
//! 4xx paths.

use std::collections::BTreeMap;

use affinity_model::crm::offers::{EngineConfig, OfferRequest};
use affinity_service::crm;
use affinity_store::CustomerId;
use axum::http::StatusCode;
use chrono::{Duration, Utc};
use serde_json::{Value, json};

use crate::fixture::{App, error_code};

async fn create(app: &App, id: &str, document: Value) {
    let (s, b) = app
        .post("/v1/offers", &json!({"offer_id": id, "document": document}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

async fn offer_ids(app: &App, customer: &str, channel: &str) -> Vec<String> {
    let (s, b) = app
        .get(&format!(
            "/v1/customers/{customer}/offers?channel={channel}&limit=20&allow_same_category=true"
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["offers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["offer_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn event(
    app: &App,
    id: &str,
    customer: &str,
    offer: &str,
    kind: &str,
    channel: &str,
    at: chrono::DateTime<Utc>,
) -> Value {
    let (s, b) = app
        .post(
            "/v1/offers/events",
            &json!({"events": [{"event_id": id, "customer_id": customer, "offer_id": offer,
                                "kind": kind, "channel": channel, "recommendation_id": "rec-1",
                                "at": at.to_rfc3339()}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b
}

/// A store-wide offer so valuable that every customer gets it unless a rule says no.
fn big(extra: Value) -> Value {
    let mut d = json!({"kind": "discount", "value": 1000.0, "cost": 0.01});
    for (k, v) in extra.as_object().unwrap() {
        d[k] = v.clone();
    }
    d
}

#[tokio::test]
async fn caps_and_cooldowns_hold_across_channels() {
    let app = App::new().await;
    let c = app.shop.example_customer.clone();
    create(&app, "cool", big(json!({"caps": {"cooldown_days": 7}}))).await;
    create(
        &app,
        "capped",
        big(json!({"caps": {"max_per_customer": 1}})),
    )
    .await;
    assert!(
        offer_ids(&app, &c, "email")
            .await
            .contains(&"cool".to_owned())
    );
    assert!(
        offer_ids(&app, &c, "email")
            .await
            .contains(&"capped".to_owned())
    );

    // Shown on the web an hour ago: the email channel must not send it within the cooldown.
    let now = Utc::now();
    event(
        &app,
        "e1",
        &c,
        "cool",
        "shown",
        "web",
        now - Duration::hours(1),
    )
    .await;
    let got = offer_ids(&app, &c, "email").await;
    assert!(!got.contains(&"cool".to_owned()), "{got:?}");
    // The same event again is a duplicate, not a second contact.
    let b = event(
        &app,
        "e1",
        &c,
        "cool",
        "shown",
        "web",
        now - Duration::hours(1),
    )
    .await;
    assert_eq!(b["duplicates"], 1, "{b}");

    // One contact allowed, made on the app: no channel may show it again, ever.
    event(
        &app,
        "e2",
        &c,
        "capped",
        "declined",
        "app",
        now - Duration::days(60),
    )
    .await;
    for ch in ["email", "web", "app"] {
        assert!(
            !offer_ids(&app, &c, ch).await.contains(&"capped".to_owned()),
            "{ch}"
        );
    }

    // A contact older than the cooldown no longer blocks.
    let other = "cust-00001";
    event(
        &app,
        "e3",
        other,
        "cool",
        "shown",
        "web",
        now - Duration::days(8),
    )
    .await;
    assert!(
        offer_ids(&app, other, "email")
            .await
            .contains(&"cool".to_owned())
    );

    // Channel eligibility: an email-only offer is not shown on the web.
    create(
        &app,
        "email-only",
        big(json!({"eligibility": {"channels": ["email"]}})),
    )
    .await;
    assert!(
        offer_ids(&app, &c, "email")
            .await
            .contains(&"email-only".to_owned())
    );
    assert!(
        !offer_ids(&app, &c, "web")
            .await
            .contains(&"email-only".to_owned())
    );

    // The report counts the events by tier.
    let (s, b) = app.get("/v1/offers/cool/report").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["total"]["shown"], 2, "{b}");
    let by_tier: u64 = b["by_tier"]
        .as_object()
        .unwrap()
        .values()
        .map(|r| r["shown"].as_u64().unwrap())
        .sum();
    assert_eq!(by_tier, 2);
    let (s, b) = app.get("/v1/offers/capped/report").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["total"]["declined"], 1, "{b}");
}

#[tokio::test]
async fn eligibility_windows_open_and_close() {
    let app = App::new().await;
    let c = app.shop.example_customer.clone();
    let now = Utc::now();
    let t = |d: i64| (now + Duration::days(d)).to_rfc3339();
    create(
        &app,
        "later",
        big(json!({"eligibility": {"start": t(1), "end": t(10)}})),
    )
    .await;
    create(
        &app,
        "over",
        big(json!({"eligibility": {"start": t(-10), "end": t(-1)}})),
    )
    .await;
    create(
        &app,
        "open",
        big(json!({"eligibility": {"start": t(-1), "end": t(1)}})),
    )
    .await;
    let got = offer_ids(&app, &c, "web").await;
    assert!(got.contains(&"open".to_owned()), "{got:?}");
    assert!(!got.contains(&"later".to_owned()), "{got:?}");
    assert!(!got.contains(&"over".to_owned()), "{got:?}");
    // A dry run at a time inside the future window finds customers; now it finds none.
    let (s, b) = app
        .post(
            "/v1/offers/dry-run",
            &json!({"offer_id": "later", "channel": "web", "at": t(2)}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b["eligible"].as_u64().unwrap() > 0, "{b}");
    let (_, b) = app
        .post(
            "/v1/offers/dry-run",
            &json!({"offer_id": "later", "channel": "web"}),
        )
        .await;
    assert_eq!(b["eligible"], 0, "{b}");
}

#[tokio::test]
async fn a_churned_valuable_customer_gets_the_retention_offer_over_a_discount() {
    let app = App::new().await;
    let c = app.shop.lapsed_customer.clone();
    let (s, p) = app.get(&format!("/v1/customers/{c}/profile")).await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["tier"], "gold", "{p}");
    assert!(p["churn_risk"].as_f64().unwrap() > 0.5, "{p}");
    assert!(p["clv"].as_f64().is_some(), "{p}");
    assert_eq!(p["rfm"]["code"].as_str().unwrap().len(), 3);
    let (s, b) = app
        .get(&format!(
            "/v1/customers/{c}/offers?channel=email&limit=20&allow_same_category=true"
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let offers = b["offers"].as_array().unwrap();
    assert_eq!(offers[0]["offer_id"], "win-back", "{b}");
    assert_eq!(offers[0]["reasons"]["kind"], "retention");
    assert_eq!(offers[0]["reasons"]["tier"], "gold");
    assert!(offers[0]["reasons"]["retained_value"].as_f64().unwrap() > 0.0);
    assert!(
        b["recommendation_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    // A discount was eligible with a positive expected value, and ranked below it.
    let discount = offers
        .iter()
        .position(|o| o["reasons"]["kind"] == "discount")
        .unwrap_or_else(|| panic!("no discount competed: {b}"));
    assert!(discount > 0);
    assert!(offers[discount]["expected_net_value"].as_f64().unwrap() > 0.0);
    // An active valuable customer is not offered the win-back.
    let (_, active) = app.get("/v1/customers/cust-00000/profile").await;
    if active["churn_risk"].as_f64().unwrap_or(0.0) < 0.5 {
        let got = offer_ids(&app, "cust-00000", "email").await;
        assert!(!got.contains(&"win-back".to_owned()), "{got:?}");
    }
}

#[tokio::test]
async fn dry_run_counts_equal_a_brute_force_count() {
    let app = App::new().await;
    for offer in ["coffee-10", "win-back", "double-points"] {
        let (s, d) = app
            .post(
                "/v1/offers/dry-run",
                &json!({"offer_id": offer, "channel": "web"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{d}");
        let now = Utc::now().timestamp();
        // Brute force: every customer read on their own, eligibility asked of the engine,
        // first offer asked of the HTTP route.
        let serving = crate::fixture::serving(&app).await;
        let snapshot = crate::fixture::snapshot(&app, &serving).await;
        let records = app.stores.records.as_ref();
        let engine = crm::offer_engine(
            records,
            &app.tenant,
            &serving.model,
            &snapshot,
            EngineConfig::default(),
        )
        .await
        .unwrap();
        let idx = engine.offer_index(offer).unwrap();
        let req = OfferRequest {
            channel: "web".into(),
            now,
            k: 1,
            allow_same_category: false,
        };
        let mut eligible: BTreeMap<String, u64> = BTreeMap::new();
        let mut first: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..app.shop.customers {
            let id = format!("cust-{i:05}");
            let data = crm::read_customer(
                records,
                &app.tenant,
                &serving.model,
                &snapshot,
                &CustomerId::parse(id.clone()).unwrap(),
            )
            .await
            .unwrap();
            if engine.ineligibility(idx, &data.view(), &req).is_none() {
                *eligible.entry(data.profile.tier.clone()).or_default() += 1;
            }
            let (_, b) = app
                .get(&format!("/v1/customers/{id}/offers?channel=web&limit=1"))
                .await;
            if b["offers"][0]["offer_id"] == offer {
                *first.entry(data.profile.tier.clone()).or_default() += 1;
            }
        }
        let counts = |v: &Value| -> BTreeMap<String, u64> {
            v.as_object()
                .unwrap()
                .iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
                .collect()
        };
        assert_eq!(counts(&d["eligible_by_tier"]), eligible, "{offer}: {d}");
        assert_eq!(counts(&d["first_by_tier"]), first, "{offer}: {d}");
        assert_eq!(
            d["eligible"].as_u64().unwrap(),
            eligible.values().sum::<u64>()
        );
        assert_eq!(d["first"].as_u64().unwrap(), first.values().sum::<u64>());
        assert_eq!(d["customers"].as_u64().unwrap(), app.shop.customers as u64);
    }
    // A draft with the same rules as a live offer is eligible for the same customers.
    let (_, live) = app.get("/v1/offers/coffee-10").await;
    let (s, draft) = app
        .post(
            "/v1/offers/dry-run",
            &json!({"document": live["document"], "channel": "web"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{draft}");
    let (_, existing) = app
        .post(
            "/v1/offers/dry-run",
            &json!({"offer_id": "coffee-10", "channel": "web"}),
        )
        .await;
    assert_eq!(draft["eligible_by_tier"], existing["eligible_by_tier"]);
    assert!(draft["offer_id"].is_null());
}

#[tokio::test]
async fn batch_answers_equal_one_at_a_time() {
    let app = App::new().await;
    let mut ids: Vec<String> = (0..60).map(|i| format!("cust-{:05}", i * 6)).collect();
    ids.push("nobody-yet".into());
    ids.push(app.shop.lapsed_customer.clone());
    app.post(
        "/v1/offers/events",
        &json!({"events": [{"event_id": "b1", "customer_id": "cust-00006",
        "offer_id": "coffee-10", "kind": "shown", "channel": "web"}]}),
    )
    .await;
    let (s, b) = app
        .post(
            "/v1/offers/batch",
            &json!({"customer_ids": ids, "channel": "email", "limit": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let results = b["results"].as_array().unwrap();
    assert_eq!(results.len(), ids.len());
    let mut nonempty = 0;
    for (id, r) in ids.iter().zip(results) {
        assert_eq!(r["customer_id"], id.as_str());
        let (_, one) = app
            .get(&format!("/v1/customers/{id}/offers?channel=email&limit=3"))
            .await;
        assert_eq!(one["model_version"], b["model_version"]);
        assert_eq!(r["offers"], one["offers"], "{id}");
        nonempty += usize::from(!r["offers"].as_array().unwrap().is_empty());
    }
    assert!(nonempty > 10, "{nonempty} customers got offers");
}

#[tokio::test]
async fn audience_and_profile_answer_from_the_live_model() {
    let app = App::new().await;
    let item = app.shop.example_item.clone();
    let (s, b) = app
        .get(&format!("/v1/items/{item}/audience?limit=25"))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let members = b["customers"].as_array().unwrap();
    assert_eq!(members.len(), 25);
    assert!(b["eligible"].as_u64().unwrap() >= 25);
    let scores: Vec<f64> = members
        .iter()
        .map(|m| m["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    let (s, b) = app.get("/v1/items/no-such-item/audience").await;
    assert_eq!(error_code(s, &b), "not_found");
    // A customer with no purchase gets newcomer figures, not an error.
    let (s, p) = app.get("/v1/customers/brand-new/profile").await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["known"], false);
    // The recommend scope (a storefront's) reads neither profiles nor offers: the profile
    // has a scope of its own.
    let k = app.keys.recommend.clone();
    let c = app.shop.example_customer.clone();
    let (s, b) = app
        .call("GET", &format!("/v1/customers/{c}/profile"), Some(&k), None)
        .await;
    assert_eq!(error_code(s, &b), "insufficient_scope");
    let profiles = app
        .keys
        .by_scope
        .iter()
        .find(|(scope, _)| *scope == affinity_store::Scope::ProfilesRead)
        .map(|(_, k)| k.clone())
        .unwrap();
    let (s, _) = app
        .call(
            "GET",
            &format!("/v1/customers/{c}/profile"),
            Some(&profiles),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = app
        .call(
            "GET",
            &format!("/v1/customers/{c}/offers?channel=web"),
            Some(&k),
            None,
        )
        .await;
    assert_eq!(error_code(s, &b), "insufficient_scope");
}

#[tokio::test]
async fn offers_crud_and_client_errors() {
    let app = App::new().await;
    let (s, b) = app.get("/v1/offers").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["offers"].as_array().unwrap().len(), app.shop.offers.len());
    create(
        &app,
        "spring",
        json!({"kind": "discount", "categories": ["Coffee"], "value": 5}),
    )
    .await;
    let (s, b) = app.get("/v1/offers/spring").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["status"], "active");
    let (s, b) = app
        .call(
            "PUT",
            "/v1/offers/spring",
            Some(&app.keys.all),
            Some(r#"{"status": "paused"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["status"], "paused");
    assert_eq!(b["document"]["value"], 5);
    // A paused offer is not served.
    let c = app.shop.example_customer.clone();
    assert!(
        !offer_ids(&app, &c, "web")
            .await
            .contains(&"spring".to_owned())
    );

    // Unknown offer: 404 on read, update and report.
    let (s, b) = app.get("/v1/offers/nope").await;
    assert_eq!(error_code(s, &b), "not_found");
    let (s, b) = app
        .call(
            "PUT",
            "/v1/offers/nope",
            Some(&app.keys.all),
            Some(r#"{"status": "paused"}"#),
        )
        .await;
    assert_eq!(error_code(s, &b), "not_found");
    let (s, b) = app.get("/v1/offers/nope/report").await;
    assert_eq!(error_code(s, &b), "not_found");
    let (s, b) = app
        .post("/v1/offers/dry-run", &json!({"offer_id": "nope"}))
        .await;
    assert_eq!(error_code(s, &b), "not_found");

    // Bad offers: refused with the field named.
    let bad = [
        (json!({"kind": "coupon", "value": 1}), "document.kind"),
        (json!({"kind": "discount", "value": -1}), "document.value"),
        (
            json!({"kind": "bundle", "items": ["a"], "value": 1}),
            "document.items",
        ),
        (
            json!({"kind": "discount", "value": 1, "eligibility": {"start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}}),
            "document.eligibility.end",
        ),
        (
            json!({"kind": "discount", "value": 1, "caps": {"cooldown_days": -3}}),
            "document.caps.cooldown_days",
        ),
        (
            json!({"kind": "discount", "value": 1, "colour": "red"}),
            "document",
        ),
    ];
    for (doc, field) in bad {
        let (s, b) = app
            .post("/v1/offers", &json!({"offer_id": "bad", "document": doc}))
            .await;
        let code = error_code(s, &b);
        assert!(
            s == StatusCode::BAD_REQUEST || s == StatusCode::UNPROCESSABLE_ENTITY,
            "{s}"
        );
        assert_eq!(code, "invalid_field", "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(field),
            "{field}: {b}"
        );
    }
    let (s, b) = app
        .call(
            "PUT",
            "/v1/offers/spring",
            Some(&app.keys.all),
            Some(r#"{"document": {"kind": "retention"}}"#),
        )
        .await;
    assert!(
        error_code(s, &b) == "invalid_field"
            && b["error"]["message"].as_str().unwrap().contains("value"),
        "{b}"
    );
    let (s, b) = app
        .post(
            "/v1/offers",
            &json!({"offer_id": "spring", "document": {"kind": "discount", "value": 1}}),
        )
        .await;
    assert_eq!(error_code(s, &b), "conflict");

    // Batch limits.
    let many: Vec<String> = (0..1001).map(|i| format!("c{i}")).collect();
    let (s, b) = app
        .post(
            "/v1/offers/batch",
            &json!({"customer_ids": many, "channel": "email"}),
        )
        .await;
    assert_eq!(error_code(s, &b), "batch_too_large");
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, b) = app
        .post(
            "/v1/offers/batch",
            &json!({"customer_ids": [], "channel": "email"}),
        )
        .await;
    assert_eq!(error_code(s, &b), "empty_batch");

    // Events for an unknown offer are refused row by row.
    let (s, b) = app
        .post(
            "/v1/offers/events",
            &json!({"events": [{"event_id": "x", "customer_id": "c",
        "offer_id": "nope", "kind": "shown", "channel": "web"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["invalid"], 1, "{b}");

    // Missing scope and missing channel.
    let k = app.keys.recommend.clone();
    let (s, b) = app
        .call(
            "POST",
            "/v1/offers",
            Some(&k),
            Some(r#"{"offer_id": "x", "document": {}}"#),
        )
        .await;
    assert_eq!(error_code(s, &b), "insufficient_scope");
    let (s, b) = app
        .call("GET", "/v1/offers", Some(&app.keys.ingest), None)
        .await;
    assert_eq!(error_code(s, &b), "insufficient_scope");
    let (s, b) = app.get(&format!("/v1/customers/{c}/offers")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = app
        .get(&format!("/v1/customers/{c}/offers?channel=web&limit=0"))
        .await;
    assert_eq!(error_code(s, &b), "invalid_field");
}
