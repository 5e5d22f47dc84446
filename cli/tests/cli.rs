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

/// Runs the binary against the embedded store in `data`, with nothing from the caller's
/// environment choosing another store or tenant.
fn affinity_in(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_affinity"))
        .args(args)
        .current_dir(data)
        .env("AFFINITY_DATA_DIR", data.join("store"))
        .env_remove("AFFINITY_BACKEND")
        .env_remove("AFFINITY_TENANT")
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
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

// ---------------------------------------------------------------------------------------
// The README's tour against `affinity serve --demo` (the issue's CI smoke test)

/// The running demo server; killed by PID when dropped, also when an assertion fails.
struct Server {
    child: std::process::Child,
    /// Everything it printed on stdout so far, line by line (drained by a thread, so the
    /// pipe never fills).
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The README's tour block: `#` comments and one-line curl commands.
fn readme_tour() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let (_, after) = readme.split_once("<!-- tour:begin").unwrap();
    let (block, _) = after.split_once("<!-- tour:end -->").unwrap();
    let (_, fenced) = block.split_once("```sh\n").unwrap();
    let (body, _) = fenced.split_once("```").unwrap();
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Runs one README command as a user would (a POSIX shell, real curl) with `KEY` and
/// `AFFINITY` set; returns the HTTP status and the body as JSON.
fn run_example(line: &str, key: &str, base: &str) -> (u16, serde_json::Value) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{line} -w '\\n%{{http_code}}'"))
        .env("KEY", key)
        .env("AFFINITY", base)
        .output()
        .unwrap();
    assert!(out.status.success(), "{line}: curl failed: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    let body =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{line}: not JSON ({e}): {body}"));
    (code.parse().unwrap(), body)
}

fn item_ids(answer: &serde_json::Value) -> Vec<String> {
    answer["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {answer}"))
        .iter()
        .map(|i| i["item_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The text between `start` and the next `end` in `s`, if both are there.
fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let (_, rest) = s.split_once(start)?;
    Some(rest.split_once(end)?.0)
}

#[test]
fn readme_tour_runs_against_the_demo_server() {
    let dir = tempfile::tempdir().unwrap();
    // Port 0: the server binds a free port itself and prints it (no race with other tests
    // for a port chosen here).
    let mut child = Command::new(env!("CARGO_BIN_EXE_affinity"))
        .args(["serve", "--demo", "--addr", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("AFFINITY_DATA_DIR", dir.path().join("store"))
        .env_remove("AFFINITY_BACKEND")
        .env_remove("AFFINITY_TENANT")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr.txt")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let server = Server { child, lines: rx };

    // Wait (bounded) for the demo shop, the training and the listener.
    let mut printed = Vec::new();
    loop {
        match server
            .lines
            .recv_timeout(std::time::Duration::from_secs(900))
        {
            Ok(l) => {
                let serving = l.starts_with("serving on ");
                printed.push(l);
                if serving {
                    break;
                }
            }
            Err(e) => panic!(
                "the demo server stopped or hung before serving ({e}); stdout: {printed:#?}; stderr: {}",
                std::fs::read_to_string(dir.path().join("stderr.txt")).unwrap_or_default()
            ),
        }
    }
    let addr = printed
        .last()
        .and_then(|l| between(l, "serving on http://", " "))
        .unwrap_or_else(|| panic!("no address printed: {printed:#?}"))
        .to_owned();
    let base = format!("http://{addr}");
    let mut up = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(up, "nothing listens on {addr}");
    let all = printed.join("\n");
    let key = all
        .split_whitespace()
        .find(|w| w.starts_with("aff_"))
        .unwrap_or_else(|| panic!("no development key printed: {all}"))
        .to_owned();
    let version = between(&all, "model ", " is live")
        .unwrap_or_else(|| panic!("no live model printed: {all}"))
        .to_owned();

    // The server printed the README's tour, with its key and address filled in.
    let tour = readme_tour();
    for line in &tour {
        let filled = line.replace("$KEY", &key).replace("$AFFINITY", &base);
        assert!(
            printed.iter().any(|p| p.trim() == filled),
            "`serve --demo` does not print the README line {line}"
        );
    }

    // Categories of the demo catalog, to judge the answers as a person would.
    let catalog = affinity_service::demo::catalog(chrono::Utc::now()).unwrap();
    let category_of = |id: &str| -> String {
        catalog
            .iter()
            .find(|c| c.item_id.as_str() == id)
            .and_then(|c| c.category.as_ref())
            .map(|c| c.as_str().to_owned())
            .unwrap_or_else(|| panic!("{id} is not in the demo catalog"))
    };
    let related = |id: &str| affinity_service::demo::related_categories(&category_of(id));

    let mut checked = std::collections::BTreeSet::new();
    let mut bought_by_new_shopper = false;
    let mut answers_for = std::collections::BTreeMap::new();
    for line in tour.iter().filter(|l| !l.starts_with('#')) {
        let (status, body) = run_example(line, &key, &base);
        assert_eq!(status, 200, "{line}: {body}");
        let url = between(line, "\"$AFFINITY", "\"").unwrap();
        let path = url.split('?').next().unwrap();
        let what = if let Some(item) = between(path, "/v1/items/", "/similar") {
            let items = item_ids(&body);
            assert!(!items.is_empty(), "{line}: {body}");
            if let Some((_, cat)) = url.split_once("category=") {
                let cat = cat.split('&').next().unwrap();
                // The category filter holds.
                for i in &items {
                    assert_eq!(category_of(i), cat, "{line}: {body}");
                }
                "similar in a category"
            } else {
                // Customers who bought the coffee also bought coffee, gear or mugs.
                assert_eq!(body["personalized"], true, "{body}");
                for i in &items {
                    assert!(
                        related(item).contains(&category_of(i).as_str()),
                        "{i} ({}) is not related to {item} ({}): {body}",
                        category_of(i),
                        category_of(item)
                    );
                }
                "similar"
            }
        } else if path.ends_with("/v1/baskets/similar") {
            let basket: Vec<String> = between(line, "\"items\":[", "]")
                .unwrap()
                .split(',')
                .map(|s| s.trim_matches('"').to_owned())
                .collect();
            let items = item_ids(&body);
            assert!(!items.is_empty(), "{body}");
            for i in &items {
                assert!(!basket.contains(i), "a basket item came back: {body}");
                assert!(
                    basket
                        .iter()
                        .any(|b| related(b).contains(&category_of(i).as_str())),
                    "{i} ({}) goes with nothing in the basket: {body}",
                    category_of(i)
                );
            }
            "basket"
        } else if let Some(customer) = between(path, "/v1/customers/", "/recommendations") {
            let items = item_ids(&body);
            assert!(!items.is_empty(), "{body}");
            if customer == "new-shopper" && !bought_by_new_shopper {
                assert_eq!(body["personalized"], false, "{body}");
                assert_eq!(body["fallback"], "unknown_customer", "{body}");
                "new customer"
            } else if customer == "new-shopper" {
                // The purchase a moment ago counts without a retrain.
                assert_eq!(body["personalized"], true, "{body}");
                assert!(body.get("fallback").is_none(), "{body}");
                assert!(!items.contains(&"sku-0000".to_owned()), "{body}");
                assert_eq!(body["items"][0]["reason"]["kind"], "for_you", "{body}");
                assert_eq!(
                    body["items"][0]["reason"]["because_of"], "sku-0000",
                    "{body}"
                );
                answers_for.insert(customer.to_owned(), body.clone());
                "after the purchase"
            } else {
                assert_eq!(body["personalized"], true, "{body}");
                answers_for.insert(customer.to_owned(), body.clone());
                "known customer"
            }
        } else if path.ends_with("/profile") {
            assert_eq!(body["tier"], "gold", "{body}");
            assert!(body["churn_risk"].as_f64().unwrap() > 0.5, "{body}");
            "profile"
        } else if path.ends_with("/offers") {
            // The lapsed gold customer is offered the win-back first.
            assert_eq!(body["offers"][0]["reasons"]["kind"], "retention", "{body}");
            assert!(
                body["offers"][0]["reasons"]["retained_value"]
                    .as_f64()
                    .unwrap()
                    > 0.0
            );
            "next best offers"
        } else if path.ends_with("/v1/offers/batch") {
            let results = body["results"].as_array().unwrap();
            let ids: Vec<&str> = results
                .iter()
                .map(|r| r["customer_id"].as_str().unwrap())
                .collect();
            assert_eq!(ids, ["cust-00000", "cust-00005"], "{body}");
            assert_eq!(
                results[1]["offers"][0]["reasons"]["kind"], "retention",
                "{body}"
            );
            "batch offers"
        } else if path.ends_with("/audience") {
            let customers = body["customers"].as_array().unwrap();
            assert!(!customers.is_empty(), "{body}");
            assert!(customers.len() <= 10, "{body}");
            "audience"
        } else if path.ends_with("/v1/offers/dry-run") {
            let eligible = body["eligible"].as_u64().unwrap();
            assert!(
                eligible > 0 && body["first"].as_u64().unwrap() <= eligible,
                "{body}"
            );
            "dry run"
        } else if path.ends_with("/v1/purchases") {
            // Written now, or already there when the README is run twice.
            assert_eq!(
                body["written"].as_u64().unwrap() + body["duplicates"].as_u64().unwrap(),
                1,
                "{body}"
            );
            bought_by_new_shopper = true;
            "ingest"
        } else if path.ends_with("/v1/models/live") {
            assert_eq!(body["model_version"], version.as_str(), "{body}");
            assert_eq!(body["status"], "live", "{body}");
            "model info"
        } else {
            panic!("the smoke test does not know how to judge {line}")
        };
        checked.insert(what);
    }
    let expected = [
        "similar",
        "similar in a category",
        "basket",
        "known customer",
        "new customer",
        "profile",
        "next best offers",
        "batch offers",
        "audience",
        "dry run",
        "ingest",
        "after the purchase",
        "model info",
    ];
    assert_eq!(
        checked,
        expected.into_iter().collect(),
        "the README's tour should show every kind of query"
    );

    // `affinity recommend` answers as the API did, from the same store and model.
    let out = affinity_in(
        dir.path(),
        &[
            "recommend",
            "--customer",
            "cust-00000",
            "--customer",
            "new-shopper",
            "--k",
            "5",
            "--format",
            "jsonl",
        ],
    );
    let text = ok(&out);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let api = &answers_for[v["customer_id"].as_str().unwrap()];
        assert_eq!(v["model_version"], api["model_version"]);
        assert_eq!(v["personalized"], api["personalized"]);
        assert_eq!(v["items"], api["items"], "{}", v["customer_id"]);
    }
    drop(server);
}
