//! The model registry and jobs: versions, their status and data counts, the live pointer,
//! the retrain lock, job records and blob metadata.

use super::*;

/// Lifecycle status of a model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelStatus {
    /// Trained and evaluated, not serving.
    Candidate,
    /// Serving (the live pointer names it).
    Live,
    /// Failed the promotion gate.
    Rejected,
    /// Served before, replaced.
    Retired,
}

impl ModelStatus {
    /// Stored string form.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelStatus::Candidate => "candidate",
            ModelStatus::Live => "live",
            ModelStatus::Rejected => "rejected",
            ModelStatus::Retired => "retired",
        }
    }
}

impl FromStr for ModelStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "candidate" => Ok(Self::Candidate),
            "live" => Ok(Self::Live),
            "rejected" => Ok(Self::Rejected),
            "retired" => Ok(Self::Retired),
            other => Err(Error::invalid(
                "status",
                format!(
                    "{:?} is not one of candidate|live|rejected|retired",
                    truncate(other)
                ),
            )),
        }
    }
}

/// Sizes of the data a model was trained on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCounts {
    /// Purchases used.
    pub purchases: u64,
    /// Distinct customers.
    pub customers: u64,
    /// Distinct items.
    pub items: u64,
}

/// One entry of the model registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    /// Version id.
    pub version: ModelVersionId,
    /// When it was registered; the registry lists newest first by this.
    pub created_at: DateTime<Utc>,
    /// Lifecycle status.
    pub status: ModelStatus,
    /// Tenant-relative blob key of the artifact.
    pub artifact_key: crate::ids::BlobKey,
    /// Artifact checksum (e.g. hex SHA-256), verified by the loader.
    pub checksum: String,
    /// Training parameters (JSON).
    pub params: serde_json::Value,
    /// Offline metrics (JSON).
    pub metrics: serde_json::Value,
    /// Training data sizes.
    pub data_counts: DataCounts,
    /// Why the status is what it is (gate decision, operator note).
    pub reason: Option<String>,
}

impl ModelVersion {
    /// Checks sizes and timestamp range.
    pub fn validate(&self) -> Result<()> {
        crate::ids::validate_id("checksum", &self.checksum, 128)?;
        validate_json("params", &self.params)?;
        validate_json("metrics", &self.metrics)?;
        if let Some(r) = &self.reason {
            Self::validate_reason(r)?;
        }
        validate_time("created_at", self.created_at)
    }

    /// Checks a status reason's length (also used by `set_model_status`).
    pub fn validate_reason(reason: &str) -> Result<()> {
        validate_text("reason", reason)
    }

    /// Copy with timestamps truncated to stored precision.
    pub fn normalized(&self) -> Self {
        let mut m = self.clone();
        m.created_at = normalize_time(m.created_at);
        m
    }
}

/// The live-model pointer of a tenant; keeps the previous version for rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivePointer {
    /// Version serving now.
    pub version: ModelVersionId,
    /// Version that served before the last swap.
    pub previous: Option<ModelVersionId>,
    /// When the pointer last changed.
    pub updated_at: DateTime<Utc>,
}

/// A held retrain lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockLease {
    /// Holder.
    pub owner: String,
    /// Expiry; after it anyone may take the lock.
    pub until: DateTime<Utc>,
}

/// Retrain job status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// In progress.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with an error.
    Failed,
}

impl JobStatus {
    /// Stored string form.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
        }
    }
}

impl FromStr for JobStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "running" => Ok(Self::Running),
            "succeeded" => Ok(Self::Succeeded),
            "failed" => Ok(Self::Failed),
            other => Err(Error::invalid(
                "status",
                format!(
                    "{:?} is not one of running|succeeded|failed",
                    truncate(other)
                ),
            )),
        }
    }
}

/// A retrain job record, keyed by (tenant, job id) so a retried invocation is recognised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Job id.
    pub job_id: JobId,
    /// Status.
    pub status: JobStatus,
    /// Start time.
    pub started_at: DateTime<Utc>,
    /// End time, once finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Outcome message (model version produced, error text).
    pub message: Option<String>,
}

impl JobRecord {
    /// Checks message length and timestamp range.
    pub fn validate(&self) -> Result<()> {
        if let Some(m) = &self.message {
            validate_text("message", m)?;
        }
        validate_time("started_at", self.started_at)?;
        if let Some(f) = self.finished_at {
            validate_time("finished_at", f)?;
        }
        Ok(())
    }

    /// Copy with timestamps truncated to stored precision.
    pub fn normalized(&self) -> Self {
        let mut j = self.clone();
        j.started_at = normalize_time(j.started_at);
        j.finished_at = j.finished_at.map(normalize_time);
        j
    }
}

/// Result of creating a job record: either new, or the existing one for a retried invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStart {
    /// The job id was new; the record is stored.
    Created,
    /// A job with this id exists already; here it is.
    Existing(JobRecord),
}

/// Metadata of a stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// Tenant-relative key.
    pub key: crate::ids::BlobKey,
    /// Size in bytes.
    pub size: u64,
}
