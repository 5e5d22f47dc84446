//! Customers: consent, per-customer flags, erasure audits and deletion counts.

use super::*;

/// How many records a privacy deletion removed, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionCounts {
    /// Purchases removed.
    pub purchases: u64,
    /// Customer flag records removed (0 or 1).
    pub customers: u64,
    /// Offer events removed.
    pub offer_events: u64,
}

/// What a customer agreed to. A customer with no record has both (the shop records a
/// withdrawal), as with the former opt-out flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// Recommendations from their purchase history; without it they get popular items.
    pub personalization: bool,
    /// Offers, audiences and batch sends; without it they get no offer and are counted
    /// nowhere.
    pub marketing: bool,
}

impl Default for Consent {
    fn default() -> Self {
        Self {
            personalization: true,
            marketing: true,
        }
    }
}

impl Consent {
    /// Neither use: what the former `opt_out` flag meant.
    pub const NONE: Consent = Consent {
        personalization: false,
        marketing: false,
    };
}

/// A record that a customer's data was erased: who asked and when, with a keyed hash of
/// the customer id (never the id), so the erasure can be proven and later jobs can drop
/// the customer from what they computed before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureAudit {
    /// Unique id of the record (time-ordered).
    pub audit_id: String,
    /// Keyed hash (HMAC-SHA256, hex) of the customer id under the service's hashing key.
    pub customer_hash: String,
    /// Who asked: the API key id, or `cli:<user>` for the CLI.
    pub actor: String,
    /// When the erasure ran.
    pub at: DateTime<Utc>,
    /// What it removed.
    pub counts: DeletionCounts,
}

impl ErasureAudit {
    /// Checks lengths and the timestamp range.
    pub fn validate(&self) -> Result<()> {
        crate::ids::validate_id("audit_id", &self.audit_id, 64)?;
        crate::ids::validate_id("customer_hash", &self.customer_hash, 128)?;
        crate::ids::validate_id("actor", &self.actor, 160)?;
        validate_time("at", self.at)
    }

    /// Copy with timestamps truncated to stored precision.
    pub fn normalized(&self) -> Self {
        let mut a = self.clone();
        a.at = normalize_time(a.at);
        a
    }
}

/// Per-customer flags the shop controls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRecord {
    /// Customer id.
    pub customer_id: CustomerId,
    /// What the customer agreed to be used for.
    pub consent: Consent,
    /// Manual value-tier override, if the shop sets one.
    pub tier_override: Option<String>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl CustomerRecord {
    /// Checks text length and timestamp range.
    pub fn validate(&self) -> Result<()> {
        if let Some(t) = &self.tier_override {
            crate::ids::validate_id("tier_override", t, 64)?;
        }
        validate_time("updated_at", self.updated_at)
    }
}
