//! The model report (`GET /v1/models/{version}/report`, `affinity report`): rendered for a
//! demo shop retrained twice through the pipeline, with offer events recorded, and checked
//! on its content (no screenshot): versions, metric values as printed, SVG plots and their
//! drawing elements, tier names, nothing loaded from the network. Then the route's status
//! codes, content type and scope.

use std::num::NonZeroU32;

use affinity_model::model::{IndexChoice, TrainConfig};
use affinity_service::demo;
use affinity_service::http::routes;
use affinity_service::http::state::AppState;
use affinity_service::report::{self, num};
use affinity_service::retrain::{
    self, RetrainDeps, RetrainRequest, RetrainSettings, VersionMetrics, versions,
};
use affinity_service::settings::Settings;
use affinity_store::{
    Channel, CustomerId, EventId, OfferEvent, OfferEventKind, OfferId, OrderId, Purchase, Scope,
    Stores, TenantId, generate_api_key,
};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::Duration;
use tower::ServiceExt;

use crate::fixture::{App, error_code, now};

/// Status, content type and body of a GET.
async fn get(router: &Router, uri: &str, key: Option<&str>) -> (StatusCode, String, String) {
    let mut req = Request::builder().method("GET").uri(uri);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let res = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        content_type,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

fn settings() -> RetrainSettings {
    let mut s = RetrainSettings {
        train: TrainConfig {
            neighbours: 10,
            index: IndexChoice::Exact,
            ..TrainConfig::default()
        },
        ..RetrainSettings::default()
    };
    s.train.als.factors = 16;
    s.train.als.iterations = 8;
    // The final model fitted from scratch (the retrain tests cover the default, a fit
    // continued from the candidate), so both paths go through the whole pipeline.
    s.refit_iterations = 0;
    s
}

/// Purchases after the first model: every other customer buys two items of their latest
/// purchase's category that they never had (the second run's holdout).
async fn buy_again(stores: &Stores, tenant: &TenantId, customers: usize) {
    let r = &stores.records;
    let catalog = r.list_items(tenant).await.unwrap();
    let mut rows = Vec::new();
    for c in (0..customers).step_by(2) {
        let customer = CustomerId::parse(format!("cust-{c:05}")).unwrap();
        let history = r.customer_history(tenant, &customer, 200).await.unwrap();
        let Some(latest) = history.first() else {
            continue;
        };
        let category = catalog
            .iter()
            .find(|i| i.item_id == latest.item_id)
            .and_then(|i| i.category.clone());
        let picks = catalog
            .iter()
            .filter(|i| i.category == category)
            .filter(|i| history.iter().all(|p| p.item_id != i.item_id))
            .take(2);
        for (line, item) in picks.enumerate() {
            rows.push(Purchase {
                order_id: OrderId::parse(format!("again-{c:05}")).unwrap(),
                line: line as u32 + 1,
                customer_id: customer.clone(),
                item_id: item.item_id.clone(),
                quantity: NonZeroU32::new(1).unwrap(),
                unit_price_minor: item.price_minor,
                currency: None,
                purchased_at: now() + Duration::days(2) + Duration::minutes(c as i64),
            });
        }
    }
    assert!(rows.len() > 100);
    r.put_purchases(tenant, &rows).await.unwrap();
}

/// Offer events: customers 0..40 were shown the first two offers; every third accepted.
/// Returns (shown, accepted).
async fn offer_events(stores: &Stores, tenant: &TenantId, offers: &[String]) -> (u64, u64) {
    let mut events = Vec::new();
    let (mut shown, mut accepted) = (0, 0);
    for offer in offers.iter().take(2) {
        for c in 0..40 {
            let mut push = |kind, tag: &str| {
                events.push(OfferEvent {
                    event_id: EventId::parse(format!("ev-{offer}-{c}-{tag}")).unwrap(),
                    customer_id: CustomerId::parse(format!("cust-{c:05}")).unwrap(),
                    offer_id: OfferId::parse(offer.as_str()).unwrap(),
                    kind,
                    channel: Channel::parse("email").unwrap(),
                    recommendation_id: None,
                    at: now() + Duration::days(3),
                });
            };
            push(OfferEventKind::Shown, "shown");
            shown += 1;
            if c % 3 == 0 {
                push(OfferEventKind::Accepted, "accepted");
                accepted += 1;
            }
        }
    }
    stores
        .records
        .put_offer_events(tenant, &events)
        .await
        .unwrap();
    (shown, accepted)
}

#[tokio::test]
async fn report_of_a_twice_trained_demo_shop_shows_versions_metrics_and_plots() {
    let stores = Stores::memory().unwrap();
    let tenant = TenantId::default();
    let shop = demo::populate(stores.records.as_ref(), &tenant, 400, 7, now())
        .await
        .unwrap();
    let deps = RetrainDeps::new(stores.clone(), settings());
    let first = retrain::run_once(&deps, RetrainRequest::new(tenant.clone()))
        .await
        .unwrap();
    buy_again(&stores, &tenant, 400).await;
    let second = retrain::run_once(&deps, RetrainRequest::new(tenant.clone()))
        .await
        .unwrap();
    assert_ne!(first.version, second.version);
    let (shown, accepted) = offer_events(&stores, &tenant, &shop.offers).await;

    // Default: the live version.
    let live = second.live.clone().unwrap();
    let page = report::build(&stores, &tenant, None).await.unwrap();
    assert_eq!(page.version, live);
    let html = &page.html;

    // Both versions, in the header and the history table.
    assert!(
        html.contains(first.version.as_str()),
        "first version missing"
    );
    assert!(
        html.contains(second.version.as_str()),
        "second version missing"
    );
    // Metric values of every version as printed numbers; the reported one's in full.
    for v in [&first.version, &second.version] {
        let entry = versions::show(&stores, &tenant, v).await.unwrap().entry;
        let m = VersionMetrics::of(&entry).unwrap();
        assert!(m.evaluation.candidate.recall > 0.0);
        assert!(html.contains(&format!(
            "<td class=\"n\">{}</td>",
            num(m.evaluation.candidate.recall)
        )));
        assert!(html.contains(&format!(
            "<td class=\"n\">{}</td>",
            num(m.evaluation.candidate.ndcg)
        )));
    }
    let entry = versions::show(&stores, &tenant, &live).await.unwrap().entry;
    let m = VersionMetrics::of(&entry).unwrap();
    assert!(html.contains(&num(m.evaluation.popularity.recall)));
    let curve = m.curve.as_ref().unwrap();
    assert_eq!(curve.points.len(), 5);
    for p in &curve.points {
        assert!(
            html.contains(&format!("<td class=\"n\">{}</td>", num(p.candidate))),
            "k={}",
            p.k
        );
        assert!(
            html.contains(&format!("<td class=\"n\">{}</td>", num(p.popularity))),
            "k={}",
            p.k
        );
    }
    assert!(!html.contains("No recall@k curve"));
    // Five plots: history, recall@k, customers and CLV per tier, offer response.
    assert_eq!(html.matches("<svg").count(), 5, "{html}");
    assert_eq!(html.matches("</svg>").count(), 5);
    assert!(html.matches("<polyline").count() + html.matches("<path").count() >= 4);
    assert!(html.matches("<rect").count() >= 6);
    for tier in ["gold", "silver", "bronze"] {
        assert!(
            html.contains(&format!("<td>{tier}</td>")),
            "tier {tier} missing"
        );
    }
    // Offer response: every recorded event counted once.
    assert!(
        html.contains(&format!(
            "<tr><th>all customers</th><td class=\"n\">{shown}</td><td class=\"n\">{accepted}</td>"
        )),
        "offer totals missing"
    );
    // Self-contained: no script, no address of anything to load.
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(!html.contains("<script") && !html.contains("<link") && !html.contains("<img"));

    // The route answers the same page for the named version.
    let secret = generate_api_key(&tenant, [Scope::ModelsAdmin].into(), None, now()).unwrap();
    stores.records.create_key(&secret.record).await.unwrap();
    let router = routes::router(AppState::new(stores.clone(), &Settings::for_tests()));
    let (status, content_type, body) = get(
        &router,
        &format!("/v1/models/{}/report", first.version),
        Some(&secret.secret),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(body.contains(&format!("<h1>Model report {}</h1>", first.version)));
    assert_eq!(body.matches("<svg").count(), 5);
}

#[tokio::test]
async fn report_route_status_codes_and_scope() {
    let app = App::new().await;
    let router = &app.router;
    // The fixture's v1 was published without the pipeline: its flat metrics are shown.
    let (status, content_type, body) =
        get(router, "/v1/models/v1/report", Some(&app.keys.all)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(body.starts_with("<!DOCTYPE html>"));
    assert!(body.contains("recall_at_10 = 0.2500"));
    assert!(body.contains("No recall@k curve was recorded"));

    let json = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap();
    let (status, content_type, body) =
        get(router, "/v1/models/v-unknown/report", Some(&app.keys.all)).await;
    assert_eq!(content_type, "application/json");
    assert_eq!(error_code(status, &json(&body)), "not_found");
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = get(router, "/v1/models/v1/report", Some(&app.keys.recommend)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(status, &json(&body)), "insufficient_scope");
    let (status, _, body) = get(router, "/v1/models/v1/report", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    error_code(status, &json(&body));
    // Another tenant's key does not see this tenant's versions.
    let (status, _, body) = get(router, "/v1/models/v1/report", Some(&app.keys.other_tenant)).await;
    assert_eq!(error_code(status, &json(&body)), "not_found");
}
