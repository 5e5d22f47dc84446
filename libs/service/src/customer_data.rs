//! Customers' data rights: erasure and consent, shared by the HTTP routes and the CLI.
//!
//! Erasure removes a customer from every place Affinity keeps them: purchases, offer
//! events and flags in the record store, and their profile in every stored customer-insight
//! snapshot (`crm/*.json`, one per model version), which is rewritten without it. Model
//! artifacts hold no customer ids (item factors and item statistics only). An audit record
//! keeps who asked, when, what was removed and a keyed hash of the id, never the id.

use affinity_store::{
    BlobKey, Consent, CustomerId, CustomerRecord, DeletionCounts, ErasureAudit, Stores, TenantId,
};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;

use crate::crm::{CrmSnapshot, SNAPSHOT_PREFIX};
use crate::error::{Context, Error, Result};

/// What an erasure removed, per kind; all zero when the customer was already unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Erasure {
    /// Purchase lines deleted.
    pub purchases: u64,
    /// Offer events deleted.
    pub offer_events: u64,
    /// Customer records (consent and flags) deleted: 0 or 1.
    pub customer_records: u64,
    /// Stored customer-insight snapshots (one per model version) the customer was removed
    /// from.
    pub insight_snapshots: u64,
    /// Id of the audit record written for this request.
    pub audit_id: String,
}

impl Erasure {
    /// True when nothing was left to remove (a repeated request).
    pub fn is_empty(&self) -> bool {
        self.purchases == 0
            && self.offer_events == 0
            && self.customer_records == 0
            && self.insight_snapshots == 0
    }
}

/// Erases one customer of `tenant` on behalf of `actor` (a key id or `cli:<user>`):
/// store rows first, then every stored insight snapshot, then this instance's loaded
/// insight; an audit record last. Idempotent: a repeat removes nothing and says so.
///
/// A serving process must also drop its loaded insight of the tenant
/// ([`crate::loader::ModelCache::forget_insight`]); other instances see the rewritten
/// snapshot at their next pointer check.
pub async fn erase_customer(
    stores: &Stores,
    hasher: &CustomerHasher,
    tenant: &TenantId,
    customer: &CustomerId,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Erasure> {
    let counts: DeletionCounts = stores
        .records
        .delete_customer_data(tenant, customer)
        .await
        .step("delete the customer's records")?;
    let (mut snapshots, seen) = erase_from_snapshots(stores, tenant, customer, &[]).await?;
    let audit = ErasureAudit {
        audit_id: format!(
            "er_{:015}_{}",
            now.timestamp_millis().max(0),
            uuid::Uuid::new_v4().simple()
        ),
        customer_hash: hasher.full(customer.as_str()),
        actor: actor.to_owned(),
        at: now,
        counts,
    };
    stores
        .records
        .put_erasure_audit(tenant, &audit)
        .await
        .step("write the erasure audit record")?;
    // A retrain may have written a snapshot holding the customer after the listing above
    // (it read their purchases before they were deleted). One written before the audit
    // record is caught here; one written after it is cleaned by the retrain itself, which
    // checks the audit records once its snapshot is stored.
    snapshots += erase_from_snapshots(stores, tenant, customer, &seen)
        .await?
        .0;
    tracing::info!(
        tenant = %tenant,
        customer = %hasher.tag(customer.as_str()),
        purchases = counts.purchases,
        offer_events = counts.offer_events,
        insight_snapshots = snapshots,
        audit_id = %audit.audit_id,
        "customer erased"
    );
    Ok(Erasure {
        purchases: counts.purchases,
        offer_events: counts.offer_events,
        customer_records: counts.customers,
        insight_snapshots: snapshots,
        audit_id: audit.audit_id,
    })
}

/// Rewrites every stored insight snapshot that holds the customer without them, except those
/// under `skip` (already done); returns how many were rewritten and every key listed.
async fn erase_from_snapshots(
    stores: &Stores,
    tenant: &TenantId,
    customer: &CustomerId,
    skip: &[BlobKey],
) -> Result<(u64, Vec<BlobKey>)> {
    let blobs = &stores.blobs;
    let stored = blobs
        .list(tenant, SNAPSHOT_PREFIX)
        .await
        .step("list customer-insight snapshots")?;
    let listed: Vec<BlobKey> = stored.iter().map(|m| m.key.clone()).collect();
    let mut rewritten = 0;
    for meta in stored.into_iter().filter(|m| !skip.contains(&m.key)) {
        let bytes = match blobs.get(tenant, &meta.key).await {
            Ok(b) => b,
            // Deleted meanwhile (a pruned version): nothing to erase there.
            Err(affinity_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e).step("read a customer-insight snapshot"),
        };
        let mut snapshot: CrmSnapshot = serde_json::from_slice(&bytes)
            .map_err(|e| Error::runtime("decode a customer-insight snapshot", e))?;
        if !snapshot.remove_customer(customer.as_str()) {
            continue;
        }
        let bytes = serde_json::to_vec(&snapshot)
            .map_err(|e| Error::runtime("encode a customer-insight snapshot", e))?;
        blobs
            .put(tenant, &meta.key, bytes)
            .await
            .step("rewrite a customer-insight snapshot")?;
        rewritten += 1;
    }
    Ok((rewritten, listed))
}

/// Records what a customer consents to; the next request for them obeys it. Keeps a tier
/// override the shop set.
pub async fn set_consent(
    stores: &Stores,
    tenant: &TenantId,
    customer: &CustomerId,
    consent: Consent,
    now: DateTime<Utc>,
) -> Result<CustomerRecord> {
    let records = &stores.records;
    let existing = records
        .get_customer(tenant, customer)
        .await
        .step("read the customer's flags")?;
    let record = CustomerRecord {
        customer_id: customer.clone(),
        consent,
        tier_override: existing.and_then(|c| c.tier_override),
        updated_at: now,
    };
    records
        .put_customer(tenant, &record)
        .await
        .step("write the customer's consent")?;
    Ok(record)
}

/// Turns customer ids into a keyed hash (HMAC-SHA256, 16 hex chars) for logs: the same
/// customer correlates across lines, but the id cannot be read or brute-forced without the
/// key.
#[derive(Clone)]
pub struct CustomerHasher {
    key: Vec<u8>,
}

impl std::fmt::Debug for CustomerHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CustomerHasher { .. }")
    }
}

impl CustomerHasher {
    /// Uses the configured key, or a random one (hashes then correlate within one process only).
    pub fn new(key: Option<Vec<u8>>) -> Self {
        let key = key.unwrap_or_else(|| {
            let mut k = vec![0u8; 32];
            rand::rng().fill_bytes(&mut k);
            k
        });
        Self { key }
    }

    /// The log-safe stand-in for a customer id.
    pub fn tag(&self, customer: &str) -> String {
        let mut full = self.full(customer);
        full.truncate(16);
        full
    }

    /// The whole keyed hash (64 hex chars): what an erasure audit record keeps, so a later
    /// question "was this customer erased?" can be answered without storing the id.
    pub fn full(&self, customer: &str) -> String {
        // HMAC accepts keys of any length, so this cannot fail; fall back to a constant tag.
        match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mut mac) => {
                mac.update(customer.as_bytes());
                hex::encode(mac.finalize().into_bytes())
            }
            Err(_) => "unhashable".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_tags_are_keyed_and_stable() {
        let a = CustomerHasher::new(Some(vec![1; 32]));
        let b = CustomerHasher::new(Some(vec![2; 32]));
        assert_eq!(a.tag("jane@example.com"), a.tag("jane@example.com"));
        assert_ne!(a.tag("jane@example.com"), b.tag("jane@example.com"));
        assert_ne!(a.tag("jane@example.com"), a.tag("john@example.com"));
        assert_eq!(a.tag("x").len(), 16);
        assert!(!a.tag("jane@example.com").contains("jane"));
    }
}
