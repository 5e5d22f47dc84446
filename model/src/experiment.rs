//! Experiments: which arm a customer is in, and what an arm earned against its control.
//!
//! **Assignment** is a pure function of (tenant, experiment, subject): SHA-256 of the three,
//! length-prefixed, read as a number and mapped to one of [`BUCKETS`] buckets; the arms own
//! contiguous bucket ranges in proportion to their shares ([`Split`]). Nothing is stored,
//! every instance agrees, a customer stays in one arm for the experiment's life, and two
//! experiments split the same customers independently. Anonymous shoppers are assigned by a
//! session id the client keeps, in a namespace of its own ([`Subject::Session`]).
//!
//! **Lift** ([`lift`]) compares a treatment arm with its control on two per-customer
//! outcomes: conversion (bought anything attributed in the window) and revenue per exposed
//! customer. The interval is a 95% *always-valid* interval: an asymptotic confidence sequence
//! (Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central limit theory and
//! asymptotic confidence sequences") around the difference of the arms' means, with the
//! delta-method variance. A report is read while the experiment runs, again and again; a
//! fixed-sample 95% interval read that way calls a difference that is not there far more
//! often than 5% of the time, while this one holds its 95% however often it is read. The
//! price is width: at the planned sample size it is about 1.5 times the fixed-sample one.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Buckets the hash is mapped to: shares are honoured to 0.01%.
pub const BUCKETS: u32 = 10_000;

/// Fewest exposed customers per arm before a verdict is given.
pub const MIN_EXPOSED: u64 = 100;

/// Fewest conversions per arm before a verdict is given (below it the normal approximation
/// behind the interval is poor).
pub const MIN_CONVERSIONS: u64 = 10;

/// Who is assigned: a known customer, or an anonymous shopper by a client-kept session id.
/// The two never share a bucket sequence, so a session id equal to a customer id does not
/// put the two in the same arm by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// A customer id.
    Customer(&'a str),
    /// A session id supplied by the client for a shopper who is not logged in.
    Session(&'a str),
}

/// The bucket, in `0..BUCKETS`, of `subject` in `experiment` of `tenant`.
pub fn bucket(tenant: &str, experiment: &str, subject: Subject<'_>) -> u32 {
    let (kind, id) = match subject {
        Subject::Customer(id) => (b'c', id),
        Subject::Session(id) => (b's', id),
    };
    let mut h = Sha256::new();
    // Length prefixes: ("ab", "c") and ("a", "bc") must not collide.
    for part in [tenant.as_bytes(), experiment.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update([kind]);
    h.update((id.len() as u64).to_le_bytes());
    h.update(id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 2^64 mod 10_000 is 1,616: a bias of under 1e-15 per bucket.
    (u64::from_le_bytes(first) % u64::from(BUCKETS)) as u32
}

/// How the buckets are shared among arms: arm `i` owns `[upper[i-1], upper[i])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    upper: Vec<u32>,
}

impl Split {
    /// Shares, one per arm, each positive, summing to 1 (within 1e-6); each becomes a whole
    /// number of buckets by largest remainder, so the buckets add up to [`BUCKETS`] exactly.
    pub fn new(shares: &[f64]) -> Result<Self> {
        let bad = |reason: String| Error::InvalidParameter {
            name: "shares",
            reason,
        };
        if shares.len() < 2 {
            return Err(bad(format!(
                "an experiment needs at least two arms, got {}",
                shares.len()
            )));
        }
        if let Some(s) = shares.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(bad(format!("every share must be above 0, got {s}")));
        }
        let total: f64 = shares.iter().sum();
        if (total - 1.0).abs() > 1e-6 {
            return Err(bad(format!(
                "shares must add up to 1, they add up to {total}"
            )));
        }
        let exact: Vec<f64> = shares.iter().map(|s| s * f64::from(BUCKETS)).collect();
        let mut whole: Vec<u32> = exact.iter().map(|e| e.floor() as u32).collect();
        let mut left = BUCKETS - whole.iter().sum::<u32>();
        let mut order: Vec<usize> = (0..shares.len()).collect();
        order.sort_by(|&a, &b| {
            let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
            rb.total_cmp(&ra).then(a.cmp(&b))
        });
        for &i in order.iter().cycle() {
            if left == 0 {
                break;
            }
            whole[i] += 1;
            left -= 1;
        }
        if let Some(i) = whole.iter().position(|&w| w == 0) {
            return Err(bad(format!(
                "arm {i}'s share is below one bucket in {BUCKETS}"
            )));
        }
        let upper = whole
            .iter()
            .scan(0u32, |acc, w| {
                *acc += w;
                Some(*acc)
            })
            .collect();
        Ok(Self { upper })
    }

    /// Number of arms.
    pub fn arms(&self) -> usize {
        self.upper.len()
    }

    /// The arm owning `bucket`.
    pub fn arm_of(&self, bucket: u32) -> usize {
        let b = bucket % BUCKETS;
        self.upper.partition_point(|&u| u <= b)
    }

    /// The share of arm `arm`, as the buckets give it.
    pub fn share(&self, arm: usize) -> f64 {
        let lower = if arm == 0 { 0 } else { self.upper[arm - 1] };
        f64::from(self.upper[arm] - lower) / f64::from(BUCKETS)
    }
}

/// Sums over one arm's exposed customers: enough for means, variances and the interval
/// without keeping a row per customer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmTotals {
    /// Customers shown the arm's answer (or, in a control group, who would have been).
    pub exposed: u64,
    /// Exposed customers with at least one attributed purchase.
    pub converted: u64,
    /// Attributed revenue, summed over exposed customers.
    pub revenue: f64,
    /// Sum of each exposed customer's attributed revenue squared.
    pub revenue_sq: f64,
}

impl ArmTotals {
    /// Adds one exposed customer's outcome.
    pub fn add(&mut self, converted: bool, revenue: f64) {
        self.exposed += 1;
        self.converted += u64::from(converted);
        self.revenue += revenue;
        self.revenue_sq += revenue * revenue;
    }

    /// Share of exposed customers who converted.
    pub fn conversion(&self) -> f64 {
        ratio(self.converted as f64, self.exposed)
    }

    /// Attributed revenue per exposed customer.
    pub fn revenue_per_exposed(&self) -> f64 {
        ratio(self.revenue, self.exposed)
    }

    fn conversion_moments(&self) -> Moments {
        // A 0/1 outcome: its square is itself.
        Moments::new(self.exposed, self.converted as f64, self.converted as f64)
    }

    fn revenue_moments(&self) -> Moments {
        Moments::new(self.exposed, self.revenue, self.revenue_sq)
    }
}

fn ratio(x: f64, n: u64) -> f64 {
    if n == 0 { 0.0 } else { x / n as f64 }
}

/// Mean and unbiased variance of one arm's outcome.
#[derive(Debug, Clone, Copy)]
struct Moments {
    n: f64,
    mean: f64,
    var: f64,
}

impl Moments {
    fn new(n: u64, sum: f64, sum_sq: f64) -> Self {
        let nf = n as f64;
        let mean = ratio(sum, n);
        let var = if n > 1 {
            ((sum_sq - nf * mean * mean) / (nf - 1.0)).max(0.0)
        } else {
            0.0
        };
        Self { n: nf, mean, var }
    }
}

/// How an experiment is read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Design {
    /// 1 - confidence of the interval (0.05 for 95%).
    pub alpha: f64,
    /// Customers (both arms together) at which the interval is tuned to be narrowest; it is
    /// valid before and after.
    pub planned_exposed: u64,
}

impl Default for Design {
    fn default() -> Self {
        Self {
            alpha: 0.05,
            planned_exposed: 10_000,
        }
    }
}

impl Design {
    /// How many standard errors the always-valid interval spans on each side after
    /// `n` customers (both arms). For a fixed-sample interval this would be 1.96.
    pub fn multiplier(&self, n: u64) -> f64 {
        let n = n.max(1) as f64;
        let l = -2.0 * self.alpha.ln();
        let rho2 = (l + (l + 1.0).ln()) / self.planned_exposed.max(1) as f64;
        let t = n * rho2;
        (2.0 * (t + 1.0) / t * ((t + 1.0).sqrt() / self.alpha).ln()).sqrt()
    }
}

/// One outcome of the treatment against the control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The control arm's mean.
    pub control: f64,
    /// The treatment arm's mean.
    pub treatment: f64,
    /// treatment - control.
    pub difference: f64,
    /// The always-valid interval of `difference`.
    pub interval: [f64; 2],
    /// treatment / control - 1, when the control's mean is above 0.
    pub relative: Option<f64>,
    /// The always-valid interval of `relative` (delta method).
    pub relative_interval: Option<[f64; 2]>,
}

fn estimate(c: Moments, t: Moments, multiplier: f64) -> Estimate {
    let difference = t.mean - c.mean;
    let se = (per_mean(t) + per_mean(c)).sqrt();
    let half = multiplier * se;
    let (relative, relative_interval) = if c.mean > 0.0 {
        let r = t.mean / c.mean;
        // Var(t/c) ~ Var(t)/c^2 + t^2 Var(c)/c^4.
        let se_r = (per_mean(t) / (c.mean * c.mean)
            + t.mean * t.mean * per_mean(c) / c.mean.powi(4))
        .sqrt();
        (
            Some(r - 1.0),
            Some([r - 1.0 - multiplier * se_r, r - 1.0 + multiplier * se_r]),
        )
    } else {
        (None, None)
    };
    Estimate {
        control: c.mean,
        treatment: t.mean,
        difference,
        interval: [difference - half, difference + half],
        relative,
        relative_interval,
    }
}

/// Variance of an arm's mean.
fn per_mean(m: Moments) -> f64 {
    if m.n > 0.0 { m.var / m.n } else { 0.0 }
}

/// What the report says of an arm against its control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Fewer than [`MIN_EXPOSED`] customers or [`MIN_CONVERSIONS`] conversions in an arm.
    TooFewSamples,
    /// The conversion interval still holds 0.
    NotSignificantYet,
    /// The whole conversion interval is above 0.
    Better,
    /// The whole conversion interval is below 0.
    Worse,
}

/// A treatment arm against its control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lift {
    /// Conversion (share of exposed customers who bought).
    pub conversion: Estimate,
    /// Attributed revenue per exposed customer.
    pub revenue_per_exposed: Estimate,
    /// Read from the conversion interval.
    pub verdict: Verdict,
    /// Standard errors each interval spans on each side (1.96 would be fixed-sample).
    pub multiplier: f64,
}

/// The treatment arm against the control arm.
pub fn lift(control: &ArmTotals, treatment: &ArmTotals, design: &Design) -> Lift {
    let multiplier = design.multiplier(control.exposed + treatment.exposed);
    let conversion = estimate(
        control.conversion_moments(),
        treatment.conversion_moments(),
        multiplier,
    );
    let revenue_per_exposed = estimate(
        control.revenue_moments(),
        treatment.revenue_moments(),
        multiplier,
    );
    let few = [control, treatment]
        .iter()
        .any(|a| a.exposed < MIN_EXPOSED || a.converted < MIN_CONVERSIONS);
    let verdict = if few {
        Verdict::TooFewSamples
    } else if conversion.interval[0] > 0.0 {
        Verdict::Better
    } else if conversion.interval[1] < 0.0 {
        Verdict::Worse
    } else {
        Verdict::NotSignificantYet
    };
    Lift {
        conversion,
        revenue_per_exposed,
        verdict,
        multiplier,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn a_subject_keeps_its_bucket_and_experiments_split_independently() {
        let a = bucket("shop", "exp-1", Subject::Customer("cust-1"));
        assert_eq!(a, bucket("shop", "exp-1", Subject::Customer("cust-1")));
        assert!(a < BUCKETS);
        // Same customer, other experiment / tenant / namespace: other, independent buckets.
        let split = Split::new(&[0.5, 0.5]).unwrap();
        let mut same = 0;
        for i in 0..10_000 {
            let id = format!("cust-{i}");
            let x = split.arm_of(bucket("shop", "exp-1", Subject::Customer(&id)));
            let y = split.arm_of(bucket("shop", "exp-2", Subject::Customer(&id)));
            same += usize::from(x == y);
        }
        // Independent halves agree about half the time (binomial sd 50).
        assert!((4_800..=5_200).contains(&same), "{same}");
        assert_ne!(
            bucket("ab", "c", Subject::Customer("x")),
            bucket("a", "bc", Subject::Customer("x"))
        );
        let sessions_like_customers = (0..1_000)
            .filter(|i| {
                let id = format!("id-{i}");
                bucket("shop", "e", Subject::Customer(&id))
                    == bucket("shop", "e", Subject::Session(&id))
            })
            .count();
        assert!(sessions_like_customers < 5, "{sessions_like_customers}");
    }

    #[test]
    fn shares_hold_within_binomial_error_over_100k_ids() {
        let shares = [0.1, 0.3, 0.6];
        let split = Split::new(&shares).unwrap();
        let n = 100_000usize;
        let mut counts = [0usize; 3];
        for i in 0..n {
            let id = format!("c{i:06}");
            counts[split.arm_of(bucket("t", "exp", Subject::Customer(&id)))] += 1;
        }
        for (arm, (&count, &p)) in counts.iter().zip(&shares).enumerate() {
            let expected = p * n as f64;
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (count as f64 - expected).abs() < 4.0 * sd,
                "arm {arm}: {count} against {expected} (sd {sd:.0})"
            );
            assert_eq!(split.share(arm), p);
        }
    }

    #[test]
    fn splits_are_checked_and_use_every_bucket() {
        for bad in [
            vec![1.0],
            vec![0.5, 0.6],
            vec![0.0, 1.0],
            vec![f64::NAN, 0.5],
            vec![0.99995, 0.00005],
        ] {
            assert!(Split::new(&bad).is_err(), "{bad:?}");
        }
        let thirds = Split::new(&[1.0 / 3.0; 3]).unwrap();
        assert_eq!(thirds.arms(), 3);
        assert_eq!(thirds.upper.last(), Some(&BUCKETS));
        assert_eq!(thirds.arm_of(0), 0);
        assert_eq!(thirds.arm_of(BUCKETS - 1), 2);
        let sizes: Vec<f64> = (0..3).map(|a| thirds.share(a)).collect();
        assert!(
            sizes.iter().all(|s| (s - 1.0 / 3.0).abs() <= 1e-4),
            "{sizes:?}"
        );
    }

    /// One simulated experiment: `n` customers per arm, conversion `p_c` and `p_t`, revenue
    /// of a conversion drawn around 40.
    fn simulate(seed: u64, n: usize, p_c: f64, p_t: f64) -> (ArmTotals, ArmTotals) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut arms = [ArmTotals::default(), ArmTotals::default()];
        for (arm, p) in arms.iter_mut().zip([p_c, p_t]) {
            for _ in 0..n {
                let bought = rng.random_bool(p);
                let revenue = if bought {
                    rng.random_range(10.0..70.0)
                } else {
                    0.0
                };
                arm.add(bought, revenue);
            }
        }
        (arms[0], arms[1])
    }

    #[test]
    fn an_a_a_test_calls_a_difference_in_fewer_than_5_percent_of_200_runs() {
        let design = Design::default();
        let calls = (0..200)
            .filter(|&seed| {
                let (c, t) = simulate(seed, 5_000, 0.10, 0.10);
                let l = lift(&c, &t, &design);
                assert_ne!(l.verdict, Verdict::TooFewSamples);
                matches!(l.verdict, Verdict::Better | Verdict::Worse)
            })
            .count();
        eprintln!("A/A, read once at 5,000 per arm: {calls} of 200 runs called a difference");
        assert!(calls < 10, "{calls} of 200 A/A runs called a difference");
    }

    #[test]
    fn an_a_a_test_read_20_times_while_it_runs_still_calls_under_5_percent() {
        // The report is read while the experiment runs: every 500 customers per arm, up to
        // 10,000. A fixed-sample 95% interval read that way calls a difference far more often
        // than 5% of the time; the always-valid one does not.
        let design = Design::default();
        let (mut always_valid, mut fixed) = (0, 0);
        for seed in 0..200u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(50_000 + seed);
            let (mut c, mut t) = (ArmTotals::default(), ArmTotals::default());
            let (mut called, mut called_fixed) = (false, false);
            for _ in 0..20 {
                for _ in 0..500 {
                    c.add(rng.random_bool(0.1), 0.0);
                    t.add(rng.random_bool(0.1), 0.0);
                }
                let l = lift(&c, &t, &design);
                called |= matches!(l.verdict, Verdict::Better | Verdict::Worse);
                let [lo, hi] = l.conversion.interval;
                let (mid, half) = ((lo + hi) / 2.0, (hi - lo) / 2.0 / l.multiplier * 1.96);
                called_fixed |= mid - half > 0.0 || mid + half < 0.0;
            }
            always_valid += usize::from(called);
            fixed += usize::from(called_fixed);
        }
        eprintln!(
            "A/A read 20 times: always-valid interval called {always_valid} of 200 runs, \
             a fixed-sample 95% interval {fixed}"
        );
        assert!(always_valid < 10, "{always_valid} of 200");
        assert!(
            fixed > always_valid,
            "fixed {fixed}, always-valid {always_valid}"
        );
    }

    #[test]
    fn a_planted_lift_is_inside_the_interval_and_found() {
        // +8% relative conversion: 10% -> 10.8%.
        let design = Design {
            alpha: 0.05,
            planned_exposed: 100_000,
        };
        let (mut covered, mut found, runs) = (0, 0, 40);
        for seed in 0..runs {
            let (c, t) = simulate(1_000 + seed, 60_000, 0.10, 0.108);
            let l = lift(&c, &t, &design);
            let [lo, hi] = l.conversion.interval;
            covered += usize::from(lo <= 0.008 && 0.008 <= hi);
            let [rlo, rhi] = l.conversion.relative_interval.unwrap();
            assert!(rlo < rhi);
            found += usize::from(l.verdict == Verdict::Better);
            assert_ne!(l.verdict, Verdict::Worse, "seed {seed}: {l:?}");
        }
        eprintln!(
            "planted +8%: the interval held it in {covered} of {runs} runs, found it in {found}"
        );
        assert!(
            covered >= runs as usize * 95 / 100,
            "covered {covered} of {runs}"
        );
        assert!(
            found >= runs as usize / 2,
            "found the lift in {found} of {runs}"
        );
    }

    #[test]
    fn revenue_per_exposed_carries_the_planted_difference() {
        let (c, t) = simulate(7, 50_000, 0.10, 0.13);
        let l = lift(&c, &t, &Design::default());
        // 40 per conversion: 4.0 against 5.2 per exposed customer.
        let [lo, hi] = l.revenue_per_exposed.interval;
        assert!(lo <= 1.2 && 1.2 <= hi, "{:?}", l.revenue_per_exposed);
        assert!(lo > 0.0, "{:?}", l.revenue_per_exposed);
        assert_eq!(l.verdict, Verdict::Better);
    }

    #[test]
    fn small_arms_get_no_verdict() {
        let (c, t) = simulate(3, 60, 0.1, 0.5);
        assert_eq!(
            lift(&c, &t, &Design::default()).verdict,
            Verdict::TooFewSamples
        );
        let empty = ArmTotals::default();
        let l = lift(&empty, &empty, &Design::default());
        assert_eq!(l.verdict, Verdict::TooFewSamples);
        assert_eq!(l.conversion.relative, None);
        assert!(l.conversion.interval.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn the_always_valid_interval_is_wider_than_a_fixed_one_and_shrinks() {
        let d = Design::default();
        let at_plan = d.multiplier(d.planned_exposed);
        assert!(at_plan > 1.96 && at_plan < 3.2, "{at_plan}");
        // se shrinks as 1/sqrt(n); the multiplier grows slowly, so the width still shrinks.
        let width = |n: u64| d.multiplier(n) / (n as f64).sqrt();
        assert!(width(100_000) < width(10_000) && width(10_000) < width(1_000));
    }
}
