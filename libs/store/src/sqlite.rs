//! Embedded backend: one SQLite file (rusqlite, bundled), the local default.
//!
//! Why SQLite: one file, ACID transactions (so a CSV import is all-or-nothing and a
//! compare-and-set is a plain conditional UPDATE), secondary indexes for the customer/offer
//! access paths, and `bundled` builds it from source so no system library is needed. Pure
//! Rust key-value stores (redb, sled, fjall) would need hand-made secondary indexes and
//! offer nothing we use. Calls run on tokio's blocking pool behind one mutex: SQLite
//! serialises writers anyway, and WAL mode lets other processes read meanwhile.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::{Conflict, Error, Result};
use crate::ids::{CustomerId, ItemId, JobId, KeyId, ModelVersionId, OfferId, OrderId, TenantId};
use crate::traits::{
    CatalogStore, CustomerStore, KeyStore, ModelRegistry, OfferStore, PurchaseStore, RetrainLock,
};
use crate::types::{
    ApiKeyRecord, CatalogItem, Consent, CustomerRecord, DeletionCounts, ErasureAudit, JobRecord,
    JobStart, KeyHash, LivePointer, LockLease, ModelStatus, ModelVersion, OfferEvent, OfferRecord,
    Purchase, PurchaseRow, PurchaseScan, PurchaseSink, UpsertOutcome, Watermark, WriteOutcome,
    from_millis, normalize_time, to_millis,
};

const BACKEND: &str = "sqlite";
const SCHEMA_VERSION: i64 = 2;

/// Version 1 -> 2: consent per use (personalization, marketing) instead of one opt-out flag
/// (an opted-out customer keeps neither), storefront keys, erasure audit records.
const MIGRATE_V2: &str = r#"
ALTER TABLE customers ADD COLUMN personalization INTEGER NOT NULL DEFAULT 1;
ALTER TABLE customers ADD COLUMN marketing INTEGER NOT NULL DEFAULT 1;
UPDATE customers SET personalization = 1 - opt_out, marketing = 1 - opt_out;
ALTER TABLE api_keys ADD COLUMN kind TEXT NOT NULL DEFAULT 'server';
ALTER TABLE api_keys ADD COLUMN signing_key TEXT;
CREATE TABLE IF NOT EXISTS erasures (
    tenant TEXT NOT NULL, audit_id TEXT NOT NULL, customer_hash TEXT NOT NULL,
    actor TEXT NOT NULL, at_ms INTEGER NOT NULL, counts TEXT NOT NULL,
    PRIMARY KEY (tenant, audit_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS erasures_by_time ON erasures (tenant, at_ms);
"#;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS purchases (
    tenant TEXT NOT NULL, order_id TEXT NOT NULL, line INTEGER NOT NULL,
    customer_id TEXT NOT NULL, item_id TEXT NOT NULL, quantity INTEGER NOT NULL,
    unit_price_minor INTEGER NOT NULL, currency TEXT, purchased_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, order_id, line)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS purchases_by_customer
    ON purchases (tenant, customer_id, purchased_at_ms DESC, order_id, line);
CREATE TABLE IF NOT EXISTS items (
    tenant TEXT NOT NULL, item_id TEXT NOT NULL, title TEXT NOT NULL, category TEXT,
    price_minor INTEGER NOT NULL, currency TEXT, in_stock INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL, repurchasable INTEGER NOT NULL, attributes TEXT,
    PRIMARY KEY (tenant, item_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS customers (
    tenant TEXT NOT NULL, customer_id TEXT NOT NULL, opt_out INTEGER NOT NULL,
    tier_override TEXT, updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, customer_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offers (
    tenant TEXT NOT NULL, offer_id TEXT NOT NULL, status TEXT NOT NULL, document TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL, PRIMARY KEY (tenant, offer_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offer_events (
    tenant TEXT NOT NULL, event_id TEXT NOT NULL, customer_id TEXT NOT NULL,
    offer_id TEXT NOT NULL, kind TEXT NOT NULL, channel TEXT NOT NULL,
    recommendation_id TEXT, at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, event_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS offer_events_by_customer ON offer_events (tenant, customer_id, at_ms DESC);
CREATE INDEX IF NOT EXISTS offer_events_by_offer ON offer_events (tenant, offer_id, at_ms DESC);
CREATE TABLE IF NOT EXISTS api_keys (
    hash TEXT PRIMARY KEY, tenant TEXT NOT NULL, key_id TEXT NOT NULL, prefix TEXT NOT NULL,
    scopes TEXT NOT NULL, label TEXT, created_at_ms INTEGER NOT NULL, revoked INTEGER NOT NULL,
    UNIQUE (tenant, key_id));
CREATE TABLE IF NOT EXISTS models (
    tenant TEXT NOT NULL, version TEXT NOT NULL, created_at_ms INTEGER NOT NULL,
    status TEXT NOT NULL, artifact_key TEXT NOT NULL, checksum TEXT NOT NULL,
    params TEXT NOT NULL, metrics TEXT NOT NULL, data_counts TEXT NOT NULL, reason TEXT,
    PRIMARY KEY (tenant, version)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS live_pointer (
    tenant TEXT PRIMARY KEY, version TEXT NOT NULL, previous TEXT, updated_at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS retrain_lock (
    tenant TEXT PRIMARY KEY, owner TEXT NOT NULL, until_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    tenant TEXT NOT NULL, job_id TEXT NOT NULL, status TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL, finished_at_ms INTEGER, message TEXT,
    PRIMARY KEY (tenant, job_id)) WITHOUT ROWID;
"#;

/// The embedded record store: a single SQLite file (or an in-memory database for tests).
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn sql_err(op: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    move |e| Error::backend(BACKEND, op, e)
}

/// Decodes a stored value with a validating parser; corrupt data becomes a conversion error.
fn dec<T>(idx: usize, r: Result<T>) -> rusqlite::Result<T> {
    r.map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn ms(idx: usize, v: i64) -> rusqlite::Result<DateTime<Utc>> {
    dec(idx, from_millis(v))
}

fn json(idx: usize, s: String) -> rusqlite::Result<serde_json::Value> {
    serde_json::from_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its schema.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection> {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::backend(BACKEND, "create directory", e))?;
            }
            let conn = Connection::open(&p).map_err(sql_err("open"))?;
            // WAL: readers in other processes are not blocked by a writer; NORMAL sync is
            // durable across application crashes, which is what a local store needs.
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
                .map_err(sql_err("pragma"))?;
            Self::init(conn)
        })
        .await
        .map_err(|e| Error::backend(BACKEND, "open", e))??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: Some(path),
        })
    }

    /// An in-memory database: the same code as the file store, for other crates' unit tests.
    pub fn open_in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(sql_err("open"))?;
        let conn = Self::init(conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: None,
        })
    }

    fn init(conn: Connection) -> Result<Connection> {
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(sql_err("busy_timeout"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql_err("pragma"))?;
        conn.execute_batch(SCHEMA)
            .map_err(sql_err("create schema"))?;
        let found: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql_err("read schema version"))?;
        match found.as_deref() {
            None | Some("1") => {
                let tx = conn.unchecked_transaction().map_err(sql_err("begin"))?;
                tx.execute_batch(MIGRATE_V2)
                    .map_err(sql_err("migrate schema to version 2"))?;
                tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?1)",
                    params![SCHEMA_VERSION.to_string()],
                )
                .map_err(sql_err("write schema version"))?;
                tx.commit().map_err(sql_err("commit"))?;
            }
            Some(v) if v == SCHEMA_VERSION.to_string() => {}
            Some(v) => {
                return Err(Error::backend_msg(
                    BACKEND,
                    "open",
                    format!(
                        "database schema version {v} is not supported (expected {SCHEMA_VERSION})"
                    ),
                ));
            }
        }
        Ok(conn)
    }

    /// Path of the database file (None for in-memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn call<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock poisons it; the connection itself is still
            // consistent (SQLite rolls back the open transaction), so keep using it.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| Error::backend(BACKEND, op, e))?
    }
}

fn purchase_from_row(r: &Row<'_>) -> rusqlite::Result<Purchase> {
    let quantity: u32 = r.get(4)?;
    Ok(Purchase {
        order_id: dec(0, OrderId::parse(r.get::<_, String>(0)?))?,
        line: r.get(1)?,
        customer_id: dec(2, CustomerId::parse(r.get::<_, String>(2)?))?,
        item_id: dec(3, ItemId::parse(r.get::<_, String>(3)?))?,
        quantity: dec(
            4,
            std::num::NonZeroU32::new(quantity)
                .ok_or_else(|| Error::invalid("quantity", "stored zero")),
        )?,
        unit_price_minor: r.get(5)?,
        currency: match r.get::<_, Option<String>>(6)? {
            Some(c) => Some(dec(6, crate::ids::Currency::parse(&c))?),
            None => None,
        },
        purchased_at: ms(7, r.get(7)?)?,
    })
}

const PURCHASE_COLS: &str =
    "order_id, line, customer_id, item_id, quantity, unit_price_minor, currency, purchased_at_ms";

fn item_from_row(r: &Row<'_>) -> rusqlite::Result<CatalogItem> {
    Ok(CatalogItem {
        item_id: dec(0, ItemId::parse(r.get::<_, String>(0)?))?,
        title: r.get(1)?,
        category: match r.get::<_, Option<String>>(2)? {
            Some(c) => Some(dec(2, crate::ids::Category::parse(c))?),
            None => None,
        },
        price_minor: r.get(3)?,
        currency: match r.get::<_, Option<String>>(4)? {
            Some(c) => Some(dec(4, crate::ids::Currency::parse(&c))?),
            None => None,
        },
        in_stock: r.get(5)?,
        created_at: ms(6, r.get(6)?)?,
        repurchasable: r.get(7)?,
        attributes: match r.get::<_, Option<String>>(8)? {
            Some(a) => Some(json(8, a)?),
            None => None,
        },
    })
}

const ITEM_COLS: &str = "item_id, title, category, price_minor, currency, in_stock, created_at_ms, repurchasable, attributes";

fn offer_from_row(r: &Row<'_>) -> rusqlite::Result<OfferRecord> {
    Ok(OfferRecord {
        offer_id: dec(0, OfferId::parse(r.get::<_, String>(0)?))?,
        status: dec(
            1,
            crate::types::OfferStatus::from_str(&r.get::<_, String>(1)?),
        )?,
        document: json(2, r.get(2)?)?,
        updated_at: ms(3, r.get(3)?)?,
    })
}

fn event_from_row(r: &Row<'_>) -> rusqlite::Result<OfferEvent> {
    Ok(OfferEvent {
        event_id: dec(0, crate::ids::EventId::parse(r.get::<_, String>(0)?))?,
        customer_id: dec(1, CustomerId::parse(r.get::<_, String>(1)?))?,
        offer_id: dec(2, OfferId::parse(r.get::<_, String>(2)?))?,
        kind: dec(
            3,
            crate::types::OfferEventKind::from_str(&r.get::<_, String>(3)?),
        )?,
        channel: dec(4, crate::ids::Channel::parse(r.get::<_, String>(4)?))?,
        recommendation_id: match r.get::<_, Option<String>>(5)? {
            Some(s) => Some(dec(5, crate::ids::RecommendationId::parse(s))?),
            None => None,
        },
        at: ms(6, r.get(6)?)?,
    })
}

const EVENT_COLS: &str = "event_id, customer_id, offer_id, kind, channel, recommendation_id, at_ms";

fn key_from_row(r: &Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    let scopes: Vec<String> = serde_json::from_value(json(4, r.get(4)?)?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let mut set = BTreeSet::new();
    for s in scopes {
        set.extend(dec(4, crate::types::Scope::from_stored(&s))?);
    }
    Ok(ApiKeyRecord {
        hash: dec(0, KeyHash::from_hex(&r.get::<_, String>(0)?))?,
        tenant: dec(1, TenantId::parse(r.get::<_, String>(1)?))?,
        key_id: dec(2, KeyId::parse(r.get::<_, String>(2)?))?,
        prefix: r.get(3)?,
        scopes: set,
        label: r.get(5)?,
        created_at: ms(6, r.get(6)?)?,
        revoked: r.get(7)?,
        kind: dec(8, crate::types::KeyKind::from_str(&r.get::<_, String>(8)?))?,
        signing_key: r.get(9)?,
    })
}

const KEY_COLS: &str =
    "hash, tenant, key_id, prefix, scopes, label, created_at_ms, revoked, kind, signing_key";

fn model_from_row(r: &Row<'_>) -> rusqlite::Result<ModelVersion> {
    Ok(ModelVersion {
        version: dec(0, ModelVersionId::parse(r.get::<_, String>(0)?))?,
        created_at: ms(1, r.get(1)?)?,
        status: dec(2, ModelStatus::from_str(&r.get::<_, String>(2)?))?,
        artifact_key: dec(3, crate::ids::BlobKey::parse(r.get::<_, String>(3)?))?,
        checksum: r.get(4)?,
        params: json(5, r.get(5)?)?,
        metrics: json(6, r.get(6)?)?,
        data_counts: serde_json::from_value(json(7, r.get(7)?)?).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, Box::new(e))
        })?,
        reason: r.get(8)?,
    })
}

const MODEL_COLS: &str =
    "version, created_at_ms, status, artifact_key, checksum, params, metrics, data_counts, reason";

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        job_id: dec(0, JobId::parse(r.get::<_, String>(0)?))?,
        status: dec(
            1,
            crate::types::JobStatus::from_str(&r.get::<_, String>(1)?),
        )?,
        started_at: ms(2, r.get(2)?)?,
        finished_at: match r.get::<_, Option<i64>>(3)? {
            Some(v) => Some(ms(3, v)?),
            None => None,
        },
        message: r.get(4)?,
    })
}

const JOB_COLS: &str = "job_id, status, started_at_ms, finished_at_ms, message";

fn to_json(v: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::backend(BACKEND, "encode json", e))
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[async_trait]
impl PurchaseStore for SqliteStore {
    async fn put_purchases(
        &self,
        tenant: &TenantId,
        rows: &[Purchase],
    ) -> Result<Vec<WriteOutcome>> {
        let tenant = tenant.as_str().to_string();
        let rows: Vec<Purchase> = rows.to_vec();
        self.call("put_purchases", move |conn| {
            let tx = conn.transaction().map_err(sql_err("begin"))?;
            let mut out = Vec::with_capacity(rows.len());
            {
                let mut ins = tx
                    .prepare_cached(
                        "INSERT INTO purchases (tenant, order_id, line, customer_id, item_id, quantity,
                         unit_price_minor, currency, purchased_at_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING",
                    )
                    .map_err(sql_err("prepare insert"))?;
                let mut get = tx
                    .prepare_cached(&format!(
                        "SELECT {PURCHASE_COLS} FROM purchases WHERE tenant = ?1 AND order_id = ?2 AND line = ?3"
                    ))
                    .map_err(sql_err("prepare select"))?;
                for row in rows {
                    if let Err(e) = row.validate() {
                        out.push(WriteOutcome::Invalid(e.to_string()));
                        continue;
                    }
                    let p = row.normalized();
                    let n = ins
                        .execute(params![
                            tenant,
                            p.order_id.as_str(),
                            p.line,
                            p.customer_id.as_str(),
                            p.item_id.as_str(),
                            p.quantity.get(),
                            p.unit_price_minor,
                            p.currency.map(|c| c.to_string()),
                            to_millis(p.purchased_at),
                        ])
                        .map_err(sql_err("insert purchase"))?;
                    if n == 1 {
                        out.push(WriteOutcome::Inserted);
                    } else {
                        let existing = get
                            .query_row(params![tenant, p.order_id.as_str(), p.line], purchase_from_row)
                            .map_err(sql_err("read purchase"))?;
                        out.push(if existing == p { WriteOutcome::Duplicate } else { WriteOutcome::Conflict });
                    }
                }
            }
            tx.commit().map_err(sql_err("commit"))?;
            Ok(out)
        })
        .await
    }

    async fn get_purchase(
        &self,
        tenant: &TenantId,
        order_id: &OrderId,
        line: u32,
    ) -> Result<Option<Purchase>> {
        let (t, o) = (tenant.to_string(), order_id.to_string());
        self.call("get_purchase", move |conn| {
            conn.query_row(
                &format!("SELECT {PURCHASE_COLS} FROM purchases WHERE tenant = ?1 AND order_id = ?2 AND line = ?3"),
                params![t, o, line],
                purchase_from_row,
            )
            .optional()
            .map_err(sql_err("get_purchase"))
        })
        .await
    }

    async fn customer_history(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
        limit: usize,
    ) -> Result<Vec<Purchase>> {
        let (t, c) = (tenant.to_string(), customer.to_string());
        self.call("customer_history", move |conn| {
            let mut st = conn
                .prepare_cached(&format!(
                    "SELECT {PURCHASE_COLS} FROM purchases WHERE tenant = ?1 AND customer_id = ?2
                     ORDER BY purchased_at_ms DESC, order_id DESC, line DESC LIMIT ?3"
                ))
                .map_err(sql_err("customer_history"))?;
            let rows = st
                .query_map(params![t, c, limit_i64(limit)], purchase_from_row)
                .map_err(sql_err("customer_history"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql_err("customer_history"))
        })
        .await
    }

    async fn scan_purchases(&self, tenant: &TenantId, _segments: u32) -> Result<PurchaseScan> {
        let t = tenant.to_string();
        self.call("scan_purchases", move |conn| {
            let mut st = conn
                .prepare(&format!(
                    "SELECT {PURCHASE_COLS} FROM purchases WHERE tenant = ?1"
                ))
                .map_err(sql_err("scan_purchases"))?;
            let mut scan = PurchaseScan::default();
            let rows = st
                .query_map(params![t], purchase_from_row)
                .map_err(sql_err("scan_purchases"))?;
            for r in rows {
                let p = r.map_err(sql_err("scan_purchases"))?;
                scan.watermark.observe(&p);
                scan.purchases.push(p);
            }
            Ok(scan)
        })
        .await
    }

    async fn stream_purchases(
        &self,
        tenant: &TenantId,
        _segments: u32,
        mut sink: PurchaseSink,
    ) -> Result<Watermark> {
        let t = tenant.to_string();
        let Some(path) = self.path.clone() else {
            return self
                .call("stream_purchases", move |conn| {
                    stream_rows(conn, &t, &mut sink)
                })
                .await;
        };
        // A file store scans through a connection of its own: WAL keeps that read
        // consistent while other calls (lock renewals, ingestion) go on meanwhile.
        tokio::task::spawn_blocking(move || {
            let conn = Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(sql_err("open scan connection"))?;
            conn.busy_timeout(Duration::from_secs(10))
                .map_err(sql_err("busy_timeout"))?;
            stream_rows(&conn, &t, &mut sink)
        })
        .await
        .map_err(|e| Error::backend(BACKEND, "stream_purchases", e))?
    }
}

/// Streams `(customer, item, quantity, time, unit price)` of a tenant's purchases into `sink`.
fn stream_rows(conn: &Connection, tenant: &str, sink: &mut PurchaseSink) -> Result<Watermark> {
    const OP: &str = "stream_purchases";
    let mut st = conn
        .prepare(
            "SELECT customer_id, item_id, quantity, purchased_at_ms, unit_price_minor FROM purchases WHERE tenant = ?1",
        )
        .map_err(sql_err(OP))?;
    let mut rows = st.query(params![tenant]).map_err(sql_err(OP))?;
    let (mut count, mut max_ms) = (0u64, None::<i64>);
    fn text(v: rusqlite::types::ValueRef<'_>) -> Result<&str> {
        v.as_str().map_err(|e| Error::backend(BACKEND, OP, e))
    }
    while let Some(r) = rows.next().map_err(sql_err(OP))? {
        let customer_id = text(r.get_ref(0).map_err(sql_err(OP))?)?;
        let item_id = text(r.get_ref(1).map_err(sql_err(OP))?)?;
        let quantity: u32 = r.get(2).map_err(sql_err(OP))?;
        let purchased_at_ms: i64 = r.get(3).map_err(sql_err(OP))?;
        let unit_price_minor: i64 = r.get(4).map_err(sql_err(OP))?;
        sink(PurchaseRow {
            customer_id,
            item_id,
            quantity,
            purchased_at_ms,
            unit_price_minor,
        });
        count += 1;
        max_ms = Some(max_ms.map_or(purchased_at_ms, |m| m.max(purchased_at_ms)));
    }
    Ok(Watermark {
        count,
        max_purchased_at: max_ms.map(from_millis).transpose()?,
    })
}

#[async_trait]
impl CatalogStore for SqliteStore {
    async fn upsert_items(
        &self,
        tenant: &TenantId,
        items: &[CatalogItem],
    ) -> Result<Vec<UpsertOutcome>> {
        let t = tenant.to_string();
        let items = items.to_vec();
        self.call("upsert_items", move |conn| {
            let tx = conn.transaction().map_err(sql_err("begin"))?;
            let mut out = Vec::with_capacity(items.len());
            {
                let mut st = tx
                    .prepare_cached(&format!(
                        "INSERT OR REPLACE INTO items (tenant, {ITEM_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                    ))
                    .map_err(sql_err("prepare upsert"))?;
                for item in items {
                    if let Err(e) = item.validate() {
                        out.push(UpsertOutcome::Invalid(e.to_string()));
                        continue;
                    }
                    let attrs = item.attributes.as_ref().map(to_json).transpose()?;
                    st.execute(params![
                        t,
                        item.item_id.as_str(),
                        item.title,
                        item.category.as_ref().map(|c| c.as_str()),
                        item.price_minor,
                        item.currency.map(|c| c.to_string()),
                        item.in_stock,
                        to_millis(item.created_at),
                        item.repurchasable,
                        attrs,
                    ])
                    .map_err(sql_err("upsert item"))?;
                    out.push(UpsertOutcome::Written);
                }
            }
            tx.commit().map_err(sql_err("commit"))?;
            Ok(out)
        })
        .await
    }

    async fn get_items(&self, tenant: &TenantId, ids: &[ItemId]) -> Result<Vec<CatalogItem>> {
        let t = tenant.to_string();
        let ids = ids.to_vec();
        self.call("get_items", move |conn| {
            let mut st = conn
                .prepare_cached(&format!(
                    "SELECT {ITEM_COLS} FROM items WHERE tenant = ?1 AND item_id = ?2"
                ))
                .map_err(sql_err("get_items"))?;
            let mut out = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for id in ids {
                if !seen.insert(id.clone()) {
                    continue;
                }
                if let Some(item) = st
                    .query_row(params![t, id.as_str()], item_from_row)
                    .optional()
                    .map_err(sql_err("get_items"))?
                {
                    out.push(item);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn list_items(&self, tenant: &TenantId) -> Result<Vec<CatalogItem>> {
        let t = tenant.to_string();
        self.call("list_items", move |conn| {
            let mut st = conn
                .prepare(&format!(
                    "SELECT {ITEM_COLS} FROM items WHERE tenant = ?1 ORDER BY item_id"
                ))
                .map_err(sql_err("list_items"))?;
            let rows = st
                .query_map(params![t], item_from_row)
                .map_err(sql_err("list_items"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql_err("list_items"))
        })
        .await
    }
}

#[async_trait]
impl CustomerStore for SqliteStore {
    async fn get_customer(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<Option<CustomerRecord>> {
        let (t, c) = (tenant.to_string(), customer.clone());
        self.call("get_customer", move |conn| {
            conn.query_row(
                "SELECT personalization, marketing, tier_override, updated_at_ms FROM customers WHERE tenant = ?1 AND customer_id = ?2",
                params![t, c.as_str()],
                |r| {
                    Ok(CustomerRecord {
                        customer_id: c.clone(),
                        consent: Consent {
                            personalization: r.get(0)?,
                            marketing: r.get(1)?,
                        },
                        tier_override: r.get(2)?,
                        updated_at: ms(3, r.get(3)?)?,
                    })
                },
            )
            .optional()
            .map_err(sql_err("get_customer"))
        })
        .await
    }

    async fn put_customer(&self, tenant: &TenantId, record: &CustomerRecord) -> Result<()> {
        record.validate()?;
        let t = tenant.to_string();
        let r = record.clone();
        self.call("put_customer", move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO customers
                 (tenant, customer_id, opt_out, personalization, marketing, tier_override, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    t,
                    r.customer_id.as_str(),
                    r.consent == Consent::NONE,
                    r.consent.personalization,
                    r.consent.marketing,
                    r.tier_override,
                    to_millis(r.updated_at)
                ],
            )
            .map_err(sql_err("put_customer"))?;
            Ok(())
        })
        .await
    }

    async fn delete_customer_data(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
    ) -> Result<DeletionCounts> {
        let (t, c) = (tenant.to_string(), customer.to_string());
        self.call("delete_customer_data", move |conn| {
            let tx = conn.transaction().map_err(sql_err("begin"))?;
            let purchases = tx
                .execute(
                    "DELETE FROM purchases WHERE tenant = ?1 AND customer_id = ?2",
                    params![t, c],
                )
                .map_err(sql_err("delete purchases"))?;
            let customers = tx
                .execute(
                    "DELETE FROM customers WHERE tenant = ?1 AND customer_id = ?2",
                    params![t, c],
                )
                .map_err(sql_err("delete customer"))?;
            let offer_events = tx
                .execute(
                    "DELETE FROM offer_events WHERE tenant = ?1 AND customer_id = ?2",
                    params![t, c],
                )
                .map_err(sql_err("delete offer events"))?;
            tx.commit().map_err(sql_err("commit"))?;
            Ok(DeletionCounts {
                purchases: purchases as u64,
                customers: customers as u64,
                offer_events: offer_events as u64,
            })
        })
        .await
    }

    async fn put_erasure_audit(&self, tenant: &TenantId, audit: &ErasureAudit) -> Result<()> {
        audit.validate()?;
        let (t, a) = (tenant.to_string(), audit.normalized());
        self.call("put_erasure_audit", move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO erasures (tenant, audit_id, customer_hash, actor, at_ms, counts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    t,
                    a.audit_id,
                    a.customer_hash,
                    a.actor,
                    to_millis(a.at),
                    to_json(&a.counts)?
                ],
            )
            .map_err(sql_err("put_erasure_audit"))?;
            Ok(())
        })
        .await
    }

    async fn erasures_since(
        &self,
        tenant: &TenantId,
        since: DateTime<Utc>,
    ) -> Result<Vec<ErasureAudit>> {
        let (t, since) = (tenant.to_string(), to_millis(since));
        self.call("erasures_since", move |conn| {
            let mut st = conn
                .prepare_cached(
                    "SELECT audit_id, customer_hash, actor, at_ms, counts FROM erasures
                     WHERE tenant = ?1 AND at_ms >= ?2 ORDER BY at_ms, audit_id",
                )
                .map_err(sql_err("erasures_since"))?;
            let rows = st
                .query_map(params![t, since], |r| {
                    let counts: String = r.get(4)?;
                    Ok(ErasureAudit {
                        audit_id: r.get(0)?,
                        customer_hash: r.get(1)?,
                        actor: r.get(2)?,
                        at: ms(3, r.get(3)?)?,
                        counts: serde_json::from_str(&counts).map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(
                                4,
                                rusqlite::types::Type::Text,
                                Box::new(e),
                            )
                        })?,
                    })
                })
                .map_err(sql_err("erasures_since"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql_err("erasures_since"))
        })
        .await
    }
}

fn events_query(
    conn: &mut Connection,
    column: &str,
    t: &str,
    id: &str,
    since: Option<i64>,
    limit: usize,
) -> Result<Vec<OfferEvent>> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLS} FROM offer_events WHERE tenant = ?1 AND {column} = ?2 AND at_ms >= ?3
             ORDER BY at_ms DESC, event_id DESC LIMIT ?4"
        ))
        .map_err(sql_err("query offer events"))?;
    let rows = st
        .query_map(
            params![t, id, since.unwrap_or(i64::MIN), limit_i64(limit)],
            event_from_row,
        )
        .map_err(sql_err("query offer events"))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql_err("query offer events"))
}

#[async_trait]
impl OfferStore for SqliteStore {
    async fn upsert_offers(
        &self,
        tenant: &TenantId,
        offers: &[OfferRecord],
    ) -> Result<Vec<UpsertOutcome>> {
        let t = tenant.to_string();
        let offers = offers.to_vec();
        self.call("upsert_offers", move |conn| {
            let tx = conn.transaction().map_err(sql_err("begin"))?;
            let mut out = Vec::with_capacity(offers.len());
            {
                let mut st = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO offers (tenant, offer_id, status, document, updated_at_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .map_err(sql_err("prepare upsert"))?;
                for o in offers {
                    if let Err(e) = o.validate() {
                        out.push(UpsertOutcome::Invalid(e.to_string()));
                        continue;
                    }
                    st.execute(params![
                        t,
                        o.offer_id.as_str(),
                        o.status.as_str(),
                        to_json(&o.document)?,
                        to_millis(o.updated_at)
                    ])
                    .map_err(sql_err("upsert offer"))?;
                    out.push(UpsertOutcome::Written);
                }
            }
            tx.commit().map_err(sql_err("commit"))?;
            Ok(out)
        })
        .await
    }

    async fn get_offer(&self, tenant: &TenantId, offer: &OfferId) -> Result<Option<OfferRecord>> {
        let (t, o) = (tenant.to_string(), offer.to_string());
        self.call("get_offer", move |conn| {
            conn.query_row(
                "SELECT offer_id, status, document, updated_at_ms FROM offers WHERE tenant = ?1 AND offer_id = ?2",
                params![t, o],
                offer_from_row,
            )
            .optional()
            .map_err(sql_err("get_offer"))
        })
        .await
    }

    async fn list_offers(&self, tenant: &TenantId) -> Result<Vec<OfferRecord>> {
        let t = tenant.to_string();
        self.call("list_offers", move |conn| {
            let mut st = conn
                .prepare(
                    "SELECT offer_id, status, document, updated_at_ms FROM offers WHERE tenant = ?1 ORDER BY offer_id",
                )
                .map_err(sql_err("list_offers"))?;
            let rows = st.query_map(params![t], offer_from_row).map_err(sql_err("list_offers"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_err("list_offers"))
        })
        .await
    }

    async fn put_offer_events(
        &self,
        tenant: &TenantId,
        events: &[OfferEvent],
    ) -> Result<Vec<WriteOutcome>> {
        let t = tenant.to_string();
        let events = events.to_vec();
        self.call("put_offer_events", move |conn| {
            let tx = conn.transaction().map_err(sql_err("begin"))?;
            let mut out = Vec::with_capacity(events.len());
            {
                let mut ins = tx
                    .prepare_cached(&format!(
                        "INSERT INTO offer_events (tenant, {EVENT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT DO NOTHING"
                    ))
                    .map_err(sql_err("prepare insert"))?;
                let mut get = tx
                    .prepare_cached(&format!(
                        "SELECT {EVENT_COLS} FROM offer_events WHERE tenant = ?1 AND event_id = ?2"
                    ))
                    .map_err(sql_err("prepare select"))?;
                for e in events {
                    if let Err(err) = e.validate() {
                        out.push(WriteOutcome::Invalid(err.to_string()));
                        continue;
                    }
                    let e = e.normalized();
                    let n = ins
                        .execute(params![
                            t,
                            e.event_id.as_str(),
                            e.customer_id.as_str(),
                            e.offer_id.as_str(),
                            e.kind.as_str(),
                            e.channel.as_str(),
                            e.recommendation_id.as_ref().map(|r| r.as_str()),
                            to_millis(e.at),
                        ])
                        .map_err(sql_err("insert offer event"))?;
                    if n == 1 {
                        out.push(WriteOutcome::Inserted);
                    } else {
                        let existing = get
                            .query_row(params![t, e.event_id.as_str()], event_from_row)
                            .map_err(sql_err("read offer event"))?;
                        out.push(if existing == e { WriteOutcome::Duplicate } else { WriteOutcome::Conflict });
                    }
                }
            }
            tx.commit().map_err(sql_err("commit"))?;
            Ok(out)
        })
        .await
    }

    async fn events_by_customer(
        &self,
        tenant: &TenantId,
        customer: &CustomerId,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<OfferEvent>> {
        let (t, c) = (tenant.to_string(), customer.to_string());
        let since = since.map(to_millis);
        self.call("events_by_customer", move |conn| {
            events_query(conn, "customer_id", &t, &c, since, limit)
        })
        .await
    }

    async fn events_by_offer(
        &self,
        tenant: &TenantId,
        offer: &OfferId,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<OfferEvent>> {
        let (t, o) = (tenant.to_string(), offer.to_string());
        let since = since.map(to_millis);
        self.call("events_by_offer", move |conn| {
            events_query(conn, "offer_id", &t, &o, since, limit)
        })
        .await
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn create_key(&self, record: &ApiKeyRecord) -> Result<()> {
        record.validate()?;
        let r = record.clone();
        self.call("create_key", move |conn| {
            let scopes: Vec<&str> = r.scopes.iter().map(|s| s.as_str()).collect();
            let res = conn.execute(
                &format!(
                    "INSERT INTO api_keys ({KEY_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                ),
                params![
                    r.hash.to_hex(),
                    r.tenant.as_str(),
                    r.key_id.as_str(),
                    r.prefix,
                    to_json(&scopes)?,
                    r.label,
                    to_millis(r.created_at),
                    r.revoked,
                    r.kind.as_str(),
                    r.signing_key
                ],
            );
            match res {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(Error::Conflict(Conflict::AlreadyExists {
                        what: "api key",
                        key: r.key_id.to_string(),
                    }))
                }
                Err(e) => Err(Error::backend(BACKEND, "create_key", e)),
            }
        })
        .await
    }

    async fn find_key(&self, hash: &KeyHash) -> Result<Option<ApiKeyRecord>> {
        let h = hash.to_hex();
        self.call("find_key", move |conn| {
            conn.query_row(
                &format!("SELECT {KEY_COLS} FROM api_keys WHERE hash = ?1"),
                params![h],
                key_from_row,
            )
            .optional()
            .map_err(sql_err("find_key"))
        })
        .await
    }

    async fn revoke_key(&self, tenant: &TenantId, key_id: &KeyId) -> Result<()> {
        let (t, k) = (tenant.to_string(), key_id.to_string());
        self.call("revoke_key", move |conn| {
            let n = conn
                .execute(
                    "UPDATE api_keys SET revoked = 1 WHERE tenant = ?1 AND key_id = ?2",
                    params![t, k],
                )
                .map_err(sql_err("revoke_key"))?;
            if n == 0 {
                Err(Error::not_found("api key", k))
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>> {
        let t = tenant.to_string();
        self.call("list_keys", move |conn| {
            let mut st = conn
                .prepare(&format!(
                    "SELECT {KEY_COLS} FROM api_keys WHERE tenant = ?1 ORDER BY created_at_ms, key_id"
                ))
                .map_err(sql_err("list_keys"))?;
            let rows = st.query_map(params![t], key_from_row).map_err(sql_err("list_keys"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_err("list_keys"))
        })
        .await
    }
}

#[async_trait]
impl ModelRegistry for SqliteStore {
    async fn register_model(&self, tenant: &TenantId, model: &ModelVersion) -> Result<()> {
        model.validate()?;
        let t = tenant.to_string();
        let m = model.normalized();
        self.call("register_model", move |conn| {
            let n = conn
                .execute(
                    &format!(
                        "INSERT INTO models (tenant, {MODEL_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                         ON CONFLICT DO NOTHING"
                    ),
                    params![
                        t,
                        m.version.as_str(),
                        to_millis(m.created_at),
                        m.status.as_str(),
                        m.artifact_key.as_str(),
                        m.checksum,
                        to_json(&m.params)?,
                        to_json(&m.metrics)?,
                        to_json(&m.data_counts)?,
                        m.reason
                    ],
                )
                .map_err(sql_err("register_model"))?;
            if n == 0 {
                Err(Error::Conflict(Conflict::AlreadyExists { what: "model version", key: m.version.to_string() }))
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn get_model(
        &self,
        tenant: &TenantId,
        version: &ModelVersionId,
    ) -> Result<Option<ModelVersion>> {
        let (t, v) = (tenant.to_string(), version.to_string());
        self.call("get_model", move |conn| {
            conn.query_row(
                &format!("SELECT {MODEL_COLS} FROM models WHERE tenant = ?1 AND version = ?2"),
                params![t, v],
                model_from_row,
            )
            .optional()
            .map_err(sql_err("get_model"))
        })
        .await
    }

    async fn list_models(&self, tenant: &TenantId, limit: usize) -> Result<Vec<ModelVersion>> {
        let t = tenant.to_string();
        self.call("list_models", move |conn| {
            let mut st = conn
                .prepare(&format!(
                    "SELECT {MODEL_COLS} FROM models WHERE tenant = ?1
                     ORDER BY created_at_ms DESC, version DESC LIMIT ?2"
                ))
                .map_err(sql_err("list_models"))?;
            let rows = st
                .query_map(params![t, limit_i64(limit)], model_from_row)
                .map_err(sql_err("list_models"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql_err("list_models"))
        })
        .await
    }

    async fn set_model_status(
        &self,
        tenant: &TenantId,
        version: &ModelVersionId,
        status: ModelStatus,
        reason: Option<String>,
    ) -> Result<()> {
        if let Some(r) = &reason {
            ModelVersion::validate_reason(r)?;
        }
        let (t, v) = (tenant.to_string(), version.to_string());
        self.call("set_model_status", move |conn| {
            let n = conn
                .execute(
                    "UPDATE models SET status = ?3, reason = ?4 WHERE tenant = ?1 AND version = ?2",
                    params![t, v, status.as_str(), reason],
                )
                .map_err(sql_err("set_model_status"))?;
            if n == 0 {
                Err(Error::not_found("model version", v))
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn live_pointer(&self, tenant: &TenantId) -> Result<Option<LivePointer>> {
        let t = tenant.to_string();
        self.call("live_pointer", move |conn| read_pointer(conn, &t))
            .await
    }

    async fn swap_live_pointer(
        &self,
        tenant: &TenantId,
        expected: Option<&ModelVersionId>,
        new: &ModelVersionId,
    ) -> Result<LivePointer> {
        let t = tenant.to_string();
        let expected = expected.cloned();
        let new = new.clone();
        self.call("swap_live_pointer", move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql_err("begin"))?;
            let exists: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM models WHERE tenant = ?1 AND version = ?2)",
                    params![t, new.as_str()],
                    |r| r.get(0),
                )
                .map_err(sql_err("check model"))?;
            if !exists {
                return Err(Error::not_found("model version", new.to_string()));
            }
            let current = read_pointer(&tx, &t)?;
            let actual = current.as_ref().map(|p| p.version.clone());
            if actual != expected {
                return Err(Error::Conflict(Conflict::LiveModel {
                    expected: expected.map(String::from),
                    actual: actual.map(String::from),
                }));
            }
            let pointer = LivePointer { version: new, previous: actual, updated_at: normalize_time(Utc::now()) };
            tx.execute(
                "INSERT OR REPLACE INTO live_pointer (tenant, version, previous, updated_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![
                    t,
                    pointer.version.as_str(),
                    pointer.previous.as_ref().map(|p| p.as_str()),
                    to_millis(pointer.updated_at)
                ],
            )
            .map_err(sql_err("write pointer"))?;
            tx.commit().map_err(sql_err("commit"))?;
            Ok(pointer)
        })
        .await
    }
}

fn read_pointer(conn: &Connection, t: &str) -> Result<Option<LivePointer>> {
    conn.query_row(
        "SELECT version, previous, updated_at_ms FROM live_pointer WHERE tenant = ?1",
        params![t],
        |r| {
            Ok(LivePointer {
                version: dec(0, ModelVersionId::parse(r.get::<_, String>(0)?))?,
                previous: match r.get::<_, Option<String>>(1)? {
                    Some(p) => Some(dec(1, ModelVersionId::parse(p))?),
                    None => None,
                },
                updated_at: ms(2, r.get(2)?)?,
            })
        },
    )
    .optional()
    .map_err(sql_err("read pointer"))
}

fn lease_until(lease: Duration) -> Result<DateTime<Utc>> {
    let lease =
        chrono::Duration::from_std(lease).map_err(|_| Error::invalid("lease", "too long"))?;
    Ok(normalize_time(Utc::now() + lease))
}

fn validate_owner(owner: &str) -> Result<()> {
    crate::ids::validate_id("owner", owner, crate::ids::MAX_ID_CHARS)
}

#[async_trait]
impl RetrainLock for SqliteStore {
    async fn acquire_lock(
        &self,
        tenant: &TenantId,
        owner: &str,
        lease: Duration,
    ) -> Result<LockLease> {
        validate_owner(owner)?;
        let t = tenant.to_string();
        let owner = owner.to_string();
        let until = lease_until(lease)?;
        self.call("acquire_lock", move |conn| {
            let now = to_millis(Utc::now());
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sql_err("begin"))?;
            let held: Option<(String, i64)> = tx
                .query_row(
                    "SELECT owner, until_ms FROM retrain_lock WHERE tenant = ?1",
                    params![t],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(sql_err("read lock"))?;
            if let Some((holder, until_ms)) = held
                && holder != owner
                && until_ms > now
            {
                return Err(Error::Conflict(Conflict::LockHeld {
                    owner: holder,
                    until: from_millis(until_ms)?,
                }));
            }
            tx.execute(
                "INSERT OR REPLACE INTO retrain_lock (tenant, owner, until_ms) VALUES (?1, ?2, ?3)",
                params![t, owner, to_millis(until)],
            )
            .map_err(sql_err("write lock"))?;
            tx.commit().map_err(sql_err("commit"))?;
            Ok(LockLease { owner, until })
        })
        .await
    }

    async fn renew_lock(
        &self,
        tenant: &TenantId,
        owner: &str,
        lease: Duration,
    ) -> Result<LockLease> {
        validate_owner(owner)?;
        let t = tenant.to_string();
        let owner = owner.to_string();
        let until = lease_until(lease)?;
        self.call("renew_lock", move |conn| {
            let now = to_millis(Utc::now());
            let n = conn
                .execute(
                    "UPDATE retrain_lock SET until_ms = ?3 WHERE tenant = ?1 AND owner = ?2 AND until_ms > ?4",
                    params![t, owner, to_millis(until), now],
                )
                .map_err(sql_err("renew lock"))?;
            if n == 1 {
                return Ok(LockLease { owner, until });
            }
            let holder: Option<String> = conn
                .query_row(
                    "SELECT owner FROM retrain_lock WHERE tenant = ?1 AND until_ms > ?2",
                    params![t, now],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql_err("read lock"))?;
            Err(Error::Conflict(Conflict::LockNotOwned { owner, holder }))
        })
        .await
    }

    async fn release_lock(&self, tenant: &TenantId, owner: &str) -> Result<()> {
        validate_owner(owner)?;
        let t = tenant.to_string();
        let owner = owner.to_string();
        self.call("release_lock", move |conn| {
            let now = to_millis(Utc::now());
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sql_err("begin"))?;
            let held: Option<(String, i64)> = tx
                .query_row(
                    "SELECT owner, until_ms FROM retrain_lock WHERE tenant = ?1",
                    params![t],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(sql_err("read lock"))?;
            match held {
                None => {}
                Some((holder, _)) if holder == owner => {
                    tx.execute("DELETE FROM retrain_lock WHERE tenant = ?1", params![t])
                        .map_err(sql_err("delete lock"))?;
                }
                Some((_, until_ms)) if until_ms <= now => {}
                Some((holder, _)) => {
                    return Err(Error::Conflict(Conflict::LockNotOwned {
                        owner,
                        holder: Some(holder),
                    }));
                }
            }
            tx.commit().map_err(sql_err("commit"))?;
            Ok(())
        })
        .await
    }

    async fn create_job(&self, tenant: &TenantId, job: &JobRecord) -> Result<JobStart> {
        job.validate()?;
        let t = tenant.to_string();
        let j = job.normalized();
        self.call("create_job", move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql_err("begin"))?;
            let n = tx
                .execute(
                    &format!("INSERT INTO jobs (tenant, {JOB_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING"),
                    params![
                        t,
                        j.job_id.as_str(),
                        j.status.as_str(),
                        to_millis(j.started_at),
                        j.finished_at.map(to_millis),
                        j.message
                    ],
                )
                .map_err(sql_err("create_job"))?;
            let res = if n == 1 {
                JobStart::Created
            } else {
                let existing = tx
                    .query_row(
                        &format!("SELECT {JOB_COLS} FROM jobs WHERE tenant = ?1 AND job_id = ?2"),
                        params![t, j.job_id.as_str()],
                        job_from_row,
                    )
                    .map_err(sql_err("read job"))?;
                JobStart::Existing(existing)
            };
            tx.commit().map_err(sql_err("commit"))?;
            Ok(res)
        })
        .await
    }

    async fn get_job(&self, tenant: &TenantId, job_id: &JobId) -> Result<Option<JobRecord>> {
        let (t, j) = (tenant.to_string(), job_id.to_string());
        self.call("get_job", move |conn| {
            conn.query_row(
                &format!("SELECT {JOB_COLS} FROM jobs WHERE tenant = ?1 AND job_id = ?2"),
                params![t, j],
                job_from_row,
            )
            .optional()
            .map_err(sql_err("get_job"))
        })
        .await
    }

    async fn update_job(&self, tenant: &TenantId, job: &JobRecord) -> Result<()> {
        job.validate()?;
        let t = tenant.to_string();
        let j = job.normalized();
        self.call("update_job", move |conn| {
            let n = conn
                .execute(
                    "UPDATE jobs SET status = ?3, started_at_ms = ?4, finished_at_ms = ?5, message = ?6
                     WHERE tenant = ?1 AND job_id = ?2",
                    params![
                        t,
                        j.job_id.as_str(),
                        j.status.as_str(),
                        to_millis(j.started_at),
                        j.finished_at.map(to_millis),
                        j.message
                    ],
                )
                .map_err(sql_err("update_job"))?;
            if n == 0 { Err(Error::not_found("job", j.job_id.to_string())) } else { Ok(()) }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Scope;

    /// A database written by schema version 1 (one opt-out flag, the single `offers` scope)
    /// opens as version 2 with the same meaning: opted out is neither consent, `offers` is
    /// deciding and managing offers.
    #[tokio::test]
    async fn version_1_database_migrates_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute_batch(
                "INSERT INTO meta (key, value) VALUES ('schema_version', '1');
                 INSERT INTO customers VALUES ('t', 'out', 1, NULL, 0);
                 INSERT INTO customers VALUES ('t', 'in', 0, 'vip', 0);",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO api_keys VALUES (?1, 't', 'abc', 'aff_abc', '[\"offers\",\"recommend\"]', NULL, 0, 0)",
                params![KeyHash::of_secret("s").to_hex()],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).await.unwrap();
        let t = TenantId::parse("t").unwrap();
        let get = |c: &str| {
            let (store, t, c) = (store.clone(), t.clone(), CustomerId::parse(c).unwrap());
            async move { store.get_customer(&t, &c).await.unwrap().unwrap() }
        };
        assert_eq!(get("out").await.consent, Consent::NONE);
        let kept = get("in").await;
        assert_eq!(kept.consent, Consent::default());
        assert_eq!(kept.tier_override.as_deref(), Some("vip"));
        let key = store
            .find_key(&KeyHash::of_secret("s"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            key.scopes,
            BTreeSet::from([Scope::Recommend, Scope::OffersDecide, Scope::OffersManage])
        );
        assert_eq!(key.kind, crate::types::KeyKind::Server);
        drop(store);
        // Opening again finds version 2 and changes nothing.
        let again = SqliteStore::open(&path).await.unwrap();
        let c = CustomerId::parse("out").unwrap();
        assert_eq!(
            again.get_customer(&t, &c).await.unwrap().unwrap().consent,
            Consent::NONE
        );
    }
}
