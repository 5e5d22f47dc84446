//! Small hyperparameter search on a validation split carved from the training data only,
//! so the test holdout never influences which parameters are chosen.

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::als::AlsParams;
use crate::eval::{self, Holdout, Metrics};
use crate::interactions::Interactions;
use crate::model::{Model, TrainConfig, Trainer};

/// One tried configuration and its validation metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// The parameters tried.
    pub als: AlsParams,
    /// Metrics on the validation split.
    pub validation: Metrics,
}

/// Factors x regularisation x alpha x regulariser exponent x negative-weight exponent,
/// around `base`.
pub fn grid(
    base: &AlsParams,
    factors: &[usize],
    regs: &[f32],
    alphas: &[f32],
    exps: &[f32],
    negs: &[f32],
) -> Vec<AlsParams> {
    let mut out = Vec::new();
    for &f in factors {
        for &r in regs {
            for &a in alphas {
                for &e in exps {
                    for &ne in negs {
                        out.push(AlsParams {
                            factors: f,
                            regularization: r,
                            alpha: a,
                            reg_exponent: e,
                            neg_exponent: ne,
                            ..base.clone()
                        });
                    }
                }
            }
        }
    }
    out
}

/// Tries each candidate on validation splits carved from `train_data` (one per seed in
/// `seeds`, metrics averaged: one split alone picks noise on small shops) and returns the
/// trials and the best one by NDCG@k then recall@k. `keep_going` is asked before each
/// trial, so a caller can stop at a time budget.
pub fn search(
    train_data: &Interactions,
    base: &TrainConfig,
    candidates: &[AlsParams],
    seeds: &[u64],
    k: usize,
    keep_going: &dyn Fn() -> bool,
) -> Result<(Vec<Trial>, Option<AlsParams>)> {
    let splits: Vec<_> = seeds
        .iter()
        .map(|&seed| {
            eval::split(
                train_data,
                Holdout::Random {
                    fraction: 0.2,
                    seed,
                },
            )
        })
        .collect();
    let mut trials = Vec::new();
    'candidates: for als in candidates {
        let cfg = TrainConfig {
            als: als.clone(),
            ..base.clone()
        };
        let mut folds = Vec::with_capacity(splits.len());
        for split in &splits {
            if !keep_going() {
                break 'candidates;
            }
            // Embeddings only: neighbour lists play no part in the validation metrics.
            let model: Model = Trainer::new(&cfg)
                .version("tuning")
                .fit_for_evaluation(&split.train)?;
            folds.push(model.evaluate(split, k));
        }
        if let Some(validation) = Metrics::mean(&folds) {
            trials.push(Trial {
                als: als.clone(),
                validation,
            });
        }
    }
    let best = trials
        .iter()
        .max_by(|a, b| {
            a.validation
                .ndcg
                .total_cmp(&b.validation.ndcg)
                .then(a.validation.recall.total_cmp(&b.validation.recall))
        })
        .map(|t| t.als.clone());
    Ok((trials, best))
}
