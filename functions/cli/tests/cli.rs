//! The `affinity` binary as a user runs it: arguments in, text or JSON out, exit codes.
#![allow(clippy::unwrap_used)] // test fixtures: a failed write should fail the test

use std::path::Path;
use std::process::Command;

/// Writes a seeded interaction file with two taste groups, split per customer.
fn write_split(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut train = String::from("customer_id,item_id,quantity,purchased_at\n");
    let mut test = String::from("customer_id,item_id\n");
    for c in 0..120 {
        let group = c % 2;
        for j in 0..10 {
            let item = format!("g{group}-i{}", (c + j) % 12);
            if j == 0 {
                test.push_str(&format!("c{c},{item}\n"));
            } else {
                train.push_str(&format!("c{c},{item},1,2024-05-{:02}\n", 1 + j));
            }
        }
    }
    // A test row for a customer train never saw, and one for an item train never saw.
    test.push_str("stranger,g0-i1\nc0,brand-new\n");
    let (tr, te) = (dir.join("train.csv"), dir.join("test.csv"));
    std::fs::write(&tr, train).unwrap();
    std::fs::write(&te, test).unwrap();
    (tr, te)
}

fn affinity(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_affinity"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn eval_scores_a_user_split_and_beats_popularity() {
    let dir = tempfile::tempdir().unwrap();
    let (tr, te) = write_split(dir.path());
    let out = affinity(&[
        "eval",
        "--train",
        tr.to_str().unwrap(),
        "--test",
        te.to_str().unwrap(),
        "--factors",
        "8",
        "--reg",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["k"], 10);
    assert_eq!(v["train_rows"], 1080);
    assert_eq!(v["test"]["rows"], 122);
    assert_eq!(v["test"]["unknown_customer_rows"], 1);
    assert_eq!(v["test"]["unknown_item_rows"], 1);
    assert_eq!(v["test"]["customers"], 120);
    let (aff, pop) = (&v["affinity"], &v["popularity"]);
    for m in [aff, pop] {
        for key in ["recall", "ndcg", "hit_rate", "precision", "coverage"] {
            let x = m[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&x), "{key} = {x}");
        }
    }
    // Two clean taste groups: the model must find the held-out item far more often.
    assert!(
        aff["recall"].as_f64().unwrap() > pop["recall"].as_f64().unwrap() + 0.2,
        "{v}"
    );
}

#[test]
fn eval_names_file_line_and_field_of_a_bad_row() {
    let dir = tempfile::tempdir().unwrap();
    let (tr, te) = write_split(dir.path());
    let mut text = std::fs::read_to_string(&tr).unwrap();
    text.push_str("c1,g1-i3,zero,2024-05-01\n");
    std::fs::write(&tr, text).unwrap();
    let out = affinity(&[
        "eval",
        "--train",
        tr.to_str().unwrap(),
        "--test",
        te.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("train.csv:1082") && err.contains("`quantity`"),
        "{err}"
    );
    let out = affinity(&["eval", "--train", "/nonexistent.csv", "--test", "x.csv"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.csv"));
}

#[test]
fn report_writes_a_self_contained_page_for_the_live_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_affinity"))
            .args(args)
            .env("AFFINITY_BACKEND", "embedded")
            .env("AFFINITY_DATA_DIR", &data)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    // Before any model: a clear error, exit code 1.
    let out = run(&["report"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no live model"));

    let out = run(&["demo", "--customers", "300", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["report", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let version = v["version"].as_str().unwrap();
    let path = v["path"].as_str().unwrap();
    assert_eq!(path, format!("report-{version}.html"));
    let html = std::fs::read_to_string(dir.path().join(path)).unwrap();
    assert!(html.contains(&format!("<h1>Model report {version}</h1>")));
    assert_eq!(
        html.matches("<svg").count(),
        4,
        "no offer events yet: four plots"
    );
    assert!(html.contains("No offer events recorded yet"));
    assert!(!html.contains("http://") && !html.contains("https://"));

    let out = run(&["report", "--version", version, "--out", "r.html"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("r.html"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("r.html"))
            .unwrap()
            .len(),
        html.len()
    );
    let out = run(&["report", "--version", "v-missing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found: v-missing"));
}
