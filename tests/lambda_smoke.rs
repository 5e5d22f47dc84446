//! End-to-end smoke test of the built function under `cargo lambda watch`, which emulates
//! the Lambda runtime API and function URLs. The emulator runs with `--only-lambda-apis`
//! and the test starts the `affinity-api` binary this test run built, with the variables
//! Lambda sets (`AWS_LAMBDA_RUNTIME_API`, ...), so `lambda_http::run` serves exactly as on
//! Lambda; requests go over HTTP through the emulator's function-URL path. (Letting the
//! emulator `cargo run` the function would rebuild the dependency tree without the test's
//! dev-dependency features: minutes of build inside a test.)
//!
//! Needs `cargo-lambda` (PyPI); `scripts/test.sh` installs it into its venv and exports
//! `AFFINITY_TEST_CARGO_LAMBDA` with the binary's path.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use affinity_model::model::TrainConfig;
use affinity_service::{demo, training};
use affinity_store::{Backend, Scope, Stores, TenantId, generate_api_key};

fn cargo_lambda() -> String {
    match std::env::var("AFFINITY_TEST_CARGO_LAMBDA") {
        Ok(p) if !p.is_empty() => p,
        _ => panic!(
            "AFFINITY_TEST_CARGO_LAMBDA is not set: the smoke test needs cargo-lambda. Run \
             `bash scripts/test.sh` (it installs cargo-lambda into its venv), or \
             `pip install cargo-lambda` and export AFFINITY_TEST_CARGO_LAMBDA=$(which cargo-lambda)"
        ),
    }
}

/// A data folder with a demo shop, a live model and a key.
async fn prepare(dir: &Path) -> String {
    let backend = Backend::Embedded {
        db_path: dir.join("affinity.db"),
        blob_dir: dir.join("blobs"),
    };
    let stores = Stores::open(&backend).await.unwrap();
    let tenant = TenantId::default();
    demo::populate(stores.records.as_ref(), &tenant, 300, 5, chrono::Utc::now())
        .await
        .unwrap();
    let mut config = TrainConfig::default();
    config.als.factors = 16;
    config.als.iterations = 5;
    let model = training::train_tenant(
        stores.records.as_ref(),
        &tenant,
        &config,
        "smoke-v1",
        &|_| {},
    )
    .await
    .unwrap();
    training::publish(&stores, &tenant, &model, serde_json::json!({}))
        .await
        .unwrap();
    let key =
        generate_api_key(&tenant, [Scope::Recommend].into(), None, chrono::Utc::now()).unwrap();
    stores.records.create_key(&key.record).await.unwrap();
    key.secret
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Stops the emulator started here; on SIGINT it terminates the function instance too.
struct Emulator(Child);

impl Drop for Emulator {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops the function process started here.
struct Function(Child);

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (status, body) of one request through curl.
fn http(
    method: &str,
    url: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "120",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(k) = key {
        cmd.args(["-H", &format!("Authorization: Bearer {k}")]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    let status: u16 = status.trim().parse().unwrap_or(0);
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_built_function_answers_under_cargo_lambda_watch() {
    let bin = cargo_lambda();
    let data = tempfile::tempdir().unwrap();
    let key = prepare(data.path()).await;
    let port = free_port();
    let api = support::binary("affinity-api");
    let manifest_dir = support::root().join("functions/api");
    // The emulator serves the Lambda runtime API and function URLs; the function is the
    // binary this test run built, started the way Lambda starts it.
    let mut cmd = Command::new(&bin);
    cmd.current_dir(manifest_dir)
        .args([
            "lambda",
            "watch",
            "--only-lambda-apis",
            "-A",
            "127.0.0.1",
            "-P",
            &port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let _emulator = Emulator(cmd.spawn().unwrap());

    // Wait for the emulator's port (not for `GET /`, which it does not serve).
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "cargo lambda watch never opened {addr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let function = Command::new(&api)
        .env("AWS_LAMBDA_RUNTIME_API", format!("http://{addr}/.rt"))
        .env("AWS_LAMBDA_FUNCTION_NAME", "_")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
        .env("AFFINITY_BACKEND", "embedded")
        .env("AFFINITY_DATA_DIR", data.path())
        .env("AFFINITY_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let _function = Function(function);

    // The emulator's function-URL path for the function named `_`.
    let base = format!("http://{addr}/lambda-url/_");
    let health = format!("{base}/v1/health");
    let start = Instant::now();
    let (s, b) = loop {
        let (s, b) = tokio::task::spawn_blocking({
            let url = health.clone();
            move || http("GET", &url, None, None)
        })
        .await
        .unwrap();
        if s == 200 || start.elapsed() > Duration::from_secs(120) {
            break (s, b);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "ok");

    let url = format!("{base}/v1/items/sku-0000/similar?k=4");
    let (s, b) = http("GET", &url, Some(&key), None);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["model_version"], "smoke-v1");
    assert_eq!(b["items"].as_array().unwrap().len(), 4);
    assert!(b["items"][0]["reason"]["kind"].is_string());

    let (s, b) = http(
        "POST",
        &format!("{base}/v1/baskets/similar"),
        Some(&key),
        Some(r#"{"items":["sku-0000","sku-0200"],"k":3}"#),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["items"].as_array().unwrap().len(), 3);

    let (s, b) = http("GET", &url, None, None);
    assert_eq!(s, 401, "{b}");
    assert_eq!(b["error"]["code"], "missing_key");
    let (s, b) = http(
        "GET",
        &format!("{base}/v1/items/sku-0000/similar?k=0"),
        Some(&key),
        None,
    );
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["code"], "invalid_query");
}
