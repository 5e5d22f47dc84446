//! `infra/template.yaml` against [`tables()`](super::tables), both ways.
//!
//! Every `AWS::DynamoDB::Table` of the template must be a table of the schema (name
//! `${TablePrefix}<suffix>`) and every schema table must be in the template, with the same
//! key schema, attribute definitions, GSIs (projection ALL) and TTL attribute. The template's
//! operational settings the issue asks for (on demand, point-in-time recovery, encryption,
//! retained on stack deletion) are checked on the way. The template is read with `yaml_serde`,
//! which keeps CloudFormation's short-form tags (`!Sub`, `!Ref`, `!If`) as tagged values.

use std::collections::{BTreeMap, BTreeSet};

use yaml_serde::Value;

use super::{KeyAttr, TableSpec, tables};

/// The template as committed; `include_str!` also makes cargo rebuild the test when it changes.
const TEMPLATE: &str = include_str!("../../../../../infra/template.yaml");

/// A table reduced to what the schema and the template must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    /// `name:type` of the partition key.
    hash: String,
    /// `name:type` of the sort key.
    range: Option<String>,
    /// Every `name:type` in AttributeDefinitions.
    attributes: BTreeSet<String>,
    /// Index name -> (hash, range, projection type).
    gsis: BTreeMap<String, (String, Option<String>, String)>,
    /// Enabled TTL attribute.
    ttl: Option<String>,
}

fn key(a: &KeyAttr) -> String {
    format!("{}:{}", a.name, a.attr_type)
}

fn schema_shape(t: &TableSpec) -> Shape {
    Shape {
        hash: key(&t.partition_key),
        range: t.sort_key.as_ref().map(key),
        attributes: t.key_attributes().iter().map(key).collect(),
        gsis: t
            .gsis
            .iter()
            .map(|g| {
                (
                    g.name.to_string(),
                    (
                        key(&g.partition_key),
                        g.sort_key.as_ref().map(key),
                        "ALL".to_string(),
                    ),
                )
            })
            .collect(),
        ttl: t.ttl_attribute.map(str::to_string),
    }
}

fn schema_shapes(specs: &[TableSpec]) -> BTreeMap<String, Shape> {
    specs
        .iter()
        .map(|t| (t.suffix.to_string(), schema_shape(t)))
        .collect()
}

fn get<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.as_mapping().and_then(|m| m.get(k))
}

fn str_at<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    get(v, k).and_then(Value::as_str)
}

fn seq_at<'a>(v: &'a Value, k: &str) -> &'a [Value] {
    get(v, k)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// `KeySchema` -> (`name:type` of HASH, of RANGE), types from the attribute definitions.
fn key_schema(
    where_: &str,
    keys: &[Value],
    types: &BTreeMap<String, String>,
    errors: &mut Vec<String>,
) -> (String, Option<String>) {
    let mut hash = String::new();
    let mut range = None;
    for k in keys {
        let name = str_at(k, "AttributeName").unwrap_or("?");
        let Some(t) = types.get(name) else {
            errors.push(format!("{where_}: key {name} has no AttributeDefinition"));
            continue;
        };
        match str_at(k, "KeyType") {
            Some("HASH") => hash = format!("{name}:{t}"),
            Some("RANGE") => range = Some(format!("{name}:{t}")),
            other => errors.push(format!("{where_}: key {name} has KeyType {other:?}")),
        }
    }
    (hash, range)
}

/// Reads the template's tables keyed by suffix; problems that are not a shape go to `errors`.
fn template_shapes(doc: &Value, errors: &mut Vec<String>) -> BTreeMap<String, Shape> {
    let mut out = BTreeMap::new();
    let Some(resources) = get(doc, "Resources").and_then(Value::as_mapping) else {
        errors.push("template has no Resources".into());
        return out;
    };
    for (id, res) in resources {
        if str_at(res, "Type") != Some("AWS::DynamoDB::Table") {
            continue;
        }
        let id = id.as_str().unwrap_or("?");
        let props = get(res, "Properties").cloned().unwrap_or(Value::Null);
        // TableName: !Sub "${TablePrefix}<suffix>", the name the store computes.
        let suffix = match get(&props, "TableName") {
            Some(Value::Tagged(t)) if t.tag == "Sub" => t
                .value
                .as_str()
                .and_then(|s| s.strip_prefix("${TablePrefix}"))
                .map(str::to_string),
            _ => None,
        };
        let Some(suffix) = suffix else {
            errors.push(format!(
                "{id}: TableName must be !Sub \"${{TablePrefix}}<suffix>\""
            ));
            continue;
        };
        let mut types = BTreeMap::new();
        for a in seq_at(&props, "AttributeDefinitions") {
            let (Some(n), Some(t)) = (str_at(a, "AttributeName"), str_at(a, "AttributeType"))
            else {
                errors.push(format!("{id}: malformed AttributeDefinition {a:?}"));
                continue;
            };
            types.insert(n.to_string(), t.to_string());
        }
        let (hash, range) = key_schema(id, seq_at(&props, "KeySchema"), &types, errors);
        let mut gsis = BTreeMap::new();
        for g in seq_at(&props, "GlobalSecondaryIndexes") {
            let name = str_at(g, "IndexName").unwrap_or("?").to_string();
            let (h, r) = key_schema(
                &format!("{id}.{name}"),
                seq_at(g, "KeySchema"),
                &types,
                errors,
            );
            let projection = get(g, "Projection")
                .and_then(|p| str_at(p, "ProjectionType"))
                .unwrap_or("?")
                .to_string();
            gsis.insert(name, (h, r, projection));
        }
        let ttl = get(&props, "TimeToLiveSpecification")
            .filter(|t| get(t, "Enabled").and_then(Value::as_bool) == Some(true))
            .and_then(|t| str_at(t, "AttributeName"))
            .map(str::to_string);

        // Operational settings every table must have.
        if str_at(&props, "BillingMode") != Some("PAY_PER_REQUEST") {
            errors.push(format!("{id}: BillingMode must be PAY_PER_REQUEST"));
        }
        let pitr = get(&props, "PointInTimeRecoverySpecification")
            .and_then(|p| get(p, "PointInTimeRecoveryEnabled"))
            .and_then(Value::as_bool);
        if pitr != Some(true) {
            errors.push(format!("{id}: point-in-time recovery must be enabled"));
        }
        let sse = get(&props, "SSESpecification")
            .and_then(|p| get(p, "SSEEnabled"))
            .and_then(Value::as_bool);
        if sse != Some(true) {
            errors.push(format!("{id}: SSESpecification.SSEEnabled must be true"));
        }
        for policy in ["DeletionPolicy", "UpdateReplacePolicy"] {
            if str_at(res, policy) != Some("Retain") {
                errors.push(format!("{id}: {policy} must be Retain (customer data)"));
            }
        }

        let shape = Shape {
            hash,
            range,
            attributes: types.iter().map(|(n, t)| format!("{n}:{t}")).collect(),
            gsis,
            ttl,
        };
        if out.insert(suffix.clone(), shape).is_some() {
            errors.push(format!("{id}: a second table named {suffix}"));
        }
    }
    out
}

/// Differences between the schema's and the template's tables, both directions.
fn diff(schema: &BTreeMap<String, Shape>, template: &BTreeMap<String, Shape>) -> Vec<String> {
    let mut out = Vec::new();
    for (suffix, want) in schema {
        match template.get(suffix) {
            None => out.push(format!(
                "{suffix}: in the schema, missing from the template"
            )),
            Some(got) if got != want => out.push(format!(
                "{suffix}: template {got:?} differs from schema {want:?}"
            )),
            Some(_) => {}
        }
    }
    for suffix in template.keys() {
        if !schema.contains_key(suffix) {
            out.push(format!("{suffix}: in the template, not in the schema"));
        }
    }
    out
}

fn check(doc: &Value, specs: &[TableSpec]) -> Vec<String> {
    let mut errors = Vec::new();
    let template = template_shapes(doc, &mut errors);
    errors.extend(diff(&schema_shapes(specs), &template));
    errors
}

fn template() -> Value {
    yaml_serde::from_str(TEMPLATE).unwrap()
}

fn table_props<'a>(doc: &'a mut Value, id: &str) -> &'a mut yaml_serde::Mapping {
    doc.get_mut("Resources")
        .and_then(|r| r.get_mut(id))
        .and_then(|t| t.get_mut("Properties"))
        .and_then(Value::as_mapping_mut)
        .unwrap()
}

fn expect_error(errors: &[String], needle: &str) {
    assert!(
        errors.iter().any(|e| e.contains(needle)),
        "expected an error mentioning {needle:?}, got {errors:#?}"
    );
}

#[test]
fn template_tables_match_the_schema_both_ways() {
    let errors = check(&template(), &tables());
    assert!(errors.is_empty(), "{errors:#?}");
    // Not vacuous: the template really holds every schema table.
    let mut errs = Vec::new();
    let found = template_shapes(&template(), &mut errs);
    assert_eq!(found.len(), tables().len());
    assert!(found["offer-events"].gsis.contains_key("by_offer"));
    assert_eq!(found["control"].ttl.as_deref(), Some("expires_at"));
}

#[test]
fn template_drift_is_reported() {
    // A GSI dropped from the template.
    let mut doc = template();
    let gsis = table_props(&mut doc, "OfferEventsTable")
        .get_mut("GlobalSecondaryIndexes")
        .and_then(Value::as_sequence_mut)
        .unwrap();
    gsis.retain(|g| str_at(g, "IndexName") != Some("by_offer"));
    expect_error(&check(&doc, &tables()), "offer-events: template");

    // A key type changed (and its definition with it).
    let mut doc = template();
    for a in table_props(&mut doc, "PurchasesTable")
        .get_mut("AttributeDefinitions")
        .and_then(Value::as_sequence_mut)
        .unwrap()
    {
        if str_at(a, "AttributeName") == Some("sk") {
            a.as_mapping_mut()
                .unwrap()
                .insert("AttributeType".into(), "S".into());
        }
    }
    expect_error(&check(&doc, &tables()), "purchases: template");

    // TTL switched off where the schema has one.
    let mut doc = template();
    table_props(&mut doc, "ControlTable").remove("TimeToLiveSpecification");
    expect_error(&check(&doc, &tables()), "control: template");

    // A key without an attribute definition.
    let mut doc = template();
    table_props(&mut doc, "ItemsTable")
        .get_mut("AttributeDefinitions")
        .and_then(Value::as_sequence_mut)
        .unwrap()
        .retain(|a| str_at(a, "AttributeName") != Some("sk"));
    expect_error(
        &check(&doc, &tables()),
        "ItemsTable: key sk has no AttributeDefinition",
    );

    // A table missing from the template, and one the schema does not know.
    let mut doc = template();
    let resources = doc
        .get_mut("Resources")
        .and_then(Value::as_mapping_mut)
        .unwrap();
    let mut extra = resources.remove("ModelsTable").unwrap();
    extra
        .get_mut("Properties")
        .and_then(Value::as_mapping_mut)
        .unwrap()
        .insert(
            "TableName".into(),
            yaml_serde::from_str("!Sub \"${TablePrefix}model-archive\"").unwrap(),
        );
    resources.insert("ArchiveTable".into(), extra);
    let errors = check(&doc, &tables());
    expect_error(&errors, "models: in the schema, missing from the template");
    expect_error(&errors, "model-archive: in the template, not in the schema");

    // Operational settings.
    let mut doc = template();
    table_props(&mut doc, "CustomersTable").remove("PointInTimeRecoverySpecification");
    table_props(&mut doc, "CustomersTable").insert("BillingMode".into(), "PROVISIONED".into());
    let errors = check(&doc, &tables());
    expect_error(&errors, "CustomersTable: point-in-time recovery");
    expect_error(&errors, "CustomersTable: BillingMode");
}

#[test]
fn schema_drift_is_reported() {
    // The other direction: the schema grows an index or a table the template lacks.
    let mut specs = tables();
    if let Some(items) = specs.iter_mut().find(|t| t.suffix == "items") {
        items.gsis.push(super::GsiSpec {
            name: "by_category",
            partition_key: super::s("category_key"),
            sort_key: None,
        });
    }
    let mut extra = super::table(super::TableId::Models);
    extra.suffix = "segments";
    specs.push(extra);
    let errors = check(&template(), &specs);
    expect_error(&errors, "items: template");
    expect_error(
        &errors,
        "segments: in the schema, missing from the template",
    );
}
