//! Every route against every scope, and storefront tokens.
//!
//! The route list comes from the router's own OpenAPI document, so a route added without an
//! entry in [`need`] fails the matrix. Each route is called with a request valid enough to
//! reach its scope check: with a key holding only the needed scope it must not be refused
//! (no 401/403), with a key holding any other single scope it must be refused with
//! `insufficient_scope`, and a storefront token gets in only on recommendation routes (and
//! on the customer route only for the customer it names).

use affinity_store::Scope;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::fixture::{App, error_code, token};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// No key at all (health, the OpenAPI document).
    Nothing,
    /// Any server key, whatever its scopes.
    AnyServerKey,
    /// Exactly this scope.
    Scope(Scope),
}

/// The expected access rule of every route, keyed by method and OpenAPI path.
fn need(method: &str, path: &str) -> Option<Need> {
    use Need::{AnyServerKey, Nothing};
    use Scope as S;
    let scope = Need::Scope;
    Some(match (method, path) {
        ("GET", "/v1/health") | ("GET", "/v1/openapi.json") => Nothing,
        ("GET", "/v1/models/live") => AnyServerKey,
        ("GET", "/v1/items/{item_id}/similar")
        | ("POST", "/v1/baskets/similar")
        | ("GET", "/v1/customers/{customer_id}/recommendations") => scope(S::Recommend),
        ("GET", "/v1/customers/{customer_id}/profile") => scope(S::ProfilesRead),
        ("GET", "/v1/customers/{customer_id}/offers")
        | ("POST", "/v1/offers/batch")
        | ("GET", "/v1/items/{item_id}/audience")
        | ("POST", "/v1/offers/events") => scope(S::OffersDecide),
        ("POST", "/v1/offers")
        | ("GET", "/v1/offers")
        | ("GET", "/v1/offers/{offer_id}")
        | ("PUT", "/v1/offers/{offer_id}")
        | ("GET", "/v1/offers/{offer_id}/report")
        | ("POST", "/v1/offers/dry-run") => scope(S::OffersManage),
        ("POST", "/v1/purchases") | ("POST", "/v1/items") => scope(S::Ingest),
        ("DELETE", "/v1/customers/{customer_id}")
        | ("PUT", "/v1/customers/{customer_id}/consent") => scope(S::CustomersManage),
        ("POST", "/v1/models:retrain")
        | ("GET", "/v1/models")
        | ("GET", "/v1/models/{version}")
        | ("GET", "/v1/models/{version}/report")
        | ("POST", "/v1/models/{version}/promote")
        | ("POST", "/v1/models:rollback")
        | ("GET", "/v1/jobs/{job_id}") => scope(S::ModelsAdmin),
        _ => return None,
    })
}

/// A request that reaches the route's scope check: the path filled in, a valid body.
/// Writes are harmless: a customer that does not exist, an offer of the test's own.
fn example(app: &App, method: &str, path: &str, customer: &str) -> (String, Option<Value>) {
    let item = app.shop.example_item.as_str();
    let uri = path
        .replace("{customer_id}", customer)
        .replace("{item_id}", item)
        .replace("{offer_id}", "win-back")
        .replace("{version}", "v1")
        .replace("{job_id}", "no-such-job");
    let uri = match path {
        "/v1/customers/{customer_id}/offers" => format!("{uri}?channel=web"),
        _ => uri,
    };
    let body = match (method, path) {
        ("POST", "/v1/baskets/similar") => Some(json!({"items": [item]})),
        ("POST", "/v1/offers/batch") => {
            Some(json!({"customer_ids": [customer], "channel": "email"}))
        }
        ("POST", "/v1/offers/events") => Some(json!({"events": [{
            "event_id": "matrix-event", "customer_id": "matrix-nobody", "offer_id": "win-back",
            "kind": "shown", "channel": "web"}]})),
        ("POST", "/v1/offers") => Some(json!({"offer_id": "matrix-offer", "document":
            {"kind": "discount", "title": "t", "items": [item], "value": 1.0, "cost": 0.1}})),
        ("PUT", "/v1/offers/{offer_id}") => Some(json!({"status": "active"})),
        ("POST", "/v1/offers/dry-run") => Some(json!({"offer_id": "win-back", "channel": "web"})),
        ("POST", "/v1/purchases") => Some(json!({"purchases": [{"order_id": "matrix-o",
            "customer_id": "matrix-nobody", "item_id": item, "purchased_at": "2026-05-01T00:00:00Z"}]})),
        ("POST", "/v1/items") => Some(json!({"items": [{"item_id": "matrix-item", "title": "t"}]})),
        ("PUT", "/v1/customers/{customer_id}/consent") => {
            Some(json!({"personalization": true, "marketing": true}))
        }
        // Promote the live version again, idempotently.
        ("POST", "/v1/models/{version}/promote") => Some(json!({})),
        // A retrain is not started: an idempotency key of a job that does not exist is
        // accepted only after the scope check; the matrix only reads the status class.
        ("POST", "/v1/models:retrain") => Some(json!({"job_id": "matrix-retrain"})),
        _ => None,
    };
    (uri, body)
}

fn operations() -> Vec<(String, String)> {
    let doc: Value = serde_json::from_str(affinity_service::http::routes::openapi_json()).unwrap();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.push((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

async fn send(
    app: &App,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: &Option<Value>,
) -> (StatusCode, Value) {
    let text = body.as_ref().map(Value::to_string);
    app.call(method, uri, key, text.as_deref()).await
}

fn refused(s: StatusCode) -> bool {
    s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN
}

#[tokio::test]
async fn every_route_against_every_scope() {
    let app = App::new().await;
    let ops = operations();
    assert!(ops.len() >= 28, "only {} operations", ops.len());
    let missing: Vec<String> = ops
        .iter()
        .filter(|(m, p)| need(m, p).is_none())
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert!(
        missing.is_empty(),
        "routes without an entry in the scope matrix: {missing:?}"
    );
    let customer = app.shop.example_customer.clone();
    let mut checked = 0;
    // Refusals first: they change nothing, so the allowed calls below see the fixture intact.
    for (method, path) in &ops {
        let rule = need(method, path).unwrap();
        let (uri, body) = example(&app, method, path, "matrix-nobody");
        for (scope, key) in &app.keys.by_scope {
            let (s, b) = send(&app, method, &uri, Some(key), &body).await;
            let allowed = match rule {
                Need::Nothing | Need::AnyServerKey => true,
                Need::Scope(needed) => needed == *scope,
            };
            if allowed {
                continue;
            }
            assert_eq!(
                error_code(s, &b),
                "insufficient_scope",
                "{method} {path} with only {} must be refused",
                scope.as_str()
            );
            checked += 1;
        }
        // A storefront token for the example customer.
        let (uri, body) = example(&app, method, path, &customer);
        let t = token(&app, &customer, 300);
        let (s, b) = send(&app, method, &uri, Some(&t), &body).await;
        match rule {
            Need::Nothing | Need::Scope(Scope::Recommend) => {
                assert!(
                    !refused(s),
                    "{method} {path} refused a storefront token: {b}"
                )
            }
            _ => assert_eq!(
                error_code(s, &b),
                "server_key_required",
                "{method} {path} must refuse a storefront token"
            ),
        }
        // ... and the same token on another customer's path.
        if path.contains("{customer_id}") && rule == Need::Scope(Scope::Recommend) {
            let (uri, body) = example(&app, method, path, "cust-00001");
            let (s, b) = send(&app, method, &uri, Some(&t), &body).await;
            assert_eq!(error_code(s, &b), "customer_mismatch", "{method} {path}");
        }
        // No key.
        let (s, b) = send(&app, method, &uri, None, &body).await;
        if rule == Need::Nothing {
            assert!(!refused(s), "{method} {path}: {b}");
        } else {
            assert_eq!(error_code(s, &b), "missing_key", "{method} {path}");
        }
        checked += 1;
    }
    // Then each route with exactly its scope: never refused.
    for (method, path) in &ops {
        let rule = need(method, path).unwrap();
        let (uri, body) = example(&app, method, path, "matrix-nobody");
        let keys: Vec<&String> = match rule {
            Need::Nothing => Vec::new(),
            Need::AnyServerKey => app.keys.by_scope.iter().map(|(_, k)| k).collect(),
            Need::Scope(needed) => app
                .keys
                .by_scope
                .iter()
                .filter(|(s, _)| *s == needed)
                .map(|(_, k)| k)
                .collect(),
        };
        for key in keys {
            let (s, b) = send(&app, method, &uri, Some(key), &body).await;
            assert!(
                !refused(s) && !s.is_server_error(),
                "{method} {path} with its scope: {s} {b}"
            );
            checked += 1;
        }
    }
    assert!(checked > ops.len() * Scope::ALL.len(), "{checked} checks");
}

#[tokio::test]
async fn storefront_tokens_answer_only_their_customer_until_they_expire() {
    let app = App::new().await;
    let customer = app.shop.example_customer.clone();
    let uri = format!("/v1/customers/{customer}/recommendations?k=5");

    // The right customer: a personal answer.
    let good = token(&app, &customer, 600);
    let (s, b) = app.call("GET", &uri, Some(&good), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["personalized"], true, "{b}");
    // Not the live model, not the profile.
    let (s, b) = app.call("GET", "/v1/models/live", Some(&good), None).await;
    assert_eq!(error_code(s, &b), "server_key_required");
    let (s, b) = app
        .call(
            "GET",
            &format!("/v1/customers/{customer}/profile"),
            Some(&good),
            None,
        )
        .await;
    assert_eq!(error_code(s, &b), "server_key_required");

    // Another customer: 403 customer_mismatch.
    let (s, b) = app
        .call(
            "GET",
            "/v1/customers/cust-00001/recommendations",
            Some(&good),
            None,
        )
        .await;
    assert_eq!(
        (s, error_code(s, &b).as_str()),
        (StatusCode::FORBIDDEN, "customer_mismatch")
    );

    // Expired: 401 token_expired.
    let expired = token(&app, &customer, -1);
    let (s, b) = app.call("GET", &uri, Some(&expired), None).await;
    assert_eq!(
        (s, error_code(s, &b).as_str()),
        (StatusCode::UNAUTHORIZED, "token_expired")
    );

    // Tampered: the customer part swapped for another one, or the signature altered.
    let parts: Vec<&str> = good.split('.').collect();
    let other = base64_url("cust-00001");
    let swapped = [parts[0], parts[1], parts[2], &other, parts[4], parts[5]].join(".");
    let (s, b) = app
        .call(
            "GET",
            "/v1/customers/cust-00001/recommendations",
            Some(&swapped),
            None,
        )
        .await;
    assert_eq!(
        (s, error_code(s, &b).as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_signature")
    );
    // Alter the first character: all six of its bits are signature bits, whereas the
    // last one of unpadded base64 carries spare bits, and changing those is a decoding
    // error (invalid_token), not a wrong signature.
    let first = if parts[5].starts_with('A') { "B" } else { "A" };
    let sig = format!("{first}{}", &parts[5][1..]);
    let flipped = [parts[0], parts[1], parts[2], parts[3], parts[4], &sig].join(".");
    let (s, b) = app.call("GET", &uri, Some(&flipped), None).await;
    assert_eq!(error_code(s, &b), "invalid_signature");
    let later = (parts[4].parse::<i64>().unwrap() + 60).to_string();
    let extended = [parts[0], parts[1], parts[2], parts[3], &later, parts[5]].join(".");
    let (s, b) = app.call("GET", &uri, Some(&extended), None).await;
    assert_eq!(error_code(s, &b), "invalid_signature");

    // Wrong tenant: signed correctly, but with the other tenant's key while naming ours.
    let (other_id, other_secret) = &app.keys.other_storefront;
    let wrong = affinity_service::http::auth::StorefrontToken::sign(
        &app.tenant,
        other_id,
        other_secret,
        &affinity_store::CustomerId::parse(customer.clone()).unwrap(),
        chrono::Utc::now().timestamp() + 600,
    )
    .unwrap();
    let (s, b) = app.call("GET", &uri, Some(&wrong), None).await;
    assert_eq!(
        (s, error_code(s, &b).as_str()),
        (StatusCode::FORBIDDEN, "wrong_tenant")
    );
    // The X-Affinity-Tenant header still applies.
    let req = axum::http::Request::builder()
        .uri(&uri)
        .header("authorization", format!("Bearer {good}"))
        .header("x-affinity-tenant", "other-shop")
        .body(axum::body::Body::empty())
        .unwrap();
    let (s, b) = app.send(req).await;
    assert_eq!(error_code(s, &b), "wrong_tenant");

    // A lifetime beyond a day, garbage and an unknown key: invalid_token.
    let long = token(&app, &customer, 3 * 24 * 3600);
    for bad in [
        long.as_str(),
        "aft1.default.abc",
        "aft1.default.000000000000.Y3VzdA.9999999999.AAAA",
    ] {
        let (s, b) = app.call("GET", &uri, Some(bad), None).await;
        assert_eq!(
            (s, error_code(s, &b).as_str()),
            (StatusCode::UNAUTHORIZED, "invalid_token"),
            "{bad}"
        );
    }
    // The storefront key's lookup string is no bearer key.
    let lookup = format!("storefront-key:{}", app.keys.storefront.0);
    let (s, b) = app.call("GET", &uri, Some(&lookup), None).await;
    assert_eq!(error_code(s, &b), "invalid_key");

    // Revoked: every token of the key stops working.
    app.stores
        .records
        .revoke_key(&app.tenant, &app.keys.storefront.0)
        .await
        .unwrap();
    let (s, b) = app.call("GET", &uri, Some(&good), None).await;
    assert_eq!(error_code(s, &b), "invalid_token");
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn expensive_routes_are_rate_limited_per_key_with_retry_after() {
    let mut settings = affinity_service::settings::Settings::for_tests();
    settings.rate_limit_per_min = 2;
    let app = App::with_settings(settings).await;
    let item = app.shop.example_item.clone();
    let audience = format!("/v1/items/{item}/audience?limit=3");
    for _ in 0..2 {
        let (s, b) = app.get(&audience).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let req = axum::http::Request::builder()
        .uri(&audience)
        .header("authorization", format!("Bearer {}", app.keys.all))
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(app.router.clone(), req)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Cheap routes are not limited, and another key has its own allowance.
    for _ in 0..5 {
        let (s, _) = app.get(&format!("/v1/items/{item}/similar")).await;
        assert_eq!(s, StatusCode::OK);
    }
    let other = app
        .keys
        .by_scope
        .iter()
        .find(|(s, _)| *s == Scope::OffersDecide)
        .map(|(_, k)| k.clone())
        .unwrap();
    let (s, b) = app.call("GET", &audience, Some(&other), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
}
