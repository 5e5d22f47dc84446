//! Real API Gateway HTTP API (payload v2.0) events through lambda_http's adapter (what
//! `lambda_http::run` does with each invocation) into the same router.

use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Context, LambdaEvent, Service};
use serde_json::{Value, json};

use crate::fixture::App;

/// An API Gateway v2 event as Lambda delivers it (shape from the AWS documentation).
fn event(method: &str, path: &str, query: &str, key: &str, body: Option<&str>) -> String {
    let mut query_params = serde_json::Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        query_params.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "cookies": ["session=abc"],
        "headers": {
            "accept": "application/json",
            "authorization": format!("Bearer {key}"),
            "content-type": "application/json",
            "content-length": body.map_or(0, str::len).to_string(),
            "host": "r3pmxmplak.execute-api.us-east-2.amazonaws.com",
            "user-agent": "curl/8.5.0",
            "x-amzn-trace-id": "Root=1-5e6722a7-cc56xmpl46db7ae02d4da47e",
            "x-forwarded-for": "205.255.255.176",
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https"
        },
        "queryStringParameters": query_params,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "r3pmxmplak",
            "domainName": "r3pmxmplak.execute-api.us-east-2.amazonaws.com",
            "domainPrefix": "r3pmxmplak",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "205.255.255.176",
                "userAgent": "curl/8.5.0"
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "10/Mar/2026:00:03:59 +0000",
            "timeEpoch": 1773101039000_u64
        },
        "body": body,
        "isBase64Encoded": false
    })
    .to_string()
}

async fn invoke(app: &App, event_json: &str) -> Value {
    let payload: LambdaRequest = serde_json::from_str(event_json).unwrap();
    let mut context = Context::default();
    context.request_id = "8476a536-e9f4-11e8-9739-2dfe598c3fcd".into();
    let mut adapter = Adapter::from(app.router.clone());
    let res = adapter
        .call(LambdaEvent::new(payload, context))
        .await
        .unwrap();
    serde_json::to_value(&res).unwrap()
}

fn body(res: &Value) -> Value {
    serde_json::from_str(res["body"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn api_gateway_v2_events_reach_the_router() {
    let app = App::new().await;
    let item = app.shop.example_item.clone();
    let res = invoke(
        &app,
        &event(
            "GET",
            &format!("/v1/items/{item}/similar"),
            "k=3",
            &app.keys.all,
            None,
        ),
    )
    .await;
    assert_eq!(res["statusCode"], 200, "{res}");
    assert_eq!(res["headers"]["content-type"], "application/json");
    // Lambda's request id is the request id of the logs and the answer header.
    assert_eq!(
        res["headers"]["x-request-id"],
        "8476a536-e9f4-11e8-9739-2dfe598c3fcd"
    );
    let b = body(&res);
    assert_eq!(b["items"].as_array().unwrap().len(), 3);
    assert_eq!(b["model_version"], "v1");

    let basket = json!({"items": app.shop.example_basket, "k": 2}).to_string();
    let res = invoke(
        &app,
        &event(
            "POST",
            "/v1/baskets/similar",
            "",
            &app.keys.all,
            Some(&basket),
        ),
    )
    .await;
    assert_eq!(res["statusCode"], 200, "{res}");
    assert_eq!(body(&res)["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn lambda_errors_are_json_too() {
    let app = App::new().await;
    let res = invoke(
        &app,
        &event("GET", "/v1/items/x/similar", "k=0", &app.keys.all, None),
    )
    .await;
    assert_eq!(res["statusCode"], 400);
    assert_eq!(body(&res)["error"]["code"], "invalid_query");
    let res = invoke(&app, &event("GET", "/v1/models/live", "", "wrong", None)).await;
    assert_eq!(res["statusCode"], 401);
    assert_eq!(body(&res)["error"]["code"], "invalid_key");
    let res = invoke(
        &app,
        &event(
            "POST",
            "/v1/purchases",
            "",
            &app.keys.all,
            Some("{\"purchases\":"),
        ),
    )
    .await;
    assert_eq!(res["statusCode"], 400);
    assert_eq!(body(&res)["error"]["code"], "malformed_json");
}
