//! A demo shop in a memory store, a trained and published model, keys with each scope,
//! and helpers to call the router.

use std::collections::BTreeSet;

use affinity_model::model::TrainConfig;
use affinity_service::demo::{self, DemoShop};
use affinity_service::http::routes;
use affinity_service::http::state::AppState;
use affinity_service::settings::Settings;
use affinity_service::training;
use affinity_store::{KeyId, Scope, Stores, TenantId, generate_api_key};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tower::ServiceExt;

/// Keys of the fixture, by what they may do.
pub struct Keys {
    /// Every scope.
    pub all: String,
    /// Only `recommend`.
    pub recommend: String,
    /// Only `ingest`.
    pub ingest: String,
    /// Revoked (had every scope).
    pub revoked: String,
    /// Every scope, but for another tenant (which has no model).
    pub other_tenant: String,
    /// One key per scope, holding only that scope.
    pub by_scope: Vec<(Scope, String)>,
    /// A storefront key of the tenant: its id and signing secret.
    pub storefront: (KeyId, String),
    /// A storefront key of the other tenant: its id and signing secret.
    pub other_storefront: (KeyId, String),
}

/// The application under test.
pub struct App {
    pub router: Router,
    pub stores: Stores,
    pub tenant: TenantId,
    pub shop: DemoShop,
    pub keys: Keys,
}

pub fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

pub fn small_config() -> TrainConfig {
    let mut c = TrainConfig::default();
    c.als.factors = 16;
    c.als.iterations = 6;
    c.neighbours = 20;
    c
}

/// Trains on whatever the store holds and makes it live.
pub async fn train_and_publish(stores: &Stores, tenant: &TenantId, version: &str) {
    train_and_publish_with(stores, tenant, version, &small_config()).await;
}

/// [`train_and_publish`] with a configuration of the caller's.
pub async fn train_and_publish_with(
    stores: &Stores,
    tenant: &TenantId,
    version: &str,
    config: &TrainConfig,
) {
    let model = training::train_tenant(stores.records.as_ref(), tenant, config, version, &|_| {})
        .await
        .unwrap();
    training::publish(
        stores,
        tenant,
        &model,
        serde_json::json!({"recall_at_10": 0.25}),
    )
    .await
    .unwrap();
}

async fn storefront_key(stores: &Stores, tenant: &TenantId) -> (KeyId, String) {
    let k = affinity_store::generate_storefront_key(tenant, None, Utc::now()).unwrap();
    stores.records.create_key(&k.record).await.unwrap();
    (k.record.key_id, k.signing_secret)
}

/// A storefront token of the fixture's tenant for `customer`, expiring `ttl` seconds from now.
pub fn token(app: &App, customer: &str, ttl: i64) -> String {
    let (key_id, secret) = &app.keys.storefront;
    affinity_service::http::auth::StorefrontToken::sign(
        &app.tenant,
        key_id,
        secret,
        &affinity_store::CustomerId::parse(customer).unwrap(),
        Utc::now().timestamp() + ttl,
    )
    .unwrap()
}

async fn key(
    stores: &Stores,
    tenant: &TenantId,
    scopes: &[Scope],
) -> (String, affinity_store::KeyId) {
    let scopes: BTreeSet<Scope> = scopes.iter().copied().collect();
    let k = generate_api_key(tenant, scopes, Some("test".into()), Utc::now()).unwrap();
    stores.records.create_key(&k.record).await.unwrap();
    (k.secret, k.record.key_id)
}

impl App {
    /// The standard fixture: 400 demo customers, a live model, five keys.
    pub async fn new() -> Self {
        Self::with_settings(Settings::for_tests()).await
    }

    pub async fn with_settings(settings: Settings) -> Self {
        Self::with_state(settings, |s| s).await
    }

    /// The standard fixture with the state adjusted (e.g. another retrainer).
    pub async fn with_state(settings: Settings, adjust: impl FnOnce(AppState) -> AppState) -> Self {
        let stores = Stores::memory().unwrap();
        let tenant = TenantId::default();
        let shop = demo::populate(stores.records.as_ref(), &tenant, 400, 7, now())
            .await
            .unwrap();
        train_and_publish(&stores, &tenant, "v1").await;
        let all = Scope::ALL;
        let (all_key, _) = key(&stores, &tenant, &all).await;
        let mut by_scope = Vec::new();
        for scope in Scope::ALL {
            by_scope.push((scope, key(&stores, &tenant, &[scope]).await.0));
        }
        let storefront = storefront_key(&stores, &tenant).await;
        let (recommend, _) = key(&stores, &tenant, &[Scope::Recommend]).await;
        let (ingest, _) = key(&stores, &tenant, &[Scope::Ingest]).await;
        let (revoked, revoked_id) = key(&stores, &tenant, &all).await;
        stores
            .records
            .revoke_key(&tenant, &revoked_id)
            .await
            .unwrap();
        let other = TenantId::parse("other-shop").unwrap();
        let (other_tenant, _) = key(&stores, &other, &all).await;
        let other_storefront = storefront_key(&stores, &other).await;
        let state = adjust(AppState::new(stores.clone(), &settings));
        Self {
            router: routes::router(state),
            stores,
            tenant,
            shop,
            keys: Keys {
                all: all_key,
                recommend,
                ingest,
                revoked,
                other_tenant,
                by_scope,
                storefront,
                other_storefront,
            },
        }
    }

    /// Sends one request; returns status and parsed JSON (Null for an empty body).
    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_owned())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        self.send(req).await
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        send_to(&self.router, req).await
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call("GET", uri, Some(&self.keys.all), None).await
    }

    pub async fn post(&self, uri: &str, body: &Value) -> (StatusCode, Value) {
        self.call("POST", uri, Some(&self.keys.all), Some(&body.to_string()))
            .await
    }
}

/// Asserts the JSON error shape and returns the code.
pub fn error_code(status: StatusCode, body: &Value) -> String {
    assert!(
        status.is_client_error() || status.is_server_error(),
        "expected an error, got {status}: {body}"
    );
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{status}: no error.code in {body}"));
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{status}: no error.message in {body}"
    );
    code.to_owned()
}

/// Item ids of an answer.
pub fn ids(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {body}"))
        .iter()
        .map(|i| i["item_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Checks what every recommendation answer must carry.
pub fn assert_answer_shape(body: &Value) {
    assert!(
        body["recommendation_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("rec_")),
        "{body}"
    );
    assert!(
        body["model_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    assert!(
        body["as_of"]
            .as_str()
            .is_some_and(|t| DateTime::parse_from_rfc3339(t).is_ok()),
        "{body}"
    );
    for item in body["items"].as_array().unwrap() {
        assert!(item["reason"]["kind"].is_string(), "no reason: {item}");
        assert!(item["explanation"].as_str().is_some_and(|e| !e.is_empty()));
    }
}

/// The live model as the router serves it.
pub async fn serving(app: &App) -> std::sync::Arc<affinity_service::loader::Serving> {
    let state = AppState::new(app.stores.clone(), &Settings::for_tests());
    state.models.get(&app.tenant).await.unwrap()
}

/// The CRM snapshot of that model version, as the offer routes read it.
pub async fn snapshot(
    app: &App,
    serving: &affinity_service::loader::Serving,
) -> std::sync::Arc<affinity_service::crm::CrmSnapshot> {
    let state = AppState::new(app.stores.clone(), &Settings::for_tests());
    state
        .models
        .crm(&app.tenant, serving)
        .await
        .unwrap()
        .expect("the demo model has a CRM snapshot")
}

/// Sends one request to `router` (the fixture's, or another instance over the same store);
/// returns status and parsed JSON (Null for an empty body, the text of an HTML page).
pub async fn send_to(router: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let html = res
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let json = if bytes.is_empty() {
        Value::Null
    } else if html && status.is_success() {
        // The model report page: its text, for tests that read it.
        Value::String(String::from_utf8_lossy(&bytes).into_owned())
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{status}: body is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, json)
}

/// A GET to `router` with a bearer `key`.
pub async fn get_from(router: &Router, key: &str, uri: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .uri(uri)
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap();
    send_to(router, req).await
}
