//! The model-admin routes: retrain (in this process, and through a Lambda `Invoke` sent to
//! a local HTTP server standing in for the Lambda API), versions, promote, rollback, jobs,
//! scopes and the error paths.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use affinity_service::retrain::invocation::request_from_payload;
use affinity_service::retrain::trigger::Retrainer;
use affinity_service::retrain::{RetrainSettings, TrainParams};
use affinity_service::settings::Settings;
use affinity_store::TenantId;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::fixture::{App, error_code};

/// A small, quick training configuration for retrains through the API.
const SMALL: &str = r#""params": {"factors": 8, "iterations": 3, "neighbours": 10}"#;

/// Sends a POST and returns status, `Location` header and JSON body.
async fn post_with_location(app: &App, uri: &str, body: &str) -> (StatusCode, String, Value) {
    let req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("authorization", format!("Bearer {}", app.keys.all))
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let res = app.router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let location = res
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, location, serde_json::from_slice(&bytes).unwrap())
}

/// Polls the job until it is done (bounded number of polls, not a time assertion).
async fn wait_for_job(app: &App, location: &str) -> Value {
    for _ in 0..2400 {
        let (s, job) = app.get(location).await;
        assert_eq!(s, StatusCode::OK, "{job}");
        if job["done"] == json!(true) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("job {location} never finished");
}

async fn live_version(app: &App) -> String {
    let (s, b) = app.get("/v1/models/live").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["model_version"].as_str().unwrap().to_owned()
}

async fn recommended_by(app: &App) -> String {
    let customer = &app.shop.example_customer;
    let (s, b) = app
        .get(&format!("/v1/customers/{customer}/recommendations?k=5"))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["model_version"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn model_admin_routes_need_the_models_admin_scope() {
    let app = App::new().await;
    let routes = [
        ("POST", "/v1/models:retrain", Some("{}")),
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/v1", None),
        ("POST", "/v1/models/v1/promote", Some("{}")),
        ("POST", "/v1/models:rollback", None),
        ("GET", "/v1/jobs/job-1", None),
    ];
    for (method, uri, body) in routes {
        for key in [&app.keys.recommend, &app.keys.ingest] {
            let (s, b) = app.call(method, uri, Some(key), body).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{method} {uri}: {b}");
            assert_eq!(error_code(s, &b), "insufficient_scope");
        }
        let (s, b) = app.call(method, uri, None, body).await;
        assert_eq!(error_code(s, &b), "missing_key", "{method} {uri}");
    }
    // Nothing was started by the refused retrains.
    let (_, list) = app.get("/v1/models").await;
    assert_eq!(list["versions"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn a_local_retrain_is_listed_and_promote_and_rollback_change_what_is_served() {
    // The pointer is not re-checked on its own during the test: what this process serves
    // changes only because the retrain, promote and rollback tell the loader.
    let settings = Settings {
        model_check: Duration::from_secs(3600),
        ..Settings::for_tests()
    };
    let app = App::with_settings(settings).await;
    let first = live_version(&app).await;
    assert_eq!(recommended_by(&app).await, first);

    let (s, location, accepted) = post_with_location(
        &app,
        "/v1/models:retrain",
        &format!(r#"{{"force": true, {SMALL}}}"#),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{accepted}");
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/jobs/{job_id}"));
    assert_eq!(accepted["location"], json!(location));
    assert_eq!(accepted["mode"], json!("local"));

    let job = wait_for_job(&app, &location).await;
    assert_eq!(job["status"], json!("succeeded"), "{job}");
    assert!(job["finished_at"].is_string(), "{job}");

    // The new version is listed first, live, with its evaluation and the gate's decision.
    let (s, list) = app.get("/v1/models").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let versions = list["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{list}");
    let new = versions[0]["model_version"].as_str().unwrap().to_owned();
    assert_ne!(new, first);
    assert_eq!(list["live"], json!(new));
    assert_eq!(list["previous"], json!(first));
    assert_eq!(versions[0]["status"], json!("live"));
    assert_eq!(versions[0]["live"], json!(true));
    assert_eq!(versions[1]["status"], json!("retired"));
    let metrics = &versions[0]["metrics"];
    assert!(
        metrics["evaluation"]["candidate"]["recall"].is_number(),
        "{metrics}"
    );
    assert!(metrics["evaluation"]["popularity"].is_object(), "{metrics}");
    assert_eq!(metrics["gate"]["forced"], json!(true), "{metrics}");
    assert_eq!(versions[0]["params"]["job_id"], json!(job_id));
    assert_eq!(versions[0]["params"]["config"]["als"]["factors"], json!(8));
    assert!(versions[0]["counts"]["purchases"].as_u64().unwrap() > 0);
    let (s, limited) = app.get("/v1/models?limit=1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(limited["versions"].as_array().unwrap().len(), 1);

    // Served at once by this process (the background run told the loader).
    assert_eq!(live_version(&app).await, new);
    assert_eq!(recommended_by(&app).await, new);

    let (s, shown) = app.get(&format!("/v1/models/{new}")).await;
    assert_eq!(s, StatusCode::OK, "{shown}");
    assert_eq!(shown["model_version"], json!(new));
    assert_eq!(shown["metrics"], versions[0]["metrics"]);

    // Rollback puts the first model back, for the live route and recommendations alike.
    let (s, p) = app.post("/v1/models:rollback", &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["live"], json!(first));
    assert_eq!(p["previous"], json!(new));
    assert_eq!(live_version(&app).await, first);
    assert_eq!(recommended_by(&app).await, first);

    // Promote makes the retrained one live again.
    let (s, p) = app
        .post(&format!("/v1/models/{new}/promote"), &json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["live"], json!(new));
    assert_eq!(live_version(&app).await, new);
    assert_eq!(recommended_by(&app).await, new);
    // Promoting the live version again changes nothing.
    let (s, again) = app
        .post(&format!("/v1/models/{new}/promote"), &json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["updated_at"], p["updated_at"]);

    // The same job id again starts nothing: the finished job answers.
    let (s, _, replay) = post_with_location(
        &app,
        "/v1/models:retrain",
        &format!(r#"{{"job_id": "{job_id}", {SMALL}}}"#),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{replay}");
    assert_eq!(replay["job_id"], json!(job_id));
    let job = wait_for_job(&app, &location).await;
    assert_eq!(job["status"], json!("succeeded"));
    let (_, list) = app.get("/v1/models").await;
    assert_eq!(list["versions"].as_array().unwrap().len(), 2, "{list}");
}

#[tokio::test]
async fn a_rejected_version_needs_force_and_a_held_lock_is_a_conflict() {
    let app = App::new().await;
    let first = live_version(&app).await;
    // One factor, one iteration: the gate keeps it out.
    let (s, location, _) = post_with_location(
        &app,
        "/v1/models:retrain",
        r#"{"params": {"factors": 1, "iterations": 1, "neighbours": 5}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let job = wait_for_job(&app, &location).await;
    assert_eq!(job["status"], json!("succeeded"), "{job}");
    let (_, list) = app.get("/v1/models").await;
    let rejected = &list["versions"][0];
    assert_eq!(rejected["status"], json!("rejected"), "{list}");
    assert_eq!(list["live"], json!(first));
    let version = rejected["model_version"].as_str().unwrap().to_owned();
    assert_eq!(live_version(&app).await, first);

    let (s, b) = app
        .post(&format!("/v1/models/{version}/promote"), &json!({}))
        .await;
    assert_eq!(error_code(s, &b), "conflict");
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(b["error"]["message"].as_str().unwrap().contains("force"));
    let (s, b) = app
        .post(
            &format!("/v1/models/{version}/promote"),
            &json!({"force": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(live_version(&app).await, version);

    // Another run holds the lock: the request is refused at once with 409.
    let tenant = TenantId::default();
    app.stores
        .records
        .acquire_lock(&tenant, "someone-else#1", Duration::from_secs(60))
        .await
        .unwrap();
    let (s, _, b) = post_with_location(&app, "/v1/models:retrain", &format!("{{{SMALL}}}")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already running"),
        "{b}"
    );
    // No body at all (as `curl -X POST` sends) means the defaults: it reaches the lock too.
    let (s, b) = app
        .call("POST", "/v1/models:retrain", Some(&app.keys.all), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    // A body with another media type is still refused.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/models:retrain")
        .header("authorization", format!("Bearer {}", app.keys.all))
        .header("content-type", "text/plain")
        .body(Body::from("force"))
        .unwrap();
    let (s, b) = app.send(req).await;
    assert_eq!(error_code(s, &b), "unsupported_media_type");
    // Promote without a body: force is false, the live version stays live.
    let (s, b) = app
        .call(
            "POST",
            &format!("/v1/models/{version}/promote"),
            Some(&app.keys.all),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["live"], json!(version));
}

#[tokio::test]
async fn not_found_conflict_and_invalid_answers_are_json() {
    let app = App::new().await;
    for uri in ["/v1/models/v-missing", "/v1/jobs/job-missing"] {
        let (s, b) = app.get(uri).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}: {b}");
        assert_eq!(error_code(s, &b), "not_found");
    }
    let (s, b) = app.post("/v1/models/v-missing/promote", &json!({})).await;
    assert_eq!(error_code(s, &b), "not_found");

    // The fixture's only version has no previous one; a tenant without models neither.
    let (s, b) = app.post("/v1/models:rollback", &json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    let (s, b) = app
        .call(
            "POST",
            "/v1/models:rollback",
            Some(&app.keys.other_tenant),
            None,
        )
        .await;
    assert_eq!(error_code(s, &b), "conflict");
    let (s, b) = app
        .call("GET", "/v1/models", Some(&app.keys.other_tenant), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["live"], Value::Null);
    assert_eq!(b["versions"], json!([]));

    let long = "x".repeat(300);
    for uri in [
        "/v1/models?limit=0".to_owned(),
        "/v1/models?limit=201".to_owned(),
        format!("/v1/models/{long}"),
        format!("/v1/jobs/{long}"),
    ] {
        let (s, b) = app.get(&uri).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {b}");
        error_code(s, &b);
    }
    let (s, b) = app.get("/v1/models?limit=1&offset=3").await;
    assert_eq!(error_code(s, &b), "invalid_query");

    for (body, code) in [
        (json!({"params": {"factors": 0}}), "invalid_field"),
        (json!({"params": {"neighbours": 9999}}), "invalid_field"),
        (json!({"tune": {"budget_seconds": 0}}), "invalid_field"),
        (json!({"job_id": ""}), "invalid_field"),
        (json!({"forse": true}), "invalid_body"),
        (json!({"params": {"factors": "many"}}), "invalid_body"),
    ] {
        let (s, b) = app.post("/v1/models:retrain", &body).await;
        assert_eq!(error_code(s, &b), code, "{body}: {b}");
    }
    let (s, b) = app
        .call(
            "POST",
            "/v1/models:retrain",
            Some(&app.keys.all),
            Some("{not json"),
        )
        .await;
    assert_eq!(error_code(s, &b), "malformed_json");
    // None of the refused requests left a job or a version behind.
    let (_, list) = app.get("/v1/models").await;
    assert_eq!(list["versions"].as_array().unwrap().len(), 1);
}

/// What the stand-in Lambda API saw.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A local HTTP server answering Lambda `Invoke` calls with `status`; returns its base URL
/// and the requests it received.
async fn fake_lambda(status: StatusCode) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = Arc::clone(&seen);
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let log = Arc::clone(&log);
            async move {
                log.lock().unwrap().push(Seen {
                    method,
                    path: uri.path().to_owned(),
                    headers,
                    body,
                });
                if status.is_success() {
                    (status, [("x-amzn-requestid", "req-1")], String::new())
                } else {
                    (
                        status,
                        [("x-amzn-errortype", "ResourceNotFoundException")],
                        r#"{"Type":"User","message":"Function not found: affinity-retrain"}"#
                            .to_owned(),
                    )
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn lambda_retrainer(endpoint: &str) -> Retrainer {
    use aws_sdk_lambda::config::{BehaviorVersion, Credentials, Region, retry::RetryConfig};
    let conf = aws_sdk_lambda::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .endpoint_url(endpoint)
        .retry_config(RetryConfig::disabled())
        .build();
    Retrainer::Lambda {
        client: aws_sdk_lambda::Client::from_conf(conf),
        function: "affinity-retrain".into(),
        settings: RetrainSettings::default(),
    }
}

#[tokio::test]
async fn on_lambda_the_api_invokes_the_retrain_function_asynchronously() {
    let (endpoint, seen) = fake_lambda(StatusCode::ACCEPTED).await;
    let retrainer = lambda_retrainer(&endpoint);
    let app = App::with_state(Settings::for_tests(), |s| s.with_retrainer(retrainer)).await;
    let (s, location, accepted) = post_with_location(
        &app,
        "/v1/models:retrain",
        r#"{"force": true, "job_id": "nightly-7", "params": {"factors": 24}, "tune": {"budget_seconds": 30}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["mode"], json!("lambda"));
    assert_eq!(accepted["job_id"], json!("nightly-7"));
    assert_eq!(location, "/v1/jobs/nightly-7");

    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let r = &requests[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.path, "/2015-03-31/functions/affinity-retrain/invocations");
    assert_eq!(r.headers["x-amz-invocation-type"], "Event");
    assert!(
        r.headers["authorization"]
            .to_str()
            .unwrap()
            .starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/"),
        "the request is signed"
    );
    let payload: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        payload,
        json!({
            "tenant": "default",
            "job_id": "nightly-7",
            "force": true,
            "params": {"factors": 24, "iterations": null, "regularization": null, "alpha": null,
                       "reg_exponent": null, "half_life_days": null, "neighbours": null},
            "tune": {"budget_seconds": 30},
            "trigger": "api"
        })
    );
    // The retrain function reads exactly this payload.
    let parsed = request_from_payload(payload, &TenantId::default(), "fallback").unwrap();
    assert_eq!(parsed.job_id.unwrap().as_str(), "nightly-7");
    assert!(parsed.force);
    assert_eq!(
        parsed.params,
        TrainParams {
            factors: Some(24),
            ..TrainParams::default()
        }
    );

    // The job is visible at once, queued for the function.
    let (s, job) = app.get(&location).await;
    assert_eq!(s, StatusCode::OK, "{job}");
    assert_eq!(job["status"], json!("running"));
    assert!(job["message"].as_str().unwrap().contains("queued"), "{job}");

    // Invalid parameters are refused before anything is invoked.
    let (s, b) = app
        .post("/v1/models:retrain", &json!({"params": {"factors": 0}}))
        .await;
    assert_eq!(error_code(s, &b), "invalid_field");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_failed_invoke_is_a_503_and_fails_the_job() {
    let (endpoint, seen) = fake_lambda(StatusCode::NOT_FOUND).await;
    let retrainer = lambda_retrainer(&endpoint);
    let app = App::with_state(Settings::for_tests(), |s| s.with_retrainer(retrainer)).await;
    let (s, b) = app
        .post("/v1/models:retrain", &json!({"job_id": "nightly-8"}))
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert_eq!(error_code(s, &b), "unavailable");
    assert_eq!(seen.lock().unwrap().len(), 1);
    let (s, job) = app.get("/v1/jobs/nightly-8").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(job["status"], json!("failed"), "{job}");
    assert_eq!(job["done"], json!(true));
    assert!(
        job["message"].as_str().unwrap().contains("not started"),
        "{job}"
    );
}
