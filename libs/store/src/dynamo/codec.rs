//! Record <-> DynamoDB item conversion. Attribute names come from `schema::attr` where they
//! are keys; the others are plain field names.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::str::FromStr;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};

use super::schema::attr::{AT_KEY, CUSTOMER_KEY, EXPIRES_AT, KEY_ID, OFFER_KEY, PK, SK, TENANT};
use super::{BACKEND, Item};
use crate::error::{Error, Result};
use crate::ids::{
    BlobKey, Category, Channel, Currency, CustomerId, EventId, ItemId, JobId, KeyId,
    ModelVersionId, OfferId, OrderId, RecommendationId, TenantId,
};
use crate::types::{
    ApiKeyRecord, CatalogItem, Consent, CustomerRecord, ErasureAudit, JobRecord, KeyHash, KeyKind,
    LivePointer, ModelVersion, OfferEvent, OfferRecord, Purchase, Scope, from_millis, to_millis,
};

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// `tenant#id`: unambiguous because tenant ids cannot contain `#`.
pub(crate) fn tkey(tenant: &TenantId, id: &str) -> String {
    format!("{}#{id}", tenant.as_str())
}

/// Fixed-width millisecond prefix so string order equals time order.
pub(crate) fn at_prefix(at: DateTime<Utc>) -> String {
    format!("{:015}", to_millis(at).max(0))
}

fn corrupt(field: &str, why: impl std::fmt::Display) -> Error {
    Error::backend_msg(BACKEND, "decode item", format!("attribute {field}: {why}"))
}

pub(crate) fn get_s<'a>(item: &'a Item, k: &str) -> Result<&'a str> {
    match item.get(k) {
        Some(AttributeValue::S(v)) => Ok(v),
        Some(_) => Err(corrupt(k, "not a string")),
        None => Err(corrupt(k, "missing")),
    }
}

pub(crate) fn opt_s<'a>(item: &'a Item, k: &str) -> Result<Option<&'a str>> {
    match item.get(k) {
        Some(AttributeValue::S(v)) => Ok(Some(v)),
        Some(AttributeValue::Null(_)) | None => Ok(None),
        Some(_) => Err(corrupt(k, "not a string")),
    }
}

pub(crate) fn get_n<T: FromStr>(item: &Item, k: &str) -> Result<T> {
    match item.get(k) {
        Some(AttributeValue::N(v)) => v.parse().map_err(|_| corrupt(k, "bad number")),
        Some(_) => Err(corrupt(k, "not a number")),
        None => Err(corrupt(k, "missing")),
    }
}

fn opt_n<T: FromStr>(item: &Item, k: &str) -> Result<Option<T>> {
    match item.get(k) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(_) => get_n(item, k).map(Some),
    }
}

fn get_bool(item: &Item, k: &str) -> Result<bool> {
    match item.get(k) {
        Some(AttributeValue::Bool(b)) => Ok(*b),
        Some(_) => Err(corrupt(k, "not a bool")),
        None => Err(corrupt(k, "missing")),
    }
}

fn opt_bool(item: &Item, k: &str) -> Result<Option<bool>> {
    match item.get(k) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(_) => get_bool(item, k).map(Some),
    }
}

pub(crate) fn get_time(item: &Item, k: &str) -> Result<DateTime<Utc>> {
    from_millis(get_n(item, k)?)
}

fn get_json(item: &Item, k: &str) -> Result<serde_json::Value> {
    serde_json::from_str(get_s(item, k)?).map_err(|e| corrupt(k, e))
}

fn parse<T>(k: &str, r: Result<T>) -> Result<T> {
    r.map_err(|e| corrupt(k, e))
}

fn json_str(v: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::backend(BACKEND, "encode json", e))
}

fn put_opt(item: &mut Item, k: &str, v: Option<String>) {
    if let Some(v) = v {
        item.insert(k.to_string(), s(v));
    }
}

// ---- purchases ----

pub(crate) fn purchase_key(tenant: &TenantId, order: &OrderId, line: u32) -> Item {
    Item::from([
        (PK.into(), s(tkey(tenant, order.as_str()))),
        (SK.into(), n(line)),
    ])
}

pub(crate) fn purchase_item(tenant: &TenantId, p: &Purchase) -> Item {
    let mut item = purchase_key(tenant, &p.order_id, p.line);
    item.insert(TENANT.into(), s(tenant.as_str()));
    item.insert("order_id".into(), s(p.order_id.as_str()));
    item.insert("customer_id".into(), s(p.customer_id.as_str()));
    item.insert("item_id".into(), s(p.item_id.as_str()));
    item.insert("quantity".into(), n(p.quantity.get()));
    item.insert("unit_price_minor".into(), n(p.unit_price_minor));
    put_opt(&mut item, "currency", p.currency.map(|c| c.to_string()));
    item.insert("purchased_at".into(), n(to_millis(p.purchased_at)));
    item.insert(CUSTOMER_KEY.into(), s(tkey(tenant, p.customer_id.as_str())));
    item.insert(
        AT_KEY.into(),
        s(format!(
            "{}#{}#{:010}",
            at_prefix(p.purchased_at),
            p.order_id.as_str(),
            p.line
        )),
    );
    item
}

pub(crate) fn purchase_from(item: &Item) -> Result<Purchase> {
    let q: u32 = get_n(item, "quantity")?;
    Ok(Purchase {
        order_id: parse("order_id", OrderId::parse(get_s(item, "order_id")?))?,
        line: get_n(item, SK)?,
        customer_id: parse(
            "customer_id",
            CustomerId::parse(get_s(item, "customer_id")?),
        )?,
        item_id: parse("item_id", ItemId::parse(get_s(item, "item_id")?))?,
        quantity: NonZeroU32::new(q).ok_or_else(|| corrupt("quantity", "zero"))?,
        unit_price_minor: get_n(item, "unit_price_minor")?,
        currency: opt_s(item, "currency")?
            .map(|c| parse("currency", Currency::parse(c)))
            .transpose()?,
        purchased_at: get_time(item, "purchased_at")?,
    })
}

/// (order_id, line) of a purchase item, for matching batch-get results to inputs.
pub(crate) fn purchase_identity(item: &Item) -> Result<(String, u32)> {
    Ok((get_s(item, "order_id")?.to_string(), get_n(item, SK)?))
}

// ---- catalog items ----

pub(crate) fn item_key(tenant: &TenantId, id: &ItemId) -> Item {
    Item::from([(PK.into(), s(tenant.as_str())), (SK.into(), s(id.as_str()))])
}

pub(crate) fn catalog_item(tenant: &TenantId, c: &CatalogItem) -> Result<Item> {
    let mut item = item_key(tenant, &c.item_id);
    item.insert("title".into(), s(&c.title));
    put_opt(
        &mut item,
        "category",
        c.category.as_ref().map(|c| c.to_string()),
    );
    item.insert("price_minor".into(), n(c.price_minor));
    put_opt(&mut item, "currency", c.currency.map(|c| c.to_string()));
    item.insert("in_stock".into(), AttributeValue::Bool(c.in_stock));
    item.insert("created_at".into(), n(to_millis(c.created_at)));
    item.insert(
        "repurchasable".into(),
        AttributeValue::Bool(c.repurchasable),
    );
    put_opt(
        &mut item,
        "attributes",
        c.attributes.as_ref().map(json_str).transpose()?,
    );
    Ok(item)
}

pub(crate) fn catalog_from(item: &Item) -> Result<CatalogItem> {
    Ok(CatalogItem {
        item_id: parse("item_id", ItemId::parse(get_s(item, SK)?))?,
        title: get_s(item, "title")?.to_string(),
        category: opt_s(item, "category")?
            .map(|c| parse("category", Category::parse(c)))
            .transpose()?,
        price_minor: get_n(item, "price_minor")?,
        currency: opt_s(item, "currency")?
            .map(|c| parse("currency", Currency::parse(c)))
            .transpose()?,
        in_stock: get_bool(item, "in_stock")?,
        created_at: get_time(item, "created_at")?,
        repurchasable: get_bool(item, "repurchasable")?,
        attributes: match opt_s(item, "attributes")? {
            Some(a) => Some(serde_json::from_str(a).map_err(|e| corrupt("attributes", e))?),
            None => None,
        },
    })
}

// ---- customers ----

/// A customer row's key: one partition per customer (`<tenant>#<customer>`), so a shop's
/// per-request customer reads spread over DynamoDB's partitions instead of all landing on
/// the tenant's one (3,000 RCU per partition). The sort key keeps the id.
pub(crate) fn customer_key(tenant: &TenantId, c: &CustomerId) -> Item {
    Item::from([
        (PK.into(), s(tkey(tenant, c.as_str()))),
        (SK.into(), s(c.as_str())),
    ])
}

/// The key of layout 1 (every customer of a tenant under `pk` = tenant), read only until
/// the tenant's rows are moved (`DynamoStore::rekey_customers`).
pub(crate) fn legacy_customer_key(tenant: &TenantId, c: &CustomerId) -> Item {
    Item::from([(PK.into(), s(tenant.as_str())), (SK.into(), s(c.as_str()))])
}

/// Control-table row saying the tenant's customer rows are all in layout 2.
pub(crate) const CUSTOMER_LAYOUT_SK: &str = "layout#customers";
/// The customer key layout this build writes.
pub(crate) const CUSTOMER_LAYOUT: u32 = 2;

pub(crate) fn customer_item(tenant: &TenantId, c: &CustomerRecord) -> Item {
    let mut item = customer_key(tenant, &c.customer_id);
    // `opt_out` is still written (true when neither use is consented) so an older reader
    // keeps its meaning.
    item.insert(
        "opt_out".into(),
        AttributeValue::Bool(c.consent == Consent::NONE),
    );
    item.insert(
        "personalization".into(),
        AttributeValue::Bool(c.consent.personalization),
    );
    item.insert(
        "marketing".into(),
        AttributeValue::Bool(c.consent.marketing),
    );
    put_opt(&mut item, "tier_override", c.tier_override.clone());
    item.insert("updated_at".into(), n(to_millis(c.updated_at)));
    item
}

pub(crate) fn customer_from(item: &Item) -> Result<CustomerRecord> {
    Ok(CustomerRecord {
        customer_id: parse("customer_id", CustomerId::parse(get_s(item, SK)?))?,
        consent: {
            // Rows written before consent per use hold only `opt_out`.
            let opted_in = !get_bool(item, "opt_out")?;
            Consent {
                personalization: opt_bool(item, "personalization")?.unwrap_or(opted_in),
                marketing: opt_bool(item, "marketing")?.unwrap_or(opted_in),
            }
        },
        tier_override: opt_s(item, "tier_override")?.map(str::to_string),
        updated_at: get_time(item, "updated_at")?,
    })
}

// ---- offers ----

pub(crate) fn offer_key(tenant: &TenantId, o: &OfferId) -> Item {
    Item::from([(PK.into(), s(tenant.as_str())), (SK.into(), s(o.as_str()))])
}

pub(crate) fn offer_item(tenant: &TenantId, o: &OfferRecord) -> Result<Item> {
    let mut item = offer_key(tenant, &o.offer_id);
    item.insert("status".into(), s(o.status.as_str()));
    item.insert("document".into(), s(json_str(&o.document)?));
    item.insert("updated_at".into(), n(to_millis(o.updated_at)));
    Ok(item)
}

pub(crate) fn offer_from(item: &Item) -> Result<OfferRecord> {
    Ok(OfferRecord {
        offer_id: parse("offer_id", OfferId::parse(get_s(item, SK)?))?,
        status: parse("status", get_s(item, "status")?.parse())?,
        document: get_json(item, "document")?,
        updated_at: get_time(item, "updated_at")?,
    })
}

// ---- offer events ----

pub(crate) fn event_key(tenant: &TenantId, e: &EventId) -> Item {
    Item::from([(PK.into(), s(tkey(tenant, e.as_str())))])
}

/// The stored row of an offer event; with a retention (`ttl_secs`), the row also carries the
/// TTL attribute `expires_at` = event time + retention, in epoch seconds.
pub(crate) fn event_item(
    tenant: &TenantId,
    e: &OfferEvent,
    write_token: &str,
    ttl_secs: Option<i64>,
) -> Item {
    let mut item = event_key(tenant, &e.event_id);
    item.insert(TENANT.into(), s(tenant.as_str()));
    item.insert("event_id".into(), s(e.event_id.as_str()));
    item.insert("customer_id".into(), s(e.customer_id.as_str()));
    item.insert("offer_id".into(), s(e.offer_id.as_str()));
    item.insert("kind".into(), s(e.kind.as_str()));
    item.insert("channel".into(), s(e.channel.as_str()));
    put_opt(
        &mut item,
        "recommendation_id",
        e.recommendation_id.as_ref().map(|r| r.to_string()),
    );
    item.insert("at".into(), n(to_millis(e.at)));
    item.insert(CUSTOMER_KEY.into(), s(tkey(tenant, e.customer_id.as_str())));
    item.insert(OFFER_KEY.into(), s(tkey(tenant, e.offer_id.as_str())));
    item.insert(
        AT_KEY.into(),
        s(format!("{}#{}", at_prefix(e.at), e.event_id.as_str())),
    );
    item.insert("write_token".into(), s(write_token));
    if let Some(ttl) = ttl_secs {
        item.insert(EXPIRES_AT.into(), n(e.at.timestamp().saturating_add(ttl)));
    }
    item
}

pub(crate) fn event_from(item: &Item) -> Result<OfferEvent> {
    Ok(OfferEvent {
        event_id: parse("event_id", EventId::parse(get_s(item, "event_id")?))?,
        customer_id: parse(
            "customer_id",
            CustomerId::parse(get_s(item, "customer_id")?),
        )?,
        offer_id: parse("offer_id", OfferId::parse(get_s(item, "offer_id")?))?,
        kind: parse("kind", get_s(item, "kind")?.parse())?,
        channel: parse("channel", Channel::parse(get_s(item, "channel")?))?,
        recommendation_id: opt_s(item, "recommendation_id")?
            .map(|r| parse("recommendation_id", RecommendationId::parse(r)))
            .transpose()?,
        at: get_time(item, "at")?,
    })
}

// ---- api keys ----

pub(crate) fn api_key_item(k: &ApiKeyRecord) -> Result<Item> {
    let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
    let mut item = Item::from([(PK.into(), s(k.hash.to_hex()))]);
    item.insert(TENANT.into(), s(k.tenant.as_str()));
    item.insert(KEY_ID.into(), s(k.key_id.as_str()));
    item.insert("prefix".into(), s(&k.prefix));
    item.insert("scopes".into(), s(json_str(&scopes)?));
    put_opt(&mut item, "label", k.label.clone());
    item.insert("created_at".into(), n(to_millis(k.created_at)));
    item.insert("revoked".into(), AttributeValue::Bool(k.revoked));
    item.insert("kind".into(), s(k.kind.as_str()));
    put_opt(&mut item, "signing_key", k.signing_key.clone());
    Ok(item)
}

pub(crate) fn api_key_from(item: &Item) -> Result<ApiKeyRecord> {
    let scopes: Vec<String> =
        serde_json::from_str(get_s(item, "scopes")?).map_err(|e| corrupt("scopes", e))?;
    let scopes = scopes
        .iter()
        .map(|s| parse("scopes", Scope::from_stored(s)))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect::<BTreeSet<_>>();
    Ok(ApiKeyRecord {
        key_id: parse(KEY_ID, KeyId::parse(get_s(item, KEY_ID)?))?,
        tenant: parse(TENANT, TenantId::parse(get_s(item, TENANT)?))?,
        hash: parse(PK, KeyHash::from_hex(get_s(item, PK)?))?,
        prefix: get_s(item, "prefix")?.to_string(),
        scopes,
        label: opt_s(item, "label")?.map(str::to_string),
        created_at: get_time(item, "created_at")?,
        revoked: get_bool(item, "revoked")?,
        kind: match opt_s(item, "kind")? {
            Some(k) => parse("kind", KeyKind::from_str(k))?,
            None => KeyKind::Server,
        },
        signing_key: opt_s(item, "signing_key")?.map(str::to_string),
    })
}

// ---- models ----

pub(crate) fn model_key(tenant: &TenantId, v: &ModelVersionId) -> Item {
    Item::from([(PK.into(), s(tenant.as_str())), (SK.into(), s(v.as_str()))])
}

pub(crate) fn model_item(tenant: &TenantId, m: &ModelVersion) -> Result<Item> {
    let mut item = model_key(tenant, &m.version);
    item.insert("created_at".into(), n(to_millis(m.created_at)));
    item.insert("status".into(), s(m.status.as_str()));
    item.insert("artifact_key".into(), s(m.artifact_key.as_str()));
    item.insert("checksum".into(), s(&m.checksum));
    item.insert("params".into(), s(json_str(&m.params)?));
    item.insert("metrics".into(), s(json_str(&m.metrics)?));
    item.insert("data_counts".into(), s(json_str(&m.data_counts)?));
    put_opt(&mut item, "reason", m.reason.clone());
    Ok(item)
}

pub(crate) fn model_from(item: &Item) -> Result<ModelVersion> {
    Ok(ModelVersion {
        version: parse("version", ModelVersionId::parse(get_s(item, SK)?))?,
        created_at: get_time(item, "created_at")?,
        status: parse("status", get_s(item, "status")?.parse())?,
        artifact_key: parse("artifact_key", BlobKey::parse(get_s(item, "artifact_key")?))?,
        checksum: get_s(item, "checksum")?.to_string(),
        params: get_json(item, "params")?,
        metrics: get_json(item, "metrics")?,
        data_counts: serde_json::from_str(get_s(item, "data_counts")?)
            .map_err(|e| corrupt("data_counts", e))?,
        reason: opt_s(item, "reason")?.map(str::to_string),
    })
}

// ---- control table: live pointer, lock, jobs ----

pub(crate) const LIVE_SK: &str = "live";
pub(crate) const LOCK_SK: &str = "lock";

pub(crate) fn control_key(tenant: &TenantId, sk: &str) -> Item {
    Item::from([(PK.into(), s(tenant.as_str())), (SK.into(), s(sk))])
}

pub(crate) fn job_sk(job: &JobId) -> String {
    format!("job#{}", job.as_str())
}

pub(crate) fn pointer_item(tenant: &TenantId, p: &LivePointer) -> Item {
    let mut item = control_key(tenant, LIVE_SK);
    item.insert("version".into(), s(p.version.as_str()));
    put_opt(
        &mut item,
        "previous",
        p.previous.as_ref().map(|v| v.to_string()),
    );
    item.insert("updated_at".into(), n(to_millis(p.updated_at)));
    item
}

pub(crate) fn pointer_from(item: &Item) -> Result<LivePointer> {
    Ok(LivePointer {
        version: parse("version", ModelVersionId::parse(get_s(item, "version")?))?,
        previous: opt_s(item, "previous")?
            .map(|v| parse("previous", ModelVersionId::parse(v)))
            .transpose()?,
        updated_at: get_time(item, "updated_at")?,
    })
}

/// Seconds after which DynamoDB's TTL may delete an expired lock row (lazily; the condition
/// expressions compare `until` themselves, so correctness never depends on TTL timing).
pub(crate) const LOCK_TTL_GRACE_SECS: i64 = 24 * 3600;
/// Job records are kept 30 days for retry recognition, then expire.
pub(crate) const JOB_TTL_SECS: i64 = 30 * 24 * 3600;

pub(crate) fn lock_item(tenant: &TenantId, owner: &str, until: DateTime<Utc>) -> Item {
    let mut item = control_key(tenant, LOCK_SK);
    item.insert("owner".into(), s(owner));
    item.insert("until".into(), n(to_millis(until)));
    item.insert(
        EXPIRES_AT.into(),
        n(until.timestamp() + LOCK_TTL_GRACE_SECS),
    );
    item
}

pub(crate) fn job_item(tenant: &TenantId, j: &JobRecord) -> Item {
    let mut item = control_key(tenant, &job_sk(&j.job_id));
    item.insert("job_id".into(), s(j.job_id.as_str()));
    item.insert("status".into(), s(j.status.as_str()));
    item.insert("started_at".into(), n(to_millis(j.started_at)));
    if let Some(f) = j.finished_at {
        item.insert("finished_at".into(), n(to_millis(f)));
    }
    put_opt(&mut item, "message", j.message.clone());
    item.insert(
        EXPIRES_AT.into(),
        n(j.started_at.timestamp() + JOB_TTL_SECS),
    );
    item
}

/// Erasure audit rows sort by time under the tenant's control partition.
pub(crate) const ERASURE_SK_PREFIX: &str = "erasure#";

pub(crate) fn erasure_sk_at(at: DateTime<Utc>) -> String {
    format!("{ERASURE_SK_PREFIX}{:015}", to_millis(at).max(0))
}

pub(crate) fn erasure_item(tenant: &TenantId, a: &ErasureAudit) -> Result<Item> {
    let sk = format!("{}#{}", erasure_sk_at(a.at), a.audit_id);
    let mut item = control_key(tenant, &sk);
    item.insert("audit_id".into(), s(&a.audit_id));
    item.insert("customer_hash".into(), s(&a.customer_hash));
    item.insert("actor".into(), s(&a.actor));
    item.insert("at".into(), n(to_millis(a.at)));
    item.insert("counts".into(), s(json_str(&a.counts)?));
    Ok(item)
}

pub(crate) fn erasure_from(item: &Item) -> Result<ErasureAudit> {
    Ok(ErasureAudit {
        audit_id: get_s(item, "audit_id")?.to_string(),
        customer_hash: get_s(item, "customer_hash")?.to_string(),
        actor: get_s(item, "actor")?.to_string(),
        at: get_time(item, "at")?,
        counts: serde_json::from_str(get_s(item, "counts")?).map_err(|e| corrupt("counts", e))?,
    })
}

pub(crate) fn job_from(item: &Item) -> Result<JobRecord> {
    Ok(JobRecord {
        job_id: parse("job_id", JobId::parse(get_s(item, "job_id")?))?,
        status: parse("status", get_s(item, "status")?.parse())?,
        started_at: get_time(item, "started_at")?,
        finished_at: opt_n::<i64>(item, "finished_at")?
            .map(from_millis)
            .transpose()?,
        message: opt_s(item, "message")?.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn purchase_round_trips_and_sort_key_orders_by_time() {
        let t = TenantId::default();
        let p = Purchase {
            order_id: OrderId::parse("#1001").unwrap(),
            line: 3,
            customer_id: CustomerId::parse("c#1").unwrap(),
            item_id: ItemId::parse("sku").unwrap(),
            quantity: NonZeroU32::new(2).unwrap(),
            unit_price_minor: 250,
            currency: None,
            purchased_at: Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap(),
        };
        let item = purchase_item(&t, &p);
        assert_eq!(purchase_from(&item).unwrap(), p);
        assert_eq!(get_s(&item, PK).unwrap(), "default##1001");
        let early = at_prefix(Utc.with_ymd_and_hms(1999, 1, 1, 0, 0, 0).unwrap());
        let late = at_prefix(Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap());
        assert_eq!(early.len(), 15);
        assert!(early < late);
    }

    #[test]
    fn offer_event_ttl_is_event_time_plus_retention_only_when_configured() {
        let t = TenantId::default();
        let at = Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap();
        let e = OfferEvent {
            event_id: EventId::parse("e1").unwrap(),
            customer_id: CustomerId::parse("c1").unwrap(),
            offer_id: OfferId::parse("o1").unwrap(),
            kind: crate::types::OfferEventKind::Shown,
            channel: Channel::parse("email").unwrap(),
            recommendation_id: None,
            at,
        };
        let kept = event_item(&t, &e, "tok", None);
        assert!(!kept.contains_key(EXPIRES_AT));
        assert_eq!(event_from(&kept).unwrap(), e);

        let retention = 400 * 86_400;
        let expiring = event_item(&t, &e, "tok", Some(retention));
        let expires: i64 = get_n(&expiring, EXPIRES_AT).unwrap();
        assert_eq!(expires, at.timestamp() + retention);
        // The TTL attribute is bookkeeping: the event reads back unchanged.
        assert_eq!(event_from(&expiring).unwrap(), e);
        // Far-future events must not overflow the epoch-seconds arithmetic.
        let far = event_item(&t, &e, "tok", Some(i64::MAX));
        assert_eq!(get_n::<i64>(&far, EXPIRES_AT).unwrap(), i64::MAX);
    }

    #[test]
    fn corrupt_items_are_backend_errors_not_panics() {
        let mut item = Item::new();
        item.insert("quantity".into(), s("x"));
        assert!(matches!(purchase_from(&item), Err(Error::Backend { .. })));
    }
}
