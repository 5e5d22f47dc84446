//! Record types stored by the backends, and the per-row results of batch writes.

use std::collections::BTreeSet;
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result, truncate};
use crate::ids::{
    Category, Channel, Currency, CustomerId, EventId, ItemId, JobId, KeyId, ModelVersionId,
    OfferId, OrderId, RecommendationId, TenantId,
};

/// Largest stored timestamp (9999-12-31T23:59:59.999Z), so sort keys stay fixed width.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;
/// Largest free-text field (titles, messages, reasons) in characters.
pub const MAX_TEXT_CHARS: usize = 2048;
/// Largest JSON document (offer, params, metrics, attributes) in serialized bytes.
pub const MAX_JSON_BYTES: usize = 64 * 1024;
/// Largest quantity of one purchase line. Far above any real order line; its purpose is
/// that `quantity x unit price` always fits in an `i64` (see [`MAX_PRICE_MINOR`]).
pub const MAX_QUANTITY: u32 = 1_000_000;
/// Largest price in minor units (10^12: ten billion in a two-decimal currency). With
/// [`MAX_QUANTITY`] a line total is at most 10^18 minor units, below `i64::MAX` (~9.2 x 10^18),
/// so sums of spend cannot overflow on one line; a larger value is a unit mistake (a price
/// sent in micro-units, a timestamp in the price column), not a price.
pub const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;
/// How far after the time of ingestion a purchase or offer event may be dated, in
/// milliseconds (one day): room for clock skew and time zones, not for a mistyped year
/// that would make the customer look active for years and put the data watermark ahead.
pub const MAX_FUTURE_MS: i64 = 86_400_000;

/// Truncates a timestamp to millisecond precision, the precision every backend stores.
pub fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Builds a UTC timestamp from stored milliseconds; corrupt values become a backend error.
pub fn from_millis(ms: i64) -> Result<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| Error::backend_msg("codec", "decode timestamp", format!("bad millis {ms}")))
}

/// Truncates to millisecond precision so values compare equal after a round trip.
pub fn normalize_time(t: DateTime<Utc>) -> DateTime<Utc> {
    from_millis(t.timestamp_millis()).unwrap_or(t)
}

/// Checks a timestamp lies in 1970-01-01 ..= 9999-12-31 (fixed-width sort keys need that).
pub fn validate_time(field: &str, t: DateTime<Utc>) -> Result<()> {
    let ms = t.timestamp_millis();
    if !(0..=MAX_TIMESTAMP_MS).contains(&ms) {
        return Err(Error::invalid(
            field,
            format!("{t} is outside 1970-01-01..=9999-12-31"),
        ));
    }
    Ok(())
}

/// Checks a user-supplied time is at most [`MAX_FUTURE_MS`] after `now` (the time of
/// ingestion, passed in so the rule stays a pure function of its inputs).
pub fn validate_not_future(field: &str, t: DateTime<Utc>, now: DateTime<Utc>) -> Result<()> {
    if t.timestamp_millis() > now.timestamp_millis().saturating_add(MAX_FUTURE_MS) {
        return Err(Error::invalid(
            field,
            format!("{t} is more than one day after the time of ingestion ({now})"),
        ));
    }
    Ok(())
}

/// Checks a price lies in 0..=[`MAX_PRICE_MINOR`].
fn validate_price(field: &str, v: i64) -> Result<()> {
    if v < 0 {
        return Err(Error::invalid(field, format!("{v} must not be negative")));
    }
    if v > MAX_PRICE_MINOR {
        return Err(Error::invalid(
            field,
            format!("{v} is above the largest accepted price, {MAX_PRICE_MINOR} minor units"),
        ));
    }
    Ok(())
}

fn validate_text(field: &str, s: &str) -> Result<()> {
    if s.chars().count() > MAX_TEXT_CHARS {
        return Err(Error::invalid(
            field,
            format!(
                "{:?} is longer than {MAX_TEXT_CHARS} characters",
                truncate(s)
            ),
        ));
    }
    Ok(())
}

fn validate_json(field: &str, v: &serde_json::Value) -> Result<()> {
    let n = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
    if n > MAX_JSON_BYTES {
        return Err(Error::invalid(
            field,
            format!("document is {n} bytes, at most {MAX_JSON_BYTES} allowed"),
        ));
    }
    Ok(())
}

/// One purchased order line; identity is (tenant, order_id, line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchase {
    /// Order number from the shop.
    pub order_id: OrderId,
    /// Line number within the order.
    pub line: u32,
    /// Who bought.
    pub customer_id: CustomerId,
    /// What was bought.
    pub item_id: ItemId,
    /// How many units (at least one, enforced by the type).
    pub quantity: NonZeroU32,
    /// Unit price in integer minor units (cents), never a float, so sums are exact.
    pub unit_price_minor: i64,
    /// Currency of the price, when known.
    pub currency: Option<Currency>,
    /// When the purchase happened (UTC, stored at millisecond precision).
    pub purchased_at: DateTime<Utc>,
}

impl Purchase {
    /// Checks the rules types cannot express and that hold whenever the row was written:
    /// quantity at most [`MAX_QUANTITY`], price in 0..=[`MAX_PRICE_MINOR`], timestamp range.
    pub fn validate(&self) -> Result<()> {
        if self.quantity.get() > MAX_QUANTITY {
            return Err(Error::invalid(
                "quantity",
                format!(
                    "{} is above the largest accepted quantity, {MAX_QUANTITY}",
                    self.quantity
                ),
            ));
        }
        validate_price("unit_price_minor", self.unit_price_minor)?;
        validate_time("purchased_at", self.purchased_at)
    }

    /// [`Purchase::validate`] plus the rule of new rows: dated at most one day after `now`,
    /// the time of ingestion.
    pub fn validate_at(&self, now: DateTime<Utc>) -> Result<()> {
        self.validate()?;
        validate_not_future("purchased_at", self.purchased_at, now)
    }

    /// Copy with the timestamp truncated to stored precision.
    pub fn normalized(&self) -> Self {
        let mut p = self.clone();
        p.purchased_at = normalize_time(p.purchased_at);
        p
    }
}

/// Per-row result of an idempotent insert (purchases, offer events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "reason", rename_all = "snake_case")]
pub enum WriteOutcome {
    /// The row was new and is now stored.
    Inserted,
    /// An identical row was already stored (a retry or duplicate); nothing changed.
    Duplicate,
    /// A different row with the same identity is stored; it was not overwritten.
    Conflict,
    /// The row broke a rule; it was not written.
    Invalid(String),
}

/// Per-row result of an upsert (catalog items, offers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "reason", rename_all = "snake_case")]
pub enum UpsertOutcome {
    /// The row is stored (created or replaced).
    Written,
    /// The row broke a rule; it was not written.
    Invalid(String),
}

/// Counts of a batch of per-row results, for reports and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteSummary {
    /// Rows newly stored.
    pub inserted: u64,
    /// Rows already present, identical.
    pub duplicates: u64,
    /// Rows refused because a different row holds the identity.
    pub conflicts: u64,
    /// Rows refused by validation.
    pub invalid: u64,
}

impl WriteSummary {
    /// Tallies a slice of outcomes.
    pub fn of(outcomes: &[WriteOutcome]) -> Self {
        let mut s = Self::default();
        for o in outcomes {
            match o {
                WriteOutcome::Inserted => s.inserted += 1,
                WriteOutcome::Duplicate => s.duplicates += 1,
                WriteOutcome::Conflict => s.conflicts += 1,
                WriteOutcome::Invalid(_) => s.invalid += 1,
            }
        }
        s
    }
}

/// What a training scan saw: lets an artifact record the data it was built from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// Number of purchases scanned.
    pub count: u64,
    /// Latest purchase time seen (None for an empty tenant).
    pub max_purchased_at: Option<DateTime<Utc>>,
}

impl Watermark {
    /// Folds one purchase into the watermark.
    pub fn observe(&mut self, p: &Purchase) {
        self.count += 1;
        if self.max_purchased_at.is_none_or(|m| p.purchased_at > m) {
            self.max_purchased_at = Some(p.purchased_at);
        }
    }
}

/// All purchases of a tenant plus the watermark, as returned by a training scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurchaseScan {
    /// Every purchase of the tenant, in no particular order.
    pub purchases: Vec<Purchase>,
    /// Count and max timestamp of `purchases`.
    pub watermark: Watermark,
}

/// One purchase as the streaming training scan hands it over: borrowed ids and nothing
/// allocated per row, because a large shop's history does not fit in memory as `Purchase`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseRow<'a> {
    /// Who bought.
    pub customer_id: &'a str,
    /// What was bought.
    pub item_id: &'a str,
    /// Units (at least one).
    pub quantity: u32,
    /// When, in Unix milliseconds.
    pub purchased_at_ms: i64,
    /// Price of one unit in minor currency units (spend and customer value need it).
    pub unit_price_minor: i64,
}

impl<'a> PurchaseRow<'a> {
    /// The streamed view of a stored purchase.
    pub fn of(p: &'a Purchase) -> Self {
        Self {
            customer_id: p.customer_id.as_str(),
            item_id: p.item_id.as_str(),
            quantity: p.quantity.get(),
            purchased_at_ms: to_millis(p.purchased_at),
            unit_price_minor: p.unit_price_minor,
        }
    }
}

/// Receives the streaming scan's rows, on whichever thread the backend reads them.
pub type PurchaseSink = Box<dyn FnMut(PurchaseRow<'_>) + Send>;

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

/// A catalog item with the flags serving needs for filters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogItem {
    /// Item id.
    pub item_id: ItemId,
    /// Display title.
    pub title: String,
    /// Category, for category filters and fallbacks.
    pub category: Option<Category>,
    /// Price in integer minor units.
    pub price_minor: i64,
    /// Currency of the price.
    pub currency: Option<Currency>,
    /// Whether the item can be recommended now.
    pub in_stock: bool,
    /// When the item was added (for "new arrivals").
    pub created_at: DateTime<Utc>,
    /// Whether re-buying makes sense (consumables), used by offers.
    pub repurchasable: bool,
    /// Free-form attributes (a JSON object), optional.
    pub attributes: Option<serde_json::Value>,
}

impl CatalogItem {
    /// Checks price (0..=[`MAX_PRICE_MINOR`]), text length, timestamp range and attribute size.
    pub fn validate(&self) -> Result<()> {
        validate_price("price_minor", self.price_minor)?;
        validate_text("title", &self.title)?;
        validate_time("created_at", self.created_at)?;
        if let Some(a) = &self.attributes {
            if !a.is_object() {
                return Err(Error::invalid("attributes", "must be a JSON object"));
            }
            validate_json("attributes", a)?;
        }
        Ok(())
    }

    /// Copy with timestamps truncated to stored precision.
    pub fn normalized(&self) -> Self {
        let mut c = self.clone();
        c.created_at = normalize_time(c.created_at);
        c
    }
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

/// Lifecycle status of an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfferStatus {
    /// Can be shown.
    Active,
    /// Temporarily not shown.
    Paused,
    /// Retired for good; kept for reports.
    Archived,
}

impl OfferStatus {
    /// Stored string form.
    pub fn as_str(self) -> &'static str {
        match self {
            OfferStatus::Active => "active",
            OfferStatus::Paused => "paused",
            OfferStatus::Archived => "archived",
        }
    }
}

impl FromStr for OfferStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "active" => Ok(Self::Active),
            "paused" => Ok(Self::Paused),
            "archived" => Ok(Self::Archived),
            other => Err(Error::invalid(
                "status",
                format!("{:?} is not one of active|paused|archived", truncate(other)),
            )),
        }
    }
}

/// An offer: the rules document is validated by the offer engine, stored here as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferRecord {
    /// Offer id.
    pub offer_id: OfferId,
    /// Status.
    pub status: OfferStatus,
    /// The offer definition (JSON).
    pub document: serde_json::Value,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl OfferRecord {
    /// Checks document size and timestamp range.
    pub fn validate(&self) -> Result<()> {
        validate_json("document", &self.document)?;
        validate_time("updated_at", self.updated_at)
    }

    /// Copy with timestamps truncated to stored precision.
    pub fn normalized(&self) -> Self {
        let mut o = self.clone();
        o.updated_at = normalize_time(o.updated_at);
        o
    }
}

/// What happened to an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfferEventKind {
    /// The offer was shown / sent.
    Shown,
    /// The customer took it.
    Accepted,
    /// The customer declined it.
    Declined,
}

impl OfferEventKind {
    /// Stored string form.
    pub fn as_str(self) -> &'static str {
        match self {
            OfferEventKind::Shown => "shown",
            OfferEventKind::Accepted => "accepted",
            OfferEventKind::Declined => "declined",
        }
    }
}

impl FromStr for OfferEventKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "shown" => Ok(Self::Shown),
            "accepted" => Ok(Self::Accepted),
            "declined" => Ok(Self::Declined),
            other => Err(Error::invalid(
                "kind",
                format!(
                    "{:?} is not one of shown|accepted|declined",
                    truncate(other)
                ),
            )),
        }
    }
}

/// One offer event; `event_id` is the sender's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferEvent {
    /// Idempotency key.
    pub event_id: EventId,
    /// Customer concerned.
    pub customer_id: CustomerId,
    /// Offer concerned.
    pub offer_id: OfferId,
    /// What happened.
    pub kind: OfferEventKind,
    /// Where it happened.
    pub channel: Channel,
    /// Recommendation response this came from, if any.
    pub recommendation_id: Option<RecommendationId>,
    /// When it happened.
    pub at: DateTime<Utc>,
}

impl OfferEvent {
    /// Checks the timestamp range.
    pub fn validate(&self) -> Result<()> {
        validate_time("at", self.at)
    }

    /// [`OfferEvent::validate`] plus the rule of new events: dated at most one day after
    /// `now`, the time of ingestion.
    pub fn validate_at(&self, now: DateTime<Utc>) -> Result<()> {
        self.validate()?;
        validate_not_future("at", self.at, now)
    }

    /// Copy with timestamps truncated to stored precision.
    pub fn normalized(&self) -> Self {
        let mut e = self.clone();
        e.at = normalize_time(e.at);
        e
    }
}

/// What an API key may do. Each scope is named by what it allows, and one route needs
/// exactly one scope (docs/api.md has the route x scope table, tested in full).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// Similar items, baskets and customer recommendations.
    #[serde(rename = "recommend")]
    Recommend,
    /// A customer's insight profile (spend, RFM, tier, churn risk, CLV): kept apart from
    /// `recommend` because it is personal data no storefront page needs.
    #[serde(rename = "profiles-read")]
    ProfilesRead,
    /// Decide offers (one customer, batches, an item's audience) and record offer events.
    #[serde(rename = "offers-decide")]
    OffersDecide,
    /// Create, change, pause and list offers; their reports and dry runs.
    #[serde(rename = "offers-manage")]
    OffersManage,
    /// Write purchases and catalog items.
    #[serde(rename = "ingest")]
    Ingest,
    /// Customers' data rights: consent and erasure.
    #[serde(rename = "customers-manage")]
    CustomersManage,
    /// Retrain, inspect, promote and roll back models; read jobs and model reports.
    #[serde(rename = "models-admin")]
    ModelsAdmin,
}

impl Scope {
    /// Every scope, in display order.
    pub const ALL: [Scope; 7] = [
        Scope::Recommend,
        Scope::ProfilesRead,
        Scope::OffersDecide,
        Scope::OffersManage,
        Scope::Ingest,
        Scope::CustomersManage,
        Scope::ModelsAdmin,
    ];

    /// Stored string form.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Recommend => "recommend",
            Scope::ProfilesRead => "profiles-read",
            Scope::OffersDecide => "offers-decide",
            Scope::OffersManage => "offers-manage",
            Scope::Ingest => "ingest",
            Scope::CustomersManage => "customers-manage",
            Scope::ModelsAdmin => "models-admin",
        }
    }

    /// Reads a stored scope name, including the retired `offers` scope of keys created
    /// before scopes were split: it allowed deciding and managing offers, so it reads as
    /// both (it never reads as `profiles-read`).
    pub fn from_stored(s: &str) -> Result<Vec<Scope>> {
        if s == LEGACY_OFFERS_SCOPE {
            return Ok(vec![Scope::OffersDecide, Scope::OffersManage]);
        }
        Ok(vec![s.parse()?])
    }
}

/// The retired scope name that allowed deciding and managing offers alike.
pub const LEGACY_OFFERS_SCOPE: &str = "offers";

impl FromStr for Scope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if let Some(scope) = Scope::ALL.into_iter().find(|x| x.as_str() == s) {
            return Ok(scope);
        }
        let names: Vec<&str> = Scope::ALL.iter().map(|x| x.as_str()).collect();
        let hint = if s == LEGACY_OFFERS_SCOPE {
            " (the `offers` scope was split into offers-decide and offers-manage)"
        } else {
            ""
        };
        Err(Error::invalid(
            "scope",
            format!("{:?} is not one of {}{hint}", truncate(s), names.join("|")),
        ))
    }
}

/// SHA-256 of an API key secret: what is stored and looked up, never the secret itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hashes a presented secret for lookup.
    pub fn of_secret(secret: &str) -> Self {
        let d = Sha256::digest(secret.as_bytes());
        let mut b = [0u8; 32];
        b.copy_from_slice(&d);
        Self(b)
    }

    /// Parses the 64-char lowercase hex form used as the stored key.
    pub fn from_hex(s: &str) -> Result<Self> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b)
            .map_err(|_| Error::invalid("key_hash", "must be 64 hex characters"))?;
        Ok(Self(b))
    }

    /// Lowercase hex form (the storage key).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only a prefix: enough to correlate, not enough to matter.
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

/// A freshly generated API key: the secret is shown once to the user and then forgotten.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// The secret to hand to the user (`aff_<key id>_<random>`).
    pub secret: String,
    /// The record to store (holds only the hash).
    pub record: ApiKeyRecord,
}

/// Generates a new random key for a tenant with the given scopes.
pub fn generate_api_key(
    tenant: &TenantId,
    scopes: BTreeSet<Scope>,
    label: Option<String>,
    now: DateTime<Utc>,
) -> Result<NewApiKey> {
    use rand::RngCore;
    let mut id = [0u8; 6];
    let mut secret = [0u8; 24];
    let mut rng = rand::rng(); // ChaCha-based CSPRNG seeded from the OS
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let key_id = KeyId::parse(hex::encode(id))?;
    let secret = format!("aff_{}_{}", key_id, hex::encode(secret));
    let record = ApiKeyRecord {
        key_id: key_id.clone(),
        tenant: tenant.clone(),
        hash: KeyHash::of_secret(&secret),
        prefix: format!("aff_{key_id}"),
        scopes,
        label,
        created_at: normalize_time(now),
        revoked: false,
        kind: KeyKind::Server,
        signing_key: None,
    };
    record.validate()?;
    Ok(NewApiKey { secret, record })
}

/// A stored API key (hashed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Public id, for display and revocation.
    pub key_id: KeyId,
    /// Tenant the key belongs to.
    pub tenant: TenantId,
    /// SHA-256 of the secret; the lookup key.
    pub hash: KeyHash,
    /// Displayable prefix of the secret so users can tell keys apart.
    pub prefix: String,
    /// What the key may do.
    pub scopes: BTreeSet<Scope>,
    /// Optional human label.
    pub label: Option<String>,
    /// When the key was created.
    pub created_at: DateTime<Utc>,
    /// Revoked keys stay stored (audit) but authenticate nothing.
    pub revoked: bool,
    /// Server key (a bearer secret) or storefront key (signs customer tokens).
    pub kind: KeyKind,
    /// A storefront key's HMAC key (hex), which the shop's server also holds to sign
    /// customer tokens; the service must hold it to check them. None for server keys.
    pub signing_key: Option<String>,
}

/// Where a key may live, which decides how it authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// On the shop's servers: the secret is the bearer token.
    #[default]
    Server,
    /// Safe for browsers: never a bearer itself; the shop's server signs short-lived
    /// tokens naming one customer with it, and only those tokens are presented.
    Storefront,
}

impl KeyKind {
    /// Stored string form.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Server => "server",
            KeyKind::Storefront => "storefront",
        }
    }
}

impl FromStr for KeyKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "server" => Ok(Self::Server),
            "storefront" => Ok(Self::Storefront),
            other => Err(Error::invalid(
                "kind",
                format!("{:?} is not one of server|storefront", truncate(other)),
            )),
        }
    }
}

/// The lookup hash of a storefront key: derived from its public id, so a token naming the
/// key finds its record through the same hash index as a bearer key. Bearer
/// authentication refuses storefront records, so knowing the id grants nothing.
pub fn storefront_lookup_hash(key_id: &KeyId) -> KeyHash {
    KeyHash::of_secret(&format!("storefront-key:{key_id}"))
}

/// A freshly generated storefront key: the signing secret is shown once, to be kept on the
/// shop's server.
#[derive(Debug, Clone)]
pub struct NewStorefrontKey {
    /// HMAC-SHA256 key (64 hex characters) the shop's server signs customer tokens with.
    pub signing_secret: String,
    /// The record to store.
    pub record: ApiKeyRecord,
}

/// Generates a storefront key for a tenant: it answers recommendation routes only, and
/// customer routes only for the customer a token names.
pub fn generate_storefront_key(
    tenant: &TenantId,
    label: Option<String>,
    now: DateTime<Utc>,
) -> Result<NewStorefrontKey> {
    use rand::RngCore;
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    let mut rng = rand::rng(); // ChaCha-based CSPRNG seeded from the OS
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let key_id = KeyId::parse(hex::encode(id))?;
    let signing_secret = hex::encode(secret);
    let record = ApiKeyRecord {
        hash: storefront_lookup_hash(&key_id),
        prefix: format!("aft_{key_id}"),
        key_id,
        tenant: tenant.clone(),
        scopes: BTreeSet::from([Scope::Recommend]),
        label,
        created_at: normalize_time(now),
        revoked: false,
        kind: KeyKind::Storefront,
        signing_key: Some(signing_secret.clone()),
    };
    record.validate()?;
    Ok(NewStorefrontKey {
        signing_secret,
        record,
    })
}

impl ApiKeyRecord {
    /// Checks prefix/label length and timestamp range.
    pub fn validate(&self) -> Result<()> {
        crate::ids::validate_id("prefix", &self.prefix, 64)?;
        if let Some(l) = &self.label {
            validate_text("label", l)?;
        }
        match (self.kind, &self.signing_key) {
            (KeyKind::Server, None) => {}
            (KeyKind::Storefront, Some(k))
                if k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()) => {}
            (KeyKind::Server, Some(_)) => {
                return Err(Error::invalid("signing_key", "a server key has none"));
            }
            (KeyKind::Storefront, _) => {
                return Err(Error::invalid(
                    "signing_key",
                    "a storefront key needs 64 hex characters",
                ));
            }
        }
        validate_time("created_at", self.created_at)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn purchase() -> Purchase {
        Purchase {
            order_id: OrderId::parse("o1").unwrap(),
            line: 1,
            customer_id: CustomerId::parse("c1").unwrap(),
            item_id: ItemId::parse("i1").unwrap(),
            quantity: NonZeroU32::new(2).unwrap(),
            unit_price_minor: 1999,
            currency: Some(Currency::parse("EUR").unwrap()),
            purchased_at: Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap(),
        }
    }

    #[test]
    fn purchase_validation() {
        assert!(purchase().validate().is_ok());
        let mut p = purchase();
        p.unit_price_minor = -1;
        assert!(p.validate().is_err());
        let mut p = purchase();
        p.purchased_at = Utc.with_ymd_and_hms(1969, 12, 31, 0, 0, 0).unwrap();
        assert!(p.validate().is_err());
    }

    #[test]
    fn purchase_quantity_and_price_are_bounded() {
        let mut p = purchase();
        p.quantity = NonZeroU32::new(MAX_QUANTITY).unwrap();
        p.unit_price_minor = MAX_PRICE_MINOR;
        assert!(p.validate().is_ok());
        // The bounds keep a line total inside i64.
        assert!(
            i64::from(MAX_QUANTITY)
                .checked_mul(MAX_PRICE_MINOR)
                .is_some()
        );
        let mut q = p.clone();
        q.quantity = NonZeroU32::new(MAX_QUANTITY + 1).unwrap();
        let err = q.validate().unwrap_err().to_string();
        assert!(err.contains("quantity"), "{err}");
        let mut q = p;
        q.unit_price_minor = MAX_PRICE_MINOR + 1;
        let err = q.validate().unwrap_err().to_string();
        assert!(err.contains("unit_price_minor"), "{err}");
    }

    #[test]
    fn item_price_is_bounded() {
        let mut item = CatalogItem {
            item_id: ItemId::parse("i1").unwrap(),
            title: "Beans".into(),
            category: None,
            price_minor: MAX_PRICE_MINOR,
            currency: None,
            in_stock: true,
            created_at: Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap(),
            repurchasable: false,
            attributes: None,
        };
        assert!(item.validate().is_ok());
        item.price_minor = MAX_PRICE_MINOR + 1;
        assert!(
            item.validate()
                .unwrap_err()
                .to_string()
                .contains("price_minor")
        );
        item.price_minor = -1;
        assert!(
            item.validate()
                .unwrap_err()
                .to_string()
                .contains("price_minor")
        );
    }

    #[test]
    fn new_rows_may_be_dated_at_most_one_day_ahead() {
        let p = purchase();
        let day = chrono::Duration::milliseconds(MAX_FUTURE_MS);
        // Exactly one day ahead of ingestion is accepted, a millisecond more is not.
        assert!(p.validate_at(p.purchased_at - day).is_ok());
        let late = p.purchased_at - day - chrono::Duration::milliseconds(1);
        let err = p.validate_at(late).unwrap_err().to_string();
        assert!(err.contains("purchased_at"), "{err}");
        // Past purchases are fine; stored rows are not judged against a clock.
        assert!(p.validate_at(p.purchased_at + day * 365).is_ok());
        assert!(p.validate().is_ok());

        let e = OfferEvent {
            event_id: EventId::parse("e1").unwrap(),
            customer_id: CustomerId::parse("c1").unwrap(),
            offer_id: OfferId::parse("o1").unwrap(),
            kind: OfferEventKind::Shown,
            channel: Channel::parse("email").unwrap(),
            recommendation_id: None,
            at: p.purchased_at,
        };
        assert!(e.validate_at(e.at).is_ok());
        let err = e.validate_at(e.at - day * 2).unwrap_err().to_string();
        assert!(err.starts_with("invalid at:"), "{err}");
    }

    #[test]
    fn normalization_truncates_to_millis() {
        let mut p = purchase();
        p.purchased_at += chrono::Duration::nanoseconds(1_234_567);
        let n = p.normalized();
        assert_eq!(n.purchased_at.timestamp_subsec_nanos(), 1_000_000);
    }

    #[test]
    fn key_hash_is_sha256_hex() {
        let h = KeyHash::of_secret("abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(KeyHash::from_hex(&h.to_hex()).unwrap(), h);
        assert!(KeyHash::from_hex("zz").is_err());
        assert!(!format!("{h:?}").contains(&h.to_hex()));
    }

    #[test]
    fn generated_keys_hash_their_secret() {
        let t = TenantId::default();
        let k = generate_api_key(&t, BTreeSet::from([Scope::Recommend]), None, Utc::now()).unwrap();
        assert_eq!(k.record.hash, KeyHash::of_secret(&k.secret));
        assert!(k.secret.starts_with(&k.record.prefix));
        let k2 = generate_api_key(&t, BTreeSet::new(), None, Utc::now()).unwrap();
        assert_ne!(k.secret, k2.secret);
    }

    #[test]
    fn storefront_keys_hold_a_signing_key_and_only_recommend() {
        let t = TenantId::default();
        let k = generate_storefront_key(&t, None, Utc::now()).unwrap();
        assert_eq!(k.record.kind, KeyKind::Storefront);
        assert_eq!(k.record.scopes, BTreeSet::from([Scope::Recommend]));
        assert_eq!(k.record.hash, storefront_lookup_hash(&k.record.key_id));
        assert_eq!(
            k.record.signing_key.as_deref(),
            Some(k.signing_secret.as_str())
        );
        // A server record must not carry a signing key, a storefront one must.
        let mut bad = k.record.clone();
        bad.kind = KeyKind::Server;
        assert!(bad.validate().is_err());
        let mut bad = k.record.clone();
        bad.signing_key = None;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn enums_round_trip_through_strings() {
        for s in Scope::ALL {
            assert_eq!(s.as_str().parse::<Scope>().unwrap(), s);
            assert_eq!(Scope::from_stored(s.as_str()).unwrap(), vec![s]);
        }
        // The retired `offers` scope is refused for new keys, read as both halves when stored.
        let err = "offers".parse::<Scope>().unwrap_err().to_string();
        assert!(err.contains("offers-decide"), "{err}");
        assert_eq!(
            Scope::from_stored("offers").unwrap(),
            vec![Scope::OffersDecide, Scope::OffersManage]
        );
        for k in [KeyKind::Server, KeyKind::Storefront] {
            assert_eq!(k.as_str().parse::<KeyKind>().unwrap(), k);
        }
        for s in [
            ModelStatus::Candidate,
            ModelStatus::Live,
            ModelStatus::Rejected,
            ModelStatus::Retired,
        ] {
            assert_eq!(s.as_str().parse::<ModelStatus>().unwrap(), s);
        }
        for s in [
            OfferEventKind::Shown,
            OfferEventKind::Accepted,
            OfferEventKind::Declined,
        ] {
            assert_eq!(s.as_str().parse::<OfferEventKind>().unwrap(), s);
        }
        assert!("bogus".parse::<OfferStatus>().is_err());
    }

    #[test]
    fn summary_counts_each_outcome() {
        let s = WriteSummary::of(&[
            WriteOutcome::Inserted,
            WriteOutcome::Inserted,
            WriteOutcome::Duplicate,
            WriteOutcome::Conflict,
            WriteOutcome::Invalid("x".into()),
        ]);
        assert_eq!(
            (s.inserted, s.duplicates, s.conflicts, s.invalid),
            (2, 1, 1, 1)
        );
    }
}
