//! Transactions -> per-customer (frequency, recency, T, monetary value), with exactly the
//! definitions of lifetimes' `summary_data_from_transaction_data` (0.11.3):
//!
//! 1. Every timestamp is truncated to the start of its period (`freq`: hour, day, or a
//!    Monday-to-Sunday week as pandas' `W`), and so is the observation end.
//! 2. Transactions whose period starts after the observation end's period are dropped.
//! 3. Transactions of one customer in the same period count once; their amounts add up.
//! 4. `frequency` = number of such periods - 1 (repeat purchase periods);
//!    `recency` = last period - first period; `T` = observation end - first period, both in
//!    units of the period length divided by `freq_multiplier`.
//! 5. `monetary_value` = mean amount of the repeat periods (the first period excluded),
//!    0 for customers without repeats.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const DAY: i64 = 86_400;

/// The period transactions are grouped by and time is measured in (lifetimes' `freq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TimeUnit {
    /// `H`: one hour.
    #[serde(rename = "H")]
    Hour,
    /// `D`: one calendar day (UTC).
    #[serde(rename = "D")]
    Day,
    /// `W`: a week from Monday 00:00 to Sunday 24:00 (pandas' `W-SUN` period).
    #[serde(rename = "W")]
    Week,
}

impl TimeUnit {
    /// Length of one period in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            TimeUnit::Hour => 3_600,
            TimeUnit::Day => DAY,
            TimeUnit::Week => 7 * DAY,
        }
    }

    /// Length of one period in days.
    pub fn days(self) -> f64 {
        self.seconds() as f64 / DAY as f64
    }

    /// Start (unix seconds) of the period holding `t`.
    pub fn period_start(self, t: i64) -> i64 {
        match self {
            TimeUnit::Hour | TimeUnit::Day => t.div_euclid(self.seconds()) * self.seconds(),
            TimeUnit::Week => {
                let day = t.div_euclid(DAY);
                // 1970-01-01 was a Thursday: Monday-based weekday = (day + 3) mod 7.
                (day - (day + 3).rem_euclid(7)) * DAY
            }
        }
    }

    /// Periods per month as lifetimes' `customer_lifetime_value` counts them (30 days,
    /// 4.345 weeks, 720 hours), so CLV horizons in months agree with it.
    pub fn periods_per_month(self) -> f64 {
        match self {
            TimeUnit::Hour => 720.0,
            TimeUnit::Day => 30.0,
            TimeUnit::Week => 4.345,
        }
    }

    /// The one-letter code (`H`, `D`, `W`).
    pub fn code(self) -> &'static str {
        match self {
            TimeUnit::Hour => "H",
            TimeUnit::Day => "D",
            TimeUnit::Week => "W",
        }
    }
}

impl fmt::Display for TimeUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for TimeUnit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "H" | "h" => Ok(TimeUnit::Hour),
            "D" | "d" => Ok(TimeUnit::Day),
            "W" | "w" => Ok(TimeUnit::Week),
            other => Err(Error::InvalidParameter {
                name: "freq",
                reason: format!("{other:?} is not one of H, D, W"),
            }),
        }
    }
}

/// How to summarise: period, unit scaling and the end of the observation window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SummaryOptions {
    /// Grouping period and time unit.
    pub unit: TimeUnit,
    /// Divides recency and T (lifetimes' `freq_multiplier`); 1 for plain periods.
    pub multiplier: f64,
    /// End of the observation window, unix seconds (truncated to its period).
    pub observation_end: i64,
}

/// One customer's summary in model time units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CustomerSummary {
    /// Repeat purchase periods (periods with a purchase, minus one).
    pub frequency: u32,
    /// Time from the first to the last purchase period.
    pub recency: f64,
    /// Time from the first purchase period to the end of observation.
    pub t: f64,
    /// Mean amount of the repeat periods; 0 without repeats.
    pub monetary_value: f64,
    /// Sum of all amounts in the window, first period included.
    pub total_value: f64,
    /// Start of the first purchase period, unix seconds.
    pub first: i64,
    /// Start of the last purchase period, unix seconds.
    pub last: i64,
}

/// One purchase as the summary needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction<K> {
    /// Customer key.
    pub customer: K,
    /// Unix seconds (naive timestamps are read as UTC).
    pub at: i64,
    /// Amount (price x quantity), any currency unit.
    pub amount: f64,
}

/// Summarises transactions per customer, sorted by customer key. Refuses a non-positive
/// or non-finite multiplier and non-finite amounts.
pub fn summarize<K: Ord + Hash + Clone + Send + Sync>(
    transactions: &[Transaction<K>],
    opts: &SummaryOptions,
) -> Result<Vec<(K, CustomerSummary)>> {
    if !(opts.multiplier.is_finite() && opts.multiplier > 0.0) {
        return Err(Error::InvalidParameter {
            name: "freq_multiplier",
            reason: format!("{} must be a positive number", opts.multiplier),
        });
    }
    if let Some(t) = transactions.iter().find(|t| !t.amount.is_finite()) {
        return Err(Error::InvalidParameter {
            name: "amount",
            reason: format!("{} is not a finite number", t.amount),
        });
    }
    let end = opts.unit.period_start(opts.observation_end);
    // Dense customer numbers, then one sort of (customer, period) rows: a million customers
    // and twenty million purchases were minutes and gigabytes as nested ordered maps.
    let mut numbers: HashMap<&K, u32> = HashMap::new();
    let mut keys: Vec<&K> = Vec::new();
    let mut rows: Vec<(u32, i64, f64)> = Vec::with_capacity(transactions.len());
    for tx in transactions {
        let p = opts.unit.period_start(tx.at);
        if p > end {
            continue;
        }
        let c = *numbers.entry(&tx.customer).or_insert_with(|| {
            keys.push(&tx.customer);
            (keys.len() - 1) as u32
        });
        rows.push((c, p, tx.amount));
    }
    drop(numbers);
    // Stable: amounts of one period add up in transaction order, as they always have.
    rows.par_sort_by_key(|&(c, p, _)| (c, p));
    let unit = opts.unit.seconds() as f64 * opts.multiplier;
    let mut out: Vec<(K, CustomerSummary)> = rows
        .chunk_by(|a, b| a.0 == b.0)
        .map(|customer| {
            // Amount per period, in period order.
            let periods: Vec<(i64, f64)> = customer
                .chunk_by(|a, b| a.1 == b.1)
                .map(|period| (period[0].1, period.iter().map(|r| r.2).sum()))
                .collect();
            let (first, last) = (periods[0].0, periods[periods.len() - 1].0);
            let frequency = (periods.len() - 1) as u32;
            let repeat: f64 = periods.iter().skip(1).map(|(_, v)| v).sum();
            let total: f64 = periods.iter().map(|(_, v)| v).sum();
            (
                keys[customer[0].0 as usize].clone(),
                CustomerSummary {
                    frequency,
                    recency: (last - first) as f64 / unit,
                    t: (end - first) as f64 / unit,
                    monetary_value: if frequency > 0 {
                        repeat / frequency as f64
                    } else {
                        0.0
                    },
                    total_value: total,
                    first,
                    last,
                },
            )
        })
        .collect();
    out.par_sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(c: &str, day: i64, hour: i64, amount: f64) -> Transaction<String> {
        Transaction {
            customer: c.to_owned(),
            at: day * DAY + hour * 3600,
            amount,
        }
    }

    #[test]
    fn weeks_start_on_monday() {
        // 1970-01-05 (day 4) was a Monday; day 0 (Thursday) belongs to the week of 1969-12-29.
        assert_eq!(TimeUnit::Week.period_start(4 * DAY + 5), 4 * DAY);
        assert_eq!(TimeUnit::Week.period_start(10 * DAY + 86_399), 4 * DAY);
        assert_eq!(TimeUnit::Week.period_start(11 * DAY), 11 * DAY);
        assert_eq!(TimeUnit::Week.period_start(0), -3 * DAY);
    }

    #[test]
    fn lifetimes_definitions_by_hand() {
        let t = vec![
            tx("a", 100, 9, 10.0),
            tx("a", 100, 18, 5.0), // same day: one period, amounts add
            tx("a", 103, 1, 20.0),
            tx("a", 110, 1, 40.0),
            tx("a", 200, 1, 99.0), // after the observation end: dropped
            tx("b", 105, 0, 7.0),
        ];
        let opts = SummaryOptions {
            unit: TimeUnit::Day,
            multiplier: 1.0,
            observation_end: 120 * DAY + 3600 * 13,
        };
        let s = summarize(&t, &opts).unwrap();
        assert_eq!(s.len(), 2);
        let a = s[0].1;
        assert_eq!(a.frequency, 2);
        assert_eq!(a.recency, 10.0);
        assert_eq!(a.t, 20.0);
        assert_eq!(a.monetary_value, 30.0); // (20 + 40) / 2, first period excluded
        assert_eq!(a.total_value, 75.0);
        let b = s[1].1;
        assert_eq!(
            (b.frequency, b.recency, b.t, b.monetary_value),
            (0, 0.0, 15.0, 0.0)
        );
        // Hourly with multiplier 24 gives fractional days.
        let opts = SummaryOptions {
            unit: TimeUnit::Hour,
            multiplier: 24.0,
            ..opts
        };
        let s = summarize(&t, &opts).unwrap();
        assert_eq!(s[0].1.frequency, 3);
        assert!((s[0].1.recency - (10.0 - 8.0 / 24.0)).abs() < 1e-12);
        assert!((s[0].1.t - (20.0 + 4.0 / 24.0)).abs() < 1e-12);
    }

    #[test]
    fn refuses_bad_input() {
        let opts = SummaryOptions {
            unit: TimeUnit::Day,
            multiplier: 0.0,
            observation_end: 0,
        };
        assert!(summarize::<String>(&[], &opts).is_err());
        let opts = SummaryOptions {
            multiplier: 1.0,
            ..opts
        };
        assert!(summarize(&[tx("a", 0, 0, f64::NAN)], &opts).is_err());
        assert!("M".parse::<TimeUnit>().is_err());
        assert_eq!("W".parse::<TimeUnit>().unwrap(), TimeUnit::Week);
    }
}
