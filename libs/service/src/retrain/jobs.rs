//! Job bookkeeping and ids: the job record's life (open, resume, replay, finish, fail), the
//! version id a job derives, fresh job ids and lock owners.

use super::*;

/// The job's record if it already succeeded (a retried delivery of a finished job).
pub(super) async fn finished_job(
    deps: &RetrainDeps,
    tenant: &TenantId,
    job_id: &JobId,
) -> Result<Option<JobRecord>> {
    Ok(deps
        .stores
        .records
        .get_job(tenant, job_id)
        .await
        .step("read the job")?
        .filter(|job| job.status == JobStatus::Succeeded))
}

/// A failed run: mark the job failed and release the lock (a simulated crash does
/// neither, as a killed process would not). Returns the error.
pub(super) async fn fail(
    deps: &RetrainDeps,
    tenant: &TenantId,
    job_id: &JobId,
    lease: Lease,
    e: Error,
) -> Error {
    match e {
        e if e.is_crash() => {
            // A killed process does nothing more: the lease lapses, the job stays running.
            drop(lease);
            e
        }
        e => {
            tracing::error!(error = %e, "retrain failed");
            let failed = JobRecord {
                job_id: job_id.clone(),
                status: JobStatus::Failed,
                started_at: Utc::now(),
                finished_at: Some(Utc::now()),
                message: Some(clip(&e.to_string())),
            };
            if let Err(u) = finish_job(deps, tenant, failed).await {
                tracing::warn!(error = %u, "could not mark the job failed");
            }
            if let Err(r) = lease.release().await {
                tracing::warn!(error = %r, "could not release the retrain lock; it will expire");
            }
            e
        }
    }
}

/// The job record once the lock is held: a new job starts now; an unfinished one is
/// resumed with its original start (its version id derives from it); a finished one is
/// replayed.
pub(super) enum Opened {
    Started(DateTime<Utc>),
    Finished(JobRecord),
}

pub(super) async fn open_job(
    deps: &RetrainDeps,
    tenant: &TenantId,
    job_id: &JobId,
) -> Result<Opened> {
    let records = &deps.stores.records;
    let now = Utc::now();
    let fresh = JobRecord {
        job_id: job_id.clone(),
        status: JobStatus::Running,
        started_at: now,
        finished_at: None,
        message: None,
    };
    match records
        .create_job(tenant, &fresh)
        .await
        .step("create the job record")?
    {
        JobStart::Created => Ok(Opened::Started(now)),
        JobStart::Existing(job) if job.status == JobStatus::Succeeded => Ok(Opened::Finished(job)),
        JobStart::Existing(job) => {
            tracing::info!(status = job.status.as_str(), "resuming an unfinished job");
            let again = JobRecord {
                status: JobStatus::Running,
                finished_at: None,
                message: Some("retried".into()),
                ..job.clone()
            };
            records
                .update_job(tenant, &again)
                .await
                .step("update the job record")?;
            Ok(Opened::Started(job.started_at))
        }
    }
}

/// The outcome of a job that finished earlier, rebuilt from the registry.
pub(super) async fn replay(
    deps: &RetrainDeps,
    tenant: &TenantId,
    job: &JobRecord,
) -> Result<Outcome> {
    let records = &deps.stores.records;
    let version = version_id(&job.job_id, job.started_at)?;
    let entry = records
        .get_model(tenant, &version)
        .await
        .step("read the model version")?
        .ok_or_else(|| Error::NotFound {
            what: "model version of a finished job",
            key: version.to_string(),
        })?;
    let metrics = VersionMetrics::of(&entry)?;
    let pointer = records
        .live_pointer(tenant)
        .await
        .step("read the live pointer")?;
    let mut outcome = outcome_of(tenant, &job.job_id, entry, metrics, pointer)?;
    outcome.replayed = true;
    Ok(outcome)
}

pub(super) fn outcome_of(
    tenant: &TenantId,
    job_id: &JobId,
    entry: ModelVersion,
    metrics: VersionMetrics,
    pointer: Option<LivePointer>,
) -> Result<Outcome> {
    Ok(Outcome {
        tenant: tenant.to_string(),
        job_id: job_id.clone(),
        version: entry.version,
        verdict: metrics.gate.verdict,
        reason: metrics.gate.reason,
        forced: metrics.gate.forced,
        live: pointer.map(|p| p.version),
        replaced: None,
        artifact_key: entry.artifact_key,
        checksum: entry.checksum,
        evaluation: metrics.evaluation,
        counts: entry.data_counts,
        timings: Vec::new(),
        replayed: false,
        resumed: false,
    })
}

/// Writes a finished job record, keeping the original start time.
pub(super) async fn finish_job(
    deps: &RetrainDeps,
    tenant: &TenantId,
    mut job: JobRecord,
) -> Result<()> {
    let records = &deps.stores.records;
    if let Some(existing) = records
        .get_job(tenant, &job.job_id)
        .await
        .step("read the job")?
    {
        job.started_at = existing.started_at;
    }
    records
        .update_job(tenant, &job)
        .await
        .step("finish the job record")
}

/// A refused run leaves a trace in its job record, unless the lock holder is this very
/// job (a duplicate delivery while the first is still running: its record is live).
pub(super) async fn record_refusal(
    deps: &RetrainDeps,
    tenant: &TenantId,
    job_id: &JobId,
    e: &Error,
) {
    if let Error::RetrainRunning { holder, .. } = e
        && holder.starts_with(&format!("{}#", owner_prefix(job_id)))
    {
        return;
    }
    let now = Utc::now();
    let refused = JobRecord {
        job_id: job_id.clone(),
        status: JobStatus::Failed,
        started_at: now,
        finished_at: Some(now),
        message: Some(clip(&format!("refused: {e}"))),
    };
    let records = &deps.stores.records;
    let res = match records.create_job(tenant, &refused).await {
        Ok(JobStart::Created) => Ok(()),
        Ok(JobStart::Existing(job)) if job.status == JobStatus::Running => {
            records.update_job(tenant, &refused).await
        }
        Ok(JobStart::Existing(_)) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = res {
        tracing::warn!(error = %e, "could not record the refused job");
    }
}

pub(super) fn clip(s: &str) -> String {
    crate::error::clip_to(s, MAX_MESSAGE_CHARS)
}

/// A version id derived from the job, so every attempt of one job names the same version:
/// `v<start time>-<hash of the job id>`.
pub fn version_id(job_id: &JobId, started_at: DateTime<Utc>) -> Result<ModelVersionId> {
    let h = digest(job_id.as_str().as_bytes());
    ModelVersionId::parse(format!(
        "v{}-{}",
        started_at.format("%Y%m%d-%H%M%S"),
        &h[..6]
    ))
    .step("version id")
}

/// A fresh job id: `<prefix>-<UTC time>-<8 hex>`.
pub fn new_job_id(prefix: &str) -> Result<JobId> {
    JobId::parse(format!(
        "{prefix}-{}-{}",
        Utc::now().format("%Y%m%dT%H%M%S"),
        nonce()
    ))
    .step("job id")
}

/// Unique enough to tell two processes (or two calls) apart; not a secret.
pub(super) fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!(
        "{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    digest(seed.as_bytes())[..8].to_owned()
}

/// The job id as it appears in lock owners (bounded so owners stay valid ids).
pub(super) fn owner_prefix(job_id: &JobId) -> String {
    job_id.as_str().chars().take(100).collect()
}

/// Lock owner: the job and this attempt, so a duplicate delivery running at the same time
/// is refused while a retry after a crash can take over once the lease lapses.
pub(super) fn owner_for(job_id: &JobId) -> String {
    format!("{}#{}", owner_prefix(job_id), nonce())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_ids_follow_the_job() {
        let j = JobId::parse("job-1").unwrap();
        let t = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let v = version_id(&j, t).unwrap();
        assert!(v.as_str().starts_with("v20261123-100000-"));
        assert_eq!(v, version_id(&j, t).unwrap());
        assert_ne!(v, version_id(&JobId::parse("job-2").unwrap(), t).unwrap());
        let a = new_job_id("run").unwrap();
        let b = new_job_id("run").unwrap();
        assert_ne!(a, b);
        let owner = owner_for(&JobId::parse("x".repeat(128)).unwrap());
        assert!(owner.chars().count() <= 128);
    }

    #[test]
    fn long_messages_are_clipped() {
        let s = "x".repeat(5000);
        assert_eq!(clip(&s).chars().count(), MAX_MESSAGE_CHARS);
        assert_eq!(clip("short"), "short");
    }
}
