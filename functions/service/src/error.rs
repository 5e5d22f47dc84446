//! The service's error type: store and model errors with the step that failed.

use thiserror::Error;

/// What can fail in the application layer.
#[derive(Debug, Error)]
pub enum Error {
    /// A storage call failed.
    #[error("{step}: {source}")]
    Store {
        /// What the service was doing.
        step: &'static str,
        /// The store's error.
        #[source]
        source: affinity_store::Error,
    },
    /// Training or artifact handling failed.
    #[error("{step}: {source}")]
    Model {
        /// What the service was doing.
        step: &'static str,
        /// The model's error.
        #[source]
        source: affinity_model::Error,
    },
    /// Another retrain of the tenant holds the lock: single flight (HTTP 409).
    #[error(
        "a retrain of tenant `{tenant}` is already running (lock held by {holder} until {until}); try again when it has finished"
    )]
    RetrainRunning {
        /// Tenant whose lock is held.
        tenant: String,
        /// Owner string of the running job.
        holder: String,
        /// When its lease runs out if it stops renewing it.
        until: chrono::DateTime<chrono::Utc>,
    },
    /// The retrain lock was lost mid-run (lease expired and taken over); nothing was promoted.
    #[error("the retrain lock of tenant `{tenant}` was lost before {step}; nothing was promoted")]
    LockLost {
        /// Tenant whose lock was lost.
        tenant: String,
        /// The step that noticed.
        step: &'static str,
    },
    /// A state change was refused because the state moved meanwhile (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// A named thing (model version, job) does not exist (HTTP 404).
    #[error("{what} not found: {key}")]
    NotFound {
        /// Kind of thing.
        what: &'static str,
        /// Its key.
        key: String,
    },
    /// A request parameter was refused (HTTP 400).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The parameter's name.
        field: String,
        /// Why it was refused.
        reason: String,
    },
    /// A failure injected by a test at a pipeline step; `crash` ones skip all cleanup, as
    /// a killed process would.
    #[error("injected failure at step `{step}`{}", if *crash { " (simulated crash)" } else { "" })]
    Injected {
        /// The step.
        step: &'static str,
        /// True to behave like a killed process.
        crash: bool,
    },
    /// A background (blocking) task panicked or was cancelled.
    #[error("{step}: background task failed: {message}")]
    Task {
        /// What the task was doing.
        step: &'static str,
        /// The join error.
        message: String,
    },
}

/// Result alias for the service crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds the step name to store and model errors.
pub(crate) trait Context<T> {
    /// Names the step that failed.
    fn step(self, step: &'static str) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, affinity_store::Error> {
    fn step(self, step: &'static str) -> Result<T> {
        self.map_err(|source| Error::Store { step, source })
    }
}

impl<T> Context<T> for std::result::Result<T, affinity_model::Error> {
    fn step(self, step: &'static str) -> Result<T> {
        self.map_err(|source| Error::Model { step, source })
    }
}
