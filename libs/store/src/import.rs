//! CSV bulk import of purchases, catalog items and offers.
//!
//! Default mode is all-or-nothing: the whole file is parsed and validated first; the first
//! bad row stops the import with an error naming file, line, field and value, and nothing
//! is written. With `skip_bad_rows` the bad rows are listed in the report and the good ones
//! written. Writes go in batches through the idempotent store APIs, so re-running an import
//! (say after a network failure half-way) writes nothing twice: rows come back as duplicates.
//! Column formats are documented in docs/data-model.md.

use std::collections::HashMap;
use std::io::Read;
use std::num::NonZeroU32;
use std::path::Path;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Serialize;

use crate::error::{BadRow, Error, Result, truncate};
use crate::ids::{Category, Currency, CustomerId, ItemId, OfferId, OrderId, TenantId};
use crate::traits::{CatalogStore, OfferStore, PurchaseStore};
use crate::types::{CatalogItem, OfferRecord, OfferStatus, Purchase, UpsertOutcome, WriteOutcome};

/// How an import treats bad rows and how big its write batches are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportOptions {
    /// Write the good rows and report the bad ones instead of refusing the whole file.
    pub skip_bad_rows: bool,
    /// Rows per store call (one SQLite transaction; 40 BatchWriteItem calls on DynamoDB).
    pub batch_size: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            skip_bad_rows: false,
            batch_size: 1000,
        }
    }
}

/// A row left out under `skip_bad_rows`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedRow {
    /// 1-based line number.
    pub line: u64,
    /// Column of the bad field ("row" for structural problems).
    pub field: String,
    /// The bad value, truncated.
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Data rows read (excluding the header).
    pub rows_read: u64,
    /// Rows newly stored (purchases) or written (items, offers: upserts).
    pub inserted: u64,
    /// Rows already stored identically (purchases only).
    pub duplicates: u64,
    /// Rows refused because a different row holds the identity (purchases only).
    pub conflicts: u64,
    /// Line numbers of the first 1000 conflicting rows.
    pub conflict_lines: Vec<u64>,
    /// Rows refused by the store's validation (should stay 0: parsing applies the same rules).
    pub invalid: u64,
    /// Rows skipped under `skip_bad_rows`.
    pub skipped: Vec<SkippedRow>,
}

const MAX_CONFLICT_LINES: usize = 1000;

/// Progress callback: called with the number of rows written so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);

/// A field-level parse failure, before it gets its file and line.
struct FieldError {
    field: String,
    value: String,
    reason: String,
}

fn ferr(field: &str, value: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        value: truncate(value),
        reason: reason.into(),
    }
}

fn from_store(field: &str, value: &str, e: Error) -> FieldError {
    let reason = match e {
        Error::Invalid { reason, .. } => reason,
        other => other.to_string(),
    };
    ferr(field, value, reason)
}

/// Column lookup for one CSV file: header name -> position; unknown headers are refused.
struct Columns {
    pos: HashMap<String, usize>,
}

struct Row<'a> {
    cols: &'a Columns,
    rec: &'a csv::StringRecord,
}

impl Row<'_> {
    fn opt(&self, name: &str) -> Option<&str> {
        self.cols
            .pos
            .get(name)
            .and_then(|&i| self.rec.get(i))
            .filter(|s| !s.is_empty())
    }

    fn req(&self, name: &str) -> Result<&str, FieldError> {
        self.opt(name).ok_or_else(|| ferr(name, "", "is required"))
    }

    fn id<T>(&self, name: &str, parse: fn(String) -> Result<T>) -> Result<T, FieldError> {
        let v = self.req(name)?;
        parse(v.to_string()).map_err(|e| from_store(name, v, e))
    }
}

fn parse_u32(field: &str, v: &str) -> Result<u32, FieldError> {
    v.parse()
        .map_err(|_| ferr(field, v, "must be a whole number 0..=4294967295"))
}

fn parse_bool(field: &str, v: &str) -> Result<bool, FieldError> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" => Ok(true),
        "false" | "0" | "no" | "n" => Ok(false),
        _ => Err(ferr(field, v, "must be true/false (or 1/0, yes/no)")),
    }
}

/// Accepts RFC 3339 (`2024-05-01T12:00:00Z`, offsets allowed), `YYYY-MM-DD HH:MM:SS`
/// (taken as UTC) and `YYYY-MM-DD` (midnight UTC).
pub fn parse_timestamp(v: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, fmt) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

fn parse_time(field: &str, v: &str) -> Result<DateTime<Utc>, FieldError> {
    let t = parse_timestamp(v).ok_or_else(|| {
        ferr(
            field,
            v,
            "must be RFC 3339, 'YYYY-MM-DD HH:MM:SS' (UTC) or 'YYYY-MM-DD'",
        )
    })?;
    crate::types::validate_time(field, t).map_err(|e| from_store(field, v, e))?;
    Ok(t)
}

/// Parses a decimal amount with at most two fraction digits into minor units ("12.5" -> 1250).
pub fn parse_decimal_minor(v: &str) -> Option<i64> {
    let (int, frac) = match v.split_once('.') {
        Some((i, f)) => (i, f),
        None => (v, ""),
    };
    if int.is_empty()
        || frac.len() > 2
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let int: i64 = int.parse().ok()?;
    let frac_val: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let frac_val = if frac.len() == 1 {
        frac_val * 10
    } else {
        frac_val
    };
    int.checked_mul(100)?.checked_add(frac_val)
}

/// Price from either `<minor_col>` (integer minor units) or `<decimal_col>` (two decimals).
fn parse_price(
    row: &Row<'_>,
    minor_col: &str,
    decimal_col: &str,
    required: bool,
) -> Result<i64, FieldError> {
    if let Some(v) = row.opt(minor_col) {
        let n: i64 = v.parse().map_err(|_| {
            ferr(
                minor_col,
                v,
                "must be a whole number of minor units (cents)",
            )
        })?;
        if n < 0 {
            return Err(ferr(minor_col, v, "must not be negative"));
        }
        return Ok(n);
    }
    if let Some(v) = row.opt(decimal_col) {
        return parse_decimal_minor(v).ok_or_else(|| {
            ferr(
                decimal_col,
                v,
                "must be a non-negative decimal with at most 2 fraction digits",
            )
        });
    }
    if required {
        Err(ferr(
            minor_col,
            "",
            format!("is required (or give {decimal_col})"),
        ))
    } else {
        Ok(0)
    }
}

fn parse_currency(row: &Row<'_>) -> Result<Option<Currency>, FieldError> {
    row.opt("currency")
        .map(|v| Currency::parse(v).map_err(|e| from_store("currency", v, e)))
        .transpose()
}

fn parse_purchase(row: &Row<'_>, now: DateTime<Utc>) -> Result<Purchase, FieldError> {
    let line_v = row.req("line")?;
    let quantity = match row.opt("quantity") {
        Some(v) => NonZeroU32::new(parse_u32("quantity", v)?)
            .ok_or_else(|| ferr("quantity", v, "must be at least 1"))?,
        None => NonZeroU32::MIN,
    };
    let purchase = Purchase {
        order_id: row.id("order_id", OrderId::parse)?,
        line: parse_u32("line", line_v)?,
        customer_id: row.id("customer_id", CustomerId::parse)?,
        item_id: row.id("item_id", ItemId::parse)?,
        quantity,
        unit_price_minor: parse_price(row, "unit_price_minor", "unit_price", true)?,
        currency: parse_currency(row)?,
        purchased_at: parse_time("purchased_at", row.req("purchased_at")?)?,
    };
    purchase.validate_at(now).map_err(|e| match e {
        Error::Invalid { field, reason } => ferr(&field, "", reason),
        other => ferr("row", "", other.to_string()),
    })?;
    Ok(purchase)
}

fn parse_item(row: &Row<'_>, now: DateTime<Utc>) -> Result<CatalogItem, FieldError> {
    let item = CatalogItem {
        item_id: row.id("item_id", ItemId::parse)?,
        title: row.opt("title").unwrap_or_default().to_string(),
        category: row
            .opt("category")
            .map(|v| Category::parse(v).map_err(|e| from_store("category", v, e)))
            .transpose()?,
        price_minor: parse_price(row, "price_minor", "price", false)?,
        currency: parse_currency(row)?,
        in_stock: row
            .opt("in_stock")
            .map(|v| parse_bool("in_stock", v))
            .transpose()?
            .unwrap_or(true),
        created_at: row
            .opt("created_at")
            .map(|v| parse_time("created_at", v))
            .transpose()?
            .unwrap_or(now),
        repurchasable: row
            .opt("repurchasable")
            .map(|v| parse_bool("repurchasable", v))
            .transpose()?
            .unwrap_or(false),
        attributes: row
            .opt("attributes")
            .map(|v| {
                serde_json::from_str::<serde_json::Value>(v)
                    .map_err(|e| ferr("attributes", v, format!("must be a JSON object: {e}")))
            })
            .transpose()?,
    };
    item.validate().map_err(|e| match e {
        Error::Invalid { field, reason } => ferr(&field, "", reason),
        other => ferr("row", "", other.to_string()),
    })?;
    Ok(item)
}

fn parse_offer(row: &Row<'_>, now: DateTime<Utc>) -> Result<OfferRecord, FieldError> {
    let doc_v = row.req("document")?;
    let offer = OfferRecord {
        offer_id: row.id("offer_id", OfferId::parse)?,
        status: row
            .opt("status")
            .map(|v| {
                v.parse::<OfferStatus>()
                    .map_err(|e| from_store("status", v, e))
            })
            .transpose()?
            .unwrap_or(OfferStatus::Active),
        document: serde_json::from_str(doc_v)
            .map_err(|e| ferr("document", doc_v, format!("must be JSON: {e}")))?,
        updated_at: row
            .opt("updated_at")
            .map(|v| parse_time("updated_at", v))
            .transpose()?
            .unwrap_or(now),
    };
    offer.validate().map_err(|e| match e {
        Error::Invalid { field, reason } => ferr(&field, "", reason),
        other => ferr("row", "", other.to_string()),
    })?;
    Ok(offer)
}

/// Columns accepted per file kind: (name, required).
const PURCHASE_COLUMNS: &[(&str, bool)] = &[
    ("order_id", true),
    ("line", true),
    ("customer_id", true),
    ("item_id", true),
    ("quantity", false),
    ("unit_price_minor", false),
    ("unit_price", false),
    ("currency", false),
    ("purchased_at", true),
];
const ITEM_COLUMNS: &[(&str, bool)] = &[
    ("item_id", true),
    ("title", false),
    ("category", false),
    ("price_minor", false),
    ("price", false),
    ("currency", false),
    ("in_stock", false),
    ("created_at", false),
    ("repurchasable", false),
    ("attributes", false),
];
const OFFER_COLUMNS: &[(&str, bool)] = &[
    ("offer_id", true),
    ("status", false),
    ("document", true),
    ("updated_at", false),
];

fn bad(file: &str, line: u64, e: FieldError) -> Error {
    Error::BadRow(Box::new(BadRow {
        file: file.to_string(),
        line,
        field: e.field,
        value: e.value,
        reason: e.reason,
    }))
}

/// Good rows with their line numbers, and the skipped bad rows.
type Parsed<T> = (Vec<(u64, T)>, Vec<SkippedRow>);

/// Parses every row of a CSV; returns the good rows with their line numbers and the bad ones.
/// In all-or-nothing mode the first bad row is returned as an error instead.
fn parse_all<T, R: Read>(
    input: Csv<R>,
    allowed: &[(&str, bool)],
    skip_bad_rows: bool,
    parse: impl Fn(&Row<'_>) -> Result<T, FieldError>,
) -> Result<Parsed<T>> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(input.reader);
    let file = input.name.as_str();
    let headers = rdr
        .headers()
        .map_err(|e| {
            bad(
                file,
                1,
                ferr("header", "", format!("cannot read the header row: {e}")),
            )
        })?
        .clone();
    let mut pos = HashMap::new();
    for (i, h) in headers.iter().enumerate() {
        if !allowed.iter().any(|(n, _)| *n == h) {
            let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
            return Err(bad(
                file,
                1,
                ferr(
                    h,
                    h,
                    format!("unknown column; expected some of {}", names.join(", ")),
                ),
            ));
        }
        if pos.insert(h.to_string(), i).is_some() {
            return Err(bad(file, 1, ferr(h, h, "column appears twice")));
        }
    }
    for (name, required) in allowed {
        if *required && !pos.contains_key(*name) {
            return Err(bad(
                file,
                1,
                ferr(name, "", "required column is missing from the header"),
            ));
        }
    }
    let cols = Columns { pos };
    let mut good = Vec::new();
    let mut skipped = Vec::new();
    let mut rec = csv::StringRecord::new();
    loop {
        let more = match rdr.read_record(&mut rec) {
            Ok(m) => m,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                let fe = ferr("row", "", format!("malformed CSV: {e}"));
                // A structural error (wrong field count, bad UTF-8) is skippable too; an I/O
                // error is not.
                if skip_bad_rows && !matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    skipped.push(SkippedRow {
                        line,
                        field: fe.field,
                        value: fe.value,
                        reason: fe.reason,
                    });
                    continue;
                }
                return Err(bad(file, line, fe));
            }
        };
        if !more {
            break;
        }
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        match parse(&Row {
            cols: &cols,
            rec: &rec,
        }) {
            Ok(v) => good.push((line, v)),
            Err(fe) if skip_bad_rows => skipped.push(SkippedRow {
                line,
                field: fe.field,
                value: fe.value,
                reason: fe.reason,
            }),
            Err(fe) => return Err(bad(file, line, fe)),
        }
    }
    Ok((good, skipped))
}

/// A CSV input and the name its errors quote (`name:line: ...`).
pub struct Csv<R> {
    reader: R,
    name: String,
}

impl<R: Read> Csv<R> {
    /// `reader`, quoted in errors as `name`.
    pub fn new(reader: R, name: impl Into<String>) -> Self {
        Self {
            reader,
            name: name.into(),
        }
    }
}

impl Csv<std::io::BufReader<std::fs::File>> {
    /// The file at `path`, quoted in errors by its path.
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let f = std::fs::File::open(path)
            .map_err(|e| Error::invalid("file", format!("cannot open {name}: {e}")))?;
        Ok(Self::new(std::io::BufReader::new(f), name))
    }
}

fn tally_writes(report: &mut ImportReport, lines: &[u64], outcomes: &[WriteOutcome]) {
    for (line, o) in lines.iter().zip(outcomes) {
        match o {
            WriteOutcome::Inserted => report.inserted += 1,
            WriteOutcome::Duplicate => report.duplicates += 1,
            WriteOutcome::Conflict => {
                report.conflicts += 1;
                if report.conflict_lines.len() < MAX_CONFLICT_LINES {
                    report.conflict_lines.push(*line);
                }
            }
            WriteOutcome::Invalid(_) => report.invalid += 1,
        }
    }
}

fn tally_upserts(report: &mut ImportReport, outcomes: &[UpsertOutcome]) {
    for o in outcomes {
        match o {
            UpsertOutcome::Written => report.inserted += 1,
            UpsertOutcome::Invalid(_) => report.invalid += 1,
        }
    }
}

/// Writes parsed rows with `write` (given the report to tally into, the rows' file lines
/// and the rows), `batch_size` at a time, reporting progress: the one shape of every import.
async fn write_in_batches<T: Clone>(
    (rows, skipped): Parsed<T>,
    options: &ImportOptions,
    progress: Progress<'_>,
    write: impl AsyncFn(&mut ImportReport, &[u64], Vec<T>) -> Result<()>,
) -> Result<ImportReport> {
    let mut report = ImportReport {
        rows_read: (rows.len() + skipped.len()) as u64,
        skipped,
        ..Default::default()
    };
    let mut done = 0u64;
    for chunk in rows.chunks(options.batch_size.max(1)) {
        let lines: Vec<u64> = chunk.iter().map(|(l, _)| *l).collect();
        let batch: Vec<T> = chunk.iter().map(|(_, row)| row.clone()).collect();
        write(&mut report, &lines, batch).await?;
        done += chunk.len() as u64;
        progress(done);
    }
    Ok(report)
}

/// Imports purchases from a CSV reader; `file` names the source in error messages.
pub async fn import_purchases<R: Read>(
    input: Csv<R>,
    store: &dyn PurchaseStore,
    tenant: &TenantId,
    options: ImportOptions,
    progress: Progress<'_>,
) -> Result<ImportReport> {
    let now = Utc::now();
    let parsed = parse_all(input, PURCHASE_COLUMNS, options.skip_bad_rows, |r| {
        parse_purchase(r, now)
    })?;
    write_in_batches(
        parsed,
        &options,
        progress,
        async |report, lines, batch: Vec<Purchase>| {
            let outcomes = store.put_purchases(tenant, &batch).await?;
            tally_writes(report, lines, &outcomes);
            Ok(())
        },
    )
    .await
}

/// Parses rows with `parse` and stores them with `upsert`: the catalog and offer imports.
async fn import_upserts<T: Clone, R: Read>(
    input: Csv<R>,
    columns: &[(&str, bool)],
    parse: fn(&Row<'_>, DateTime<Utc>) -> Result<T, FieldError>,
    options: ImportOptions,
    progress: Progress<'_>,
    upsert: impl AsyncFn(&[T]) -> Result<Vec<UpsertOutcome>>,
) -> Result<ImportReport> {
    let now = crate::types::normalize_time(Utc::now());
    let parsed = parse_all(input, columns, options.skip_bad_rows, |r| parse(r, now))?;
    write_in_batches(
        parsed,
        &options,
        progress,
        async |report, _, batch: Vec<T>| {
            tally_upserts(report, &upsert(&batch).await?);
            Ok(())
        },
    )
    .await
}

/// Imports catalog items (upserts) from a CSV reader.
pub async fn import_items<R: Read>(
    input: Csv<R>,
    store: &dyn CatalogStore,
    tenant: &TenantId,
    options: ImportOptions,
    progress: Progress<'_>,
) -> Result<ImportReport> {
    let upsert = async |batch: &[CatalogItem]| store.upsert_items(tenant, batch).await;
    import_upserts(input, ITEM_COLUMNS, parse_item, options, progress, upsert).await
}

/// Imports offers (upserts) from a CSV reader.
pub async fn import_offers<R: Read>(
    input: Csv<R>,
    store: &dyn OfferStore,
    tenant: &TenantId,
    options: ImportOptions,
    progress: Progress<'_>,
) -> Result<ImportReport> {
    let upsert = async |batch: &[OfferRecord]| store.upsert_offers(tenant, batch).await;
    import_upserts(input, OFFER_COLUMNS, parse_offer, options, progress, upsert).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_prices_become_minor_units() {
        assert_eq!(parse_decimal_minor("12.34"), Some(1234));
        assert_eq!(parse_decimal_minor("12.5"), Some(1250));
        assert_eq!(parse_decimal_minor("7"), Some(700));
        assert_eq!(parse_decimal_minor("0.01"), Some(1));
        assert_eq!(parse_decimal_minor("1.234"), None);
        assert_eq!(parse_decimal_minor("-1"), None);
        assert_eq!(parse_decimal_minor("1e3"), None);
        assert_eq!(parse_decimal_minor(".5"), None);
    }

    #[test]
    fn timestamps_in_three_formats() {
        let want = parse_timestamp("2024-05-01T12:00:00Z").unwrap();
        assert_eq!(parse_timestamp("2024-05-01 12:00:00"), Some(want));
        assert_eq!(parse_timestamp("2024-05-01T14:00:00+02:00"), Some(want));
        assert_eq!(
            parse_timestamp("2024-05-01"),
            Some(want - chrono::Duration::hours(12))
        );
        assert_eq!(parse_timestamp("01/05/2024"), None);
    }

    #[test]
    fn bad_row_names_file_line_field_and_value() {
        let csv = "order_id,line,customer_id,item_id,quantity,unit_price_minor,purchased_at\n\
                   o1,1,c1,i1,1,100,2024-01-01\n\
                   o2,1,c1,i2,zero,100,2024-01-01\n";
        let err = parse_all(
            Csv::new(csv.as_bytes(), "p.csv"),
            PURCHASE_COLUMNS,
            false,
            |r| parse_purchase(r, Utc::now()),
        )
        .unwrap_err();
        match err {
            Error::BadRow(b) => {
                assert_eq!(
                    (b.file.as_str(), b.line, b.field.as_str(), b.value.as_str()),
                    ("p.csv", 3, "quantity", "zero")
                );
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn unknown_and_missing_columns_are_refused() {
        let err = parse_all(
            Csv::new("order_id,line,custmer_id\n".as_bytes(), "p.csv"),
            PURCHASE_COLUMNS,
            true,
            |r| parse_purchase(r, Utc::now()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("custmer_id") && err.contains("unknown column"),
            "{err}"
        );
        let err = parse_all(
            Csv::new("order_id,line\n".as_bytes(), "p.csv"),
            PURCHASE_COLUMNS,
            true,
            |r| parse_purchase(r, Utc::now()),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("required column"), "{err}");
    }

    #[test]
    fn skip_mode_collects_bad_rows_including_ragged_ones() {
        let csv = "order_id,line,customer_id,item_id,unit_price,purchased_at\n\
                   o1,1,c1,i1,1.00,2024-01-01\n\
                   o2,1,c1\n\
                   o3,x,c1,i1,1.00,2024-01-01\n\
                   o4,1,c1,i1,1.00,2024-01-01\n";
        let (good, skipped) = parse_all(
            Csv::new(csv.as_bytes(), "p.csv"),
            PURCHASE_COLUMNS,
            true,
            |r| parse_purchase(r, Utc::now()),
        )
        .unwrap();
        assert_eq!(good.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![2, 5]);
        assert_eq!(
            skipped
                .iter()
                .map(|s| (s.line, s.field.as_str()))
                .collect::<Vec<_>>(),
            vec![(3, "row"), (4, "line")]
        );
        assert_eq!(good[0].1.unit_price_minor, 100);
    }
}
