//! Customer profiles for a whole shop in one pass: summary statistics, RFM scores, value
//! tier, BG/NBD P(alive), churn risk and expected purchases, Gamma-Gamma CLV.
//!
//! Churn risk is `1 - P(alive)`. For customers who never came back the BG/NBD says they are
//! alive (see [`super::bgnbd`]), so their churn risk is 0 and their weakness shows in a low
//! expected-purchases figure and a low recency score instead.

use std::hash::Hash;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::bgnbd::{self, BgNbdFit, Rft};
use super::gamma_gamma::{self, ClvOptions, GammaGammaFit};
use super::rfm::{RfmScore, rfm_scores};
use super::summary::{CustomerSummary, SummaryOptions, TimeUnit, Transaction, summarize};
use super::tiers::{TierConfig, assign_tiers};
use crate::error::{Error, Result};

/// What the value tiers rank customers by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TierBasis {
    /// Spend observed so far: explainable to the shop, available for everyone.
    #[default]
    Spend,
    /// Predicted CLV (falls back to spend when the models could not be fitted).
    Clv,
}

/// Settings of a profile run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileConfig {
    /// Period of the BG/NBD summary.
    pub unit: TimeUnit,
    /// Horizon of "expected purchases", in days.
    pub horizon_days: f64,
    /// CLV horizon in months.
    pub clv_months: u32,
    /// CLV discount rate per month.
    pub monthly_discount: f64,
    /// Tier thresholds.
    pub tiers: TierConfig,
    /// What tiers rank by.
    pub tier_basis: TierBasis,
    /// Most customers the BG/NBD and Gamma-Gamma parameters are fitted on: a systematic
    /// sample beyond it (four population parameters are pinned down long before a million
    /// customers, while each optimiser step costs a pass over all of them); every
    /// customer still gets their own prediction.
    #[serde(default = "default_fit_sample")]
    pub fit_sample: usize,
}

fn default_fit_sample() -> usize {
    200_000
}

impl Default for ProfileConfig {
    fn default() -> Self {
        Self {
            unit: TimeUnit::Day,
            horizon_days: 30.0,
            clv_months: 12,
            monthly_discount: 0.01,
            tiers: TierConfig::default(),
            tier_basis: TierBasis::Spend,
            fit_sample: default_fit_sample(),
        }
    }
}

impl ProfileConfig {
    fn check(&self) -> Result<()> {
        let bad = |name, reason: String| Err(Error::InvalidParameter { name, reason });
        if !(self.horizon_days.is_finite() && self.horizon_days > 0.0) {
            return bad(
                "horizon_days",
                format!("{} must be positive", self.horizon_days),
            );
        }
        if self.fit_sample < 1_000 {
            return bad(
                "fit_sample",
                format!("{} must be at least 1000 customers", self.fit_sample),
            );
        }
        if !(self.monthly_discount.is_finite() && self.monthly_discount > -1.0) {
            return bad(
                "monthly_discount",
                format!("{} must be above -1", self.monthly_discount),
            );
        }
        Ok(())
    }
}

/// Everything the shop and the offer engine know about one customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerProfile {
    /// Repeat purchase periods (BG/NBD `x`).
    pub frequency: u32,
    /// First to last purchase, in `unit`s.
    pub recency: f64,
    /// First purchase to observation end, in `unit`s.
    pub t: f64,
    /// Days since the last purchase at observation end.
    pub days_since_last: f64,
    /// Total spend in the window.
    pub total_spend: f64,
    /// Mean spend of the repeat periods (0 without repeats).
    pub monetary_value: f64,
    /// RFM quintile scores.
    pub rfm: RfmScore,
    /// Value tier name.
    pub tier: String,
    /// BG/NBD probability of being alive (None when the model could not be fitted).
    pub p_alive: Option<f64>,
    /// `1 - p_alive`.
    pub churn_risk: Option<f64>,
    /// Expected purchases in the next `horizon_days`.
    pub expected_purchases: Option<f64>,
    /// Discounted CLV over `clv_months`.
    pub clv: Option<f64>,
}

impl CustomerProfile {
    /// The profile of a customer with no purchases yet (new since the last run): lowest
    /// tier and scores, no model figures.
    pub fn newcomer(config: &ProfileConfig) -> Self {
        Self {
            frequency: 0,
            recency: 0.0,
            t: 0.0,
            days_since_last: 0.0,
            total_spend: 0.0,
            monetary_value: 0.0,
            rfm: RfmScore { r: 1, f: 1, m: 1 },
            tier: config
                .tiers
                .rules()
                .last()
                .map(|r| r.name.clone())
                .unwrap_or_default(),
            p_alive: None,
            churn_risk: None,
            expected_purchases: None,
            clv: None,
        }
    }

    fn rft(&self) -> Rft {
        Rft {
            frequency: self.frequency,
            recency: self.recency,
            t: self.t,
        }
    }
}

/// Profiles of all customers plus the fitted models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profiles<K> {
    /// End of observation (unix seconds, truncated to the period).
    pub observation_end: i64,
    /// Settings used.
    pub config: ProfileConfig,
    /// The BG/NBD fit, if the data allowed one.
    pub bgnbd: Option<BgNbdFit>,
    /// The Gamma-Gamma fit, if the data allowed one.
    pub gamma_gamma: Option<GammaGammaFit>,
    /// Why a model is missing, for logs and the data team.
    pub notes: Vec<String>,
    /// Profiles sorted by customer key.
    pub customers: Vec<(K, CustomerProfile)>,
}

impl<K: Ord> Profiles<K> {
    /// The profile of a customer, if they bought in the window.
    pub fn get(&self, key: &K) -> Option<&CustomerProfile> {
        self.customers
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| &self.customers[i].1)
    }

    /// The same profiles under other keys (dense numbers to customer ids, say), re-sorted
    /// for lookups.
    pub fn with_keys<L: Ord + Send>(self, f: impl Fn(K) -> L) -> Profiles<L> {
        let mut customers: Vec<(L, CustomerProfile)> =
            self.customers.into_iter().map(|(k, p)| (f(k), p)).collect();
        customers.par_sort_by(|a, b| a.0.cmp(&b.0));
        Profiles {
            observation_end: self.observation_end,
            config: self.config,
            bgnbd: self.bgnbd,
            gamma_gamma: self.gamma_gamma,
            notes: self.notes,
            customers,
        }
    }
}

/// Builds every customer's profile from their transactions up to `observation_end`.
/// The models are optional: a shop with no repeat buyers still gets RFM and tiers, and
/// `notes` says why P(alive) and CLV are missing.
pub fn build_profiles<K: Ord + Hash + Clone + Send + Sync>(
    transactions: &[Transaction<K>],
    observation_end: i64,
    config: &ProfileConfig,
) -> Result<Profiles<K>> {
    config.check()?;
    let opts = SummaryOptions {
        unit: config.unit,
        multiplier: 1.0,
        observation_end,
    };
    let summaries: Vec<(K, CustomerSummary)> = summarize(transactions, &opts)?;
    let end = config.unit.period_start(observation_end);
    // Every `stride`-th customer in key order: the same sample on every run of the same data.
    let stride = summaries.len().div_ceil(config.fit_sample).max(1);
    let sample = || summaries.iter().step_by(stride).map(|(_, s)| s);
    let rfts: Vec<Rft> = sample()
        .map(|s| Rft {
            frequency: s.frequency,
            recency: s.recency,
            t: s.t,
        })
        .collect();
    let mut notes = Vec::new();
    if stride > 1 {
        notes.push(format!(
            "BG/NBD and Gamma-Gamma fitted on a systematic sample of {} of {} customers",
            rfts.len(),
            summaries.len()
        ));
    }
    let bg = match bgnbd::fit(&rfts) {
        Ok(f) => Some(f),
        Err(e) => {
            notes.push(format!("no BG/NBD: {e}"));
            None
        }
    };
    let pairs: Vec<(u32, f64)> = sample().map(|s| (s.frequency, s.monetary_value)).collect();
    let gg = match gamma_gamma::fit(&pairs) {
        Ok(f) if f.params.q > 1.0 => Some(f),
        Ok(f) => {
            notes.push(format!(
                "no CLV: Gamma-Gamma q = {:.3} <= 1 has no mean spend",
                f.params.q
            ));
            None
        }
        Err(e) => {
            notes.push(format!("no Gamma-Gamma: {e}"));
            None
        }
    };
    let horizon = config.horizon_days / config.unit.days();
    let clv_opts = ClvOptions {
        months: config.clv_months,
        monthly_discount: config.monthly_discount,
        periods_per_month: config.unit.periods_per_month(),
    };
    let days_since: Vec<f64> = summaries
        .iter()
        .map(|(_, s)| (end - s.last) as f64 / 86_400.0)
        .collect();
    let freq: Vec<f64> = summaries
        .iter()
        .map(|(_, s)| s.frequency as f64 + 1.0)
        .collect();
    let spend: Vec<f64> = summaries.iter().map(|(_, s)| s.total_value).collect();
    let rfm = rfm_scores(&days_since, &freq, &spend);
    // P(alive), expected purchases and CLV (a hypergeometric series per month of the
    // horizon) per customer: independent, so on every core.
    let mut customers: Vec<(K, CustomerProfile)> = summaries
        .into_par_iter()
        .enumerate()
        .map(|(i, (k, s))| {
            let mut p = CustomerProfile {
                frequency: s.frequency,
                recency: s.recency,
                t: s.t,
                days_since_last: days_since[i],
                total_spend: s.total_value,
                monetary_value: s.monetary_value,
                rfm: rfm[i],
                tier: String::new(),
                p_alive: None,
                churn_risk: None,
                expected_purchases: None,
                clv: None,
            };
            if let Some(bg) = &bg {
                let c = p.rft();
                let alive = bg.params.p_alive(&c);
                p.p_alive = Some(alive);
                p.churn_risk = Some(1.0 - alive);
                p.expected_purchases = bg.params.expected_purchases(horizon, &c);
                if let Some(gg) = &gg {
                    p.clv =
                        gamma_gamma::clv(&bg.params, &gg.params, &c, s.monetary_value, &clv_opts);
                }
            }
            (k, p)
        })
        .collect();
    let basis: Vec<f64> = customers
        .iter()
        .map(|(_, p)| match config.tier_basis {
            TierBasis::Spend => p.total_spend,
            TierBasis::Clv => p.clv.unwrap_or(p.total_spend),
        })
        .collect();
    let tiers = assign_tiers(&basis, &config.tiers);
    for ((_, p), t) in customers.iter_mut().zip(tiers) {
        p.tier = config.tiers.rules()[t].name.clone();
    }
    Ok(Profiles {
        observation_end: end,
        config: config.clone(),
        bgnbd: bg,
        gamma_gamma: gg,
        notes,
        customers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const DAY: i64 = 86_400;

    fn shop(seed: u64) -> Vec<Transaction<u32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tx = Vec::new();
        for c in 0..400u32 {
            let rate: f64 = rng.random_range(0.005..0.2); // purchases per day
            let life: f64 = rng.random_range(10.0..400.0);
            let start: f64 = rng.random_range(0.0..200.0);
            let spend: f64 = rng.random_range(5.0..200.0);
            let mut t = start;
            tx.push(Transaction {
                customer: c,
                at: (t * 86_400.0) as i64,
                amount: spend,
            });
            loop {
                t += -rng.random::<f64>().max(1e-12).ln() / rate;
                if t > start + life || t > 365.0 {
                    break;
                }
                let amount = spend * rng.random_range(0.5..1.5);
                tx.push(Transaction {
                    customer: c,
                    at: (t * 86_400.0) as i64,
                    amount,
                });
            }
        }
        tx
    }

    #[test]
    fn profiles_are_complete_and_consistent() {
        let tx = shop(1);
        let p = build_profiles(&tx, 365 * DAY, &ProfileConfig::default()).unwrap();
        assert!(
            p.bgnbd.is_some() && p.gamma_gamma.is_some(),
            "{:?}",
            p.notes
        );
        assert_eq!(p.customers.len(), 400);
        for (_, c) in &p.customers {
            let alive = c.p_alive.unwrap();
            assert!((0.0..=1.0).contains(&alive));
            assert!((c.churn_risk.unwrap() + alive - 1.0).abs() < 1e-12);
            assert!(c.expected_purchases.unwrap() >= 0.0);
            assert!(c.clv.unwrap() >= 0.0);
            if c.frequency == 0 {
                assert_eq!(alive, 1.0);
            }
            assert!(["gold", "silver", "bronze"].contains(&c.tier.as_str()));
        }
        assert!(p.get(&7).is_some() && p.get(&9999).is_none());
        // Gold customers spent more than every bronze one.
        let min_gold = p
            .customers
            .iter()
            .filter(|(_, c)| c.tier == "gold")
            .map(|(_, c)| c.total_spend)
            .fold(f64::INFINITY, f64::min);
        let max_bronze = p
            .customers
            .iter()
            .filter(|(_, c)| c.tier == "bronze")
            .map(|(_, c)| c.total_spend)
            .fold(0.0, f64::max);
        assert!(min_gold >= max_bronze);
    }

    #[test]
    fn a_shop_without_repeat_buyers_still_gets_rfm_and_tiers() {
        let tx: Vec<Transaction<u32>> = (0..20)
            .map(|c| Transaction {
                customer: c,
                at: c as i64 * DAY,
                amount: 10.0 + c as f64,
            })
            .collect();
        let p = build_profiles(&tx, 30 * DAY, &ProfileConfig::default()).unwrap();
        assert!(p.bgnbd.is_none() && !p.notes.is_empty());
        assert!(
            p.customers
                .iter()
                .all(|(_, c)| c.p_alive.is_none() && !c.tier.is_empty())
        );
    }

    #[test]
    fn a_large_shop_is_fitted_on_a_systematic_sample_and_every_customer_is_scored() {
        // Three seeded shops side by side: 1,200 customers.
        let tx: Vec<Transaction<u32>> = (0..3u32)
            .flat_map(|i| {
                shop(10 + u64::from(i))
                    .into_iter()
                    .map(move |t| Transaction {
                        customer: t.customer + 400 * i,
                        ..t
                    })
            })
            .collect();
        let config = ProfileConfig {
            fit_sample: 1_000,
            ..ProfileConfig::default()
        };
        let p = build_profiles(&tx, 365 * DAY, &config).unwrap();
        assert_eq!(p.customers.len(), 1_200);
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("a systematic sample of 600 of 1200 customers"))
        );
        // The fit is the one of exactly that sample.
        let summaries = summarize(
            &tx,
            &SummaryOptions {
                unit: config.unit,
                multiplier: 1.0,
                observation_end: 365 * DAY,
            },
        )
        .unwrap();
        let sample: Vec<Rft> = summaries
            .iter()
            .step_by(2)
            .map(|(_, s)| Rft {
                frequency: s.frequency,
                recency: s.recency,
                t: s.t,
            })
            .collect();
        assert_eq!(p.bgnbd.unwrap().params, bgnbd::fit(&sample).unwrap().params);
        assert!(p.customers.iter().all(|(_, c)| c.p_alive.is_some()));
        // Below the cap, nothing is sampled.
        let whole = build_profiles(&tx, 365 * DAY, &ProfileConfig::default()).unwrap();
        assert!(whole.notes.iter().all(|n| !n.contains("systematic sample")));
        assert_eq!(whole.bgnbd.unwrap().customers, 1_200);
    }
}
