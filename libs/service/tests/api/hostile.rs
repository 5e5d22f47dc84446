//! The hostile-input table: every case must be answered with a JSON 4xx carrying the
//! expected code, and none with a 5xx.

use axum::body::Body;
use axum::http::Request;
use serde_json::json;

use crate::fixture::{App, error_code};

pub(crate) struct Case {
    name: String,
    method: &'static str,
    uri: String,
    auth: Option<String>,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
    code: &'static str,
}

pub(crate) fn case(
    name: impl Into<String>,
    method: &'static str,
    uri: impl Into<String>,
    code: &'static str,
) -> Case {
    Case {
        name: name.into(),
        method,
        uri: uri.into(),
        auth: None,
        content_type: None,
        headers: Vec::new(),
        body: Vec::new(),
        code,
    }
}

impl Case {
    pub(crate) fn key(mut self, k: &str) -> Self {
        self.auth = Some(format!("Bearer {k}"));
        self
    }
    fn raw_auth(mut self, v: &str) -> Self {
        self.auth = Some(v.to_owned());
        self
    }
    pub(crate) fn json(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.content_type = Some("application/json");
        self.body = body.into();
        self
    }
    pub(crate) fn typed(mut self, ct: &'static str, body: impl Into<Vec<u8>>) -> Self {
        self.content_type = Some(ct);
        self.body = body.into();
        self
    }
    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// Percent-encodes everything but unreserved characters, for path segments and queries.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Bodies that are not JSON, for every JSON route.
pub(crate) const MALFORMED_JSON: &[&[u8]] = &[
    b"",
    b"{",
    b"}",
    b"[",
    b"nul",
    b"{,}",
    b"{'items':[]}",
    b"{1:2}",
    b"[}",
    b"\xff\xfe{}",
    b"/* comment */ {}",
];

pub(crate) const INJECTIONS: &[&str] = &[
    "' OR 1=1 --",
    "\"; DROP TABLE purchases; --",
    "<script>alert(1)</script>",
    "${jndi:ldap://127.0.0.1/a}",
    "{{7*7}}",
    "$(rm -rf /)",
    "`id`",
    "../../../../etc/passwd",
    "..\\..\\windows\\win.ini",
    "%00",
    "\u{202e}gpj.exe",
    "ü🚀漢字",
];

/// A basket body with one extra, hostile field name.
fn with_field(name: &str) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("items".into(), json!(["a"]));
    m.insert(name.to_owned(), json!(1));
    serde_json::Value::Object(m)
}

fn table(app: &App) -> Vec<Case> {
    let all = app.keys.all.as_str();
    let item = app.shop.example_item.as_str();
    let similar = format!("/v1/items/{item}/similar");
    let mut t = Vec::new();

    // Malformed JSON on every JSON route.
    for route in ["/v1/baskets/similar", "/v1/purchases", "/v1/items"] {
        for (i, body) in MALFORMED_JSON.iter().enumerate() {
            t.push(
                case(
                    format!("malformed {i} on {route}"),
                    "POST",
                    route,
                    "malformed_json",
                )
                .key(all)
                .json(*body),
            );
        }
    }

    // Well-formed JSON of the wrong shape or types.
    let wrong_basket = [
        json!({"items": "a"}),
        json!({"items": [1]}),
        json!({"items": [null]}),
        json!({"items": {"a": 1}}),
        json!({"items": ["a"], "k": "ten"}),
        json!({"items": ["a"], "k": 1.5}),
        json!({"items": ["a"], "k": -1}),
        json!({"items": ["a"], "k": 0}),
        json!({"items": ["a"], "k": 101}),
        json!({"items": ["a"], "k": 1e20}),
        json!({"items": ["a"], "in_stock": "yes"}),
        json!({"items": ["a"], "exclude": "a"}),
        json!({"items": ["a"], "category": 5}),
        json!({"items": ["a"], "ITEMS": ["b"]}),
        json!([]),
        json!("items"),
        json!(42),
        json!(null),
        json!({"items": ["a\u{0}b"]}),
        json!({"items": ["x".repeat(10_000)]}),
        json!({"items": ["a"], "exclude": ["y".repeat(10_000)]}),
    ];
    for (i, body) in wrong_basket.iter().enumerate() {
        t.push(
            case(
                format!("wrong basket {i}"),
                "POST",
                "/v1/baskets/similar",
                "invalid_body",
            )
            .key(all)
            .json(body.to_string()),
        );
    }
    for (i, body) in [
        json!({"purchases": {}}),
        json!({"purchases": null}),
        json!({"purchases": 5}),
        json!({"rows": []}),
        json!({"purchases": [], "tenant": "other-shop"}),
        json!({}),
    ]
    .iter()
    .enumerate()
    {
        t.push(
            case(
                format!("wrong purchases {i}"),
                "POST",
                "/v1/purchases",
                "invalid_body",
            )
            .key(all)
            .json(body.to_string()),
        );
    }
    for (i, body) in [
        json!({"items": 5}),
        json!({"item": []}),
        json!([{"item_id": "a"}]),
    ]
    .iter()
    .enumerate()
    {
        t.push(
            case(
                format!("wrong items {i}"),
                "POST",
                "/v1/items",
                "invalid_body",
            )
            .key(all)
            .json(body.to_string()),
        );
    }

    // k in the query string.
    for k in [
        "-1",
        "0",
        "101",
        "99999999999999999999",
        "1e3",
        "abc",
        "",
        "%205",
        "5.0",
        "0x10",
        "1&k=2",
        "-9223372036854775809",
    ] {
        t.push(
            case(
                format!("k={k}"),
                "GET",
                format!("{similar}?k={k}"),
                "invalid_query",
            )
            .key(all),
        );
    }
    t.push(
        case(
            "customer k huge",
            "GET",
            "/v1/customers/c1/recommendations?k=1000000",
            "invalid_query",
        )
        .key(all),
    );
    t.push(
        case(
            "unknown query parameter",
            "GET",
            format!("{similar}?limit=5"),
            "invalid_query",
        )
        .key(all),
    );
    t.push(
        case(
            "unicode query parameter",
            "GET",
            format!("{similar}?{}=1", enc("ключ")),
            "invalid_query",
        )
        .key(all),
    );
    t.push(
        case(
            "in_stock not a bool",
            "GET",
            format!("{similar}?in_stock=1"),
            "invalid_query",
        )
        .key(all),
    );
    t.push(
        case(
            "10k-char category",
            "GET",
            format!("{similar}?category={}", "c".repeat(10_000)),
            "invalid_query",
        )
        .key(all),
    );
    t.push(
        case(
            "control char category",
            "GET",
            format!("{similar}?category=a%0Ab"),
            "invalid_query",
        )
        .key(all),
    );

    // Empty and oversized batches.
    let row = json!({"order_id": "o", "customer_id": "c", "item_id": "i", "purchased_at": "2026-01-01T00:00:00Z"});
    t.push(
        case("empty purchases", "POST", "/v1/purchases", "empty_batch")
            .key(all)
            .json(json!({"purchases": []}).to_string()),
    );
    t.push(
        case("empty items", "POST", "/v1/items", "empty_batch")
            .key(all)
            .json(json!({"items": []}).to_string()),
    );
    t.push(
        case("empty basket", "POST", "/v1/baskets/similar", "empty_batch")
            .key(all)
            .json(json!({"items": []}).to_string()),
    );
    t.push(
        case("501 purchases", "POST", "/v1/purchases", "batch_too_large")
            .key(all)
            .json(json!({"purchases": vec![row.clone(); 501]}).to_string()),
    );
    t.push(
        case("501 items", "POST", "/v1/items", "batch_too_large")
            .key(all)
            .json(json!({"items": vec![json!({"item_id": "a"}); 501]}).to_string()),
    );
    t.push(
        case(
            "51 basket items",
            "POST",
            "/v1/baskets/similar",
            "batch_too_large",
        )
        .key(all)
        .json(json!({"items": vec!["a"; 51]}).to_string()),
    );
    t.push(
        case(
            "101 excluded (query)",
            "GET",
            format!("{similar}?exclude={}", vec!["a"; 101].join(",")),
            "batch_too_large",
        )
        .key(all),
    );
    t.push(
        case(
            "101 excluded (body)",
            "POST",
            "/v1/baskets/similar",
            "batch_too_large",
        )
        .key(all)
        .json(json!({"items": ["a"], "exclude": vec!["a"; 101]}).to_string()),
    );
    t.push(
        case("2 MiB body", "POST", "/v1/purchases", "payload_too_large")
            .key(all)
            .json(format!("{{\"purchases\":[\"{}\"]}}", "p".repeat(2 << 20))),
    );

    // Long, odd and hostile ids in paths.
    t.push(
        case(
            "10k-char item id",
            "GET",
            format!("/v1/items/{}/similar", "i".repeat(10_000)),
            "invalid_field",
        )
        .key(all),
    );
    t.push(
        case(
            "10k-char customer id",
            "GET",
            format!("/v1/customers/{}/recommendations", "c".repeat(10_000)),
            "invalid_field",
        )
        .key(all),
    );
    t.push(
        case(
            "10k-char exclude id",
            "GET",
            format!("{similar}?exclude={}", "e".repeat(10_000)),
            "invalid_field",
        )
        .key(all),
    );
    t.push(
        case(
            "NUL in item id",
            "GET",
            "/v1/items/a%00b/similar",
            "invalid_field",
        )
        .key(all),
    );
    t.push(
        case(
            "newline in customer id",
            "GET",
            "/v1/customers/a%0Ab/recommendations",
            "invalid_field",
        )
        .key(all),
    );
    t.push(
        case(
            "leading space item id",
            "GET",
            "/v1/items/%20sku/similar",
            "invalid_field",
        )
        .key(all),
    );
    t.push(
        case(
            "invalid UTF-8 in path",
            "GET",
            "/v1/items/%FF%FE/similar",
            "invalid_path",
        )
        .key(all),
    );
    t.push(
        case(
            "empty exclude entry",
            "GET",
            format!("{similar}?exclude=a,,b"),
            "invalid_field",
        )
        .key(all),
    );
    for (i, s) in INJECTIONS.iter().enumerate() {
        t.push(
            case(
                format!("injection {i} as item"),
                "GET",
                format!("/v1/items/{}/similar", enc(s)),
                // A NUL or a bidi override is not a valid id at all (ids.rs).
                if s.contains(['\u{0}', '\u{202e}']) {
                    "invalid_field"
                } else {
                    "not_found"
                },
            )
            .key(all),
        );
        t.push(
            case(
                format!("injection {i} as category"),
                "GET",
                format!("{similar}?category={}", enc(s)),
                if s.contains('\u{202e}') {
                    "invalid_query"
                } else {
                    "not_found"
                },
            )
            .key(all),
        );
        t.push(
            case(
                format!("injection {i} as JSON field"),
                "POST",
                "/v1/baskets/similar",
                "invalid_body",
            )
            .key(all)
            .json(with_field(s).to_string()),
        );
    }

    // Path traversal and unknown routes.
    for uri in [
        "/v1/items/../../etc/passwd",
        "/v1/../v1/health",
        "/v1//items/sku/similar",
        "/v1/items/sku/similar/../../../admin",
        "/v1/ITEMS/sku/similar",
        "/v2/items/sku/similar",
        "/.env",
    ] {
        t.push(case(format!("route {uri}"), "GET", uri, "route_not_found").key(all));
    }
    t.push(
        case(
            "empty customer id",
            "GET",
            "/v1/customers//recommendations",
            "invalid_field",
        )
        .key(all),
    );
    t.push(
        case(
            "encoded traversal as id",
            "GET",
            "/v1/items/..%2F..%2Fetc%2Fpasswd/similar",
            "not_found",
        )
        .key(all),
    );

    // Keys.
    t.push(case("no key", "GET", similar.clone(), "missing_key"));
    for (name, value) in [
        ("empty bearer", "Bearer "),
        ("scheme only", "Bearer"),
        ("basic scheme", "Basic dXNlcjpwYXNz"),
        ("unknown key", "Bearer aff_000000000000_00"),
        ("wrong key shape", "Bearer hunter2"),
        ("sql in key", "Bearer ' OR 1=1 --"),
        ("token scheme", "Token abc"),
    ] {
        t.push(case(name, "GET", similar.clone(), "invalid_key").raw_auth(value));
    }
    t.push(case("10k-char key", "GET", similar.clone(), "invalid_key").key(&"k".repeat(10_000)));
    t.push(case("revoked key", "GET", similar.clone(), "invalid_key").key(&app.keys.revoked));
    t.push(case("key plus garbage", "GET", similar.clone(), "invalid_key").key(&format!("{all}x")));
    t.push(
        case("non-ASCII key", "GET", similar.clone(), "invalid_key")
            .header("authorization", "Bearer ключ".as_bytes().to_vec()),
    );
    t.push(
        case(
            "ingest key reads",
            "GET",
            similar.clone(),
            "insufficient_scope",
        )
        .key(&app.keys.ingest),
    );
    t.push(
        case(
            "recommend key writes",
            "POST",
            "/v1/purchases",
            "insufficient_scope",
        )
        .key(&app.keys.recommend)
        .json(json!({"purchases": [row]}).to_string()),
    );
    t.push(
        case(
            "recommend key upserts",
            "POST",
            "/v1/items",
            "insufficient_scope",
        )
        .key(&app.keys.recommend)
        .json(json!({"items": [{"item_id": "a"}]}).to_string()),
    );

    // Wrong tenant.
    t.push(
        case("other tenant named", "GET", similar.clone(), "wrong_tenant")
            .key(all)
            .header("x-affinity-tenant", "other-shop"),
    );
    t.push(
        case(
            "other key, this tenant named",
            "GET",
            similar.clone(),
            "wrong_tenant",
        )
        .key(&app.keys.other_tenant)
        .header("x-affinity-tenant", "default"),
    );
    t.push(
        case(
            "other key writes here",
            "POST",
            "/v1/purchases",
            "wrong_tenant",
        )
        .key(&app.keys.other_tenant)
        .header("x-affinity-tenant", "default")
        .json(json!({"purchases": [row]}).to_string()),
    );
    t.push(
        case(
            "tenant header injection",
            "GET",
            similar.clone(),
            "wrong_tenant",
        )
        .key(all)
        .header("x-affinity-tenant", "default' OR '1'='1"),
    );
    t.push(
        case(
            "tenant header bytes",
            "GET",
            similar.clone(),
            "invalid_header",
        )
        .key(all)
        .header("x-affinity-tenant", vec![0xff, 0xfe]),
    );

    // Content types and methods.
    t.push(
        case(
            "text/plain body",
            "POST",
            "/v1/purchases",
            "unsupported_media_type",
        )
        .key(all)
        .typed("text/plain", "{}"),
    );
    t.push(
        case("xml body", "POST", "/v1/items", "unsupported_media_type")
            .key(all)
            .typed("application/xml", "<items/>"),
    );
    t.push(
        case(
            "form body",
            "POST",
            "/v1/baskets/similar",
            "unsupported_media_type",
        )
        .key(all)
        .typed("application/x-www-form-urlencoded", "items=a"),
    );
    t.push(
        case(
            "no content type",
            "POST",
            "/v1/baskets/similar",
            "unsupported_media_type",
        )
        .key(all),
    );
    for (method, uri) in [
        ("PUT", similar.as_str()),
        ("DELETE", "/v1/purchases"),
        ("PATCH", "/v1/items"),
        ("POST", "/v1/health"),
        ("GET", "/v1/baskets/similar"),
    ] {
        t.push(case(format!("{method} {uri}"), method, uri, "method_not_allowed").key(all));
    }
    t
}

#[tokio::test]
async fn hostile_inputs_get_json_4xx_never_5xx() {
    let app = App::new().await;
    let mut cases = table(&app);
    cases.extend(crate::hostile_routes::table(&app));
    assert!(cases.len() >= 300, "only {} cases", cases.len());
    eprintln!("{} hostile cases", cases.len());
    let mut failures = Vec::new();
    for c in cases {
        let mut req = Request::builder().method(c.method).uri(c.uri.as_str());
        if let Some(a) = &c.auth {
            req = req.header("authorization", a.as_str());
        }
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        for (name, value) in &c.headers {
            req = req.header(*name, value.as_slice());
        }
        let req = req.body(Body::from(c.body.clone())).unwrap();
        let (status, body) = app.send(req).await;
        if status.is_server_error() || !status.is_client_error() {
            failures.push(format!("{}: {status} {body}", c.name));
            continue;
        }
        let code = error_code(status, &body);
        if code != c.code {
            failures.push(format!(
                "{}: expected {}, got {status} {code}: {}",
                c.name, c.code, body["error"]["message"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
