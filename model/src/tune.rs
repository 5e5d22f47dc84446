//! Small hyperparameter search on a validation split carved from the training data only,
//! so the test holdout never influences which parameters are chosen.

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::als::AlsParams;
use crate::eval::{self, Holdout, Metrics};
use crate::interactions::Interactions;
use crate::model::{Model, TrainConfig, train};

/// One tried configuration and its validation metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// The parameters tried.
    pub als: AlsParams,
    /// Metrics on the validation split.
    pub validation: Metrics,
}

/// Factors x regularisation x alpha x regulariser exponent, around `base`.
pub fn grid(
    base: &AlsParams,
    factors: &[usize],
    regs: &[f32],
    alphas: &[f32],
    exps: &[f32],
) -> Vec<AlsParams> {
    let mut out = Vec::new();
    for &f in factors {
        for &r in regs {
            for &a in alphas {
                for &e in exps {
                    out.push(AlsParams {
                        factors: f,
                        regularization: r,
                        alpha: a,
                        reg_exponent: e,
                        ..base.clone()
                    });
                }
            }
        }
    }
    out
}

/// Tries each candidate on `validation` (carved from `train_data`, seed `seed`), and
/// returns the trials and the best one by NDCG@k then recall@k. `keep_going` is asked
/// before each trial, so a caller can stop at a time budget.
pub fn search(
    train_data: &Interactions,
    base: &TrainConfig,
    candidates: &[AlsParams],
    seed: u64,
    k: usize,
    keep_going: &dyn Fn() -> bool,
) -> Result<(Vec<Trial>, Option<AlsParams>)> {
    let split = eval::split(
        train_data,
        Holdout::Random {
            fraction: 0.2,
            seed,
        },
    );
    let mut trials = Vec::new();
    for als in candidates {
        if !keep_going() {
            break;
        }
        let cfg = TrainConfig {
            als: als.clone(),
            ..base.clone()
        };
        let model: Model = train(
            &split.train,
            &Default::default(),
            &cfg,
            "tuning",
            0,
            &|_| {},
        )?;
        trials.push(Trial {
            als: als.clone(),
            validation: model.evaluate(&split, k),
        });
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
