//! infra/template.yaml against the code, both ways: every alarm on the service's own
//! namespace watches a metric the code really emits (name, dimensions, statistic), and every
//! environment variable the template sets is read by the code, while the template's
//! environment alone is enough for each function's settings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use affinity_service::config::Config;
use affinity_service::http::state::AppState;
use affinity_service::metrics::{Metrics, MetricsConfig};
use affinity_service::retrain::{self, RetrainDeps, RetrainRequest};
use affinity_service::settings::Settings;
use affinity_store::Backend;
use serde_json::Value as Json;
use yaml_serde::Value;

use crate::fixture::App;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn template() -> Value {
    yaml_serde::from_str(&std::fs::read_to_string(root().join("infra/template.yaml")).unwrap())
        .unwrap()
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_mapping().and_then(|m| m.get(key))
}

/// The environment each function gets: the Globals' variables, then its own.
fn function_env(doc: &Value) -> BTreeMap<String, BTreeMap<String, Value>> {
    let globals = get(doc, "Globals")
        .and_then(|g| get(g, "Function"))
        .and_then(|f| get(f, "Environment"))
        .and_then(|e| get(e, "Variables"))
        .and_then(Value::as_mapping)
        .cloned()
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for (id, res) in get(doc, "Resources").unwrap().as_mapping().unwrap() {
        if get(res, "Type").and_then(Value::as_str) != Some("AWS::Serverless::Function") {
            continue;
        }
        let own = get(res, "Properties")
            .and_then(|p| get(p, "Environment"))
            .and_then(|e| get(e, "Variables"))
            .and_then(Value::as_mapping)
            .cloned()
            .unwrap_or_default();
        let mut env = BTreeMap::new();
        for (k, v) in globals.iter().chain(own.iter()) {
            env.insert(k.as_str().unwrap().to_owned(), v.clone());
        }
        out.insert(id.as_str().unwrap().to_owned(), env);
    }
    out
}

/// A stand-in for what CloudFormation would put in a variable: the literal, a parameter's
/// default for `!Ref Parameter`, a placeholder for other intrinsics (`!Ref X` -> `ref-X`), a
/// hex string for the generated secret.
fn resolve(doc: &Value, name: &str, v: &Value) -> String {
    if let Value::Tagged(t) = v
        && t.tag == "Ref"
        && let Some(default) = t
            .value
            .as_str()
            .and_then(|p| get(doc, "Parameters").and_then(|ps| get(ps, p)))
            .and_then(|p| get(p, "Default"))
    {
        return resolve(doc, name, default);
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Tagged(t) if name == "AFFINITY_LOG_HASH_KEY" => {
            assert!(
                t.value
                    .as_str()
                    .is_some_and(|s| s.contains("resolve:secretsmanager")),
                "the hash key must come from the generated secret: {t:?}"
            );
            "ab".repeat(32)
        }
        Value::Tagged(t) => format!(
            "ref-{}",
            t.value
                .as_str()
                .unwrap_or("x")
                .replace(|c: char| !c.is_ascii_alphanumeric(), "-")
        ),
        other => panic!("{name}: unexpected value {other:?}"),
    }
}

/// Every `AFFINITY_*` name the Rust sources mention.
fn names_read_by_the_code() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = ["functions", "libs", "cli", "model"]
        .map(|d| root().join(d))
        .to_vec();
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("tests") {
                    todo.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for piece in text.split('"').skip(1).step_by(2) {
                if piece.starts_with("AFFINITY_")
                    && piece
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                {
                    out.insert(piece.to_owned());
                }
            }
        }
    }
    out
}

#[test]
fn every_variable_the_template_sets_is_read_by_the_code() {
    let read = names_read_by_the_code();
    assert!(read.contains("AFFINITY_BACKEND"), "{read:?}");
    let mut unread = Vec::new();
    for (function, env) in function_env(&template()) {
        for name in env.keys() {
            if !read.contains(name) {
                unread.push(format!("{function}: {name}"));
            }
        }
    }
    assert!(
        unread.is_empty(),
        "set by the template, read by nothing: {unread:?}"
    );
}

#[test]
fn the_template_environment_is_enough_for_each_function() {
    let doc = template();
    let envs = function_env(&doc);
    assert_eq!(envs.len(), 2, "{:?}", envs.keys());
    for (function, env) in &envs {
        let vars: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.clone(), resolve(&doc, k, v)))
            .collect();
        let config = Config::from_lookup(|k: &str| vars.get(k).cloned()).unwrap();
        // Both functions open the AWS backend with the template's table prefix, the
        // artifact bucket and the offer-event retention the stack's parameter sets.
        let default_of = |param: &str| {
            let p = get(&doc, "Parameters")
                .and_then(|ps| get(ps, param))
                .unwrap();
            resolve(&doc, param, get(p, "Default").unwrap())
        };
        match config.backend().unwrap() {
            Backend::Aws {
                table_prefix,
                bucket,
                blob_prefix,
                offer_event_retention_days,
            } => {
                assert_eq!(table_prefix, default_of("TablePrefix"), "{function}");
                assert!(bucket.starts_with("ref-"), "{function}: bucket {bucket}");
                assert_eq!(blob_prefix, "", "{function}");
                assert_eq!(
                    offer_event_retention_days.unwrap_or(0).to_string(),
                    default_of("OfferEventRetentionDays"),
                    "{function}"
                );
            }
            other => panic!("{function}: backend {other:?}"),
        }
        let retrain = config.retrain().unwrap();
        assert!(
            retrain.metrics.namespace.is_some(),
            "{function}: no metrics namespace"
        );
        assert!(
            retrain.hash_key.is_some(),
            "{function}: no customer hash key"
        );
        // Each function's own settings load from its environment alone.
        let settings = config.settings().unwrap();
        if function == "ApiFunction" {
            assert!(
                settings.retrain_function.is_some(),
                "the api must hand retrains to the retrain function"
            );
        }
    }
}

/// What the code emits, captured: metric name -> (namespace, dimension names).
fn capture() -> (Metrics, Arc<Mutex<Vec<Json>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let config = MetricsConfig {
        namespace: Some("Affinity".into()),
        stack: "rehearsal".into(),
    };
    let metrics = Metrics::with_sink(
        &config,
        Arc::new(move |l: &str| sink.lock().unwrap().push(serde_json::from_str(l).unwrap())),
    );
    (metrics, lines)
}

fn emitted(lines: &[Json]) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out = BTreeMap::new();
    for line in lines {
        for spec in line["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
            let ns = spec["Namespace"].as_str().unwrap().to_owned();
            let dims: BTreeSet<String> = spec["Dimensions"][0]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_owned())
                .collect();
            for d in &dims {
                assert!(
                    line.get(d).is_some(),
                    "dimension {d} without a value: {line}"
                );
            }
            for m in spec["Metrics"].as_array().unwrap() {
                let name = m["Name"].as_str().unwrap().to_owned();
                assert!(line[&name].is_number(), "{name} without a value: {line}");
                out.insert(name, (ns.clone(), dims.clone()));
            }
        }
    }
    out
}

/// (namespace, metric, dimension names, statistic) of every metric an alarm watches.
fn alarm_metrics(doc: &Value) -> Vec<(String, String, String, BTreeSet<String>, String)> {
    let mut out = Vec::new();
    for (id, res) in get(doc, "Resources").unwrap().as_mapping().unwrap() {
        if get(res, "Type").and_then(Value::as_str) != Some("AWS::CloudWatch::Alarm") {
            continue;
        }
        let id = id.as_str().unwrap().to_owned();
        let props = get(res, "Properties").unwrap();
        let dims = |m: &Value| -> BTreeSet<String> {
            get(m, "Dimensions")
                .and_then(Value::as_sequence)
                .map(|ds| {
                    ds.iter()
                        .map(|d| get(d, "Name").and_then(Value::as_str).unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let text = |m: &Value, k: &str| get(m, k).and_then(Value::as_str).map(str::to_owned);
        if let Some(name) = text(props, "MetricName") {
            let stat = text(props, "Statistic")
                .or_else(|| text(props, "ExtendedStatistic"))
                .unwrap();
            out.push((
                id.clone(),
                text(props, "Namespace").unwrap(),
                name,
                dims(props),
                stat,
            ));
        }
        for q in get(props, "Metrics")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            if let Some(stat) = get(q, "MetricStat") {
                let m = get(stat, "Metric").unwrap();
                out.push((
                    id.clone(),
                    text(m, "Namespace").unwrap(),
                    text(m, "MetricName").unwrap(),
                    dims(m),
                    text(stat, "Stat").unwrap(),
                ));
            }
        }
    }
    out
}

#[tokio::test]
async fn alarms_watch_metrics_the_code_emits() {
    let (metrics, lines) = capture();
    // A request through the router and a retrain run, with metrics on.
    let app = App::new().await;
    let state = AppState::with_metrics(app.stores.clone(), &Settings::for_tests(), metrics.clone());
    let router = affinity_service::http::routes::router(state);
    let item = app.shop.example_item.clone();
    let req = axum::http::Request::builder()
        .uri(format!("/v1/items/{item}/similar"))
        .header("authorization", format!("Bearer {}", app.keys.all))
        .body(axum::body::Body::empty())
        .unwrap();
    let res = tower::ServiceExt::oneshot(router, req).await.unwrap();
    assert_eq!(res.status(), 200);
    let mut deps = RetrainDeps::new(app.stores.clone(), Settings::for_tests().retrain);
    deps.metrics = metrics;
    retrain::run_once(&deps, RetrainRequest::new(app.tenant.clone()))
        .await
        .unwrap();
    let emitted = emitted(&lines.lock().unwrap());
    for name in [
        affinity_service::metrics::REQUEST_LATENCY,
        affinity_service::metrics::REQUEST_ERRORS,
        affinity_service::metrics::MODEL_AGE,
        affinity_service::metrics::RETRAIN_SUCCEEDED,
        affinity_service::metrics::RETRAIN_FAILED,
    ] {
        assert!(
            emitted.contains_key(name),
            "{name} not emitted: {emitted:?}"
        );
    }

    let doc = template();
    let globals = &function_env(&doc)["ApiFunction"];
    let namespace = globals["AFFINITY_METRICS_NAMESPACE"]
        .as_str()
        .unwrap()
        .to_owned();
    // The Stack dimension's value is the stack name on both sides.
    assert_eq!(
        format!("{:?}", globals["AFFINITY_STACK"]),
        format!(
            "{:?}",
            yaml_serde::from_str::<Value>("!Ref AWS::StackName").unwrap()
        )
    );
    let ours: Vec<_> = alarm_metrics(&doc)
        .into_iter()
        .filter(|(_, ns, ..)| *ns == namespace)
        .collect();
    assert!(
        !ours.is_empty(),
        "no alarm watches the {namespace} namespace"
    );
    for (alarm, ns, name, dims, stat) in ours {
        let Some((emitted_ns, emitted_dims)) = emitted.get(&name) else {
            panic!("{alarm} watches {ns}/{name}, which the code never emits");
        };
        assert_eq!(emitted_ns, &ns, "{alarm}");
        assert_eq!(emitted_dims, &dims, "{alarm}: dimensions of {name}");
        assert!(
            ["Maximum", "Minimum", "Sum", "Average", "SampleCount"].contains(&stat.as_str())
                || stat.starts_with('p'),
            "{alarm}: statistic {stat}"
        );
    }
}

/// docs/operations.md's settings table: variable -> default column (backticks dropped).
fn documented_settings() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let section = text
        .split("\n## Settings\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/operations.md has a Settings section");
    section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.trim_matches('`');
            name.starts_with("AFFINITY_").then(|| {
                (
                    name.to_owned(),
                    cells.get(2).unwrap_or(&"").replace('`', ""),
                )
            })
        })
        .collect()
}

#[test]
fn the_settings_table_matches_the_loader_both_ways() {
    use clap::CommandFactory;
    #[derive(clap::Parser)]
    struct Loader {
        #[command(flatten)]
        config: Config,
    }
    let documented = documented_settings();
    let loaded: BTreeSet<String> = Config::variables()
        .into_iter()
        .filter(|v| v.starts_with("AFFINITY_"))
        .collect();
    let doc_names: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(
        doc_names, loaded,
        "docs/operations.md's table against Config"
    );
    // A default the loader declares is the one documented.
    for arg in Loader::command().get_arguments() {
        let (Some(env), Some(default)) = (arg.get_env(), arg.get_default_values().first()) else {
            continue;
        };
        let env = env.to_string_lossy();
        let default = default.to_string_lossy();
        let doc = &documented[env.as_ref()];
        assert!(
            doc.starts_with(default.as_ref()) || (default.is_empty() && doc.starts_with("empty")),
            "{env}: documented default {doc:?}, loader's {default:?}"
        );
    }
    // The retrain's defaults live in RetrainSettings::default().
    let d = retrain::RetrainSettings::default();
    for (env, value) in [
        ("AFFINITY_GATE_TOLERANCE", d.gate.tolerance.to_string()),
        (
            "AFFINITY_GATE_MIN_CUSTOMERS",
            d.gate.min_customers.to_string(),
        ),
        (
            "AFFINITY_HOLDOUT_CUSTOMERS",
            d.holdout.max_customers.to_string(),
        ),
        (
            "AFFINITY_RETRAIN_LEASE_SECONDS",
            d.lease.as_secs().to_string(),
        ),
        ("AFFINITY_SCAN_SEGMENTS", d.scan_segments.to_string()),
        ("AFFINITY_REFIT_ITERATIONS", d.refit_iterations.to_string()),
    ] {
        assert_eq!(documented[env], value, "{env}");
    }
}

/// Every `AFFINITY_*` variable a doc names is one the code reads.
#[test]
fn every_variable_the_docs_name_is_read() {
    let read = names_read_by_the_code();
    let mut files = vec![root().join("README.md"), root().join("infra/README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut unknown = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, _) in text.match_indices("AFFINITY_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let name = name.trim_end_matches('_');
            if !read.contains(name) {
                unknown.insert(format!("{}: {name}", file.display()));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "named by docs, read by nothing: {unknown:?}"
    );
}
