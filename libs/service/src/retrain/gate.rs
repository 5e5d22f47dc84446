//! The promotion gate: a retrained model goes live by itself only if it beats popularity
//! and is not clearly worse than the model serving now, on the same holdout.

use affinity_model::eval::{Holdout, Metrics};
use serde::{Deserialize, Serialize};

/// Gate settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// How much worse than the live model (relative: 0.02 = 2%) the candidate may be on
    /// recall@k and NDCG@k and still be promoted: retrains on fresh data wobble a little.
    pub tolerance: f64,
    /// Fewer held-out customers than this and the metrics are noise: the gate refuses to
    /// judge (use `force` on a tiny shop).
    pub min_customers: usize,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            tolerance: 0.02,
            min_customers: 20,
        }
    }
}

impl GateConfig {
    /// Refuses settings that would make the gate meaningless.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.tolerance.is_finite() && (0.0..1.0).contains(&self.tolerance)) {
            return Err(format!(
                "tolerance must be in [0, 1), got {}",
                self.tolerance
            ));
        }
        Ok(())
    }
}

/// The live model's figures on the candidate's holdout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveEvaluation {
    /// The version that was live during the evaluation.
    pub version: String,
    /// Its metrics on the same holdout.
    pub metrics: Metrics,
}

/// Candidate, live model and popularity on one holdout (each customer's latest purchases).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Cut-off of every metric.
    pub k: usize,
    /// How the holdout was carved: purchases since the live model's data watermark when
    /// a model is live (it never saw them), else each customer's latest purchases.
    pub holdout: Holdout,
    /// Customers with held-out purchases.
    pub customers: usize,
    /// The candidate configuration, fitted without the holdout.
    pub candidate: Metrics,
    /// The popularity baseline.
    pub popularity: Metrics,
    /// The live model, when there is one and it could be loaded.
    pub live: Option<LiveEvaluation>,
    /// The version the live pointer named during the evaluation (the pointer flip expects it).
    pub live_pointer: Option<String>,
    /// Why the live model was not evaluated although the pointer names one.
    pub live_note: Option<String>,
}

/// What the gate decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Passed the gate: goes live.
    Promoted,
    /// Failed the gate: registered as rejected, live model unchanged.
    Rejected,
    /// Failed the gate but `force` was given: goes live, and the record says so.
    Forced,
}

impl Verdict {
    /// Whether the version goes live.
    pub fn goes_live(self) -> bool {
        !matches!(self, Verdict::Rejected)
    }

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Promoted => "promoted",
            Verdict::Rejected => "rejected",
            Verdict::Forced => "forced",
        }
    }
}

/// The decision with its reason, as recorded in the registry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    /// Outcome.
    pub verdict: Verdict,
    /// Why, in words a data team can act on.
    pub reason: String,
    /// The tolerance applied.
    pub tolerance: f64,
    /// Whether `force` was asked for (recorded even when the gate passed anyway).
    pub forced: bool,
}

/// Applies the gate to an evaluation.
pub fn decide(config: &GateConfig, eval: &Evaluation, force: bool) -> GateDecision {
    let k = eval.k;
    let (c, p) = (&eval.candidate, &eval.popularity);
    let mut failures = Vec::new();
    if eval.customers < config.min_customers {
        failures.push(match eval.holdout {
            Holdout::Since { at } => format!(
                "only {} customers bought since the live model's data ({}), fewer than the {} needed to compare",
                eval.customers,
                chrono::DateTime::from_timestamp(at, 0)
                    .map_or_else(|| at.to_string(), |t| t.to_rfc3339()),
                config.min_customers
            ),
            _ => format!(
                "the holdout has {} customers, fewer than the {} needed to judge",
                eval.customers, config.min_customers
            ),
        });
    } else {
        if c.recall <= p.recall {
            failures.push(format!(
                "recall@{k} {:.4} does not beat popularity ({:.4})",
                c.recall, p.recall
            ));
        }
        if c.ndcg <= p.ndcg {
            failures.push(format!(
                "NDCG@{k} {:.4} does not beat popularity ({:.4})",
                c.ndcg, p.ndcg
            ));
        }
        if let Some(live) = &eval.live {
            let floor = 1.0 - config.tolerance;
            let l = &live.metrics;
            if c.recall < l.recall * floor {
                failures.push(format!(
                    "recall@{k} {:.4} is more than {}% below live {} ({:.4})",
                    c.recall,
                    pct(config.tolerance),
                    live.version,
                    l.recall
                ));
            }
            if c.ndcg < l.ndcg * floor {
                failures.push(format!(
                    "NDCG@{k} {:.4} is more than {}% below live {} ({:.4})",
                    c.ndcg,
                    pct(config.tolerance),
                    live.version,
                    l.ndcg
                ));
            }
        }
    }
    let mut reason = if failures.is_empty() {
        let mut r = format!(
            "recall@{k} {:.4} / NDCG@{k} {:.4} beat popularity ({:.4} / {:.4})",
            c.recall, c.ndcg, p.recall, p.ndcg
        );
        match &eval.live {
            Some(live) => r.push_str(&format!(
                " and are within {}% of live {} ({:.4} / {:.4})",
                pct(config.tolerance),
                live.version,
                live.metrics.recall,
                live.metrics.ndcg
            )),
            None if eval.live_pointer.is_none() => r.push_str("; no model was live yet"),
            None => {}
        }
        r
    } else {
        failures.join("; ")
    };
    if let Some(note) = &eval.live_note {
        reason.push_str(&format!(" (live model not compared: {note})"));
    }
    let verdict = match (failures.is_empty(), force) {
        (true, _) => Verdict::Promoted,
        (false, true) => {
            reason = format!("forced over the gate: {reason}");
            Verdict::Forced
        }
        (false, false) => Verdict::Rejected,
    };
    GateDecision {
        verdict,
        reason,
        tolerance: config.tolerance,
        forced: force,
    }
}

fn pct(x: f64) -> String {
    let p = x * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0}")
    } else {
        format!("{p:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(recall: f64, ndcg: f64) -> Metrics {
        Metrics {
            k: 10,
            recall,
            ndcg,
            customers: 100,
            ..Metrics::default()
        }
    }

    fn eval(candidate: Metrics, live: Option<Metrics>) -> Evaluation {
        Evaluation {
            k: 10,
            holdout: Holdout::Since { at: 1_700_000_000 },
            customers: 100,
            candidate,
            popularity: m(0.10, 0.08),
            live: live.map(|metrics| LiveEvaluation {
                version: "v1".into(),
                metrics,
            }),
            live_pointer: Some("v1".into()),
            live_note: None,
        }
    }

    #[test]
    fn first_model_needs_only_to_beat_popularity() {
        let mut e = eval(m(0.2, 0.15), None);
        e.live_pointer = None;
        let d = decide(&GateConfig::default(), &e, false);
        assert_eq!(d.verdict, Verdict::Promoted);
        assert!(d.reason.contains("no model was live yet"), "{}", d.reason);
        let d = decide(&GateConfig::default(), &eval(m(0.2, 0.07), None), false);
        assert_eq!(d.verdict, Verdict::Rejected);
        assert!(d.reason.contains("NDCG@10 0.0700 does not beat popularity"));
    }

    #[test]
    fn tolerance_is_relative_to_the_live_model() {
        let cfg = GateConfig {
            tolerance: 0.05,
            ..GateConfig::default()
        };
        // 4% below live on recall: within 5%.
        let ok = decide(&cfg, &eval(m(0.192, 0.15), Some(m(0.2, 0.15))), false);
        assert_eq!(ok.verdict, Verdict::Promoted, "{}", ok.reason);
        // 10% below on NDCG: rejected, with the numbers.
        let bad = decide(&cfg, &eval(m(0.2, 0.135), Some(m(0.2, 0.15))), false);
        assert_eq!(bad.verdict, Verdict::Rejected);
        assert!(
            bad.reason
                .contains("NDCG@10 0.1350 is more than 5% below live v1 (0.1500)"),
            "{}",
            bad.reason
        );
    }

    #[test]
    fn force_overrides_and_is_recorded() {
        let d = decide(
            &GateConfig::default(),
            &eval(m(0.01, 0.01), Some(m(0.2, 0.15))),
            true,
        );
        assert_eq!(d.verdict, Verdict::Forced);
        assert!(d.forced && d.reason.starts_with("forced over the gate: "));
        let passed = decide(&GateConfig::default(), &eval(m(0.3, 0.2), None), true);
        assert_eq!(passed.verdict, Verdict::Promoted);
        assert!(passed.forced);
    }

    #[test]
    fn a_tiny_holdout_is_not_judged() {
        let mut e = eval(m(0.5, 0.5), None);
        e.customers = 3;
        let d = decide(&GateConfig::default(), &e, false);
        assert_eq!(d.verdict, Verdict::Rejected);
        assert!(
            d.reason
                .contains("only 3 customers bought since the live model's data (2023-11-14"),
            "{}",
            d.reason
        );
        e.holdout = Holdout::Latest { fraction: 0.2 };
        let d = decide(&GateConfig::default(), &e, false);
        assert!(d.reason.contains("fewer than the 20 needed to judge"));
    }

    #[test]
    fn unloadable_live_model_is_noted() {
        let mut e = eval(m(0.2, 0.15), None);
        e.live_note = Some("artifact missing".into());
        let d = decide(&GateConfig::default(), &e, false);
        assert_eq!(d.verdict, Verdict::Promoted);
        assert!(
            d.reason
                .ends_with("(live model not compared: artifact missing)")
        );
    }

    #[test]
    fn bad_tolerance_is_refused() {
        assert!(
            GateConfig {
                tolerance: 1.5,
                ..GateConfig::default()
            }
            .validate()
            .is_err()
        );
        assert!(GateConfig::default().validate().is_ok());
    }
}
