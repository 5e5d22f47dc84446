//! `affinity clv`: BG/NBD and Gamma-Gamma on any transactions CSV (one row per purchase:
//! customer, date, amount), with per-customer P(alive), expected purchases and CLV.
//!
//! The summary follows lifetimes' `summary_data_from_transaction_data` exactly (see
//! `affinity_model::crm::summary`); the observation end defaults to the latest
//! transaction, as there.

use std::io::Read;
use std::path::Path;

use affinity_model::crm::bgnbd::{self, BgNbdFit, Rft};
use affinity_model::crm::gamma_gamma::{self, ClvOptions, GammaGammaFit};
use affinity_model::crm::summary::{SummaryOptions, TimeUnit, Transaction, summarize};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde::Serialize;

/// What can go wrong reading transactions or fitting the models.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A row or the header does not hold what the columns say.
    #[error("{file}:{line}: field `{field}`: {reason}")]
    BadInput {
        /// The file as named on the command line.
        file: String,
        /// 1-based line (the header is line 1).
        line: u64,
        /// The column.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The models could not be fitted.
    #[error("{step}: {source}")]
    Model {
        /// What was being done.
        step: &'static str,
        /// The model crate's error.
        #[source]
        source: affinity_model::Error,
    },
}

/// This module's results.
pub type Result<T> = std::result::Result<T, Error>;

/// Names the step a model error came from.
trait Step<T> {
    fn step(self, step: &'static str) -> Result<T>;
}

impl<T> Step<T> for affinity_model::Result<T> {
    fn step(self, step: &'static str) -> Result<T> {
        self.map_err(|source| Error::Model { step, source })
    }
}

/// Which CSV columns hold what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// Customer id column.
    pub customer: String,
    /// Date or timestamp column.
    pub date: String,
    /// Amount column (optional: without it no Gamma-Gamma and no CLV).
    pub amount: Option<String>,
}

/// Fit settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Period and time unit (`--freq`).
    pub unit: TimeUnit,
    /// End of observation, unix seconds (None: the latest transaction).
    pub observation_end: Option<i64>,
    /// Horizon of "expected purchases", in time units (None: one month of them).
    pub horizon: Option<f64>,
    /// CLV horizon in months.
    pub months: u32,
    /// CLV discount rate per month.
    pub monthly_discount: f64,
}

/// Parses the date formats shops export: `2024-05-01`, `20240501`, `2024-05-01 12:30[:00]`,
/// `2024-05-01T12:30:00`, RFC 3339 with an offset. Naive times are taken as UTC.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp());
    }
    for f in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc().timestamp());
        }
    }
    for f in ["%Y-%m-%d", "%Y%m%d"] {
        if let Ok(d) = NaiveDate::parse_from_str(s, f) {
            return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp());
        }
    }
    None
}

/// Reads transactions from a CSV file.
pub fn read_transactions(path: &Path, columns: &Columns) -> Result<Vec<Transaction<String>>> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    read_transactions_from(file, &path.display().to_string(), columns)
}

/// Reads transactions from CSV text; `file` names it in errors (with line and field).
pub fn read_transactions_from<R: Read>(
    reader: R,
    file: &str,
    columns: &Columns,
) -> Result<Vec<Transaction<String>>> {
    let bad = |line: u64, field: &str, reason: String| Error::BadInput {
        file: file.to_owned(),
        line,
        field: field.to_owned(),
        reason,
    };
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(reader);
    let headers = r
        .headers()
        .map_err(|e| bad(1, "header", e.to_string()))?
        .clone();
    let col = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            bad(
                1,
                name,
                format!(
                    "no such column; the header has {}",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    };
    let (ci, di) = (col(&columns.customer)?, col(&columns.date)?);
    let ai = columns.amount.as_deref().map(col).transpose()?;
    let mut out = Vec::new();
    for (n, rec) in r.records().enumerate() {
        let line = rec
            .as_ref()
            .ok()
            .and_then(|r| r.position())
            .map_or(n as u64 + 2, |p| p.line());
        let rec = rec.map_err(|e| bad(line, "row", e.to_string()))?;
        let customer = rec.get(ci).unwrap_or("").to_owned();
        if customer.is_empty() {
            return Err(bad(line, &columns.customer, "is empty".into()));
        }
        let d = rec.get(di).unwrap_or("");
        let at = parse_time(d).ok_or_else(|| {
            bad(
                line,
                &columns.date,
                format!("{d:?} is not a date (use 2024-05-01, 20240501 or 2024-05-01T12:30:00Z)"),
            )
        })?;
        let amount = match (ai, &columns.amount) {
            (Some(i), Some(name)) => {
                let v = rec.get(i).unwrap_or("");
                match v.parse::<f64>() {
                    Ok(a) if a.is_finite() => a,
                    _ => return Err(bad(line, name, format!("{v:?} is not a number"))),
                }
            }
            _ => 0.0,
        };
        out.push(Transaction {
            customer,
            at,
            amount,
        });
    }
    Ok(out)
}

/// One customer's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Customer id.
    pub customer: String,
    /// Repeat purchase periods.
    pub frequency: u32,
    /// First to last purchase, in time units.
    pub recency: f64,
    /// First purchase to observation end, in time units.
    #[serde(rename = "T")]
    pub t: f64,
    /// Mean value of the repeat periods.
    pub monetary_value: f64,
    /// BG/NBD probability of being alive.
    pub p_alive: f64,
    /// Expected purchases in the next `horizon` time units.
    pub expected_purchases: Option<f64>,
    /// Discounted CLV (needs amounts and a Gamma-Gamma fit).
    pub clv: Option<f64>,
}

/// Everything `affinity clv` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Time unit code.
    pub freq: String,
    /// Observation end (start of its period), RFC 3339.
    pub observation_end: String,
    /// Horizon of expected purchases, in time units.
    pub horizon: f64,
    /// CLV horizon, months.
    pub months: u32,
    /// CLV discount rate per month.
    pub monthly_discount: f64,
    /// Transactions read.
    pub transactions: usize,
    /// BG/NBD fit.
    pub bgnbd: BgNbdFit,
    /// Gamma-Gamma fit (None without amounts or repeat buyers; see `notes`).
    pub gamma_gamma: Option<GammaGammaFit>,
    /// Why something is missing.
    pub notes: Vec<String>,
    /// Per customer, sorted by id.
    pub customers: Vec<Row>,
}

/// Summarises, fits both models and scores every customer.
pub fn analyse(tx: &[Transaction<String>], opts: &Options, with_amounts: bool) -> Result<Report> {
    let end = match opts.observation_end {
        Some(e) => e,
        None => tx.iter().map(|t| t.at).max().ok_or_else(|| Error::Model {
            step: "summarise",
            source: affinity_model::Error::EmptyData("no transactions".into()),
        })?,
    };
    let summaries = summarize(
        tx,
        &SummaryOptions {
            unit: opts.unit,
            multiplier: 1.0,
            observation_end: end,
        },
    )
    .step("summarise")?;
    let rfts: Vec<Rft> = summaries
        .iter()
        .map(|(_, s)| Rft {
            frequency: s.frequency,
            recency: s.recency,
            t: s.t,
        })
        .collect();
    let bg = bgnbd::fit(&rfts).step("fit BG/NBD")?;
    let mut notes = Vec::new();
    let gg = if with_amounts {
        let pairs: Vec<(u32, f64)> = summaries
            .iter()
            .map(|(_, s)| (s.frequency, s.monetary_value))
            .collect();
        match gamma_gamma::fit(&pairs) {
            Ok(f) => Some(f),
            Err(e) => {
                notes.push(format!("no CLV: {e}"));
                None
            }
        }
    } else {
        notes.push("no CLV: no amount column".into());
        None
    };
    let horizon = opts.horizon.unwrap_or(opts.unit.periods_per_month());
    let clv_opts = ClvOptions {
        months: opts.months,
        monthly_discount: opts.monthly_discount,
        periods_per_month: opts.unit.periods_per_month(),
    };
    let customers = summaries
        .into_iter()
        .zip(&rfts)
        .map(|((customer, s), c)| Row {
            customer,
            frequency: s.frequency,
            recency: s.recency,
            t: s.t,
            monetary_value: s.monetary_value,
            p_alive: bg.params.p_alive(c),
            expected_purchases: bg.params.expected_purchases(horizon, c),
            clv: gg.as_ref().and_then(|g| {
                gamma_gamma::clv(&bg.params, &g.params, c, s.monetary_value, &clv_opts)
            }),
        })
        .collect();
    let end_period = opts.unit.period_start(end);
    Ok(Report {
        freq: opts.unit.code().to_owned(),
        observation_end: DateTime::from_timestamp(end_period, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default(),
        horizon,
        months: opts.months,
        monthly_discount: opts.monthly_discount,
        transactions: tx.len(),
        bgnbd: bg,
        gamma_gamma: gg,
        notes,
        customers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(amount: bool) -> Columns {
        Columns {
            customer: "cust".into(),
            date: "day".into(),
            amount: amount.then(|| "amount".into()),
        }
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let csv = "cust,day,amount\na,2024-01-01,5\nb,not-a-date,3\n";
        let e = read_transactions_from(csv.as_bytes(), "t.csv", &cols(true)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.csv:3: field `day`: \"not-a-date\" is not a date (use 2024-05-01, 20240501 or 2024-05-01T12:30:00Z)"
        );
        let csv = "cust,day,amount\na,2024-01-01,five\n";
        let e = read_transactions_from(csv.as_bytes(), "t.csv", &cols(true)).unwrap_err();
        assert!(e.to_string().starts_with("t.csv:2: field `amount`"), "{e}");
        let csv = "customer,day\na,2024-01-01\n";
        let e = read_transactions_from(csv.as_bytes(), "t.csv", &cols(false)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("t.csv:1: field `cust`: no such column"),
            "{e}"
        );
    }

    #[test]
    fn dates_in_common_formats() {
        let d = 1_714_521_600; // 2024-05-01T00:00:00Z
        assert_eq!(parse_time("2024-05-01"), Some(d));
        assert_eq!(parse_time("20240501"), Some(d));
        assert_eq!(parse_time("2024-05-01 01:00:00"), Some(d + 3600));
        assert_eq!(parse_time("2024-05-01T01:00"), Some(d + 3600));
        assert_eq!(parse_time("2024-05-01T03:00:00+02:00"), Some(d + 3600));
        assert_eq!(parse_time("01/05/2024"), None);
    }

    #[test]
    fn analyses_a_small_file() {
        let mut csv = String::from("cust,day,amount\n");
        for c in 0..60 {
            let visits = 1 + c % 5;
            for v in 0..visits {
                let amount = 5 + (c * 7 + v * 13) % 40 + (c % 4) * 10;
                csv.push_str(&format!(
                    "c{c},2024-{:02}-{:02},{amount}\n",
                    1 + (v * 2 + c % 3) % 12,
                    1 + c % 27
                ));
            }
        }
        let tx = read_transactions_from(csv.as_bytes(), "t.csv", &cols(true)).unwrap();
        let opts = Options {
            unit: TimeUnit::Week,
            observation_end: parse_time("2024-12-31"),
            horizon: None,
            months: 12,
            monthly_discount: 0.01,
        };
        let r = analyse(&tx, &opts, true).unwrap();
        assert_eq!(r.customers.len(), 60);
        assert_eq!(r.horizon, 4.345);
        assert!(r.gamma_gamma.is_some(), "{:?}", r.notes);
        for c in &r.customers {
            assert!((0.0..=1.0).contains(&c.p_alive));
            assert!(c.expected_purchases.unwrap() >= 0.0);
        }
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["customers"][0]["T"].is_number());
    }
}
