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
    /// Two inputs that must belong together do not (e.g. a CRM snapshot of another model).
    #[error("{0}")]
    Mismatch(String),
    /// A user's input file broke a rule; names the file, line and field.
    #[error("{file}:{line}: field `{field}`: {reason}")]
    BadInput {
        /// The file as given.
        file: String,
        /// 1-based line (the header is line 1).
        line: u64,
        /// Column or flag name.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading an input file failed.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
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
