//! Model versions for the data team: list them with their metrics, show one, promote one,
//! roll back to the previous one, read a job's status. Every promotion verifies the
//! artifact first and flips the live pointer by compare-and-set.

use affinity_model::artifact::digest;
use affinity_model::model::Model;
use affinity_store::{
    JobId, JobRecord, LivePointer, ModelStatus, ModelVersion, ModelVersionId, Stores, TenantId,
};
use serde::Serialize;

use crate::error::{Context, Error, Result};

/// Versions listed when no limit is given.
pub const DEFAULT_LIST_LIMIT: usize = 50;

/// A registry entry with whether it is the one serving now.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VersionView {
    /// The registry entry.
    #[serde(flatten)]
    pub entry: ModelVersion,
    /// True if the live pointer names this version.
    pub live: bool,
}

/// The registry as the data team sees it: the live pointer and the newest versions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Registry {
    /// The live pointer (None before the first promotion).
    pub pointer: Option<LivePointer>,
    /// Versions, newest first.
    pub versions: Vec<VersionView>,
}

/// Lists versions newest first with the live one marked.
pub async fn list(stores: &Stores, tenant: &TenantId, limit: usize) -> Result<Registry> {
    let pointer = stores
        .records
        .live_pointer(tenant)
        .await
        .step("read the live pointer")?;
    let versions = stores
        .records
        .list_models(tenant, limit)
        .await
        .step("list model versions")?
        .into_iter()
        .map(|entry| VersionView {
            live: pointer.as_ref().is_some_and(|p| p.version == entry.version),
            entry,
        })
        .collect();
    Ok(Registry { pointer, versions })
}

/// One version; `NotFound` if it does not exist.
pub async fn show(
    stores: &Stores,
    tenant: &TenantId,
    version: &ModelVersionId,
) -> Result<VersionView> {
    let entry = get(stores, tenant, version).await?;
    let pointer = stores
        .records
        .live_pointer(tenant)
        .await
        .step("read the live pointer")?;
    Ok(VersionView {
        live: pointer.is_some_and(|p| &p.version == version),
        entry,
    })
}

/// A job record; `NotFound` if the id is unknown.
pub async fn job(stores: &Stores, tenant: &TenantId, job_id: &JobId) -> Result<JobRecord> {
    stores
        .records
        .get_job(tenant, job_id)
        .await
        .step("read the job")?
        .ok_or_else(|| Error::NotFound {
            what: "job",
            key: job_id.to_string(),
        })
}

async fn get(stores: &Stores, tenant: &TenantId, version: &ModelVersionId) -> Result<ModelVersion> {
    stores
        .records
        .get_model(tenant, version)
        .await
        .step("read the model version")?
        .ok_or_else(|| Error::NotFound {
            what: "model version",
            key: version.to_string(),
        })
}

/// Fetches a version's artifact, checks its checksum against the registry and decodes it
/// (which verifies every section): what serving and the gate both rely on.
pub async fn load(stores: &Stores, tenant: &TenantId, entry: &ModelVersion) -> Result<Model> {
    let bytes = stores
        .blobs
        .get(tenant, &entry.artifact_key)
        .await
        .step("read the model artifact")?;
    let version = entry.version.clone();
    let checksum = entry.checksum.clone();
    tokio::task::spawn_blocking(move || {
        let found = digest(&bytes);
        if found != checksum {
            return Err(Error::Model {
                step: "verify the model artifact",
                source: affinity_model::Error::Artifact(format!(
                    "checksum of version {version} is {found}, the registry says {checksum}"
                )),
            });
        }
        Model::from_bytes(&bytes).step("decode the model artifact")
    })
    .await
    .map_err(|e| Error::Task {
        step: "load the model artifact",
        message: e.to_string(),
    })?
}

/// The live version and its model; None before the first promotion.
pub async fn load_live(
    stores: &Stores,
    tenant: &TenantId,
) -> Result<Option<(ModelVersion, Model)>> {
    let Some(pointer) = stores
        .records
        .live_pointer(tenant)
        .await
        .step("read the live pointer")?
    else {
        return Ok(None);
    };
    let entry = get(stores, tenant, &pointer.version).await?;
    let model = load(stores, tenant, &entry).await?;
    Ok(Some((entry, model)))
}

/// Makes `version` live. Its artifact must load; a version the gate rejected needs `force`.
/// Promoting the live version again changes nothing.
pub async fn promote(
    stores: &Stores,
    tenant: &TenantId,
    version: &ModelVersionId,
    force: bool,
) -> Result<LivePointer> {
    let entry = get(stores, tenant, version).await?;
    let pointer = stores
        .records
        .live_pointer(tenant)
        .await
        .step("read the live pointer")?;
    if let Some(p) = &pointer
        && &p.version == version
    {
        return Ok(p.clone());
    }
    if entry.status == ModelStatus::Rejected && !force {
        return Err(Error::Conflict(format!(
            "version {version} was rejected by the promotion gate ({}); promote it with force to override",
            entry.reason.as_deref().unwrap_or("no reason recorded")
        )));
    }
    load(stores, tenant, &entry).await?;
    let reason = if entry.status == ModelStatus::Rejected {
        "promoted by an operator, forced over the gate's rejection".to_owned()
    } else {
        "promoted by an operator".to_owned()
    };
    flip(
        stores,
        tenant,
        pointer.as_ref().map(|p| &p.version),
        version,
        reason,
    )
    .await
}

/// Puts the previous live version back (the pointer's `previous`), after checking its
/// artifact still loads.
pub async fn rollback(stores: &Stores, tenant: &TenantId) -> Result<LivePointer> {
    let pointer = stores
        .records
        .live_pointer(tenant)
        .await
        .step("read the live pointer")?
        .ok_or_else(|| Error::Conflict("no model is live yet: nothing to roll back".into()))?;
    let previous = pointer.previous.clone().ok_or_else(|| {
        Error::Conflict(format!(
            "live version {} has no previous version to roll back to",
            pointer.version
        ))
    })?;
    let entry = get(stores, tenant, &previous).await?;
    load(stores, tenant, &entry).await?;
    flip(
        stores,
        tenant,
        Some(&pointer.version),
        &previous,
        format!("rolled back from {}", pointer.version),
    )
    .await
}

/// Compare-and-set of the pointer, then the statuses: new one live, old one retired.
/// The pointer is the truth; statuses follow it (a crash between the two is repaired by
/// `settle_statuses`).
pub(crate) async fn flip(
    stores: &Stores,
    tenant: &TenantId,
    expected: Option<&ModelVersionId>,
    new: &ModelVersionId,
    reason: String,
) -> Result<LivePointer> {
    let pointer = match stores
        .records
        .swap_live_pointer(tenant, expected, new)
        .await
    {
        Ok(p) => p,
        Err(affinity_store::Error::Conflict(affinity_store::Conflict::LiveModel {
            actual,
            ..
        })) => {
            return Err(Error::Conflict(format!(
                "the live model changed to {} meanwhile; {new} was not made live (promote it explicitly if still wanted)",
                actual.as_deref().unwrap_or("none")
            )));
        }
        Err(e) => return Err(e).step("flip the live pointer"),
    };
    settle_statuses(stores, tenant, &pointer, Some(reason)).await?;
    Ok(pointer)
}

/// Makes the registry statuses agree with the pointer: its version `live`, the previous
/// one `retired`.
pub(crate) async fn settle_statuses(
    stores: &Stores,
    tenant: &TenantId,
    pointer: &LivePointer,
    reason: Option<String>,
) -> Result<()> {
    let r = &stores.records;
    let current = get(stores, tenant, &pointer.version).await?;
    if current.status != ModelStatus::Live || reason.is_some() {
        r.set_model_status(
            tenant,
            &pointer.version,
            ModelStatus::Live,
            reason.or(current.reason),
        )
        .await
        .step("mark the version live")?;
    }
    if let Some(prev) = &pointer.previous
        && prev != &pointer.version
        && let Some(old) = r
            .get_model(tenant, prev)
            .await
            .step("read the model version")?
        && old.status == ModelStatus::Live
    {
        r.set_model_status(
            tenant,
            prev,
            ModelStatus::Retired,
            Some(format!("replaced by {}", pointer.version)),
        )
        .await
        .step("retire the previous version")?;
    }
    Ok(())
}
