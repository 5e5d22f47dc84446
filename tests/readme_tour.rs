//! The README's tour, run as its reader would: `affinity serve --demo` from a clean folder, then
//! every command of the tour block with a shell and real curl, each answer judged as a person
//! would judge it (related categories, the category filter, fold-in of a new purchase).
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

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
    let readme = include_str!("../README.md");
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
    let mut child = Command::new(support::binary("affinity"))
        .args(["serve", "--demo", "--addr", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("AFFINITY_DATA_DIR", dir.path().join("store"))
        .env_remove("AFFINITY_BACKEND")
        .env_remove("AFFINITY_TENANT")
        .env("AFFINITY_LOG", "warn")
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
    let out = support::cli::affinity_in(
        &support::binary("affinity"),
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
    let text = support::cli::ok(&out);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let api = &answers_for[v["customer_id"].as_str().unwrap()];
        assert_eq!(v["model_version"], api["model_version"]);
        assert_eq!(v["personalized"], api["personalized"]);
        assert_eq!(v["items"], api["items"], "{}", v["customer_id"]);
    }
    drop(server);
}
