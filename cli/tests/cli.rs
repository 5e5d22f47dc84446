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

// ---------------------------------------------------------------------------------------
// `affinity recommend`

#[path = "../../tests/support/cli.rs"]
mod run;
use run::ok;

/// Runs this test run's binary against the embedded store in `data`.
fn affinity_in(data: &Path, args: &[&str]) -> std::process::Output {
    run::affinity_in(Path::new(env!("CARGO_BIN_EXE_affinity")), data, args)
}

/// A small demo shop, trained and live, in `dir/store`.
fn small_shop(dir: &Path) {
    ok(&affinity_in(
        dir,
        &["demo", "--customers", "300", "--seed", "7", "--json"],
    ));
}

/// Every `.afm` artifact under `dir`.
fn artifacts(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "afm") {
                out.push(p);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// `affinity customers` and storefront keys

#[test]
fn customers_consent_and_delete_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    small_shop(d);
    let profile = |c: &str| -> serde_json::Value {
        serde_json::from_str(&ok(&affinity_in(d, &["profile", c, "--json"]))).unwrap()
    };
    assert_eq!(profile("cust-00005")["known"], true);

    let out = ok(&affinity_in(
        d,
        &[
            "customers",
            "consent",
            "cust-00005",
            "--personalization",
            "false",
            "--marketing",
            "true",
            "--json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["consent"]["personalization"], false, "{v}");
    assert_eq!(
        profile("cust-00005")["consent"],
        serde_json::json!({"personalization": false, "marketing": true})
    );
    // A value that is not a boolean is a usage error.
    let bad = affinity_in(
        d,
        &[
            "customers",
            "consent",
            "c",
            "--personalization",
            "maybe",
            "--marketing",
            "true",
        ],
    );
    assert_eq!(bad.status.code(), Some(2));

    let erased: serde_json::Value = serde_json::from_str(&ok(&affinity_in(
        d,
        &["customers", "delete", "cust-00005", "--json"],
    )))
    .unwrap();
    assert!(erased["purchases"].as_u64().unwrap() > 0, "{erased}");
    assert_eq!(erased["customer_records"], 1, "{erased}");
    assert_eq!(erased["insight_snapshots"], 1, "{erased}");
    assert_eq!(profile("cust-00005")["known"], false);
    let again = ok(&affinity_in(d, &["customers", "delete", "cust-00005"]));
    assert!(again.contains("nothing left to erase"), "{again}");
}

#[test]
fn storefront_keys_sign_tokens_and_list_as_storefront() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let created: serde_json::Value = serde_json::from_str(&ok(&affinity_in(
        d,
        &["keys", "create", "--storefront", "--label", "web", "--json"],
    )))
    .unwrap();
    assert_eq!(created["kind"], "storefront");
    let key_id = created["key_id"].as_str().unwrap();
    let secret = created["signing_secret"].as_str().unwrap();
    assert_eq!(secret.len(), 64);
    let out = Command::new(env!("CARGO_BIN_EXE_affinity"))
        .args([
            "keys",
            "sign",
            "--key-id",
            key_id,
            "--customer",
            "cust-1",
            "--ttl",
            "60",
        ])
        .env("AFFINITY_SIGNING_SECRET", secret)
        .env_remove("AFFINITY_TENANT")
        .output()
        .unwrap();
    let token = ok(&out);
    assert!(
        token.starts_with(&format!("aft1.default.{key_id}.")),
        "{token}"
    );
    // Too long a life, or scopes with a storefront key, are usage errors.
    let long = affinity_in(
        d,
        &[
            "keys",
            "sign",
            "--key-id",
            key_id,
            "--secret",
            secret,
            "--customer",
            "c",
            "--ttl",
            "90000",
        ],
    );
    assert!(!long.status.success());
    let both = affinity_in(
        d,
        &["keys", "create", "--storefront", "--scopes", "recommend"],
    );
    assert_eq!(both.status.code(), Some(2));
    // The retired `offers` scope is refused with the names that replace it.
    let old = affinity_in(d, &["keys", "create", "--scopes", "offers"]);
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("offers-decide"),
        "{}",
        String::from_utf8_lossy(&old.stderr)
    );
    let listed = ok(&affinity_in(d, &["keys", "list", "--json"]));
    let first: serde_json::Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(first["kind"], "storefront");
    assert!(
        !listed.contains(secret),
        "a listing never shows the signing secret"
    );
}

#[test]
fn recommend_writes_the_api_answers_as_csv_and_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    small_shop(d);

    // A CSV with a customer_id column (not the first), plus one id on the command line
    // that the shop has never seen.
    let list = d.join("mailing.csv");
    std::fs::write(&list, "name,customer_id\nAda,cust-00000\nBo,cust-00001\n").unwrap();
    let out_csv = d.join("recs.csv");
    let stdout = ok(&affinity_in(
        d,
        &[
            "recommend",
            "--customers",
            list.to_str().unwrap(),
            "--customer",
            "nobody-yet",
            "--k",
            "4",
            "--out",
            out_csv.to_str().unwrap(),
        ],
    ));
    assert!(
        stdout.is_empty(),
        "--out writes the file, not stdout: {stdout}"
    );
    let mut r = csv::Reader::from_path(&out_csv).unwrap();
    assert_eq!(
        r.headers().unwrap(),
        vec![
            "customer_id",
            "rank",
            "item_id",
            "score",
            "reason",
            "fallback"
        ]
    );
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    let of = |c: &str| -> Vec<&csv::StringRecord> { rows.iter().filter(|r| &r[0] == c).collect() };
    assert_eq!(rows.len(), 12, "{rows:?}");
    for c in ["cust-00000", "cust-00001", "nobody-yet"] {
        let mine = of(c);
        let ranks: Vec<&str> = mine.iter().map(|r| &r[1]).collect();
        assert_eq!(ranks, ["1", "2", "3", "4"], "{c}");
        let scores: Vec<f32> = mine.iter().map(|r| r[3].parse().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{c}: {scores:?}");
        assert!(mine.iter().all(|r| !r[4].is_empty()), "every row says why");
    }
    // Known customers get the personal ranking; the stranger popular items, flagged.
    assert!(of("cust-00000").iter().all(|r| r[5].is_empty()));
    assert!(of("nobody-yet").iter().all(|r| &r[5] == "unknown_customer"));
    assert!(of("nobody-yet").iter().all(|r| r[4].contains("popular")));

    // JSON lines to stdout from a plain list: one API answer per customer, in order.
    let plain = d.join("ids.txt");
    std::fs::write(&plain, "cust-00000\n\nnobody-yet\n").unwrap();
    let jsonl = ok(&affinity_in(
        d,
        &[
            "recommend",
            "--customers",
            plain.to_str().unwrap(),
            "--k",
            "4",
            "--format",
            "jsonl",
        ],
    ));
    let lines: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["customer_id"], "cust-00000");
    assert_eq!(lines[0]["personalized"], true);
    assert!(lines[0].get("fallback").is_none());
    assert!(
        lines[0]["recommendation_id"]
            .as_str()
            .unwrap()
            .starts_with("rec_")
    );
    assert_eq!(lines[1]["customer_id"], "nobody-yet");
    assert_eq!(lines[1]["personalized"], false);
    assert_eq!(lines[1]["fallback"], "unknown_customer");
    // The CSV and the JSON lines are the same answers.
    let csv_items: Vec<&str> = of("cust-00000").iter().map(|r| &r[2]).collect();
    let json_items: Vec<&str> = lines[0]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item_id"].as_str().unwrap())
        .collect();
    assert_eq!(csv_items, json_items);
    for item in lines[0]["items"].as_array().unwrap() {
        assert_eq!(item["reason"]["kind"], "for_you", "{item}");
    }

    // Fold-in of the history as it is now: a purchase imported after training makes the
    // stranger's answer personal at once, and the bought item is left out.
    let bought = d.join("bought.csv");
    std::fs::write(
        &bought,
        "order_id,line,customer_id,item_id,unit_price_minor,purchased_at\n\
         web-1,1,nobody-yet,sku-0000,1200,2024-05-01T10:00:00Z\n",
    )
    .unwrap();
    ok(&affinity_in(
        d,
        &["import", "purchases", bought.to_str().unwrap()],
    ));
    let after = ok(&affinity_in(
        d,
        &[
            "recommend",
            "--customer",
            "nobody-yet",
            "--k",
            "4",
            "--json",
        ],
    ));
    let after: serde_json::Value = serde_json::from_str(after.trim()).unwrap();
    assert_eq!(after["personalized"], true, "{after}");
    assert!(after.get("fallback").is_none(), "{after}");
    for item in after["items"].as_array().unwrap() {
        assert_ne!(item["item_id"], "sku-0000", "already bought: {after}");
        assert_eq!(item["reason"]["because_of"], "sku-0000", "{after}");
    }

    // The same model read from its artifact file gives the same ranking.
    let files = artifacts(&d.join("store"));
    assert_eq!(files.len(), 1, "{files:?}");
    let from_file = ok(&affinity_in(
        d,
        &[
            "recommend",
            "--customer",
            "cust-00000",
            "--k",
            "4",
            "--format",
            "jsonl",
            "--model",
            files[0].to_str().unwrap(),
        ],
    ));
    let f: serde_json::Value = serde_json::from_str(from_file.trim()).unwrap();
    assert_eq!(f["model_version"], lines[0]["model_version"]);
    assert_eq!(f["items"], lines[0]["items"]);
}

#[test]
fn recommend_refuses_bad_k_missing_files_and_no_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Bad k: a usage error (exit 2), before anything is read.
    for k in ["0", "101", "ten"] {
        let out = affinity_in(d, &["recommend", "--customer", "c1", "--k", k]);
        assert_eq!(out.status.code(), Some(2), "k = {k}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--k"), "{err}");
    }
    // No customers at all: a usage error too.
    let out = affinity_in(d, &["recommend"]);
    assert_eq!(out.status.code(), Some(2));
    // No model is live in an empty store: say how to get one.
    let out = affinity_in(d, &["recommend", "--customer", "c1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("affinity train"), "{err}");
    // An unreadable customer file, a missing artifact, a file that is not an artifact.
    let out = affinity_in(d, &["recommend", "--customers", "/nonexistent/ids.txt"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ids.txt"));
    let out = affinity_in(
        d,
        &[
            "recommend",
            "--customer",
            "c1",
            "--model",
            "/nonexistent/m.afm",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/m.afm"));
    let junk = d.join("junk.afm");
    std::fs::write(&junk, b"not a model").unwrap();
    let out = affinity_in(
        d,
        &[
            "recommend",
            "--customer",
            "c1",
            "--model",
            junk.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a usable model artifact"), "{err}");
    // A CSV without the column, and an invalid id, named by file and line.
    let other = d.join("other.csv");
    std::fs::write(&other, "name,email\nAda,ada@example.org\n").unwrap();
    let out = affinity_in(d, &["recommend", "--customers", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no `customer_id` column"), "{err}");
    let bad = d.join("bad.csv");
    std::fs::write(&bad, "customer_id,x\nok-1,1\n,2\n").unwrap();
    let out = affinity_in(d, &["recommend", "--customers", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.csv:3"), "{err}");
}
