//! Every route through the router: success and each 4xx.

use std::collections::HashMap;

use affinity_store::{CustomerId, CustomerRecord};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

use crate::fixture::{App, assert_answer_shape, error_code, ids, train_and_publish};

async fn stock(app: &App) -> HashMap<String, (bool, Option<String>)> {
    app.stores
        .records
        .list_items(&app.tenant)
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            (
                c.item_id.as_str().to_owned(),
                (c.in_stock, c.category.map(|c| c.as_str().to_owned())),
            )
        })
        .collect()
}

#[tokio::test]
async fn health_and_openapi_need_no_key() {
    let app = App::new().await;
    let (s, b) = app.call("GET", "/v1/health", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["status"], "ok");
    let (s, b) = app.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(b["paths"]["/v1/items/{item_id}/similar"]["get"].is_object());
}

#[tokio::test]
async fn similar_items_answer_with_reasons_and_respect_filters() {
    let app = App::new().await;
    let item = app.shop.example_item.clone();
    let (s, b) = app.get(&format!("/v1/items/{item}/similar?k=5")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_answer_shape(&b);
    assert_eq!(b["model_version"], "v1");
    assert_eq!(b["personalized"], true);
    let got = ids(&b);
    assert_eq!(got.len(), 5);
    assert!(!got.contains(&item));
    assert_eq!(b["items"][0]["reason"]["kind"], "also_bought");
    assert_eq!(b["items"][0]["reason"]["anchor_item"], item.as_str());

    let catalog = stock(&app).await;
    // In stock is the default: nothing out of stock even when asking for everything.
    let (_, b) = app.get(&format!("/v1/items/{item}/similar?k=100")).await;
    let in_stock_ids = ids(&b);
    assert!(
        in_stock_ids.iter().all(|i| catalog[i].0),
        "{in_stock_ids:?}"
    );
    let eligible = catalog
        .iter()
        .filter(|(id, (s, _))| *s && **id != item)
        .count();
    assert_eq!(in_stock_ids.len(), eligible.min(100));
    // Turned off, out-of-stock items may come back.
    let (_, b) = app
        .get(&format!("/v1/items/{item}/similar?k=100&in_stock=false"))
        .await;
    assert!(ids(&b).iter().any(|i| !catalog[i].0));
    // Category filter.
    let (s, b) = app
        .get(&format!("/v1/items/{item}/similar?k=4&category=Mugs"))
        .await;
    assert_eq!(s, StatusCode::OK);
    let mugs = ids(&b);
    assert_eq!(mugs.len(), 4);
    assert!(mugs.iter().all(|i| catalog[i].1.as_deref() == Some("Mugs")));
    // Exclude list.
    let excluded = format!("{},{}", got[0], got[1]);
    let (_, b) = app
        .get(&format!("/v1/items/{item}/similar?k=5&exclude={excluded}"))
        .await;
    let again = ids(&b);
    assert!(!again.contains(&got[0]) && !again.contains(&got[1]));
    assert_eq!(again.len(), 5);
}

#[tokio::test]
async fn similar_items_client_errors() {
    let app = App::new().await;
    let item = app.shop.example_item.clone();
    let url = format!("/v1/items/{item}/similar");
    let cases: Vec<(String, Option<&str>, StatusCode, &str)> = vec![
        (
            "/v1/items/nope/similar".into(),
            Some(&app.keys.all),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            format!("{url}?category=Nope"),
            Some(&app.keys.all),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            format!("{url}?k=0"),
            Some(&app.keys.all),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            format!("{url}?k=101"),
            Some(&app.keys.all),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            format!("{url}?colour=red"),
            Some(&app.keys.all),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            format!("{url}?in_stock=maybe"),
            Some(&app.keys.all),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            format!("/v1/items/{}/similar", "x".repeat(200)),
            Some(&app.keys.all),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (url.clone(), None, StatusCode::UNAUTHORIZED, "missing_key"),
        (
            url.clone(),
            Some("aff_nope_nope"),
            StatusCode::UNAUTHORIZED,
            "invalid_key",
        ),
        (
            url.clone(),
            Some(&app.keys.revoked),
            StatusCode::UNAUTHORIZED,
            "invalid_key",
        ),
        (
            url.clone(),
            Some(&app.keys.ingest),
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        ),
        (
            url.clone(),
            Some(&app.keys.other_tenant),
            StatusCode::SERVICE_UNAVAILABLE,
            "no_model",
        ),
        (
            "/v1/nothing-here".into(),
            Some(&app.keys.all),
            StatusCode::NOT_FOUND,
            "route_not_found",
        ),
    ];
    for (uri, key, status, code) in cases {
        let (s, b) = app.call("GET", &uri, key, None).await;
        assert_eq!(s, status, "{uri}: {b}");
        assert_eq!(error_code(s, &b), code, "{uri}");
    }
    let (s, b) = app.call("DELETE", &url, Some(&app.keys.all), None).await;
    assert_eq!(
        (s, error_code(s, &b).as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let req = Request::get(&url)
        .header("authorization", format!("Bearer {}", app.keys.all))
        .header("x-affinity-tenant", "other-shop")
        .body(Body::empty())
        .unwrap();
    let (s, b) = app.send(req).await;
    assert_eq!(
        (s, error_code(s, &b).as_str()),
        (StatusCode::FORBIDDEN, "wrong_tenant")
    );
    let req = Request::get(&url)
        .header("authorization", format!("Basic {}", app.keys.all))
        .body(Body::empty())
        .unwrap();
    let (s, b) = app.send(req).await;
    assert_eq!(
        (s, error_code(s, &b).as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_key")
    );
}

#[tokio::test]
async fn basket_answers_and_reports_unknown_items() {
    let app = App::new().await;
    let basket = app.shop.example_basket.clone();
    let (s, b) = app
        .post("/v1/baskets/similar", &json!({"items": basket, "k": 6}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_answer_shape(&b);
    let got = ids(&b);
    assert_eq!(got.len(), 6);
    assert!(got.iter().all(|i| !basket.contains(i)));
    let (s, b) = app
        .post(
            "/v1/baskets/similar",
            &json!({"items": [basket[0], "brand-new"], "k": 3, "category": "Mugs", "in_stock": true, "exclude": []}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["unknown_items"], json!(["brand-new"]));
    assert_eq!(ids(&b).len(), 3);
    // Nothing known: popularity answers, flagged.
    let (s, b) = app
        .post("/v1/baskets/similar", &json!({"items": ["ghost-1"]}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["personalized"], false);
    assert_eq!(b["fallback"], "item_not_in_model");
    assert_eq!(ids(&b).len(), 10);
}

#[tokio::test]
async fn basket_client_errors() {
    let app = App::new().await;
    let many: Vec<String> = (0..51).map(|i| format!("sku-{i}")).collect();
    let exclude: Vec<String> = (0..101).map(|i| format!("x{i}")).collect();
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (
            json!({"items": []}).to_string(),
            StatusCode::BAD_REQUEST,
            "empty_batch",
        ),
        (
            json!({"items": many}).to_string(),
            StatusCode::BAD_REQUEST,
            "batch_too_large",
        ),
        (
            json!({"items": ["a"], "exclude": exclude}).to_string(),
            StatusCode::BAD_REQUEST,
            "batch_too_large",
        ),
        (
            json!({"items": ["a"], "colour": "red"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"items": ["a"], "k": "3"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"items": ["a"], "k": 0}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"items": [""]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "{\"items\": [".into(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            json!({"items": ["a"], "category": "Nope"}).to_string(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (body, status, code) in cases {
        let (s, b) = app
            .call(
                "POST",
                "/v1/baskets/similar",
                Some(&app.keys.all),
                Some(&body),
            )
            .await;
        assert_eq!(s, status, "{body}: {b}");
        assert_eq!(error_code(s, &b), code, "{body}");
    }
    let req = Request::post("/v1/baskets/similar")
        .header("authorization", format!("Bearer {}", app.keys.all))
        .body(Body::from(r#"{"items":["a"]}"#))
        .unwrap();
    let (s, b) = app.send(req).await;
    assert_eq!(
        (s, error_code(s, &b).as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let huge = format!(r#"{{"items":["{}"]}}"#, "a".repeat(2 << 20));
    let (s, b) = app
        .call(
            "POST",
            "/v1/baskets/similar",
            Some(&app.keys.all),
            Some(&huge),
        )
        .await;
    assert_eq!(
        (s, error_code(s, &b).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let (s, b) = app
        .call(
            "POST",
            "/v1/baskets/similar",
            Some(&app.keys.ingest),
            Some(r#"{"items":["a"]}"#),
        )
        .await;
    assert_eq!(
        (s, error_code(s, &b).as_str()),
        (StatusCode::FORBIDDEN, "insufficient_scope")
    );
    let (s, b) = app
        .call(
            "POST",
            "/v1/baskets/similar",
            None,
            Some(r#"{"items":["a"]}"#),
        )
        .await;
    assert_eq!(
        (s, error_code(s, &b).as_str()),
        (StatusCode::UNAUTHORIZED, "missing_key")
    );
}

#[tokio::test]
async fn customer_recommendations_fold_in_the_current_history() {
    let app = App::new().await;
    let customer = app.shop.example_customer.clone();
    let cid = CustomerId::parse(customer.as_str()).unwrap();
    let history = app
        .stores
        .records
        .customer_history(&app.tenant, &cid, 500)
        .await
        .unwrap();
    let bought: Vec<String> = history
        .iter()
        .map(|p| p.item_id.as_str().to_owned())
        .collect();
    assert!(!bought.is_empty());
    let (s, b) = app
        .get(&format!("/v1/customers/{customer}/recommendations?k=8"))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_answer_shape(&b);
    assert_eq!(b["personalized"], true);
    assert!(b.get("fallback").is_none());
    let got = ids(&b);
    assert_eq!(got.len(), 8);
    assert!(
        got.iter().all(|i| !bought.contains(i)),
        "already bought came back"
    );
    assert_eq!(b["items"][0]["reason"]["kind"], "for_you");
    // Asked for, bought items may come back.
    let (_, b) = app
        .get(&format!(
            "/v1/customers/{customer}/recommendations?k=100&include_purchased=true&in_stock=false"
        ))
        .await;
    assert!(ids(&b).iter().any(|i| bought.contains(i)));

    // A customer nobody knows: popularity, flagged.
    let (s, b) = app.get("/v1/customers/fresh-1/recommendations?k=5").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["personalized"], false);
    assert_eq!(b["fallback"], "unknown_customer");
    assert_eq!(ids(&b).len(), 5);
    assert_eq!(b["items"][0]["reason"]["kind"], "popular");

    // A purchase counts at once: the next answer is personal and leaves the item out.
    let bought_now = app.shop.example_item.clone();
    let (s, r) = app
        .post(
            "/v1/purchases",
            &json!({"purchases": [{"order_id": "o-fresh-1", "customer_id": "fresh-1", "item_id": bought_now, "purchased_at": "2026-05-30T10:00:00Z"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (_, b) = app.get("/v1/customers/fresh-1/recommendations?k=5").await;
    assert_eq!(b["personalized"], true, "{b}");
    assert!(!ids(&b).contains(&bought_now));
    assert_eq!(b["items"][0]["reason"]["because_of"], bought_now.as_str());

    // Without personalization consent (marketing still granted): no personal answer even
    // with a history.
    app.stores
        .records
        .put_customer(
            &app.tenant,
            &CustomerRecord {
                customer_id: cid.clone(),
                consent: affinity_store::Consent {
                    personalization: false,
                    marketing: true,
                },
                tier_override: None,
                updated_at: chrono::Utc::now(),
            },
        )
        .await
        .unwrap();
    let (_, b) = app
        .get(&format!("/v1/customers/{customer}/recommendations?k=5"))
        .await;
    assert_eq!(b["personalized"], false);
    assert_eq!(b["fallback"], "opted_out");
    assert_eq!(ids(&b).len(), 5);
}

#[tokio::test]
async fn customer_recommendations_client_errors() {
    let app = App::new().await;
    let long = "c".repeat(10_000);
    let cases: Vec<(String, Option<&str>, StatusCode, &str)> = vec![
        (
            format!("/v1/customers/{long}/recommendations"),
            Some(&app.keys.all),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "/v1/customers/c1/recommendations?k=-3".into(),
            Some(&app.keys.all),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/v1/customers/c1/recommendations?include_purchased=2".into(),
            Some(&app.keys.all),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/v1/customers/c1/recommendations?category=Nope".into(),
            Some(&app.keys.all),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/v1/customers/c1/recommendations".into(),
            Some(&app.keys.ingest),
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        ),
        (
            "/v1/customers/c1/recommendations".into(),
            None,
            StatusCode::UNAUTHORIZED,
            "missing_key",
        ),
    ];
    for (uri, key, status, code) in cases {
        let (s, b) = app.call("GET", &uri, key, None).await;
        assert_eq!(s, status, "{uri}: {b}");
        assert_eq!(error_code(s, &b), code, "{uri}");
    }
}

#[tokio::test]
async fn purchases_are_ingested_with_per_row_results() {
    let app = App::new().await;
    let rows = json!({"purchases": [
        {"order_id": "n-1", "customer_id": "c-new", "item_id": "sku-0000", "quantity": 2, "unit_price_minor": 1299, "currency": "EUR", "purchased_at": "2026-05-01T12:00:00Z"},
        {"order_id": "n-2", "customer_id": "c-new", "item_id": "sku-0000", "unit_price_minor": -5, "purchased_at": "2026-05-01T12:00:00Z"},
        {"order_id": "n-3", "customer_id": "c-new", "item_id": "sku-0000", "purchased_at": "2026-05-01T12:00:00Z", "colour": "red"},
        {"order_id": "n-4", "customer_id": "c-new", "item_id": "sku-0001", "line": 2, "purchased_at": "2026-05-01T12:00:00Z"}
    ]});
    let (s, b) = app.post("/v1/purchases", &rows).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        (b["written"].as_u64(), b["invalid"].as_u64()),
        (Some(2), Some(2))
    );
    let results = b["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["result"], "inserted");
    assert_eq!(results[1]["result"], "invalid");
    assert!(results[1]["reason"].as_str().unwrap().contains("negative"));
    assert_eq!(results[2]["result"], "invalid");
    assert!(results[2]["reason"].as_str().unwrap().contains("colour"));
    assert_eq!(results[3]["index"], 3);
    // A retry is a duplicate; a different row with the same identity a conflict.
    let (_, b) = app.post("/v1/purchases", &rows).await;
    assert_eq!(b["results"][0]["result"], "duplicate");
    assert_eq!(b["duplicates"], 2);
    let changed = json!({"purchases": [{"order_id": "n-1", "customer_id": "c-new", "item_id": "sku-0001", "purchased_at": "2026-05-01T12:00:00Z"}]});
    let (_, b) = app.post("/v1/purchases", &changed).await;
    assert_eq!(b["results"][0]["result"], "conflict");
    assert_eq!(b["conflicts"], 1);
}

#[tokio::test]
async fn ingestion_client_errors() {
    let app = App::new().await;
    let row = json!({"order_id": "o", "customer_id": "c", "item_id": "i", "purchased_at": "2026-05-01T12:00:00Z"});
    let too_many = json!({"purchases": vec![row.clone(); 501]});
    let cases: Vec<(&str, String, Option<&str>, StatusCode, &str)> = vec![
        (
            "/v1/purchases",
            json!({"purchases": []}).to_string(),
            Some(&app.keys.all),
            StatusCode::BAD_REQUEST,
            "empty_batch",
        ),
        (
            "/v1/purchases",
            too_many.to_string(),
            Some(&app.keys.all),
            StatusCode::BAD_REQUEST,
            "batch_too_large",
        ),
        (
            "/v1/purchases",
            json!({"purchases": "all"}).to_string(),
            Some(&app.keys.all),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "/v1/purchases",
            json!({"rows": [row]}).to_string(),
            Some(&app.keys.all),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "/v1/purchases",
            "{\"purchases\": [".into(),
            Some(&app.keys.all),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "/v1/purchases",
            json!({"purchases": [row]}).to_string(),
            Some(&app.keys.recommend),
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        ),
        (
            "/v1/purchases",
            json!({"purchases": [row]}).to_string(),
            None,
            StatusCode::UNAUTHORIZED,
            "missing_key",
        ),
        (
            "/v1/items",
            json!({"items": []}).to_string(),
            Some(&app.keys.all),
            StatusCode::BAD_REQUEST,
            "empty_batch",
        ),
        (
            "/v1/items",
            json!({"items": [{"item_id": "x"}], "extra": 1}).to_string(),
            Some(&app.keys.all),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "/v1/items",
            json!({"items": [{"item_id": "x"}]}).to_string(),
            Some(&app.keys.recommend),
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        ),
        (
            "/v1/items",
            "{".into(),
            Some(&app.keys.all),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
    ];
    for (uri, body, key, status, code) in cases {
        let (s, b) = app.call("POST", uri, key, Some(&body)).await;
        assert_eq!(s, status, "{uri} {body:.80}: {b}");
        assert_eq!(error_code(s, &b), code, "{uri} {body:.80}");
    }
    let (s, b) = app
        .call("GET", "/v1/purchases", Some(&app.keys.all), None)
        .await;
    assert_eq!(
        (s, error_code(s, &b).as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[tokio::test]
async fn catalog_upserts_change_answers_at_once() {
    let app = App::new().await;
    let item = app.shop.example_item.clone();
    let (_, b) = app.get(&format!("/v1/items/{item}/similar?k=5")).await;
    let top = ids(&b)[0].clone();
    // The top neighbour goes out of stock: it disappears from the next answer.
    let (s, r) = app
        .call(
            "POST",
            "/v1/items",
            Some(&app.keys.ingest),
            Some(&json!({"items": [{"item_id": top, "title": "Sold out", "category": "Coffee", "in_stock": false}]}).to_string()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["results"][0]["result"], "written");
    let (_, b) = app.get(&format!("/v1/items/{item}/similar?k=5")).await;
    assert!(!ids(&b).contains(&top));
    assert_eq!(ids(&b).len(), 5);
    // A new category whose only item the model never saw: still a non-empty answer.
    let (_, r) = app
        .post(
            "/v1/items",
            &json!({"items": [
                {"item_id": "gift-25", "title": "Gift card 25", "category": "Gift cards", "price_minor": 2500},
                {"item_id": "gift-50", "title": "Gift card 50", "category": "Gift cards", "price_minor": -1}
            ]}),
        )
        .await;
    assert_eq!(r["written"], 1);
    assert_eq!(r["results"][1]["result"], "invalid");
    let (s, b) = app
        .get(&format!(
            "/v1/items/{item}/similar?k=5&category=Gift%20cards"
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(ids(&b), vec!["gift-25".to_owned()]);
    assert_eq!(b["items"][0]["reason"]["kind"], "new_in_catalog");
    assert_eq!(b["items"][0]["title"], "Gift card 25");
    // The new item itself can be asked about: popularity in its category, flagged.
    let (s, b) = app.get("/v1/items/gift-25/similar?k=3").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["fallback"], "item_not_in_model");
    assert_eq!(ids(&b).len(), 3);
}

#[tokio::test]
async fn live_model_info() {
    let app = App::new().await;
    let (s, b) = app
        .call("GET", "/v1/models/live", Some(&app.keys.recommend), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["model_version"], "v1");
    assert_eq!(b["status"], "live");
    assert_eq!(b["metrics"]["recall_at_10"], 0.25);
    assert_eq!(b["factors"], 16);
    assert!(b["counts"]["purchases"].as_u64().unwrap() > 1000);
    assert!(b["checksum"].as_str().unwrap().len() == 64);
    assert!(b["data_watermark"].is_string() && b["trained_at"].is_string());
    let (s, b) = app.call("GET", "/v1/models/live", None, None).await;
    assert_eq!(
        (s, error_code(s, &b).as_str()),
        (StatusCode::UNAUTHORIZED, "missing_key")
    );
    let (s, b) = app
        .call("GET", "/v1/models/live", Some(&app.keys.other_tenant), None)
        .await;
    assert_eq!(
        (s, error_code(s, &b).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no_model")
    );
    // Once the other tenant trains, its own key sees its own model.
    let other = affinity_store::TenantId::parse("other-shop").unwrap();
    affinity_service::demo::populate(
        app.stores.records.as_ref(),
        &other,
        100,
        3,
        crate::fixture::now(),
    )
    .await
    .unwrap();
    train_and_publish(&app.stores, &other, "other-v1").await;
    let (s, b) = app
        .call("GET", "/v1/models/live", Some(&app.keys.other_tenant), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["model_version"], "other-v1");
}

/// Never an empty list while eligible items exist, never an out-of-stock item: the answer
/// length equals min(k, eligible) counted by brute force from the catalog.
#[tokio::test]
async fn answers_are_full_and_in_stock_for_every_filter() {
    let app = App::new().await;
    let catalog = stock(&app).await;
    let categories = ["Coffee", "Mugs", "Books", "Yoga"];
    let anchors = ["sku-0000", "sku-0310", "sku-0700", "sku-1100"];
    for anchor in anchors {
        for cat in categories {
            for k in [1usize, 7, 40] {
                let (s, b) = app
                    .get(&format!("/v1/items/{anchor}/similar?k={k}&category={cat}"))
                    .await;
                assert_eq!(s, StatusCode::OK, "{b}");
                let got = ids(&b);
                let eligible = catalog
                    .iter()
                    .filter(|(id, (s, c))| *s && c.as_deref() == Some(cat) && id.as_str() != anchor)
                    .count();
                assert_eq!(got.len(), k.min(eligible), "{anchor} {cat} k={k}");
                for id in &got {
                    assert!(catalog[id].0, "{id} is out of stock");
                    assert_eq!(catalog[id].1.as_deref(), Some(cat));
                }
            }
        }
    }
    // Customers: same rule with their purchases left out.
    for customer in ["cust-00001", "cust-00005", "nobody"] {
        let (_, b) = app
            .get(&format!("/v1/customers/{customer}/recommendations?k=100"))
            .await;
        let got = ids(&b);
        assert!(got.iter().all(|i| catalog[i].0));
        assert!(!got.is_empty());
        let _: Value = b;
    }
}
