//! The one error type of the model crate.

use thiserror::Error;

/// Everything that can go wrong in the math or the artifact format.
#[derive(Debug, Error)]
pub enum Error {
    /// Training or scoring was asked for with parameters that cannot work.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParameter {
        /// The parameter's name as the caller knows it.
        name: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// There is nothing to train on (no customers, no items or no purchases).
    #[error("no training data: {0}")]
    EmptyData(String),
    /// An id was not known to the model.
    #[error("unknown {kind} id `{id}`")]
    UnknownId {
        /// "item" or "customer".
        kind: &'static str,
        /// The id as given.
        id: String,
    },
    /// The artifact could not be verified or decoded; the caller keeps its old model.
    #[error("artifact refused: {0}")]
    Artifact(String),
    /// The vector index could not be built, saved or loaded.
    #[error("vector index: {0}")]
    Index(String),
    /// The HNSW section was written in a format this build no longer reads; the model still
    /// answers, from the exact index, until a retrain writes the current format.
    #[error("vector index: HNSW section format {0} is retired")]
    RetiredIndexFormat(u32),
    /// A maximum-likelihood fit did not reach a point where the gradient vanishes.
    #[error("{model} fit did not converge: {reason}")]
    NotConverged {
        /// The model being fitted ("BG/NBD", "Gamma-Gamma").
        model: &'static str,
        /// Where it stopped and why that is not an optimum.
        reason: String,
    },
    /// An offer definition (or a request about offers) broke a rule; `field` names it
    /// with its path in the offer document (e.g. `eligibility.churn_risk.max`).
    #[error("invalid offer field `{field}`: {reason}")]
    InvalidOffer {
        /// Dotted path of the field in the offer document.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing an artifact file failed.
    #[error("i/o on {path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for the model crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
