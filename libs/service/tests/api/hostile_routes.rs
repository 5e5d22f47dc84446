//! The hostile-input table, continued over the offers, insight, models, consent and erasure
//! routes and storefront tokens: malformed and mistyped bodies on every JSON route, wrong
//! media types, unknown fields, and hostile ids in every path parameter. The expected code of
//! an id follows the store's own id rules, so the table states what the server must answer
//! rather than what it happened to answer.

use affinity_store::{CustomerId, ItemId, JobId, ModelVersionId, OfferId};
use serde_json::{Value, json};

use crate::fixture::{App, token};
use crate::hostile::{Case, INJECTIONS, MALFORMED_JSON, case, enc};

/// The JSON routes beyond the recommendation and ingestion ones, each with a valid body.
fn json_routes(app: &App) -> Vec<(&'static str, String, Value)> {
    let item = app.shop.example_item.clone();
    let c = app.shop.example_customer.clone();
    vec![
        (
            "POST",
            "/v1/offers".into(),
            json!({"offer_id": "hostile", "document":
                {"kind": "discount", "title": "t", "items": [item], "value": 1.0, "cost": 0.1}}),
        ),
        (
            "PUT",
            "/v1/offers/win-back".into(),
            json!({"status": "active"}),
        ),
        (
            "POST",
            "/v1/offers/events".into(),
            json!({"events": [{"event_id": "h1", "customer_id": c, "offer_id": "win-back",
                "kind": "shown", "channel": "web"}]}),
        ),
        (
            "POST",
            "/v1/offers/batch".into(),
            json!({"customer_ids": [c], "channel": "email"}),
        ),
        (
            "POST",
            "/v1/offers/dry-run".into(),
            json!({"offer_id": "win-back", "channel": "email"}),
        ),
        (
            "PUT",
            format!("/v1/customers/{c}/consent"),
            json!({"personalization": true, "marketing": true}),
        ),
    ]
}

/// Ids that are hostile for a path segment; some break the id rules, some are merely odd.
fn hostile_ids() -> Vec<String> {
    let mut ids: Vec<String> = INJECTIONS.iter().map(|s| (*s).to_owned()).collect();
    ids.extend([
        "x".repeat(10_000),
        "é".repeat(129),
        "\u{1}".into(),
        "\u{7f}del".into(),
        " lead".into(),
        "trail ".into(),
        "tab\tin".into(),
        "new\nline".into(),
    ]);
    ids
}

pub(crate) fn table(app: &App) -> Vec<Case> {
    let all = app.keys.all.as_str();
    let mut t = Vec::new();

    // Malformed JSON, wrong media types, bodies of the wrong shape, unknown fields.
    for (method, uri, valid) in json_routes(app) {
        for (i, body) in MALFORMED_JSON.iter().enumerate() {
            t.push(
                case(
                    format!("malformed {i} on {method} {uri}"),
                    method,
                    uri.clone(),
                    "malformed_json",
                )
                .key(all)
                .json(body.to_vec()),
            );
        }
        for ct in [
            "text/plain",
            "application/xml",
            "application/x-www-form-urlencoded",
        ] {
            t.push(
                case(
                    format!("{ct} on {method} {uri}"),
                    method,
                    uri.clone(),
                    "unsupported_media_type",
                )
                .key(all)
                .typed(ct, valid.to_string()),
            );
        }
        for (i, body) in ["[]", "1", "\"x\"", "null", "true", "1.5"]
            .iter()
            .enumerate()
        {
            t.push(
                case(
                    format!("wrong shape {i} on {method} {uri}"),
                    method,
                    uri.clone(),
                    "invalid_body",
                )
                .key(all)
                .json(*body),
            );
        }
        for (i, name) in INJECTIONS.iter().enumerate() {
            let mut body = valid.clone();
            body.as_object_mut()
                .unwrap()
                .insert((*name).to_owned(), json!(1));
            t.push(
                case(
                    format!("unknown field {i} on {method} {uri}"),
                    method,
                    uri.clone(),
                    "invalid_body",
                )
                .key(all)
                .json(body.to_string()),
            );
        }
        // The body is read only after the key: none, then a storefront token.
        t.push(
            case(
                format!("no key on {method} {uri}"),
                method,
                uri.clone(),
                "missing_key",
            )
            .json(valid.to_string()),
        );
        t.push(
            case(
                format!("storefront token on {method} {uri}"),
                method,
                uri.clone(),
                "server_key_required",
            )
            .key(&token(app, &app.shop.example_customer, 60))
            .json(valid.to_string()),
        );
    }

    // Hostile ids in every path parameter. Customer routes answer every well-formed id (an
    // unknown customer is a newcomer), so a well-formed one is asked with a storefront token
    // naming another customer, which each route must refuse.
    let sf = token(app, &app.shop.example_customer, 60);
    for (i, id) in hostile_ids().iter().enumerate() {
        let e = enc(id);
        let bad_customer = CustomerId::parse(id.clone()).is_err();
        for (method, uri, refusal) in [
            (
                "GET",
                format!("/v1/customers/{e}/recommendations"),
                "customer_mismatch",
            ),
            (
                "GET",
                format!("/v1/customers/{e}/profile"),
                "server_key_required",
            ),
            (
                "GET",
                format!("/v1/customers/{e}/offers?channel=web"),
                "server_key_required",
            ),
            (
                "DELETE",
                format!("/v1/customers/{e}"),
                "server_key_required",
            ),
        ] {
            let c = if bad_customer {
                case(
                    format!("id {i} on {method} {uri:.40}"),
                    method,
                    uri,
                    "invalid_field",
                )
                .key(all)
            } else {
                case(
                    format!("id {i} on {method} {uri:.40}"),
                    method,
                    uri,
                    refusal,
                )
                .key(&sf)
            };
            t.push(c);
        }
        t.push(if bad_customer {
            case(
                format!("id {i} on consent"),
                "PUT",
                format!("/v1/customers/{e}/consent"),
                "invalid_field",
            )
            .key(all)
            .json(json!({"personalization": true, "marketing": false}).to_string())
        } else {
            case(
                format!("id {i} on consent without the scope"),
                "PUT",
                format!("/v1/customers/{e}/consent"),
                "insufficient_scope",
            )
            .key(&app.keys.recommend)
            .json(json!({"personalization": true, "marketing": false}).to_string())
        });

        let item_code = if ItemId::parse(id.clone()).is_err() {
            "invalid_field"
        } else {
            "not_found"
        };
        for uri in [
            format!("/v1/items/{e}/audience"),
            format!("/v1/items/{e}/similar"),
        ] {
            t.push(case(format!("id {i} on {uri:.40}"), "GET", uri, item_code).key(all));
        }

        let offer_code = if OfferId::parse(id.clone()).is_err() {
            "invalid_field"
        } else {
            "not_found"
        };
        for uri in [format!("/v1/offers/{e}"), format!("/v1/offers/{e}/report")] {
            t.push(case(format!("id {i} on GET {uri:.40}"), "GET", uri, offer_code).key(all));
        }
        t.push(
            case(
                format!("id {i} on PUT offer"),
                "PUT",
                format!("/v1/offers/{e}"),
                offer_code,
            )
            .key(all)
            .json(json!({"status": "paused"}).to_string()),
        );

        let version_code = if ModelVersionId::parse(id.clone()).is_err() {
            "invalid_field"
        } else {
            "not_found"
        };
        for (method, uri) in [
            ("GET", format!("/v1/models/{e}")),
            ("GET", format!("/v1/models/{e}/report")),
            ("POST", format!("/v1/models/{e}/promote")),
        ] {
            t.push(
                case(
                    format!("id {i} on {method} {uri:.40}"),
                    method,
                    uri,
                    version_code,
                )
                .key(all),
            );
        }
        let job_code = if JobId::parse(id.clone()).is_err() {
            "invalid_field"
        } else {
            "not_found"
        };
        t.push(
            case(
                format!("id {i} on job"),
                "GET",
                format!("/v1/jobs/{e}"),
                job_code,
            )
            .key(all),
        );
    }

    // Query parameters of the offers, insight and models routes.
    let c = &app.shop.example_customer;
    let item = &app.shop.example_item;
    for (q, code) in [
        ("limit=0", "invalid_field"),
        ("limit=-1", "invalid_query"),
        ("limit=abc", "invalid_query"),
        ("limit=", "invalid_query"),
        ("nope=1", "invalid_query"),
    ] {
        for uri in [
            format!("/v1/customers/{c}/offers?channel=web&{q}"),
            format!("/v1/items/{item}/audience?{q}"),
            format!("/v1/models?{q}"),
        ] {
            t.push(case(format!("query {uri:.60}"), "GET", uri, code).key(all));
        }
    }

    // Malformed storefront tokens.
    for (i, bad) in [
        "aft1",
        "aft1.",
        "aft1.default",
        "aft1.default.k.c.1.s",
        "aft1.default.000000000000.!!!.1.AAAA",
        "aft1.default.000000000000.Y3VzdA.soon.AAAA",
        "aft1.default.000000000000.Y3VzdA.9999999999.***",
        "aft1.DEFAULT.000000000000.Y3VzdA.9999999999.AAAA",
        "aft2.default.000000000000.Y3VzdA.9999999999.AAAA",
        "aft1.default.000000000000.Y3VzdA.9999999999.AAAA.extra",
    ]
    .iter()
    .enumerate()
    {
        t.push(
            case(
                format!("token {i}"),
                "GET",
                format!("/v1/customers/{c}/recommendations"),
                "invalid_token",
            )
            .key(bad),
        );
    }
    t
}
