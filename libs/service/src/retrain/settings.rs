//! Retrain configuration: the deployment's settings (read from the environment) and the
//! training parameters a request may override.

use super::*;

/// How the holdout is carved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldoutConfig {
    /// Share of each sampled customer's items held out (their latest).
    pub fraction: f64,
    /// Customers evaluated at most (a seeded sample): scoring costs customers x items.
    pub max_customers: usize,
    /// Seed of the customer sample.
    pub seed: u64,
    /// Cut-off of the metrics the gate reads (recall@k, NDCG@k).
    pub k: usize,
}

impl Default for HoldoutConfig {
    fn default() -> Self {
        Self {
            fraction: 0.2,
            max_customers: 20_000,
            seed: 42,
            k: 10,
        }
    }
}

/// Everything about retraining that is configuration, not request.
#[derive(Clone, Debug, PartialEq)]
pub struct RetrainSettings {
    /// Base training configuration (a request's parameters override parts of it).
    pub train: TrainConfig,
    /// The promotion gate.
    pub gate: GateConfig,
    /// The holdout.
    pub holdout: HoldoutConfig,
    /// Lease of the retrain lock; renewed every third of it while the run is alive.
    pub lease: Duration,
    /// Parallel readers of the purchase scan (DynamoDB segments).
    pub scan_segments: u32,
    /// ALS alternations of the final fit on all data, continued from the candidate's factors;
    /// 0 fits the final model from random factors with the full iteration count instead.
    pub refit_iterations: usize,
    /// Key of the keyed customer hash (`AFFINITY_LOG_HASH_KEY`, hex): the customer-insight
    /// step drops customers erased while it ran by matching erasure audit hashes, so it must
    /// be the API's key. None: random per process (then only the API's second pass catches
    /// such an erasure).
    pub hash_key: Option<Vec<u8>>,
    /// Where run outcomes and the live model's age are reported (EMF).
    pub metrics: crate::metrics::MetricsConfig,
}

impl Default for RetrainSettings {
    fn default() -> Self {
        Self {
            train: TrainConfig::default(),
            gate: GateConfig::default(),
            holdout: HoldoutConfig::default(),
            lease: Duration::from_secs(120),
            scan_segments: training::SCAN_SEGMENTS,
            refit_iterations: 3,
            hash_key: None,
            metrics: crate::metrics::MetricsConfig::default(),
        }
    }
}

impl RetrainSettings {
    /// Refuses settings the pipeline cannot honour.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| {
            Err(Error::Invalid {
                field: field.to_owned(),
                reason,
            })
        };
        if let Err(reason) = self.gate.validate() {
            return bad("gate", reason);
        }
        let h = &self.holdout;
        if !(h.fraction > 0.0 && h.fraction < 1.0) {
            return bad(
                "holdout.fraction",
                format!("must be in (0, 1), got {}", h.fraction),
            );
        }
        if h.max_customers == 0 || !(1..=100).contains(&h.k) {
            return bad(
                "holdout",
                "max_customers must be positive and k in 1..=100".into(),
            );
        }
        if self.lease < Duration::from_millis(300) || self.lease > Duration::from_secs(3600) {
            return bad(
                "lease",
                format!("must be between 0.3 s and 1 h, got {:?}", self.lease),
            );
        }
        if !(1..=64).contains(&self.scan_segments) {
            return bad(
                "scan_segments",
                format!("must be in 1..=64, got {}", self.scan_segments),
            );
        }
        if self.refit_iterations > 100 {
            return bad(
                "refit_iterations",
                format!("must be in 0..=100, got {}", self.refit_iterations),
            );
        }
        Ok(())
    }
}

/// Training parameters a request may override; anything absent keeps the settings' value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// Embedding dimension (1..=1024).
    #[schema(minimum = 1, maximum = 1024)]
    pub factors: Option<usize>,
    /// ALS iterations (1..=1000).
    #[schema(minimum = 1, maximum = 1000)]
    pub iterations: Option<usize>,
    /// L2 regularisation (finite, >= 0).
    #[schema(minimum = 0, maximum = 3.402_823_466_385_288_6e38)]
    pub regularization: Option<f32>,
    /// Confidence scale (finite, > 0).
    #[schema(exclusive_minimum = 0, maximum = 3.402_823_466_385_288_6e38)]
    pub alpha: Option<f32>,
    /// Frequency scaling exponent of the regulariser (0..=2).
    #[schema(minimum = 0, maximum = 2)]
    pub reg_exponent: Option<f32>,
    /// Half-life of a purchase's weight in days (> 0).
    #[schema(exclusive_minimum = 0)]
    pub half_life_days: Option<f64>,
    /// Neighbours precomputed per item (1..=500).
    #[schema(minimum = 1, maximum = 500)]
    pub neighbours: Option<usize>,
}

impl TrainParams {
    /// The base configuration with these overrides, validated.
    pub fn apply(&self, base: &TrainConfig) -> Result<TrainConfig> {
        let mut c = base.clone();
        if let Some(v) = self.factors {
            c.als.factors = v;
        }
        if let Some(v) = self.iterations {
            c.als.iterations = v;
        }
        if let Some(v) = self.regularization {
            c.als.regularization = v;
        }
        if let Some(v) = self.alpha {
            c.als.alpha = v;
        }
        if let Some(v) = self.reg_exponent {
            c.als.reg_exponent = v;
        }
        if let Some(v) = self.half_life_days {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::Invalid {
                    field: "half_life_days".into(),
                    reason: format!("must be a positive number of days, got {v}"),
                });
            }
            c.weighting.half_life_days = Some(v);
        }
        if let Some(v) = self.neighbours {
            if !(1..=500).contains(&v) {
                return Err(Error::Invalid {
                    field: "neighbours".into(),
                    reason: format!("must be between 1 and 500, got {v}"),
                });
            }
            c.neighbours = v;
        }
        c.als.validate().map_err(|e| match e {
            affinity_model::Error::InvalidParameter { name, reason } => Error::Invalid {
                field: name.to_owned(),
                reason,
            },
            other => Error::Invalid {
                field: "params".into(),
                reason: other.to_string(),
            },
        })?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_override_and_validate() {
        let base = TrainConfig::default();
        let p = TrainParams {
            factors: Some(8),
            half_life_days: Some(30.0),
            ..TrainParams::default()
        };
        let c = p.apply(&base).unwrap();
        assert_eq!(c.als.factors, 8);
        assert_eq!(c.weighting.half_life_days, Some(30.0));
        assert_eq!(c.als.iterations, base.als.iterations);
        let bad = TrainParams {
            factors: Some(0),
            ..TrainParams::default()
        };
        assert!(
            matches!(bad.apply(&base), Err(Error::Invalid { field, .. }) if field == "factors")
        );
        let bad = TrainParams {
            neighbours: Some(0),
            ..TrainParams::default()
        };
        assert!(bad.apply(&base).is_err());
        let json: std::result::Result<TrainParams, _> =
            serde_json::from_str(r#"{"factors": 8, "bogus": 1}"#);
        assert!(json.is_err(), "unknown fields are refused");
    }
}
