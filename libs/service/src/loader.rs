//! The live model of each tenant, held in an [`ArcSwapOption`] so requests never wait for
//! a reload.
//!
//! Cold start: the registry's live pointer names a version, its artifact is read from the
//! blob store, its SHA-256 checked against the registry's checksum and then decoded by the
//! artifact loader (which verifies every section). Afterwards the pointer is re-checked at
//! most every `model_check`; a new version is loaded beside the current one and swapped in
//! atomically. A failed load keeps the current model serving and is logged. The catalog
//! snapshot (stock flags, categories, titles) refreshes on the same clock and at once after
//! this instance ingests items.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use affinity_model::model::Model;
use affinity_store::{CatalogItem, ModelStatus, ModelVersion, Stores, TenantId};
use arc_swap::ArcSwapOption;
use chrono::{DateTime, Utc};

use crate::catalog::CatalogView;
use crate::crm::{self, CrmSnapshot};
use crate::error::{Context, Error, Result};
use crate::metrics::Metrics;

/// A model version's customer insight, read once on first use (None: the version has none).
type CrmCell = Arc<tokio::sync::OnceCell<Option<Arc<CrmSnapshot>>>>;

/// What answers a tenant's requests: one model version with its catalog snapshot.
pub struct Serving {
    /// The decoded model.
    pub model: Arc<Model>,
    /// Its registry entry.
    pub version: ModelVersion,
    /// Catalog flags aligned with the model's item indices.
    pub catalog: Arc<CatalogView>,
    /// Customer insight computed with this model version, read on the first offer or
    /// insight request rather than at cold start, so a storefront's first recommendation
    /// does not wait for it. Holds None for a version trained before snapshots existed.
    crm: CrmCell,
    /// When this instance loaded the model.
    pub loaded_at: DateTime<Utc>,
    /// Why this is not the live model, when the live artifact could not be loaded at cold
    /// start and an earlier verified version, or the stored popularity, answers instead
    /// (None: the live one answers).
    pub degraded: Option<String>,
}

impl Serving {
    /// A serving model as the cache and the CLI (reading an artifact file) build it: its
    /// customer insight, if any, is read on first use.
    pub fn new(model: Arc<Model>, version: ModelVersion, catalog: Arc<CatalogView>) -> Self {
        Self {
            model,
            version,
            catalog,
            crm: Arc::default(),
            loaded_at: Utc::now(),
            degraded: None,
        }
    }

    /// The same model version with another catalog snapshot and customer-insight cell (a
    /// catalog refresh, items written here, an erasure).
    fn with_parts(&self, catalog: Arc<CatalogView>, crm: CrmCell) -> Serving {
        Serving {
            model: self.model.clone(),
            version: self.version.clone(),
            catalog,
            crm,
            loaded_at: self.loaded_at,
            degraded: self.degraded.clone(),
        }
    }
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("version", &self.version.version)
            .field("items", &self.model.items.len())
            .finish()
    }
}

#[derive(Default)]
struct Slot {
    serving: ArcSwapOption<Serving>,
    next_check: Mutex<Option<Instant>>,
    /// Single flight: one request refreshes, the others keep answering.
    refreshing: AtomicBool,
    /// Serialises cold loads so concurrent first requests load once.
    cold: tokio::sync::Mutex<()>,
    /// When the model age is next due to be reported.
    next_age: Mutex<Option<Instant>>,
}

/// Per-tenant live models.
pub struct ModelCache {
    stores: Stores,
    check_every: Duration,
    slots: RwLock<HashMap<TenantId, Arc<Slot>>>,
    metrics: Metrics,
    max_artifact_bytes: u64,
}

/// How often, at most, an instance reports a tenant's model age while it serves.
const MODEL_AGE_EVERY: Duration = Duration::from_secs(60);
/// Registry entries looked at for an earlier version when the live one cannot be loaded.
const FALLBACK_CANDIDATES: usize = 20;
/// Default of `AFFINITY_MAX_ARTIFACT_BYTES`: the largest artifact an instance loads.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 1 << 30;

impl std::fmt::Debug for ModelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelCache")
            .field("check_every", &self.check_every)
            .finish()
    }
}

/// Clears a flag when dropped, so a cancelled refresh cannot wedge the slot.
struct Flag<'a>(&'a AtomicBool);

impl Drop for Flag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl ModelCache {
    /// A cache reading from `stores`, re-checking pointers at most every `check_every`.
    pub fn new(stores: Stores, check_every: Duration) -> Self {
        Self {
            stores,
            check_every,
            slots: RwLock::new(HashMap::new()),
            metrics: Metrics::default(),
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
        }
    }

    /// The same cache refusing artifacts larger than `bytes` (they would not fit in the
    /// function's memory): an earlier version answers instead.
    pub fn with_max_artifact_bytes(mut self, bytes: u64) -> Self {
        self.max_artifact_bytes = bytes;
        self
    }

    /// The same cache reporting the live model's age to `metrics` while it serves.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Reports the serving model's age, at most every [`MODEL_AGE_EVERY`] per tenant.
    fn report_age(&self, slot: &Slot, serving: &Serving) {
        if !self.metrics.enabled() {
            return;
        }
        let now = Instant::now();
        let mut next = slot.next_age.lock().unwrap_or_else(|p| p.into_inner());
        if next.is_some_and(|t| now < t) {
            return;
        }
        *next = Some(now + MODEL_AGE_EVERY);
        let age = (Utc::now() - serving.version.created_at).num_milliseconds() as f64 / 1e3;
        self.metrics.model_age(age);
    }

    fn slot(&self, tenant: &TenantId) -> Arc<Slot> {
        if let Some(s) = self
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
        {
            return s.clone();
        }
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant.clone())
            .or_default()
            .clone()
    }

    /// The tenant's serving model: loads it on first use, re-checks the pointer when due.
    /// `Error::NoModel` when the tenant has never promoted one.
    pub async fn get(&self, tenant: &TenantId) -> Result<Arc<Serving>> {
        let slot = self.slot(tenant);
        let serving = self.get_in(tenant, &slot).await?;
        self.report_age(&slot, &serving);
        Ok(serving)
    }

    async fn get_in(&self, tenant: &TenantId, slot: &Slot) -> Result<Arc<Serving>> {
        let Some(current) = slot.serving.load_full() else {
            return self.cold_load(tenant, slot).await;
        };
        if self.due(slot) && !slot.refreshing.swap(true, Ordering::AcqRel) {
            let _flag = Flag(&slot.refreshing);
            if let Some(next) = self.refresh(tenant, &current).await {
                slot.serving.store(Some(next.clone()));
                return Ok(next);
            }
        }
        Ok(slot.serving.load_full().unwrap_or(current))
    }

    /// The serving model if one is loaded, without touching the store.
    pub fn current(&self, tenant: &TenantId) -> Option<Arc<Serving>> {
        self.slot(tenant).serving.load_full()
    }

    /// True (and the next check scheduled) when the pointer is due for a re-check.
    fn due(&self, slot: &Slot) -> bool {
        let now = Instant::now();
        let mut next = slot.next_check.lock().unwrap_or_else(|p| p.into_inner());
        match *next {
            Some(t) if now < t => false,
            _ => {
                *next = Some(now + self.check_every);
                true
            }
        }
    }

    async fn cold_load(&self, tenant: &TenantId, slot: &Slot) -> Result<Arc<Serving>> {
        let _guard = slot.cold.lock().await;
        if let Some(s) = slot.serving.load_full() {
            return Ok(s);
        }
        let pointer = self
            .stores
            .records
            .live_pointer(tenant)
            .await
            .step("read live pointer")?
            .ok_or_else(|| Error::NoModel {
                tenant: tenant.to_string(),
            })?;
        let version = self
            .stores
            .records
            .get_model(tenant, &pointer.version)
            .await
            .step("read model version")?
            .ok_or_else(|| Error::NoModel {
                tenant: tenant.to_string(),
            })?;
        let serving = match self.load(tenant, version.clone()).await {
            Ok(s) => Arc::new(s),
            Err(e) => Arc::new(self.earlier(tenant, &version, &e).await?),
        };
        tracing::info!(tenant = %tenant, model_version = %serving.version.version, "model loaded");
        *slot.next_check.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + self.check_every);
        slot.serving.store(Some(serving.clone()));
        Ok(serving)
    }

    /// Checks the pointer; a new version is loaded, else the catalog snapshot refreshed.
    /// Any failure is logged and the current model keeps serving (None).
    async fn refresh(&self, tenant: &TenantId, current: &Serving) -> Option<Arc<Serving>> {
        let result: Result<Option<Serving>> = async {
            let pointer = self
                .stores
                .records
                .live_pointer(tenant)
                .await
                .step("read live pointer")?;
            match pointer {
                // A degraded instance (an earlier version, or popularity) tries the live
                // version again at every check.
                Some(p) if p.version != current.version.version || current.degraded.is_some() => {
                    let version = self
                        .stores
                        .records
                        .get_model(tenant, &p.version)
                        .await
                        .step("read model version")?
                        .ok_or_else(|| Error::NoModel {
                            tenant: tenant.to_string(),
                        })?;
                    let next = self.load(tenant, version).await?;
                    tracing::info!(
                        tenant = %tenant,
                        from = %current.version.version,
                        to = %next.version.version,
                        "live model swapped"
                    );
                    Ok(Some(next))
                }
                _ => {
                    let items = self.catalog_items(tenant).await?;
                    Ok(Some(current.with_parts(
                        Arc::new(CatalogView::build(&current.model, &items)),
                        self.crm_still_current(tenant, current).await?,
                    )))
                }
            }
        }
        .await;
        match result {
            Ok(next) => next.map(Arc::new),
            Err(e) => {
                tracing::error!(
                    tenant = %tenant,
                    model_version = %current.version.version,
                    error = %e,
                    "model refresh failed; the current model keeps serving"
                );
                None
            }
        }
    }

    /// A cold start whose live artifact cannot be used (missing, truncated, corrupt, over
    /// the size limit): the newest earlier version that served before (status `retired`)
    /// and still verifies answers, flagged `degraded`, so an instance never answers 500 for
    /// that cause; with none, the popularity list kept beside the live (or an earlier)
    /// version answers (`crate::fallback`), flagged too. Every pointer check then tries the
    /// live version again. Nothing readable at all: 503.
    async fn earlier(
        &self,
        tenant: &TenantId,
        live: &ModelVersion,
        cause: &Error,
    ) -> Result<Serving> {
        tracing::error!(tenant = %tenant, model_version = %live.version, error = %cause, "live model artifact unusable; looking for an earlier version");
        let versions = self
            .stores
            .records
            .list_models(tenant, FALLBACK_CANDIDATES)
            .await
            .step("list model versions")?;
        let earlier: Vec<ModelVersion> = versions
            .into_iter()
            .filter(|v| {
                v.version != live.version
                    && v.status == ModelStatus::Retired
                    && v.created_at <= live.created_at
            })
            .collect();
        for v in earlier.iter().cloned() {
            let id = v.version.clone();
            match self.load(tenant, v).await {
                Ok(mut serving) => {
                    let why = format!(
                        "live version {} could not be loaded ({cause}); version {id} answers until it can",
                        live.version
                    );
                    tracing::warn!(tenant = %tenant, model_version = %id, "{why}");
                    serving.degraded = Some(why);
                    return Ok(serving);
                }
                Err(e) => {
                    tracing::error!(tenant = %tenant, model_version = %id, error = %e, "earlier version unusable too")
                }
            }
        }
        // No artifact at all: popularity, from the live version's list or an earlier one's.
        for v in std::iter::once(live).chain(earlier.iter()) {
            match crate::fallback::read(&self.stores, tenant, v.version.as_str()).await {
                Ok(model) => {
                    let items = self.catalog_items(tenant).await?;
                    let why = format!(
                        "live version {} could not be loaded ({cause}) and no earlier version verifies; the popularity of version {} answers until it can",
                        live.version, v.version
                    );
                    tracing::warn!(tenant = %tenant, model_version = %live.version, "{why}");
                    let catalog = Arc::new(CatalogView::build(&model, &items));
                    let mut serving = Serving::new(Arc::new(model), live.clone(), catalog);
                    serving.degraded = Some(why);
                    return Ok(serving);
                }
                Err(e) => {
                    tracing::error!(tenant = %tenant, model_version = %v.version, error = %e, "no popularity list either")
                }
            }
        }
        Err(Error::Unavailable {
            step: "load the live model",
            message: format!(
                "version {} could not be loaded ({cause}), no earlier version verifies and no popularity list is readable",
                live.version
            ),
        })
    }

    /// The tenant's catalog rows (what a catalog view is built from).
    async fn catalog_items(&self, tenant: &TenantId) -> Result<Vec<CatalogItem>> {
        self.stores
            .records
            .list_items(tenant)
            .await
            .step("list catalog")
    }

    /// Reads, verifies and decodes a version's artifact, with the tenant's catalog.
    async fn load(&self, tenant: &TenantId, version: ModelVersion) -> Result<Serving> {
        let started = Instant::now();
        let ms = move || started.elapsed().as_secs_f64() * 1e3;
        let expected = version.checksum.clone();
        // A size beyond what this instance can hold is refused before it is read.
        match self
            .stores
            .blobs
            .head(tenant, &version.artifact_key)
            .await
            .step("check model artifact")?
        {
            Some(meta) if meta.size > self.max_artifact_bytes => {
                return Err(Error::Invalid {
                    field: "AFFINITY_MAX_ARTIFACT_BYTES".into(),
                    reason: format!(
                        "artifact {} is {} bytes, over the limit of {}",
                        version.artifact_key, meta.size, self.max_artifact_bytes
                    ),
                });
            }
            Some(_) => {}
            None => {
                return Err(Error::NotFound {
                    what: "model artifact",
                    key: version.artifact_key.to_string(),
                });
            }
        }
        // The artifact (read, then one whole-file digest that vouches for every section,
        // then decode, off the reactor) and the catalog listing (store I/O) go side by side.
        let artifact = async {
            let bytes = self
                .stores
                .blobs
                .get(tenant, &version.artifact_key)
                .await
                .step("read model artifact")?;
            let read_ms = ms();
            let artifact_bytes = bytes.len();
            let model = tokio::task::spawn_blocking(move || {
                Model::from_bytes_with_digest(&bytes, &expected)
                    .step("verify and decode model artifact")
            })
            .await
            .map_err(|e| Error::runtime("decode model artifact", e))??;
            Ok::<_, Error>((model, artifact_bytes, read_ms, ms()))
        };
        let catalog = async {
            let items = self.catalog_items(tenant).await?;
            Ok::<_, Error>((items, ms()))
        };
        let (artifact, catalog) = tokio::join!(artifact, catalog);
        let ((model, artifact_bytes, read_ms, decoded_ms), (items, listed_ms)) =
            (artifact?, catalog?);
        let joined_ms = ms();
        let catalog = Arc::new(CatalogView::build(&model, &items));
        // Where a cold start goes, for operators reading the logs.
        tracing::info!(
            tenant = %tenant,
            model_version = %version.version,
            artifact_bytes,
            read_ms,
            verify_decode_ms = decoded_ms - read_ms,
            list_catalog_ms = listed_ms,
            catalog_view_ms = ms() - joined_ms,
            "model artifact loaded"
        );
        Ok(Serving::new(Arc::new(model), version, catalog))
    }

    /// The CRM snapshot of the serving version (the same version, so one request answers
    /// from one model), read once on first use. A failed read is an error for this request
    /// and is retried by the next one; a version without a snapshot is `Ok(None)`.
    pub async fn crm(
        &self,
        tenant: &TenantId,
        serving: &Serving,
    ) -> Result<Option<Arc<CrmSnapshot>>> {
        let version = serving.version.version.as_str();
        let snapshot = serving
            .crm
            .get_or_try_init(|| async {
                let s = crm::read_snapshot(&self.stores, tenant, version).await;
                match &s {
                    Ok(None) => tracing::warn!(tenant = %tenant, model_version = %version, "no CRM snapshot for this version"),
                    Err(e) => tracing::error!(tenant = %tenant, model_version = %version, error = %e, "CRM snapshot unreadable"),
                    Ok(Some(_)) => {}
                }
                s.map(|s| s.map(Arc::new))
            })
            .await?;
        Ok(snapshot.clone())
    }

    /// The loaded customer insight if its blob is unchanged, else an empty cell so the next
    /// offer or insight request reads it again: an erasure on another instance rewrites the
    /// blob (smaller, as it removes a profile), and this is how it reaches this one.
    async fn crm_still_current(&self, tenant: &TenantId, current: &Serving) -> Result<CrmCell> {
        let Some(Some(loaded)) = current.crm.get() else {
            return Ok(current.crm.clone());
        };
        let key = crm::snapshot_key(current.version.version.as_str())?;
        let stored = self
            .stores
            .blobs
            .head(tenant, &key)
            .await
            .step("check the CRM snapshot")?;
        if stored.is_some_and(|m| m.size == loaded.stored_bytes) {
            Ok(current.crm.clone())
        } else {
            tracing::info!(tenant = %tenant, model_version = %current.version.version, "customer insight changed; read again on next use");
            Ok(Arc::default())
        }
    }

    /// Forgets this instance's customer insight of the tenant (after an erasure rewrote it),
    /// so the next offer or insight request reads the rewritten one.
    pub fn forget_insight(&self, tenant: &TenantId) {
        let slot = self.slot(tenant);
        if let Some(current) = slot.serving.load_full() {
            let next = current.with_parts(current.catalog.clone(), Arc::default());
            slot.serving.store(Some(Arc::new(next)));
        }
    }

    /// Makes the next request re-check the tenant's live pointer (after this process
    /// flipped it: a promotion, a rollback, a retrain), so the change is served at once
    /// instead of after `model_check`. The current model keeps answering until the new
    /// one is loaded.
    pub fn invalidate(&self, tenant: &TenantId) {
        *self
            .slot(tenant)
            .next_check
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Applies catalog items this instance just wrote, so stock changes count at once.
    pub fn catalog_written(&self, tenant: &TenantId, items: &[CatalogItem]) {
        let slot = self.slot(tenant);
        if let Some(current) = slot.serving.load_full() {
            let catalog = Arc::new(current.catalog.with_items(&current.model, items));
            slot.serving.store(Some(Arc::new(
                current.with_parts(catalog, current.crm.clone()),
            )));
        }
    }
}
