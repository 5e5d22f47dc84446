//! Value tiers from the cumulative share of value: rank customers by value, highest first,
//! and put each in the first tier whose cumulative share is not yet reached *before* them.
//!
//! Default: `gold` = the top customers who together make 80% of the value (the customer
//! who crosses 80% is gold too), `silver` = the next ones up to 95%, `bronze` = the rest
//! (including everyone with no value). Customers with equal value always share a tier:
//! the group is placed by the share reached before its first member.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One tier: its name and the cumulative value share it fills up to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierRule {
    /// Tier name as offers refer to it (`gold`).
    pub name: String,
    /// Cumulative share of total value (0, 1] this tier reaches.
    pub cumulative_share: f64,
}

/// Validated tier thresholds: names unique and non-empty, shares strictly increasing, the
/// last exactly 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<TierRule>", into = "Vec<TierRule>")]
pub struct TierConfig(Vec<TierRule>);

impl TierConfig {
    /// Checks and wraps tier rules.
    pub fn new(rules: Vec<TierRule>) -> Result<Self> {
        let bad = |reason: String| {
            Err(Error::InvalidParameter {
                name: "tiers",
                reason,
            })
        };
        if rules.is_empty() {
            return bad("at least one tier is needed".into());
        }
        let mut prev = 0.0;
        for (i, r) in rules.iter().enumerate() {
            if r.name.trim().is_empty() || r.name.len() > 64 {
                return bad(format!("tier {i}: name must be 1..=64 characters"));
            }
            if rules[..i].iter().any(|o| o.name == r.name) {
                return bad(format!("tier name {:?} is repeated", r.name));
            }
            if !(r.cumulative_share > prev && r.cumulative_share <= 1.0) {
                return bad(format!(
                    "tier {:?}: cumulative_share {} must be above {prev} and at most 1",
                    r.name, r.cumulative_share
                ));
            }
            prev = r.cumulative_share;
        }
        if prev != 1.0 {
            return bad("the last tier's cumulative_share must be 1".into());
        }
        Ok(Self(rules))
    }

    /// The rules, best tier first.
    pub fn rules(&self) -> &[TierRule] {
        &self.0
    }

    /// Tier names, best first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|r| r.name.as_str())
    }

    /// Index of a tier name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|r| r.name == name)
    }
}

impl Default for TierConfig {
    fn default() -> Self {
        let rule = |name: &str, cumulative_share| TierRule {
            name: name.to_owned(),
            cumulative_share,
        };
        Self(vec![
            rule("gold", 0.80),
            rule("silver", 0.95),
            rule("bronze", 1.0),
        ])
    }
}

impl TryFrom<Vec<TierRule>> for TierConfig {
    type Error = Error;
    fn try_from(v: Vec<TierRule>) -> Result<Self> {
        Self::new(v)
    }
}

impl From<TierConfig> for Vec<TierRule> {
    fn from(c: TierConfig) -> Self {
        c.0
    }
}

/// Tier index (into `config.rules()`) of every customer given their values. Non-finite
/// or non-positive values go to the last tier.
pub fn assign_tiers(values: &[f64], config: &TierConfig) -> Vec<usize> {
    let last = config.0.len() - 1;
    let mut out = vec![last; values.len()];
    let valued = |v: f64| v.is_finite() && v > 0.0;
    let total: f64 = values.iter().copied().filter(|&v| valued(v)).sum();
    if total <= 0.0 {
        return out;
    }
    let mut order: Vec<usize> = (0..values.len()).filter(|&i| valued(values[i])).collect();
    order.sort_by(|&i, &j| values[j].total_cmp(&values[i]).then(i.cmp(&j)));
    let mut cum = 0.0;
    let mut k = 0;
    while k < order.len() {
        let v = values[order[k]];
        let share_before = cum / total;
        let tier = config
            .0
            .iter()
            .position(|r| share_before < r.cumulative_share)
            .unwrap_or(last);
        while k < order.len() && values[order[k]] == v {
            out[order[k]] = tier;
            cum += v;
            k += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn pareto_values_give_a_small_gold_tier() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        // Pareto(alpha = 1.16) is the classic 80/20 distribution.
        let v: Vec<f64> = (0..10_000)
            .map(|_| (1.0 - rng.random::<f64>()).powf(-1.0 / 1.16))
            .collect();
        let c = TierConfig::default();
        let t = assign_tiers(&v, &c);
        let total: f64 = v.iter().sum();
        let gold: Vec<usize> = (0..v.len()).filter(|&i| t[i] == 0).collect();
        let gold_value: f64 = gold.iter().map(|&i| v[i]).sum();
        // Gold makes at least 80% of the value, and is minimal: without its smallest
        // member it would fall short.
        assert!(gold_value / total >= 0.80);
        let smallest = gold.iter().map(|&i| v[i]).fold(f64::INFINITY, f64::min);
        assert!((gold_value - smallest) / total < 0.80);
        assert!(
            gold.len() < v.len() / 2,
            "gold is a minority: {}",
            gold.len()
        );
        // Every gold customer is worth at least every silver one, silver at least bronze.
        for i in 0..v.len() {
            for j in 0..v.len() {
                if t[i] < t[j] {
                    assert!(v[i] >= v[j]);
                }
            }
        }
    }

    #[test]
    fn ties_zeroes_and_custom_rules() {
        let c = TierConfig::new(vec![
            TierRule {
                name: "vip".into(),
                cumulative_share: 0.5,
            },
            TierRule {
                name: "rest".into(),
                cumulative_share: 1.0,
            },
        ])
        .unwrap();
        let t = assign_tiers(&[10.0, 10.0, 10.0, 0.0, f64::NAN], &c);
        assert_eq!(t, vec![0, 0, 0, 1, 1]);
        let t = assign_tiers(&[40.0, 30.0, 20.0, 10.0], &c);
        assert_eq!(t, vec![0, 0, 1, 1]);
        assert_eq!(assign_tiers(&[0.0, 0.0], &c), vec![1, 1]);
    }

    #[test]
    fn config_is_validated() {
        let r = |n: &str, s: f64| TierRule {
            name: n.into(),
            cumulative_share: s,
        };
        assert!(TierConfig::new(vec![]).is_err());
        assert!(TierConfig::new(vec![r("a", 0.9)]).is_err());
        assert!(TierConfig::new(vec![r("a", 0.9), r("a", 1.0)]).is_err());
        assert!(TierConfig::new(vec![r("a", 0.9), r("b", 0.8), r("c", 1.0)]).is_err());
        assert!(TierConfig::new(vec![r("", 1.0)]).is_err());
        let json = serde_json::to_string(&TierConfig::default()).unwrap();
        let back: TierConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, TierConfig::default());
        assert!(
            serde_json::from_str::<TierConfig>(r#"[{"name":"x","cumulative_share":0.5}]"#).is_err()
        );
    }
}
