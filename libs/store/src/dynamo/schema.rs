//! The DynamoDB table schema, defined once, as data.
//!
//! `tables()` is the single source of truth: table creation (`create_tables`), the codec
//! and the infra template check (`schema/template_check.rs`, a test) all read it. Every table
//! is on-demand (PAY_PER_REQUEST), its name is `<prefix><suffix>` with the prefix from
//! configuration.

use std::fmt;

/// Scalar type of a key attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    /// String.
    S,
    /// Number.
    N,
}

impl fmt::Display for AttrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttrType::S => "S",
            AttrType::N => "N",
        })
    }
}

/// One key attribute (name and type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAttr {
    /// Attribute name.
    pub name: &'static str,
    /// Attribute type.
    pub attr_type: AttrType,
}

const fn s(name: &'static str) -> KeyAttr {
    KeyAttr {
        name,
        attr_type: AttrType::S,
    }
}

const fn n(name: &'static str) -> KeyAttr {
    KeyAttr {
        name,
        attr_type: AttrType::N,
    }
}

/// A global secondary index; all use projection ALL (the access patterns read whole records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GsiSpec {
    /// Index name.
    pub name: &'static str,
    /// Partition key.
    pub partition_key: KeyAttr,
    /// Sort key.
    pub sort_key: Option<KeyAttr>,
}

/// Which logical table a spec describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableId {
    /// Purchases.
    Purchases,
    /// Catalog items.
    Items,
    /// Customer flags.
    Customers,
    /// Offers.
    Offers,
    /// Offer events.
    OfferEvents,
    /// Hashed API keys.
    ApiKeys,
    /// Model registry.
    Models,
    /// Live pointer, retrain lock and job records.
    Control,
}

/// One table: name suffix, keys, indexes, TTL attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// Logical id.
    pub id: TableId,
    /// Name suffix; the full name is prefix + suffix.
    pub suffix: &'static str,
    /// Partition (hash) key.
    pub partition_key: KeyAttr,
    /// Sort (range) key.
    pub sort_key: Option<KeyAttr>,
    /// Global secondary indexes.
    pub gsis: Vec<GsiSpec>,
    /// Attribute holding an epoch-seconds expiry, if TTL is enabled.
    pub ttl_attribute: Option<&'static str>,
}

impl TableSpec {
    /// Every attribute that appears in a key of the table or an index (for AttributeDefinitions).
    pub fn key_attributes(&self) -> Vec<KeyAttr> {
        let mut out: Vec<KeyAttr> = Vec::new();
        let mut push = |a: KeyAttr| {
            if !out.iter().any(|b| b.name == a.name) {
                out.push(a);
            }
        };
        push(self.partition_key);
        if let Some(k) = self.sort_key {
            push(k);
        }
        for g in &self.gsis {
            push(g.partition_key);
            if let Some(k) = g.sort_key {
                push(k);
            }
        }
        out
    }

    /// Full table name for a prefix.
    pub fn name(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.suffix)
    }
}

/// Attribute names, shared by the schema and the codec.
pub mod attr {
    /// Partition key of every table.
    pub const PK: &str = "pk";
    /// Sort key of the tables that have one.
    pub const SK: &str = "sk";
    /// Tenant id (scan filter, api-key index).
    pub const TENANT: &str = "tenant";
    /// `tenant#customer_id`: partition key of the by-customer indexes.
    pub const CUSTOMER_KEY: &str = "customer_key";
    /// `tenant#offer_id`: partition key of the by-offer index.
    pub const OFFER_KEY: &str = "offer_key";
    /// Fixed-width `millis#...` string: sort key of time-ordered indexes.
    pub const AT_KEY: &str = "at_key";
    /// API key id (sort key of the by-tenant key index).
    pub const KEY_ID: &str = "key_id";
    /// TTL attribute (epoch seconds) of the control table (locks, jobs) and of offer events
    /// (when a retention is configured).
    pub const EXPIRES_AT: &str = "expires_at";
}

/// Index names.
pub mod index {
    /// Purchases and offer events of one customer, newest first.
    pub const BY_CUSTOMER: &str = "by_customer";
    /// Offer events of one offer, newest first.
    pub const BY_OFFER: &str = "by_offer";
    /// API keys of one tenant.
    pub const BY_TENANT: &str = "by_tenant";
}

/// The whole schema.
pub fn tables() -> Vec<TableSpec> {
    use attr::*;
    vec![
        TableSpec {
            id: TableId::Purchases,
            suffix: "purchases",
            partition_key: s(PK),  // tenant#order_id
            sort_key: Some(n(SK)), // line
            gsis: vec![GsiSpec {
                name: index::BY_CUSTOMER,
                partition_key: s(CUSTOMER_KEY), // tenant#customer_id
                sort_key: Some(s(AT_KEY)),      // millis(15)#order_id#line(10)
            }],
            ttl_attribute: None,
        },
        TableSpec {
            id: TableId::Items,
            suffix: "items",
            partition_key: s(PK),  // tenant
            sort_key: Some(s(SK)), // item_id
            gsis: vec![],
            ttl_attribute: None,
        },
        TableSpec {
            id: TableId::Customers,
            suffix: "customers",
            partition_key: s(PK),  // tenant
            sort_key: Some(s(SK)), // customer_id
            gsis: vec![],
            ttl_attribute: None,
        },
        TableSpec {
            id: TableId::Offers,
            suffix: "offers",
            partition_key: s(PK),  // tenant
            sort_key: Some(s(SK)), // offer_id
            gsis: vec![],
            ttl_attribute: None,
        },
        TableSpec {
            id: TableId::OfferEvents,
            suffix: "offer-events",
            partition_key: s(PK), // tenant#event_id
            sort_key: None,
            gsis: vec![
                GsiSpec {
                    name: index::BY_CUSTOMER,
                    partition_key: s(CUSTOMER_KEY), // tenant#customer_id
                    sort_key: Some(s(AT_KEY)),      // millis(15)#event_id
                },
                GsiSpec {
                    name: index::BY_OFFER,
                    partition_key: s(OFFER_KEY), // tenant#offer_id
                    sort_key: Some(s(AT_KEY)),
                },
            ],
            // Written only when a retention is configured (DynamoOptions::offer_event_retention).
            ttl_attribute: Some(EXPIRES_AT),
        },
        TableSpec {
            id: TableId::ApiKeys,
            suffix: "api-keys",
            partition_key: s(PK), // sha256(secret) hex
            sort_key: None,
            gsis: vec![GsiSpec {
                name: index::BY_TENANT,
                partition_key: s(TENANT),
                sort_key: Some(s(KEY_ID)),
            }],
            ttl_attribute: None,
        },
        TableSpec {
            id: TableId::Models,
            suffix: "models",
            partition_key: s(PK),  // tenant
            sort_key: Some(s(SK)), // version
            gsis: vec![],
            ttl_attribute: None,
        },
        TableSpec {
            id: TableId::Control,
            suffix: "control",
            partition_key: s(PK),  // tenant
            sort_key: Some(s(SK)), // "live" | "lock" | "job#<job_id>"
            gsis: vec![],
            ttl_attribute: Some(EXPIRES_AT),
        },
    ]
}

/// The spec of one table.
pub fn table(id: TableId) -> TableSpec {
    // `tables()` lists every TableId exactly once (checked by a unit test), so the fallback
    // is unreachable; it returns a spec with the right id rather than panicking.
    tables()
        .into_iter()
        .find(|t| t.id == id)
        .unwrap_or(TableSpec {
            id,
            suffix: "unknown",
            partition_key: s(attr::PK),
            sort_key: None,
            gsis: vec![],
            ttl_attribute: None,
        })
}

/// Checks a table-name prefix: DynamoDB names are 3..=255 of `[A-Za-z0-9_.-]`.
pub fn validate_prefix(prefix: &str) -> crate::Result<()> {
    let longest = tables().iter().map(|t| t.suffix.len()).max().unwrap_or(0);
    if prefix.len() + longest > 255
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(crate::Error::invalid(
            "table_prefix",
            format!("{prefix:?} must be [A-Za-z0-9_.-] and short enough for 255-char table names"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod template_check;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_id_once_and_suffixes_unique() {
        let t = tables();
        let ids: std::collections::HashSet<_> = t.iter().map(|t| t.id).collect();
        assert_eq!(ids.len(), 8);
        let suffixes: std::collections::HashSet<_> = t.iter().map(|t| t.suffix).collect();
        assert_eq!(suffixes.len(), t.len());
        assert_eq!(table(TableId::Control).ttl_attribute, Some("expires_at"));
        assert_eq!(
            table(TableId::OfferEvents).ttl_attribute,
            Some("expires_at")
        );
    }

    #[test]
    fn key_attributes_are_deduplicated() {
        let ev = table(TableId::OfferEvents);
        let names: Vec<_> = ev.key_attributes().iter().map(|a| a.name).collect();
        assert_eq!(names, vec!["pk", "customer_key", "at_key", "offer_key"]);
    }

    #[test]
    fn prefix_validation() {
        assert!(validate_prefix("affinity-prod-").is_ok());
        assert!(validate_prefix("").is_ok());
        assert!(validate_prefix("bad prefix").is_err());
        assert_eq!(table(TableId::Purchases).name("p-"), "p-purchases");
    }
}
