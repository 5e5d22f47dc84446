//! The crate's one error type: callers (the HTTP layer) map each variant to a status code.

use chrono::{DateTime, Utc};

/// Boxed source error kept for logs and `Error::source()` chains.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used by every fallible function in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage layer, grouped by how a caller should react.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The addressed record or blob does not exist (HTTP 404).
    #[error("{what} not found: {key}")]
    NotFound {
        /// Kind of record, e.g. "model version".
        what: &'static str,
        /// Key that was looked up (never a secret).
        key: String,
    },
    /// A conditional write lost: compare-and-set mismatch, lock held, record exists (HTTP 409).
    #[error("conflict: {0}")]
    Conflict(Conflict),
    /// A value failed validation at the edge (HTTP 400).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Name of the offending field.
        field: String,
        /// Human-readable reason, including the bad value (truncated) where useful.
        reason: String,
    },
    /// A CSV row failed to parse; names file, line and field so the user can fix it (HTTP 400).
    #[error("{0}")]
    BadRow(Box<BadRow>),
    /// The backend kept throttling after every retry; the whole call is safe to retry later (HTTP 503).
    #[error("{operation} still throttled after {attempts} attempts")]
    Throttled {
        /// Backend operation that was throttled, e.g. "BatchWriteItem".
        operation: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// Any other backend failure: I/O, SDK, SQLite, malformed stored data (HTTP 500/502).
    #[error("{backend} error during {operation}: {message}")]
    Backend {
        /// Which backend failed: "sqlite", "dynamodb", "s3", "local-blobs".
        backend: &'static str,
        /// Operation being performed.
        operation: String,
        /// Summary of the failure.
        message: String,
        /// Underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
}

/// Why a conditional write was refused; carries what the caller needs to decide the next step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// The live-model pointer did not hold the expected version.
    #[error("live model pointer is {actual:?}, expected {expected:?}")]
    LiveModel {
        /// Version the caller expected (None = no pointer yet).
        expected: Option<String>,
        /// Version actually found (None = no pointer).
        actual: Option<String>,
    },
    /// The retrain lock is held by someone else until the given instant.
    #[error("retrain lock held by {owner} until {until}")]
    LockHeld {
        /// Owner string of the current holder.
        owner: String,
        /// When the holder's lease expires.
        until: DateTime<Utc>,
    },
    /// Renew/release attempted by an owner that does not hold the lock.
    #[error("retrain lock not held by {owner} (holder: {holder:?})")]
    LockNotOwned {
        /// Owner that attempted the operation.
        owner: String,
        /// Current holder, if any unexpired lock exists.
        holder: Option<String>,
    },
    /// A create-only record already exists with that key.
    #[error("{what} already exists: {key}")]
    AlreadyExists {
        /// Kind of record.
        what: &'static str,
        /// Its key.
        key: String,
    },
}

/// Location and cause of a bad CSV row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// File name (or "<reader>" when importing from a stream).
    pub file: String,
    /// 1-based line number in the file.
    pub line: u64,
    /// Column header of the bad field (or "row" for structural errors).
    pub field: String,
    /// Offending value, truncated to 64 characters.
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: field `{}` = {:?}: {}",
            self.file, self.line, self.field, self.value, self.reason
        )
    }
}

impl Error {
    /// Builds an `Invalid` error; short-hand used by validators.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Builds a `NotFound` error.
    pub fn not_found(what: &'static str, key: impl Into<String>) -> Self {
        Error::NotFound {
            what,
            key: key.into(),
        }
    }

    /// Builds a `Backend` error with a source.
    pub fn backend(
        backend: &'static str,
        operation: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        let source = source.into();
        Error::Backend {
            backend,
            operation: operation.into(),
            message: source.to_string(),
            source: Some(source),
        }
    }

    /// Builds a `Backend` error from a message only (e.g. corrupt stored data).
    pub fn backend_msg(
        backend: &'static str,
        operation: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Backend {
            backend,
            operation: operation.into(),
            message: message.into(),
            source: None,
        }
    }

    /// True for `NotFound`, handy in tests and callers that treat absence as a value.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

/// Truncates a value for error messages so a huge bad cell cannot flood logs.
pub(crate) fn truncate(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        value.to_string()
    } else {
        let mut s: String = value.chars().take(MAX).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_limits_length() {
        let long = "x".repeat(200);
        let t = truncate(&long);
        assert_eq!(t.chars().count(), 65);
        assert!(t.ends_with('…'));
        assert_eq!(truncate("short"), "short");
    }

    #[test]
    fn bad_row_display_names_file_line_field() {
        let e = Error::BadRow(Box::new(BadRow {
            file: "p.csv".into(),
            line: 7,
            field: "quantity".into(),
            value: "-1".into(),
            reason: "must be a positive integer".into(),
        }));
        assert_eq!(
            e.to_string(),
            "p.csv:7: field `quantity` = \"-1\": must be a positive integer"
        );
    }
}
