//! The OpenAPI document against the router, both ways: the committed docs/openapi.json is
//! the generated one; every documented operation is routed; every route of the router is
//! documented; and no undocumented method answers on a documented path.
//!
//! Regenerate the committed file with `AFFINITY_UPDATE_OPENAPI=1 cargo test -p
//! affinity-service --test api openapi`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use axum::http::StatusCode;
use serde_json::Value;

use crate::fixture::{App, error_code};

const METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

/// (method, path) of every operation in a document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(*m).is_some() {
                ops.insert((m.to_string(), path.clone()));
            }
        }
    }
    ops
}

/// A concrete URI for a templated path.
fn concrete(path: &str) -> String {
    path.replace("{item_id}", "probe-item")
        .replace("{customer_id}", "probe-customer")
        .replace("{version}", "probe-version")
        .replace("{job_id}", "probe-job")
}

#[test]
fn committed_document_is_the_generated_one() {
    let generated = affinity_service::http::routes::openapi_json();
    let path = committed_path();
    if std::env::var_os("AFFINITY_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, format!("{generated}\n")).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let a: Value = serde_json::from_str(generated).unwrap();
    let b: Value = serde_json::from_str(&committed).unwrap_or(Value::Null);
    assert!(
        a == b,
        "docs/openapi.json is stale: run `AFFINITY_UPDATE_OPENAPI=1 cargo test -p affinity-service --test api openapi` and commit it"
    );
}

#[tokio::test]
async fn served_document_equals_the_committed_one() {
    let app = App::new().await;
    let (s, served) = app.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(committed_path()).unwrap()).unwrap();
    assert!(
        served == committed,
        "the served document differs from docs/openapi.json"
    );
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_nothing_else_is() {
    let app = App::new().await;
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(committed_path()).unwrap()).unwrap();
    let documented = operations(&doc);
    assert!(documented.len() >= 8, "{documented:?}");
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        for m in METHODS {
            let (status, body) = app
                .call(&m.to_uppercase(), &concrete(path), None, None)
                .await;
            let code = if status.is_success() {
                String::new()
            } else {
                error_code(status, &body)
            };
            if documented.contains(&(m.to_string(), path.clone())) {
                assert!(
                    code != "route_not_found" && code != "method_not_allowed",
                    "documented {m} {path} is not routed: {status} {body}"
                );
            } else {
                assert_eq!(
                    code, "method_not_allowed",
                    "undocumented {m} {path} answered {status}"
                );
            }
        }
    }
}

/// The router's own route table (from axum's debug description of it) against the
/// document, so a route added outside the OpenAPI registration fails here.
#[test]
fn every_route_of_the_router_is_documented() {
    let state = affinity_service::http::state::AppState::new(
        affinity_store::Stores::memory().unwrap(),
        &affinity_service::settings::Settings::for_tests(),
    );
    let debug = format!("{:?}", affinity_service::http::routes::router(state));
    let mut routed = BTreeSet::new();
    for piece in debug.split('"') {
        if piece.starts_with("/v1/") {
            routed.insert(piece.to_owned());
        }
    }
    assert!(
        !routed.is_empty(),
        "no routes found in the router description"
    );
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(committed_path()).unwrap()).unwrap();
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(routed, documented);
}

/// Whether a path a document names is one the router serves: `{param}` segments of the
/// router's paths stand for any segment, and a doc's own `{param}` matches only those.
fn routed(doc_path: &str, routes: &BTreeSet<String>) -> bool {
    let placeholder = |s: &str| s.len() > 2 && s.starts_with('{') && s.ends_with('}');
    let segs: Vec<&str> = doc_path.split('/').collect();
    routes.iter().any(|route| {
        let route: Vec<&str> = route.split('/').collect();
        route.len() == segs.len()
            && route.iter().zip(&segs).all(|(r, d)| {
                if placeholder(r) {
                    !d.is_empty()
                } else {
                    r == d
                }
            })
    })
}

/// Every `/v1/...` path in one text, without query string or trailing punctuation.
fn v1_paths(text: &str) -> Vec<String> {
    let path_char = |c: char| c.is_ascii_alphanumeric() || "_{}.:~-/".contains(c);
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("/v1/") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !path_char(c)).unwrap_or(tail.len());
        let path = tail[..end].trim_end_matches(['.', ':', ',', '/']);
        if path.len() > "/v1".len() {
            found.push(path.to_owned());
        }
        rest = &tail[end.max(1)..];
    }
    found
}

/// The docs (docs/*.md and README.md) name only routes the router has: a renamed or
/// removed route, or a typo in a doc, fails here.
#[test]
fn every_route_the_docs_name_exists() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let doc: Value = serde_json::from_str(affinity_service::http::routes::openapi_json()).unwrap();
    let routes: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut named = 0;
    let mut missing = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for path in v1_paths(&text) {
            named += 1;
            if !routed(&path, &routes) {
                missing.push(format!("{}: {path}", file.display()));
            }
        }
    }
    assert!(named > 20, "only {named} /v1 paths found in {files:?}");
    assert!(
        missing.is_empty(),
        "the docs name routes the router does not have:\n{}",
        missing.join("\n")
    );
}

#[test]
fn doc_paths_are_read_and_matched_as_routes() {
    let text = "Send `POST /v1/purchases?dry=1`, then /v1/models:retrain. See \
                \"$AFFINITY/v1/items/sku-1/similar?k=5\" and /v1/items/{item_id}/audience:";
    assert_eq!(
        v1_paths(text),
        [
            "/v1/purchases",
            "/v1/models:retrain",
            "/v1/items/sku-1/similar",
            "/v1/items/{item_id}/audience"
        ]
    );
    let routes: BTreeSet<String> = [
        "/v1/purchases",
        "/v1/models:retrain",
        "/v1/models/{version}",
        "/v1/items/{item_id}/similar",
    ]
    .map(str::to_owned)
    .into();
    assert!(routed("/v1/items/sku-1/similar", &routes));
    assert!(routed("/v1/items/{id}/similar", &routes));
    assert!(routed("/v1/models:retrain", &routes));
    assert!(!routed("/v1/models:retrain/now", &routes));
    assert!(!routed("/v1/customers/{customer_id}", &routes));
    assert!(!routed("/v1/purchase", &routes));
}
