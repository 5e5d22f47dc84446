//! What a retrain persists about a version: its parameters and metrics (the registry entry's
//! JSON), the recall curve, and the figures copied into the artifact's manifest.

use super::*;

/// Trials kept in a registry entry (the entry has a size limit).
pub const MAX_RECORDED_TRIALS: usize = 40;

/// Cut-offs of the recorded recall@k curve.
pub const CURVE_KS: [usize; 5] = [1, 5, 10, 20, 50];

/// The training side of a registry entry (`ModelVersion::params`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionParams {
    /// The configuration the model was trained with.
    pub config: TrainConfig,
    /// The job that produced it.
    pub job_id: String,
    /// How the gate's holdout was carved.
    pub holdout: HoldoutConfig,
    /// Distinct (customer, item) pairs trained on.
    pub pairs: u64,
    /// Newest purchase included.
    pub data_watermark: Option<DateTime<Utc>>,
    /// The hyperparameter search, if one ran.
    pub tuning: Option<TuningSummary>,
}

/// What a hyperparameter search tried and chose.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TuningSummary {
    /// The budget it had.
    pub budget_seconds: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// Trials run (at most [`MAX_RECORDED_TRIALS`] are kept).
    pub trials: Vec<tune::Trial>,
    /// Configurations tried in all.
    pub tried: usize,
}

/// The evaluation side of a registry entry (`ModelVersion::metrics`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionMetrics {
    /// Holdout metrics.
    pub evaluation: Evaluation,
    /// The gate's decision.
    pub gate: GateDecision,
    /// Recall of candidate and popularity at several cut-offs on the same holdout (the
    /// report's curve). Absent from entries registered before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<RecallCurve>,
}

/// Recall@k of the candidate against popularity for a few k, on the gate's holdout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecallCurve {
    /// One point per cut-off, ascending k.
    pub points: Vec<CurvePoint>,
}

/// One cut-off of a [`RecallCurve`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Cut-off.
    pub k: usize,
    /// The candidate's recall@k.
    pub candidate: f64,
    /// Popularity's recall@k.
    pub popularity: f64,
}

/// The cut-offs to rank at: the curve's and the gate's `k`, ascending, once each.
pub(super) fn evaluation_ks(k: usize) -> Vec<usize> {
    let mut ks: Vec<usize> = CURVE_KS.iter().copied().chain([k]).collect();
    ks.sort_unstable();
    ks.dedup();
    ks
}

/// Metrics at `k` out of metrics computed at `ks` (the gate's `k` is always among them).
pub(super) fn at_k(ks: &[usize], metrics: &[Metrics], k: usize) -> Metrics {
    ks.iter()
        .position(|&x| x == k)
        .and_then(|i| metrics.get(i).cloned())
        .unwrap_or_default()
}

/// The curve's points out of metrics computed at `ks`.
pub(super) fn recall_curve(
    ks: &[usize],
    candidate: &[Metrics],
    popularity: &[Metrics],
) -> RecallCurve {
    RecallCurve {
        points: CURVE_KS
            .iter()
            .map(|&k| CurvePoint {
                k,
                candidate: at_k(ks, candidate, k).recall,
                popularity: at_k(ks, popularity, k).recall,
            })
            .collect(),
    }
}

impl VersionMetrics {
    /// Reads the metrics document of a registry entry written by this pipeline.
    pub fn of(entry: &ModelVersion) -> Result<Self> {
        serde_json::from_value(entry.metrics.clone()).map_err(|e| {
            Error::Conflict(format!(
                "the registry entry of {} has metrics this build cannot read: {e}",
                entry.version
            ))
        })
    }
}

/// Metrics stored in the artifact's own manifest.
pub(super) fn manifest_metrics(e: &Evaluation) -> BTreeMap<String, f64> {
    let k = e.k;
    let mut m = BTreeMap::new();
    let mut put = |prefix: &str, x: &Metrics| {
        m.insert(format!("{prefix}recall_at_{k}"), x.recall);
        m.insert(format!("{prefix}ndcg_at_{k}"), x.ndcg);
        m.insert(format!("{prefix}hit_rate_at_{k}"), x.hit_rate);
        m.insert(format!("{prefix}precision_at_{k}"), x.precision);
        m.insert(format!("{prefix}coverage_at_{k}"), x.coverage);
    };
    put("", &e.candidate);
    put("popularity_", &e.popularity);
    m.insert("holdout_customers".into(), e.customers as f64);
    m
}

pub(super) fn to_json(what: &'static str, v: &impl Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::Task {
        step: what,
        message: format!("encode {what}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_and_the_gate_share_one_set_of_cutoffs() {
        assert_eq!(evaluation_ks(10), vec![1, 5, 10, 20, 50]);
        assert_eq!(evaluation_ks(15), vec![1, 5, 10, 15, 20, 50]);
        let ks = evaluation_ks(15);
        let m = |r: f64| Metrics {
            recall: r,
            ..Metrics::default()
        };
        let cand: Vec<Metrics> = ks.iter().map(|&k| m(k as f64 / 100.0)).collect();
        let pop: Vec<Metrics> = ks.iter().map(|&k| m(k as f64 / 1000.0)).collect();
        assert_eq!(at_k(&ks, &cand, 15).recall, 0.15);
        let curve = recall_curve(&ks, &cand, &pop);
        let got: Vec<(usize, f64, f64)> = curve
            .points
            .iter()
            .map(|p| (p.k, p.candidate, p.popularity))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 0.01, 0.001),
                (5, 0.05, 0.005),
                (10, 0.1, 0.01),
                (20, 0.2, 0.02),
                (50, 0.5, 0.05)
            ]
        );
    }

    #[test]
    fn metrics_registered_before_the_curve_still_read() {
        let m = |r: f64| Metrics {
            k: 10,
            recall: r,
            ..Metrics::default()
        };
        let with = VersionMetrics {
            evaluation: Evaluation {
                k: 10,
                holdout: Holdout::Latest { fraction: 0.2 },
                customers: 3,
                candidate: m(0.3),
                popularity: m(0.1),
                live: None,
                live_pointer: None,
                live_note: None,
            },
            gate: GateDecision {
                verdict: Verdict::Promoted,
                reason: "beats popularity".into(),
                tolerance: 0.02,
                forced: false,
            },
            curve: None,
        };
        let mut json = serde_json::to_value(&with).unwrap();
        assert!(json.get("curve").is_none());
        json.as_object_mut().unwrap().remove("curve");
        let back: VersionMetrics = serde_json::from_value(json).unwrap();
        assert_eq!(back, with);
    }
}
